//! `GET /grid` (the grid as this site sees it), `POST /grid/scrub` and `POST /prefetch`:
//! thin doors to the grid layer, which the archive hands over when the node is in a grid.

use crate::access::Audit;
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use pacsgrid_archive::GridControl;
use serde::Deserialize;
use std::sync::Arc;

fn control(state: &HttpState) -> Result<Arc<dyn GridControl>, Problem> {
    state.archive.grid_control().ok_or_else(|| {
        Problem::not_found(
            "this node is not part of a grid (no [grid] section in its configuration)",
        )
    })
}

fn failed(why: String) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// `GET /grid`.
pub(crate) async fn status(
    State(state): State<HttpState>,
) -> Result<Json<serde_json::Value>, Problem> {
    control(&state)?.status().await.map(Json).map_err(failed)
}

/// `POST /grid/scrub`: re-hashes every local copy now.
pub(crate) async fn scrub(
    State(state): State<HttpState>,
) -> Result<Json<serde_json::Value>, Problem> {
    control(&state)?.scrub().await.map(Json).map_err(failed)
}

/// The body of `POST /prefetch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrefetchBody {
    patient_id: String,
    #[serde(default)]
    issuer: Option<String>,
}

/// `POST /prefetch`: pulls every study of a patient to this site now.
pub(crate) async fn prefetch(
    State(state): State<HttpState>,
    audit: Audit,
    body: Result<Json<PrefetchBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), Problem> {
    let Json(body) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    if body.patient_id.trim().is_empty() {
        return Err(Problem::bad_request("patient_id must not be empty"));
    }
    let grid = control(&state)?;
    // Recorded as a query naming the patient, before the grid starts moving their studies;
    // the transfers themselves are recorded by the grid as they happen.
    let ev = audit
        .query_of(
            serde_json::json!({"patient_id": body.patient_id.trim(), "issuer": body.issuer})
                .to_string()
                .as_bytes(),
        )
        .patient(body.patient_id.trim(), body.issuer.as_deref());
    audit.record(vec![ev]).await?;
    grid.prefetch(body.patient_id.trim(), body.issuer.as_deref())
        .await
        .map(|v| (StatusCode::OK, Json(v)))
        .map_err(failed)
}
