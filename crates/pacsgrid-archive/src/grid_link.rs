//! What the archive needs from the grid layer, and what it lets the application layer ask of
//! it, as traits: the grid implements them and the binary plugs them in, so that the archive,
//! the protocols and the web API never depend on the grid crate.

use async_trait::async_trait;
use std::path::Path;

/// Fetches bytes this node does not hold from another site (on-the-fly retrieve).
#[async_trait]
pub trait RemoteFetch: Send + Sync + 'static {
    /// Writes the bytes of instance `sop_instance_uid` (content hash `hash`, `size` bytes)
    /// into the new file `dest`, from a site that holds them, and verifies them against the
    /// hash before returning. The error says why no holder could provide them.
    async fn fetch(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), String>;

    /// Fetches the bytes like [`RemoteFetch::fetch`] but into memory, verified, for an
    /// instance small enough to hold: a retrieve then sends them with no staging file to write
    /// and read back. The bytes come as the pieces they were received in, in order, so that
    /// they are not copied once more into one buffer. `None` when this fetcher can only write
    /// files.
    async fn fetch_to_memory(
        &self,
        _sop_instance_uid: &str,
        _hash: &str,
        _size: u64,
    ) -> Option<Result<Vec<bytes::Bytes>, String>> {
        None
    }

    /// Whether bytes fetched for a retrieve are kept as a local cached copy.
    fn keep_fetched(&self) -> bool {
        false
    }

    /// Why no site could give the bytes of `sop_instance_uid` now (every site holding them
    /// is unreachable, or none does), as far as this node knows without trying; `None` when
    /// a fetch may succeed. Lets a retrieve say so before its first byte goes out.
    async fn unreachable(&self, _sop_instance_uid: &str) -> Option<String> {
        None
    }
}

/// Grid operations the REST API offers (status, prefetch, scrub), answered as JSON so that
/// the web layer needs no grid types.
#[async_trait]
pub trait GridControl: Send + Sync + 'static {
    /// The grid as this site sees it: sites, reachability, feed lag, copies, conflicts.
    async fn status(&self) -> Result<serde_json::Value, String>;

    /// Pulls a patient's studies held elsewhere to this site now; returns what was queued.
    async fn prefetch(
        &self,
        patient_id: &str,
        issuer: Option<&str>,
    ) -> Result<serde_json::Value, String>;

    /// Re-hashes every local blob now, repairing corrupt ones from other sites.
    async fn scrub(&self) -> Result<serde_json::Value, String>;
}
