//! Deletion through the archive: rows, tombstones and blobs go together; a crash between
//! the index change and the blob removal does not bring a deleted instance back.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pacsgrid_archive::{Archive, ArchiveConfig, ChangeKind, StoreOutcome};
use pacsgrid_dicom::{Level, Query, QueryModel};
use pacsgrid_store::{DeleteTarget, Index, SqliteIndex};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const ELE: &str = "1.2.840.10008.1.2.1";

/// A Part 10 file of one CT instance in study `study`, series `study.1`.
fn file(dir: &Path, study: &str, sop: &str) -> PathBuf {
    let mut o = InMemDicomObject::new_empty();
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, CT));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, sop));
    o.put(s(tags::MODALITY, VR::CS, "CT"));
    o.put(s(tags::PATIENT_ID, VR::LO, "P1"));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, study));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, &format!("{study}.1")));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(vec![7u8; 64]),
    ));
    let obj = o
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(CT)
                .media_storage_sop_instance_uid(sop)
                .transfer_syntax(ELE),
        )
        .unwrap();
    let path = dir.join(format!("{sop}.dcm"));
    obj.write_to_file(&path).unwrap();
    path
}

async fn archive(dir: &Path) -> Arc<Archive> {
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

fn everything() -> Query {
    Query::parse(
        QueryModel::StudyRoot,
        Level::Image,
        Vec::<(dicom_core::Tag, &str)>::new(),
    )
    .unwrap()
}

#[tokio::test]
async fn deleting_a_study_removes_rows_and_blobs_and_it_can_come_back() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let a = archive(data.path()).await;
    let mut paths = Vec::new();
    for (study, sop) in [
        ("1.2.9.1", "1.2.9.1.1.1"),
        ("1.2.9.1", "1.2.9.1.1.2"),
        ("1.2.9.2", "1.2.9.2.1.1"),
    ] {
        let p = file(files.path(), study, sop);
        assert!(matches!(
            a.store_file(&p, "TEST").await.unwrap(),
            StoreOutcome::Stored { .. }
        ));
        paths.push(p);
    }
    let report = a.delete_study("1.2.9.1").await.unwrap();
    assert_eq!(
        (
            report.patients,
            report.studies,
            report.series,
            report.instances,
            report.blobs_removed
        ),
        (0, 1, 1, 2, 2)
    );
    assert_eq!(report.tombstones.len(), 2);
    assert!(report
        .tombstones
        .iter()
        .all(|t| t.kind == ChangeKind::Deleted));
    let left = a.locate(&everything()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].sop_instance_uid, "1.2.9.2.1.1");
    let check = a.check(true).await.unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(check.blobs, 1);
    // An unknown target deletes nothing.
    assert_eq!(a.delete_series("1.2.404").await.unwrap().instances, 0);
    // Stored again: a new instance, not a duplicate.
    for p in &paths[..2] {
        assert!(matches!(
            a.store_file(p, "TEST").await.unwrap(),
            StoreOutcome::Stored { .. }
        ));
    }
    assert_eq!(a.locate(&everything()).await.unwrap().len(), 3);
    assert!(a.check(true).await.unwrap().is_clean());
    let feed = a.changes(0, 0).await.unwrap();
    let kinds: Vec<ChangeKind> = feed.iter().map(|c| c.kind).collect();
    use ChangeKind::*;
    assert_eq!(
        kinds,
        [Stored, Stored, Stored, Deleted, Deleted, Stored, Stored]
    );
    assert_eq!(a.feed_head().await.unwrap(), feed[6].seq);
    let prov = a.provenance("1.2.9.2.1.1").await.unwrap().unwrap();
    assert_eq!(
        (prov.origin_site.as_str(), prov.source.as_str()),
        ("a", "TEST")
    );
    assert_eq!(prov.holders, vec!["a".to_string()]);
    a.close();
}

#[tokio::test]
async fn a_crash_before_the_blob_is_removed_does_not_resurrect_the_instance() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    {
        let a = archive(data.path()).await;
        a.store_file(&file(files.path(), "1.2.9.3", "1.2.9.3.1.1"), "TEST")
            .await
            .unwrap();
        // no close(): the next open reconciles
    }
    {
        // The index change commits, then the process dies before removing the blob.
        let index = SqliteIndex::open(&data.path().join("index.sqlite")).unwrap();
        let d = index
            .delete(&DeleteTarget::Instance("1.2.9.3.1.1".into()), 1)
            .await
            .unwrap();
        assert_eq!(d.unreferenced_hashes.len(), 1);
    }
    let a = archive(data.path()).await;
    assert!(a.locate(&everything()).await.unwrap().is_empty());
    let check = a.check(true).await.unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!(check.blobs, 0);
    a.close();
}
