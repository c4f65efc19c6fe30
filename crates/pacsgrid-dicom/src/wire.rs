//! The few rules of DICOM's binary encoding (PS3.5 section 7) that the hand-written walkers
//! need: the archive's element walker and the de-identifier's header splitter read raw bytes
//! as they stream past, where dicom-rs' parser would want the whole object.

/// Whether an explicit-VR element of this VR has two reserved bytes and a 32-bit length
/// (PS3.5 table 7.1-1) rather than a 16-bit length.
pub fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// A 16-bit number from its two bytes, big endian (`big`) or little endian.
pub fn read_u16(b: [u8; 2], big: bool) -> u16 {
    if big {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}

/// A 32-bit number from its four bytes, big endian (`big`) or little endian.
pub fn read_u32(b: [u8; 4], big: bool) -> u32 {
    if big {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_byte_orders() {
        assert!(has_long_length(*b"SQ") && has_long_length(*b"OB"));
        assert!(!has_long_length(*b"PN") && !has_long_length(*b"US"));
        assert_eq!(read_u16([0x10, 0x00], false), 0x0010);
        assert_eq!(read_u16([0x00, 0x10], true), 0x0010);
        assert_eq!(read_u32([1, 0, 0, 0], false), 1);
        assert_eq!(read_u32([0, 0, 0, 1], true), 1);
    }
}
