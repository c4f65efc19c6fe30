//! `/healthz`: whether the node can answer (its index responds).

use crate::HttpState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

/// 200 with a small JSON body when the index answers, 503 otherwise.
pub async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.archive.stats().await {
        Ok(stats) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "status": "ok",
                "site": state.archive.config().site,
                "instances": stats.instances,
            })),
        ),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable", "reason": e.to_string()})),
            )
        }
    }
}
