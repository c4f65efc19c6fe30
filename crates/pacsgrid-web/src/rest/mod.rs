//! The REST API under `/api/v1`: node status, patients / studies / series / instances,
//! deletion, the change feed and the OpenAPI document.

use crate::HttpState;
use axum::Router;

/// The REST routes, relative to `/api/v1`.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
}
