//! `DELETE` of patients, studies, series and instances. The archive removes the index rows
//! and writes one tombstone per instance to the change feed in one transaction, then
//! removes blobs nothing references any more.

use super::params::{patient_param, uid_param, Params, PathPair, PathSegment, RawParams};
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::Json;
use pacsgrid_archive::{DeleteReport, DeleteTarget};
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

async fn delete(
    state: &HttpState,
    target: DeleteTarget,
    what: String,
) -> Result<Json<Deleted>, Problem> {
    let report = state.archive.delete(target).await?;
    if report.instances == 0 {
        return Err(Problem::not_found(format!("no {what}")));
    }
    Ok(Json(report.into()))
}

/// `DELETE /patients/{issuer}/{patient_id}`.
pub(crate) async fn delete_patient(
    State(state): State<HttpState>,
    path: PathPair,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let (issuer, patient_id) = patient_param(path)?;
    let what = format!("patient with PatientID {patient_id:?} under issuer {issuer:?}");
    delete(&state, DeleteTarget::Patient { patient_id, issuer }, what).await
}

/// `DELETE /studies/{uid}`.
pub(crate) async fn delete_study(
    State(state): State<HttpState>,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "study UID")?;
    let what = format!("study {uid}");
    delete(&state, DeleteTarget::Study(uid), what).await
}

/// `DELETE /series/{uid}`.
pub(crate) async fn delete_series(
    State(state): State<HttpState>,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "series UID")?;
    let what = format!("series {uid}");
    delete(&state, DeleteTarget::Series(uid), what).await
}

/// `DELETE /instances/{uid}`.
pub(crate) async fn delete_instance(
    State(state): State<HttpState>,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<Deleted>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "SOP instance UID")?;
    let what = format!("instance {uid}");
    delete(&state, DeleteTarget::Instance(uid), what).await
}
