//! `DELETE` of patients, studies, series and instances. The archive removes the index rows
//! and writes one tombstone per instance to the change feed in one transaction, then
//! removes blobs nothing references any more.

use super::params::{patient_param, uid_param, Params, PathPair, PathSegment, RawParams};
use crate::access::{tally_row, Audit};
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::Json;
use dicom_dictionary_std::tags;
use pacsgrid_access::StudyTally;
use pacsgrid_archive::{DeleteReport, DeleteTarget};
use pacsgrid_audit::Action;
use pacsgrid_dicom::{Level, Query, QueryModel};
use serde::Serialize;

/// What a deletion removed.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Deleted {
    /// Patients removed (left without studies).
    pub patients: u64,
    /// Studies removed.
    pub studies: u64,
    /// Series removed.
    pub series: u64,
    /// Instances removed.
    pub instances: u64,
    /// Sum of the removed instances' sizes.
    pub bytes: u64,
    /// Blobs removed from this node's blob store.
    pub blobs_removed: u64,
    /// The tombstones written to the change feed.
    pub tombstones: Tombstones,
}

/// The change-feed entries a deletion wrote.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Tombstones {
    /// How many (one per instance).
    pub count: u64,
    /// Sequence number of the first.
    pub first_seq: i64,
    /// Sequence number of the last.
    pub last_seq: i64,
}

impl From<DeleteReport> for Deleted {
    fn from(r: DeleteReport) -> Deleted {
        Deleted {
            patients: r.patients,
            studies: r.studies,
            series: r.series,
            instances: r.instances,
            bytes: r.bytes,
            blobs_removed: r.blobs_removed,
            tombstones: Tombstones {
                count: r.tombstones.len() as u64,
                first_seq: r.tombstones.first().map(|t| t.seq).unwrap_or(0),
                last_seq: r.tombstones.last().map(|t| t.seq).unwrap_or(0),
            },
        }
    }
}

/// Deletes, then records one event per study touched (Study Deleted for whole studies and
/// patients, Instances Accessed with action D for series and instances), with the patient
/// read from the index before the rows are gone.
async fn delete(
    state: &HttpState,
    audit: &Audit,
    target: DeleteTarget,
    what: String,
) -> Result<Json<Deleted>, Problem> {
    let mut tally = StudyTally::new();
    let before = match &target {
        DeleteTarget::Patient { .. } => None,
        DeleteTarget::Study(uid) => Some((Level::Study, tags::STUDY_INSTANCE_UID, uid)),
        DeleteTarget::Series(uid) => Some((Level::Series, tags::SERIES_INSTANCE_UID, uid)),
        DeleteTarget::Instance(uid) => Some((Level::Image, tags::SOP_INSTANCE_UID, uid)),
    };
    if let Some((level, tag, uid)) = before {
        let q = Query::parse(QueryModel::StudyRoot, level, [(tag, uid.as_str())])?;
        for row in state.archive.find(&q, 1, 0).await? {
            tally_row(&mut tally, &row);
        }
    }
    let template = match &target {
        DeleteTarget::Patient { patient_id, issuer } => {
            // the patient is named by the path; the tombstones name the studies
            audit.study_deleted().patient(patient_id, Some(issuer))
        }
        DeleteTarget::Study(_) => audit.study_deleted(),
        _ => audit.accessed(Action::Delete),
    };
    let report = state.archive.delete(target).await?;
    if report.instances == 0 {
        return Err(Problem::not_found(format!("no {what}")));
    }
    for t in &report.tombstones {
        tally.add(&t.study_uid, None, None, "");
    }
    audit.record_studies(template, tally).await?;
    Ok(Json(report.into()))
}

/// `DELETE /patients/{issuer}/{patient_id}`.
pub(crate) async fn delete_patient(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathPair,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let (issuer, patient_id) = patient_param(path)?;
    let what = format!("patient with PatientID {patient_id:?} under issuer {issuer:?}");
    delete(
        &state,
        &audit,
        DeleteTarget::Patient { patient_id, issuer },
        what,
    )
    .await
}

/// `DELETE /studies/{uid}`.
pub(crate) async fn delete_study(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "study UID")?;
    let what = format!("study {uid}");
    delete(&state, &audit, DeleteTarget::Study(uid), what).await
}

/// `DELETE /series/{uid}`.
pub(crate) async fn delete_series(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "series UID")?;
    let what = format!("series {uid}");
    delete(&state, &audit, DeleteTarget::Series(uid), what).await
}

/// `DELETE /instances/{uid}`.
pub(crate) async fn delete_instance(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "SOP instance UID")?;
    let what = format!("instance {uid}");
    delete(&state, &audit, DeleteTarget::Instance(uid), what).await
}
