//! `GET /status`: what a node holds and where its change feed stands.

use super::params::{Params, RawParams};
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

/// The node's status.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// This node's site name.
    pub site: String,
    /// The pacsgrid version.
    pub version: &'static str,
    /// What the index holds.
    pub counts: Counts,
    /// Storage use.
    pub storage: Storage,
    /// The change feed.
    pub change_feed: Feed,
}

/// Entity counts.
#[derive(Debug, Serialize)]
pub(crate) struct Counts {
    /// Distinct patients (PatientID, issuer).
    pub patients: u64,
    /// Studies.
    pub studies: u64,
    /// Series.
    pub series: u64,
    /// Instances.
    pub instances: u64,
    /// Quarantined objects.
    pub quarantined: u64,
}

/// Storage use.
#[derive(Debug, Serialize)]
pub(crate) struct Storage {
    /// Sum of the stored instances' sizes (quarantined objects not included).
    pub stored_bytes: u64,
    /// Size of the file system holding the blobs, when the store can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Room left there for new objects, when the store can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_available_bytes: Option<u64>,
}

/// Where the change feed stands.
#[derive(Debug, Serialize)]
pub(crate) struct Feed {
    /// The newest sequence number (0 when empty): `GET /changes?since=head` returns only
    /// what happens afterwards.
    pub head: i64,
}

/// `GET /status`.
pub(crate) async fn status(
    State(state): State<HttpState>,
    raw: RawParams,
) -> Result<Json<Status>, Problem> {
    Params::new(raw, &[])?;
    let stats = state.archive.stats().await?;
    let head = state.archive.feed_head().await?;
    let space = state.archive.storage_space().await?;
    Ok(Json(Status {
        site: state.archive.config().site.clone(),
        version: env!("CARGO_PKG_VERSION"),
        counts: Counts {
            patients: stats.patients,
            studies: stats.studies,
            series: stats.series,
            instances: stats.instances,
            quarantined: stats.quarantined,
        },
        storage: Storage {
            stored_bytes: stats.bytes,
            disk_total_bytes: space.map(|s| s.total_bytes),
            disk_available_bytes: space.map(|s| s.available_bytes),
        },
        change_feed: Feed { head },
    }))
}
