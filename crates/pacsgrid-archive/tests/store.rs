//! The archive's store rules on real objects: durability order, duplicates, quarantine,
//! refusals, reconciliation after a crash.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pacsgrid_archive::{Archive, ArchiveConfig, IncomingMeta, StoreError, StoreOutcome};
use pacsgrid_dicom::{Level, Query, QueryModel};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const ELE: &str = "1.2.840.10008.1.2.1";

fn dataset(sop: &str, patient: &str, pixel: u8) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, CT));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, sop));
    o.put(s(tags::STUDY_DATE, VR::DA, "20240102"));
    o.put(s(tags::MODALITY, VR::CS, "CT"));
    o.put(s(tags::PATIENT_NAME, VR::PN, "DOE^JANE"));
    o.put(s(tags::PATIENT_ID, VR::LO, patient));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.1"));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.1.1"));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(vec![pixel; 64]),
    ));
    o
}

fn encode(o: &InMemDicomObject) -> Vec<u8> {
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut out = Vec::new();
    o.write_dataset_with_ts(&mut out, &ts).unwrap();
    out
}

async fn archive(dir: &std::path::Path) -> Arc<Archive> {
    Archive::open(ArchiveConfig {
        data_dir: dir.to_path_buf(),
        site: "a".into(),
        default_issuer: "HOSP".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await
    .unwrap()
}

async fn store(a: &Arc<Archive>, sop: &str, bytes: &[u8]) -> Result<StoreOutcome, StoreError> {
    let mut inc = a
        .begin_store(IncomingMeta {
            sop_class_uid: CT.into(),
            sop_instance_uid: sop.into(),
            transfer_syntax: ELE.into(),
            source: "TEST".into(),
        })
        .await?;
    for chunk in bytes.chunks(7) {
        inc.write(chunk).await?;
    }
    inc.finish().await
}

fn study_query() -> Query {
    Query::parse(
        QueryModel::StudyRoot,
        Level::Image,
        Vec::<(dicom_core::Tag, &str)>::new(),
    )
    .unwrap()
}

#[tokio::test]
async fn stored_bytes_come_back_identical_and_duplicates_are_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path()).await;
    let bytes = encode(&dataset("1.2.3.1", "P1", 1));
    assert!(matches!(
        store(&a, "1.2.3.1", &bytes).await.unwrap(),
        StoreOutcome::Stored { .. }
    ));
    assert!(matches!(
        store(&a, "1.2.3.1", &bytes).await.unwrap(),
        StoreOutcome::Duplicate { .. }
    ));
    let found = a.locate(&study_query()).await.unwrap();
    assert_eq!(found.len(), 1);
    let mut back = Vec::new();
    a.open_dataset(&found[0])
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, bytes);
    let report = a.check(true).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs, 1);
}

#[tokio::test]
async fn different_bytes_under_the_same_uid_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path()).await;
    let first = encode(&dataset("1.2.3.2", "P1", 1));
    let second = encode(&dataset("1.2.3.2", "P1", 2));
    store(&a, "1.2.3.2", &first).await.unwrap();
    let out = store(&a, "1.2.3.2", &second).await.unwrap();
    assert!(matches!(out, StoreOutcome::Quarantined { .. }), "{out:?}");
    let found = a.locate(&study_query()).await.unwrap();
    let mut back = Vec::new();
    a.open_dataset(&found[0])
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, first, "the first object must stay");
    assert_eq!(a.quarantined(10).await.unwrap().len(), 1);
    assert!(a.check(true).await.unwrap().is_clean());
}

#[tokio::test]
async fn bad_objects_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path()).await;
    let bytes = encode(&dataset("1.2.3.3", "P1", 1));
    // truncated in the pixel data
    let e = store(&a, "1.2.3.3", &bytes[..bytes.len() - 10])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::CannotUnderstand(_)), "{e}");
    // UID in the data set differs from the command's
    let e = store(&a, "1.2.3.4", &bytes).await.unwrap_err();
    assert!(matches!(e, StoreError::Mismatch(_)), "{e}");
    assert_eq!(e.dimse_status(), 0xA900);
    // not a UID: refused before anything is written
    assert!(matches!(
        store(&a, "../../etc/passwd", &bytes).await.unwrap_err(),
        StoreError::Mismatch(_)
    ));
    // garbage
    let e = store(&a, "1.2.3.3", b"definitely not a data set")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::CannotUnderstand(_)), "{e}");
    assert!(a.locate(&study_query()).await.unwrap().is_empty());
    let report = a.check(true).await.unwrap();
    assert_eq!(report.blobs, 0);
    let staging = std::fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "staging files must be removed");
}

#[tokio::test]
async fn imported_files_keep_their_bytes_and_missing_issuer_gets_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let a = archive(dir.path()).await;
    let obj = dataset("1.2.3.5", "P9", 3)
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(CT)
                .media_storage_sop_instance_uid("1.2.3.5")
                .transfer_syntax(ELE),
        )
        .unwrap();
    let path = dir.path().join("x.dcm");
    obj.write_to_file(&path).unwrap();
    assert!(matches!(
        a.store_file(&path, "import").await.unwrap(),
        StoreOutcome::Stored { .. }
    ));
    let found = a.locate(&study_query()).await.unwrap();
    let mut back = Vec::new();
    a.open_file(&found[0])
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, std::fs::read(&path).unwrap());
    let q = Query::parse(
        QueryModel::PatientRoot,
        Level::Patient,
        [(tags::PATIENT_ID, "P9")],
    )
    .unwrap();
    let patients = a.find(&q, 0, 0).await.unwrap();
    assert_eq!(patients.len(), 1);
    assert_eq!(
        patients[0]
            .get(&tags::ISSUER_OF_PATIENT_ID)
            .map(String::as_str),
        Some("HOSP")
    );
    // a file that is not DICOM
    std::fs::write(dir.path().join("y.txt"), b"hello").unwrap();
    assert!(a
        .store_file(&dir.path().join("y.txt"), "import")
        .await
        .is_err());
}

#[tokio::test]
async fn an_unclean_stop_is_reconciled_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = archive(dir.path()).await;
        store(&a, "1.2.3.6", &encode(&dataset("1.2.3.6", "P1", 1)))
            .await
            .unwrap();
        // no close(): as if killed
    }
    // a blob that reached the store but whose index row never committed
    let extra = dataset("1.2.3.7", "P1", 2)
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(CT)
                .media_storage_sop_instance_uid("1.2.3.7")
                .transfer_syntax(ELE),
        )
        .unwrap();
    let mut bytes = Vec::new();
    extra.write_all(&mut bytes).unwrap();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let p = dir.path().join("blobs").join(&hash[0..2]);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&hash), &bytes).unwrap();
    let a = archive(dir.path()).await;
    assert_eq!(a.locate(&study_query()).await.unwrap().len(), 2);
    assert!(a.check(true).await.unwrap().is_clean());
}
