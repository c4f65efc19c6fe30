//! `/metrics` in the Prometheus text exposition format.

use crate::HttpState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::fmt::Write;

/// Something that contributes metrics to `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends this source's metrics.
    fn render(&self, out: &mut PromText);
}

/// A Prometheus text-format writer (one HELP/TYPE header per metric).
#[derive(Default)]
pub struct PromText {
    buf: String,
}

impl PromText {
    /// Writes one counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.sample(name, help, "counter", value);
    }

    /// Writes one gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.sample(name, help, "gauge", value);
    }

    fn sample(&mut self, name: &str, help: &str, kind: &str, value: u64) {
        let _ = writeln!(
            self.buf,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }

    /// The rendered text.
    pub fn into_string(self) -> String {
        self.buf
    }
}

/// Renders the archive's counts and every extra source.
pub async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut out = PromText::default();
    match state.archive.stats().await {
        Ok(s) => {
            out.gauge("pacsgrid_patients", "Patients in the index.", s.patients);
            out.gauge("pacsgrid_studies", "Studies in the index.", s.studies);
            out.gauge("pacsgrid_series", "Series in the index.", s.series);
            out.gauge("pacsgrid_instances", "Instances in the index.", s.instances);
            out.gauge(
                "pacsgrid_stored_bytes",
                "Bytes of stored instances.",
                s.bytes,
            );
            out.gauge(
                "pacsgrid_quarantined",
                "Objects set aside as conflicting.",
                s.quarantined,
            );
        }
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain")],
                e.to_string(),
            );
        }
    }
    // Disk figures are optional: a store that cannot tell leaves them out rather than failing.
    if let Ok(Some(space)) = state.archive.storage_space().await {
        out.gauge(
            "pacsgrid_blob_disk_total_bytes",
            "Size of the file system holding the blobs.",
            space.total_bytes,
        );
        out.gauge(
            "pacsgrid_blob_disk_available_bytes",
            "Room left for new objects on the file system holding the blobs.",
            space.available_bytes,
        );
    }
    for src in &state.extra_metrics {
        src.render(&mut out);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out.into_string(),
    )
}
