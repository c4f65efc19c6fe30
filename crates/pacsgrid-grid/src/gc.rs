//! Removing the bytes of deleted instances, only once every peer that is not lost has read
//! this site's feed past the tombstone (the peers report their cursors in `hello`).

use crate::service::Grid;
use std::sync::Arc;
use std::time::Duration;

/// Collects every `repair_interval_secs` until the service stops.
pub(crate) async fn run(grid: Arc<Grid>) {
    let interval = Duration::from_secs(grid.cfg.repair_interval_secs.max(1));
    while grid.pause(interval).await {
        if let Err(e) = collect(&grid).await {
            tracing::warn!(error = %e, "collecting deleted bytes failed");
        }
    }
}

async fn collect(grid: &Arc<Grid>) -> Result<(), pacsgrid_archive::ArchiveError> {
    let candidates = grid.archive.removable_blobs().await?;
    if candidates.is_empty() {
        return Ok(());
    }
    let my_inc = grid.archive.incarnation().await?;
    let acks: Vec<Option<i64>> = grid
        .peer_names()
        .iter()
        .filter_map(|n| grid.peer(n))
        .filter(|p| !grid.is_lost(p))
        .map(|p| p.acked.filter(|(inc, _)| *inc == my_inc).map(|(_, c)| c))
        .collect();
    let floor = acks.iter().try_fold(i64::MAX, |m, a| a.map(|c| m.min(c)));
    let Some(floor) = floor else { return Ok(()) };
    for (hash, seq) in candidates {
        if seq <= floor {
            grid.archive.remove_deleted_blob(&hash).await?;
        }
    }
    Ok(())
}
