//! The HTTP surface of a node: health, metrics, DICOMweb (`/dicom-web`) and the REST API
//! (`/api/v1`), all on one router. Calls the archive only, and asks the node's access point
//! who may do what (see [`access`](crate::access)).

mod access;
mod dicomweb;
mod health;
mod metrics;
pub mod problem;
mod rest;

pub use metrics::{MetricsSource, PromText};
pub use problem::Problem;

use axum::http::{HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use pacsgrid_access::AccessPoint;
use pacsgrid_archive::Archive;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Where DICOMweb is served.
pub const DICOMWEB_BASE: &str = "/dicom-web";
/// Where WADO-URI is served (the path Orthanc and most viewers' defaults use).
pub const WADO_URI: &str = "/wado";
/// Where the REST API is served.
pub const REST_BASE: &str = "/api/v1";

/// HTTP settings that handlers and layers need.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Origins browsers may call from (CORS). Empty: no CORS headers; `*`: any origin.
    pub cors_allow_origins: Vec<String>,
    /// Largest STOW-RS request body accepted; larger ones get 413.
    pub max_upload_bytes: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            cors_allow_origins: Vec::new(),
            max_upload_bytes: 16 << 30,
        }
    }
}

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct HttpState {
    /// The node's archive.
    pub archive: Arc<Archive>,
    /// Metrics from other parts of the node (DIMSE counters...), rendered after the archive's.
    pub extra_metrics: Vec<Arc<dyn MetricsSource>>,
    /// HTTP settings.
    pub options: Arc<HttpOptions>,
    /// Who may do what, and the audit trail every access to patient data is written to.
    pub access: Arc<AccessPoint>,
    /// De-identifies what researchers are served, keyed with the node's secret.
    pub deid: Arc<pacsgrid_dicom::deid::Deidentifier>,
}

/// Builds the node's HTTP router.
pub fn router(state: HttpState) -> Router {
    let cors = cors_layer(&state.options.cors_allow_origins);
    // A route layer runs only for matched routes, with the route known; /healthz and
    // /metrics carry no patient data and stay open to probes and scrapers.
    let guard = axum::middleware::from_fn_with_state(state.clone(), access::guard);
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .nest(DICOMWEB_BASE, dicomweb::routes().route_layer(guard.clone()))
        .merge(
            Router::new()
                .route(WADO_URI, get(dicomweb::wado_uri::retrieve))
                .route_layer(guard.clone()),
        )
        .nest(REST_BASE, rest::routes().route_layer(guard))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// Any URL no route serves: a problem+json 404 naming it and where the services live, like
/// every other refusal (axum's default is an empty body).
async fn unknown_path(uri: axum::http::Uri) -> problem::Problem {
    problem::Problem::not_found(format!(
        "no resource at {}: DICOMweb is under {DICOMWEB_BASE}, WADO-URI at {WADO_URI}, the REST API under {REST_BASE} (described by {REST_BASE}/openapi.json)",
        uri.path()
    ))
}

/// A known URL asked with a method it does not take (the access guard answers this for the
/// protected routes; this covers /healthz and /metrics), as problem+json too.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> problem::Problem {
    problem::Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The CORS layer for the configured origins, or none when no origin is allowed.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::warn!(origin = %o, "ignoring a CORS origin that is not a valid header value");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(tower_http::cors::Any)
            .expose_headers(tower_http::cors::Any),
    )
}

/// The address the HTTP listener is bound to, for handlers that build absolute URLs when a
/// client's Host header leaves the port out.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// Serves the router on a listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = LocalAddr(listener.local_addr()?);
    // Peer addresses reach handlers (STOW-RS records who sent an object).
    let app = router(state)
        .layer(axum::Extension(local))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
