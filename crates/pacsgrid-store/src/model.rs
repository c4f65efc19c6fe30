//! What the index records about instances, and what it answers.

use pacsgrid_dicom::Tag;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Patient attributes, as received (decoded to UTF-8). A patient is (patient_id, issuer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientAttrs {
    /// PatientID (0010,0020); may be empty.
    pub patient_id: String,
    /// IssuerOfPatientID (0010,0021), or the site's default issuer when the sender gave none.
    pub issuer: String,
    /// PatientName (0010,0010) in DICOM PN form (`FAMILY^GIVEN`).
    pub name: String,
    /// PatientBirthDate (0010,0030), `YYYYMMDD` or empty.
    pub birth_date: String,
    /// PatientSex (0010,0040).
    pub sex: String,
}

/// Study attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyAttrs {
    /// StudyInstanceUID (0020,000D).
    pub study_uid: String,
    /// StudyDate (0008,0020), normalised `YYYYMMDD` or empty.
    pub date: String,
    /// StudyTime (0008,0030), normalised `HHMMSS[.F]` or empty.
    pub time: String,
    /// AccessionNumber (0008,0050).
    pub accession: String,
    /// StudyID (0020,0010).
    pub study_id: String,
    /// StudyDescription (0008,1030).
    pub description: String,
    /// ReferringPhysicianName (0008,0090).
    pub referring_physician: String,
}

/// Series attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesAttrs {
    /// SeriesInstanceUID (0020,000E).
    pub series_uid: String,
    /// Modality (0008,0060).
    pub modality: String,
    /// SeriesNumber (0020,0011).
    pub number: Option<i64>,
    /// SeriesDescription (0008,103E).
    pub description: String,
    /// BodyPartExamined (0018,0015).
    pub body_part: String,
    /// SeriesDate (0008,0021).
    pub date: String,
    /// SeriesTime (0008,0031).
    pub time: String,
}

/// Instance attributes and where its bytes are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAttrs {
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// InstanceNumber (0020,0013).
    pub number: Option<i64>,
    /// Transfer syntax UID of the stored bytes.
    pub transfer_syntax: String,
}

/// Everything the index records when an instance is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Patient level.
    pub patient: PatientAttrs,
    /// Study level.
    pub study: StudyAttrs,
    /// Series level.
    pub series: SeriesAttrs,
    /// Instance level.
    pub instance: InstanceAttrs,
    /// Content hash of the Part 10 bytes (lowercase hex BLAKE3).
    pub hash: String,
    /// Size of the Part 10 bytes.
    pub size: u64,
    /// Offset of the data set within the Part 10 bytes (after the file meta group).
    pub dataset_offset: u64,
    /// The site where the instance first entered the grid.
    pub origin_site: String,
    /// Calling AE title or other source description (for provenance).
    pub source: String,
    /// When this node received it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
}

/// Who stored an instance and in which session (a DICOM association), kept with the
/// instance's index row until the session's audit record is written, so that a node killed
/// between acknowledging a store and writing its record can write the record on restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMark {
    /// The session (association) the store belongs to; its records clear its marks.
    pub session: String,
    /// The sender as the audit trail names it, in a form the audit layer reads back.
    pub who: String,
}

/// A store whose audit record was still to be written: the mark and what the record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAudit {
    /// Order of the marks; clearing "through" an id clears every mark up to it.
    pub id: i64,
    /// The mark as given with the store.
    pub mark: AuditMark,
    /// SOPInstanceUID stored.
    pub sop_instance_uid: String,
    /// Its StudyInstanceUID.
    pub study_uid: String,
    /// Its PatientID.
    pub patient_id: String,
    /// Its IssuerOfPatientID.
    pub issuer: String,
    /// Its SOPClassUID.
    pub sop_class_uid: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Where a stored instance's bytes are, as needed to send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInstance {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// SOPClassUID.
    pub sop_class_uid: String,
    /// Transfer syntax of the stored bytes.
    pub transfer_syntax: String,
    /// Content hash.
    pub hash: String,
    /// Size of the Part 10 bytes.
    pub size: u64,
    /// Offset of the data set within them.
    pub dataset_offset: u64,
    /// PatientID of the instance's patient (for the audit trail of whoever receives it).
    #[serde(default)]
    pub patient_id: String,
    /// IssuerOfPatientID of that patient.
    #[serde(default)]
    pub issuer: String,
}

