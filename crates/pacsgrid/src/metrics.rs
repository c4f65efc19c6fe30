//! Bridges the DIMSE counters into `/metrics` (the web layer does not know DIMSE).

use pacsgrid_dimse::DimseMetrics;
use pacsgrid_web::{MetricsSource, PromText};
use std::sync::Arc;

/// Renders [`DimseMetrics`] for the HTTP `/metrics` endpoint.
pub struct DimseMetricsSource(pub Arc<DimseMetrics>);

impl MetricsSource for DimseMetricsSource {
    fn render(&self, out: &mut PromText) {
        let s = self.0.snapshot();
        out.counter(
            "pacsgrid_dimse_associations_total",
            "Associations accepted.",
            s.associations_total,
        );
        out.gauge(
            "pacsgrid_dimse_associations_active",
            "Associations open now.",
            s.associations_active,
        );
        out.counter(
            "pacsgrid_dimse_associations_rejected_total",
            "Association requests rejected.",
            s.associations_rejected,
        );
        out.counter(
            "pacsgrid_dimse_associations_aborted_total",
            "Associations aborted by the node.",
            s.associations_aborted,
        );
        out.counter(
            "pacsgrid_dimse_stores_ok_total",
            "C-STORE requests answered with success.",
            s.stores_ok,
        );
        out.counter(
            "pacsgrid_dimse_stores_failed_total",
            "C-STORE requests answered with a failure.",
            s.stores_failed,
        );
        out.counter(
            "pacsgrid_dimse_stores_quarantined_total",
            "C-STORE objects quarantined as conflicting.",
            s.stores_quarantined,
        );
        out.counter(
            "pacsgrid_dimse_received_bytes_total",
            "Data set bytes received by C-STORE.",
            s.bytes_received,
        );
        out.counter(
            "pacsgrid_dimse_sent_bytes_total",
            "Data set bytes sent by C-GET/C-MOVE.",
            s.bytes_sent,
        );
        out.counter(
            "pacsgrid_dimse_echoes_total",
            "C-ECHO requests answered.",
            s.echoes,
        );
        out.counter(
            "pacsgrid_dimse_finds_total",
            "C-FIND requests answered.",
            s.finds,
        );
        out.counter(
            "pacsgrid_dimse_retrieves_total",
            "C-GET and C-MOVE requests answered.",
            s.retrieves,
        );
        out.counter(
            "pacsgrid_dimse_retrieve_subops_ok_total",
            "Retrieve sub-operations that succeeded.",
            s.retrieve_subops_ok,
        );
        out.counter(
            "pacsgrid_dimse_retrieve_subops_failed_total",
            "Retrieve sub-operations that failed or warned.",
            s.retrieve_subops_failed,
        );
        out.counter(
            "pacsgrid_dimse_tls_handshakes_total",
            "TLS handshakes completed on the DICOM TLS port.",
            s.tls_handshakes,
        );
        out.counter(
            "pacsgrid_dimse_tls_handshakes_failed_total",
            "TLS handshakes refused or failed on the DICOM TLS port.",
            s.tls_handshakes_failed,
        );
    }
}
