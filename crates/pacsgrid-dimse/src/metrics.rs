//! Counters of the DIMSE service, read by the binary to render `/metrics`.
//!
//! Plain atomics: they are bumped on every association and store, so they must cost
//! nothing, and the binary decides how to present them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The DIMSE service's counters. Shared as `Arc<DimseMetrics>`.
#[derive(Debug, Default)]
pub struct DimseMetrics {
    /// Associations accepted since start.
    pub associations_total: AtomicU64,
    /// Associations open now.
    pub associations_active: AtomicU64,
    /// Association requests rejected (AE title, limit, protocol).
    pub associations_rejected: AtomicU64,
    /// Associations aborted by us (malformed or oversize PDU, idle timeout, shutdown).
    pub associations_aborted: AtomicU64,
    /// C-STORE requests answered with success (stored or identical duplicate).
    pub stores_ok: AtomicU64,
    /// C-STORE requests answered with a failure status.
    pub stores_failed: AtomicU64,
    /// C-STORE requests whose object conflicted with a stored one and was quarantined.
    pub stores_quarantined: AtomicU64,
    /// Data set bytes received in C-STORE requests.
    pub bytes_received: AtomicU64,
    /// Data set bytes sent in C-GET / C-MOVE sub-operations.
    pub bytes_sent: AtomicU64,
    /// C-ECHO requests answered.
    pub echoes: AtomicU64,
    /// C-FIND requests answered.
    pub finds: AtomicU64,
    /// C-GET and C-MOVE requests answered.
    pub retrieves: AtomicU64,
    /// Retrieve sub-operations (C-STORE to the requestor or move destination) that succeeded.
    pub retrieve_subops_ok: AtomicU64,
    /// Retrieve sub-operations that failed or ended with a warning.
    pub retrieve_subops_failed: AtomicU64,
    /// TLS handshakes completed on the DICOM TLS port.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed (untrusted or missing client certificate, plain DICOM
    /// spoken to the TLS port, timeout).
    pub tls_handshakes_failed: AtomicU64,
}

/// A point-in-time copy of [`DimseMetrics`], for rendering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`DimseMetrics::associations_total`].
    pub associations_total: u64,
    /// See [`DimseMetrics::associations_active`].
    pub associations_active: u64,
    /// See [`DimseMetrics::associations_rejected`].
    pub associations_rejected: u64,
    /// See [`DimseMetrics::associations_aborted`].
    pub associations_aborted: u64,
    /// See [`DimseMetrics::stores_ok`].
    pub stores_ok: u64,
    /// See [`DimseMetrics::stores_failed`].
    pub stores_failed: u64,
    /// See [`DimseMetrics::stores_quarantined`].
    pub stores_quarantined: u64,
    /// See [`DimseMetrics::bytes_received`].
    pub bytes_received: u64,
    /// See [`DimseMetrics::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`DimseMetrics::echoes`].
    pub echoes: u64,
    /// See [`DimseMetrics::finds`].
    pub finds: u64,
    /// See [`DimseMetrics::retrieves`].
    pub retrieves: u64,
    /// See [`DimseMetrics::retrieve_subops_ok`].
    pub retrieve_subops_ok: u64,
    /// See [`DimseMetrics::retrieve_subops_failed`].
    pub retrieve_subops_failed: u64,
    /// See [`DimseMetrics::tls_handshakes`].
    pub tls_handshakes: u64,
    /// See [`DimseMetrics::tls_handshakes_failed`].
    pub tls_handshakes_failed: u64,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl DimseMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            associations_total: g(&self.associations_total),
            associations_active: g(&self.associations_active),
            associations_rejected: g(&self.associations_rejected),
            associations_aborted: g(&self.associations_aborted),
            stores_ok: g(&self.stores_ok),
            stores_failed: g(&self.stores_failed),
            stores_quarantined: g(&self.stores_quarantined),
            bytes_received: g(&self.bytes_received),
            bytes_sent: g(&self.bytes_sent),
            echoes: g(&self.echoes),
            finds: g(&self.finds),
            retrieves: g(&self.retrieves),
            retrieve_subops_ok: g(&self.retrieve_subops_ok),
            retrieve_subops_failed: g(&self.retrieve_subops_failed),
            tls_handshakes: g(&self.tls_handshakes),
            tls_handshakes_failed: g(&self.tls_handshakes_failed),
        }
    }
}

/// Holds one active association in the counters; dropping it (however the association
/// ends, including a panic or an aborted task) decrements the active count.
pub(crate) struct ActiveGuard<'a>(&'a DimseMetrics);

impl<'a> ActiveGuard<'a> {
    /// Counts a newly accepted association.
    pub(crate) fn new(m: &'a DimseMetrics) -> Self {
        inc(&m.associations_total);
        inc(&m.associations_active);
        ActiveGuard(m)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.associations_active.fetch_sub(1, Ordering::Relaxed);
    }
}
