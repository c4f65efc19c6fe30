//! The DICOM Part 10 file frame: preamble, `DICM`, file meta group, then the data set.

use dicom_object::meta::FileMetaTableBuilder;
use pacsgrid_dicom::uid;

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
        let parsed = pacsgrid_dicom::part10::parse_part10_header(&h).unwrap();
        assert_eq!(parsed.dataset_offset, h.len() as u64);
        assert_eq!(parsed.sop_instance_uid, "1.2.3.4");
        assert!(parsed.has_preamble);
    }
}