/// One answer of a query: attribute values of the matched entity and the levels above,
/// including computed ones (counts, ModalitiesInStudy). Multi-valued values are joined
/// with `\`. Absent attributes are absent from the map.
pub type AttrValues = BTreeMap<Tag, String>;

/// The kind of a change-feed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// An instance was stored.
    Stored,
    /// An instance was deleted (a tombstone).
    Deleted,
    /// An object was set aside because its UID was already stored with other bytes.
    Quarantined,
    /// A site announced that it holds an instance's bytes (grid).
    Held,
    /// A site announced that it no longer holds an instance's bytes (grid).
    Released,
}

impl ChangeKind {
    /// The stable text form used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Stored => "stored",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Quarantined => "quarantined",
            ChangeKind::Held => "held",
            ChangeKind::Released => "released",
        }
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "stored" => Some(ChangeKind::Stored),
            "deleted" => Some(ChangeKind::Deleted),
            "quarantined" => Some(ChangeKind::Quarantined),
            "held" => Some(ChangeKind::Held),
            "released" => Some(ChangeKind::Released),
            _ => None,
        }
    }
}

/// One entry of the append-only change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Sequence number, strictly increasing, never reused.
    pub seq: i64,
    /// What happened.
    pub kind: ChangeKind,
    /// The instance concerned.
    pub sop_instance_uid: String,
    /// Its study.
    pub study_uid: String,
    /// Its series.
    pub series_uid: String,
    /// The content hash concerned.
    pub hash: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A quarantined object: a second, different object under an already stored UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Row id.
    pub id: i64,
    /// The SOP Instance UID both objects claim.
    pub sop_instance_uid: String,
    /// Hash of the kept (first) object.
    pub kept_hash: String,
    /// Hash of the object set aside (its bytes are in the blob store).
    pub quarantined_hash: String,
    /// Why it was set aside.
    pub reason: String,
    /// Who sent it.
    pub source: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Counts for status pages and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Distinct patients.
    pub patients: u64,
    /// Studies.
    pub studies: u64,
    /// Series.
    pub series: u64,
    /// Instances.
    pub instances: u64,
    /// Sum of instance sizes in bytes.
    pub bytes: u64,
    /// Quarantined objects.
    pub quarantined: u64,
}

/// What a deletion removes: one entity and everything under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteTarget {
    /// A patient, by (PatientID, IssuerOfPatientID): every study of that patient.
    Patient {
        /// PatientID.
        patient_id: String,
        /// IssuerOfPatientID as recorded.
        issuer: String,
    },
    /// A study by StudyInstanceUID.
    Study(String),
    /// A series by SeriesInstanceUID.
    Series(String),
    /// An instance by SOPInstanceUID.
    Instance(String),
}

/// What [`crate::Index::delete`] removed from the index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Patients left without any study, and so removed.
    pub patients: u64,
    /// Studies removed (the target, or studies left empty).
    pub studies: u64,
    /// Series removed.
    pub series: u64,
    /// Instances removed.
    pub instances: u64,
    /// Sum of the removed instances' sizes.
    pub bytes: u64,
    /// The tombstones written, one `deleted` feed entry per instance, oldest first.
    pub tombstones: Vec<Change>,
    /// Content hashes of removed instances that nothing in the index references any more
    /// (no other instance, no quarantine entry): their blobs may go.
    pub unreferenced_hashes: Vec<String>,
}

/// Where an instance came from and who holds its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The site where the instance first entered the grid.
    pub origin_site: String,
    /// Calling AE title or other source description.
    pub source: String,
    /// When this node received it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The sites known to hold its bytes, sorted.
    pub holders: Vec<String>,
}
