//! The DICOM Part 10 file meta group: what a file says it is and where its data set starts.
//!
//! Pure byte parsing, shared by the archive (import, recovery) and the C-STORE client
//! (import --to), so that both read a file's header the same way.

use crate::uid;

/// What the file meta group of a local Part 10 file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10Header {
    /// MediaStorageSOPClassUID.
    pub sop_class_uid: String,
    /// MediaStorageSOPInstanceUID.
    pub sop_instance_uid: String,
    /// TransferSyntaxUID.
    pub transfer_syntax: String,
    /// Where the data set starts (after preamble, magic and meta group).
    pub dataset_offset: u64,
    /// Whether the 128-byte preamble precedes the `DICM` magic (PS3.10 requires it; some
    /// writers leave it out).
    pub has_preamble: bool,
}

/// The meta group is small; a reader needs at most this many bytes (more is a corrupt file).
pub const MAX_META_GROUP: usize = 64 * 1024;

/// Parses the file meta group (explicit VR little endian, group 0002) from the start of a
/// file, with or without the 128-byte preamble.
pub fn parse_part10_header(bytes: &[u8]) -> Result<Part10Header, String> {
    let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        132
    } else if bytes.len() >= 4 && &bytes[0..4] == b"DICM" {
        4
    } else {
        return Err("not a DICOM Part 10 file (no DICM magic)".into());
    };
    let mut pos = start;
    let (mut class, mut inst, mut ts) = (None, None, None);
    while pos + 8 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = [bytes[pos + 4], bytes[pos + 5]];
        let long = matches!(
            &vr,
            b"OB"
                | b"OW"
                | b"OF"
                | b"OD"
                | b"OL"
                | b"OV"
                | b"SQ"
                | b"UT"
                | b"UN"
                | b"UC"
                | b"UR"
                | b"SV"
                | b"UV"
        );
        let (len, header) = if long {
            if pos + 12 > bytes.len() {
                return Err("truncated file meta group".into());
            }
            let l = u32::from_le_bytes([
                bytes[pos + 8],
                bytes[pos + 9],
                bytes[pos + 10],
                bytes[pos + 11],
            ]);
            (l as usize, 12)
        } else {
            (
                u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize,
                8,
            )
        };
        let vstart = pos + header;
        let vend = vstart
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or("truncated file meta group")?;
        let text = || {
            String::from_utf8_lossy(&bytes[vstart..vend])
                .trim_matches(|c: char| c == '\0' || c == ' ')
                .to_string()
        };
        match elem {
            0x0002 => class = Some(text()),
            0x0003 => inst = Some(text()),
            0x0010 => ts = Some(text()),
            _ => {}
        }
        pos = vend;
        if pos - start > MAX_META_GROUP {
            return Err("file meta group larger than 64 KiB".into());
        }
    }
    let class = class.ok_or("file meta group lacks MediaStorageSOPClassUID")?;
    let inst = inst.ok_or("file meta group lacks MediaStorageSOPInstanceUID")?;
    let ts = ts.ok_or("file meta group lacks TransferSyntaxUID")?;
    if !uid::is_valid_uid(&inst) {
        return Err(format!("invalid SOP Instance UID {inst:?}"));
    }
    Ok(Part10Header {
        sop_class_uid: class,
        sop_instance_uid: inst,
        transfer_syntax: ts,
        dataset_offset: pos as u64,
        has_preamble: start == 132,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part10_meta_is_parsed_with_and_without_preamble() {
        fn el(elem: u16, vr: &[u8; 2], val: &[u8]) -> Vec<u8> {
            let mut v = vec![0x02, 0x00];
            v.extend_from_slice(&elem.to_le_bytes());
            v.extend_from_slice(vr);
            if vr == b"OB" {
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(&(val.len() as u32).to_le_bytes());
            } else {
                v.extend_from_slice(&(val.len() as u16).to_le_bytes());
            }
            v.extend_from_slice(val);
            v
        }
        let mut meta = Vec::new();
        meta.extend(el(0x0001, b"OB", &[0, 1]));
        meta.extend(el(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"));
        meta.extend(el(0x0003, b"UI", b"1.2.3.4"));
        meta.extend(el(0x0010, b"UI", b"1.2.840.10008.1.2.1\0"));
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&meta);
        let ds_at = file.len();
        file.extend_from_slice(&[0x08, 0x00, 0x16, 0x00]);
        let h = parse_part10_header(&file).unwrap();
        assert_eq!(h.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
        assert!(h.has_preamble);
        assert_eq!(h.sop_instance_uid, "1.2.3.4");
        assert_eq!(h.transfer_syntax, uid::EXPLICIT_VR_LE);
        assert_eq!(h.dataset_offset as usize, ds_at);
        let h2 = parse_part10_header(&file[128..]).unwrap();
        assert_eq!(h2.dataset_offset as usize, ds_at - 128);
        assert!(!h2.has_preamble);
        assert!(parse_part10_header(b"garbage").is_err());
        assert!(parse_part10_header(&file[..140]).is_err());
    }
}
