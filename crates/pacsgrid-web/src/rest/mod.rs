//! The REST API under `/api/v1`: node status, patients / studies / series / instances,
//! deletion, the change feed, the quarantine, the grid (status, scrub, prefetch) and the
//! OpenAPI document, and the audit trail.
//!
//! A patient is addressed as `/patients/{issuer}/{patient_id}` (each segment
//! percent-encoded): a PatientID means something only within its issuer, so the issuer
//! comes first, like a namespace, and the pair is stable for as long as the patient exists.

mod audit;
mod delete;
mod feed;
mod grid;
mod openapi;
mod params;
mod resources;
mod status;
mod time;
mod views;

#[cfg(test)]
mod tests;

use crate::problem::Problem;
use crate::HttpState;
use axum::extract::OriginalUri;
use axum::http::Method;
use axum::routing::get;
use axum::Router;

/// Every REST path, relative to `/api/v1`, as the router and the OpenAPI document name it.
pub(crate) const PATHS: &[&str] = &[
    "/status",
    "/patients",
    "/patients/{issuer}/{patient_id}",
    "/studies",
    "/studies/{study_uid}",
    "/series/{series_uid}",
    "/instances/{sop_instance_uid}",
    "/changes",
    "/quarantine",
    "/openapi.json",
    "/grid",
    "/grid/scrub",
    "/prefetch",
    "/audit",
];

/// The REST routes, relative to `/api/v1`.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route(PATHS[0], get(status::status))
        .route(PATHS[1], get(resources::list_patients))
        .route(
            PATHS[2],
            get(resources::get_patient).delete(delete::delete_patient),
        )
        .route(PATHS[3], get(resources::list_studies))
        .route(
            PATHS[4],
            get(resources::get_study).delete(delete::delete_study),
        )
        .route(
            PATHS[5],
            get(resources::get_series).delete(delete::delete_series),
        )
        .route(
            PATHS[6],
            get(resources::get_instance).delete(delete::delete_instance),
        )
        .route(PATHS[7], get(feed::changes))
        .route(PATHS[8], get(feed::quarantine))
        .route(PATHS[9], get(openapi::document))
        .route(PATHS[10], get(grid::status))
        .route(PATHS[11], axum::routing::post(grid::scrub))
        .route(PATHS[12], axum::routing::post(grid::prefetch))
        .route(PATHS[13], get(audit::search))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Unknown paths under `/api/v1` answer problem+json like everything else.
async fn not_found(OriginalUri(uri): OriginalUri) -> Problem {
    Problem::not_found(format!(
        "no REST resource at {}; see {}/openapi.json",
        uri.path(),
        crate::REST_BASE
    ))
}

/// Known paths with another method answer problem+json too.
async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
