//! The DICOM Part 10 file frame: preamble, `DICM`, file meta group, then the data set.

use dicom_object::meta::FileMetaTableBuilder;
use pacsgrid_dicom::uid;
use std::io::Read;

/// Builds the preamble, magic and file meta group that precede a data set received over
/// the network, so the stored object is a valid Part 10 file with the bytes as received.
pub fn meta_header(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
) -> Result<Vec<u8>, String> {
    // The meta group is a pure function of the object's identity and syntax (no sender AE,
    // no time), so that the same data set sent twice, by anyone, hashes the same and counts
    // as a duplicate rather than a conflict.
    let builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME);
    let meta = builder.build().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads where the data set starts in a Part 10 stream: 132 bytes of preamble and magic,
/// then the meta group, whose length its first element (0002,0000) gives.
pub fn dataset_offset(mut r: impl Read) -> Result<u64, String> {
    let mut head = [0u8; 144];
    r.read_exact(&mut head)
        .map_err(|_| "shorter than a DICOM Part 10 header".to_string())?;
    if &head[128..132] != b"DICM" {
        return Err("no DICM prefix: not a DICOM Part 10 file".into());
    }
    // (0002,0000) UL 4 <len>, explicit VR little endian
    if head[132..136] != [0x02, 0x00, 0x00, 0x00] || &head[136..138] != b"UL" {
        return Err("file meta group does not start with its group length (0002,0000)".into());
    }
    let len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    Ok(144 + u64::from(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = meta_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
        )
        .unwrap();
        assert_eq!(dataset_offset(&h[..]).unwrap(), h.len() as u64);
    }

    #[test]
    fn refuses_non_part10() {
        assert!(dataset_offset(&[0u8; 200][..]).is_err());
        assert!(dataset_offset(&[0u8; 10][..]).is_err());
    }
}
