//! The HTTP surface of a node: health and metrics today; DICOMweb and the REST API build on
//! the same router. Calls the archive only.

mod health;
mod metrics;

pub use metrics::{MetricsSource, PromText};

use axum::routing::get;
use axum::Router;
use pacsgrid_archive::Archive;
use std::sync::Arc;

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct HttpState {
    /// The node's archive.
    pub archive: Arc<Archive>,
    /// Metrics from other parts of the node (DIMSE counters...), rendered after the archive's.
    pub extra_metrics: Vec<Arc<dyn MetricsSource>>,
}

/// Builds the node's HTTP router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
}

/// Serves the router on a listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
