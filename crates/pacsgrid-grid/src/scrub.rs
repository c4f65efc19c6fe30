//! The scrub: re-hashes every local copy; a corrupt one is removed and released, so the
//! placement pass fetches a verified copy from another holder in its place.

use crate::service::Grid;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// What one scrub found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubReport {
    /// Local copies re-hashed.
    pub checked: u64,
    /// Copies whose bytes no longer matched their hash (removed, to be replaced).
    pub corrupt: Vec<String>,
    /// Local copies announced but missing from the blob store.
    pub missing: Vec<String>,
}

/// Scrubs every `scrub_interval_secs` until the service stops.
pub(crate) async fn run(grid: Arc<Grid>) {
    let interval = Duration::from_secs(grid.cfg.scrub_interval_secs.max(1));
    while grid.pause(interval).await {
        match scrub(&grid).await {
            Ok(r) => tracing::info!(
                checked = r.checked,
                corrupt = r.corrupt.len(),
                missing = r.missing.len(),
                "scrub done"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub failed"),
        }
    }
}

/// Re-hashes every copy this site announced.
pub(crate) async fn scrub(grid: &Arc<Grid>) -> Result<ScrubReport, pacsgrid_archive::ArchiveError> {
    let me = grid.archive.holder().await?;
    let mut report = ScrubReport::default();
    let mut pages = std::pin::pin!(grid.holding_pages(500));
    while let Some(page) = futures::StreamExt::next(&mut pages).await {
        let page = page?;
        for h in page {
            if !h.holders.iter().any(|x| x.site == grid.site) {
                continue;
            }
            if grid.stopping() {
                return Ok(report);
            }
            report.checked += 1;
            let ok = match grid.archive.has_blob(&h.hash).await? {
                false => {
                    tracing::error!(sop_instance_uid = %h.sop_instance_uid, hash = %h.hash, "scrub: announced copy is missing");
                    report.missing.push(h.sop_instance_uid.clone());
                    false
                }
                true => {
                    let good = grid.archive.verify_blob(&h.hash).await?;
                    if !good {
                        tracing::error!(sop_instance_uid = %h.sop_instance_uid, hash = %h.hash, "scrub: copy is corrupt");
                        grid.archive.discard_corrupt_blob(&h.hash).await?;
                        report.corrupt.push(h.sop_instance_uid.clone());
                    }
                    good
                }
            };
            if !ok {
                grid.archive
                    .set_holder(&h.sop_instance_uid, &h.hash, &me, false)
                    .await?;
            }
        }
    }
    if !report.corrupt.is_empty() || !report.missing.is_empty() {
        grid.placement_due.notify_one();
    }
    Ok(report)
}
