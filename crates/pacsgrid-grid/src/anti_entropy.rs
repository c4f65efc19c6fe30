//! Anti-entropy: compares per-bucket digests of the index with each reachable peer and
//! fetches the records of instances this site is missing, catching anything a feed missed
//! (for example entries of a site that was lost before this one read them).

use crate::api::{bucketed, digest};
use crate::protocol::{BucketList, Digests, RecordAnswer, BUCKETS};
use crate::service::{Grid, GridError};
use std::sync::Arc;
use std::time::Duration;

/// Compares with every reachable peer every `anti_entropy_interval_secs`.
pub(crate) async fn run(grid: Arc<Grid>) {
    let interval = Duration::from_secs(grid.cfg.anti_entropy_interval_secs.max(1));
    while grid.pause(interval).await {
        for name in grid.peer_names() {
            match reconcile(&grid, &name).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(peer = %name, records = n, "anti-entropy found records the feeds had not brought")
                }
                Err(e) => tracing::debug!(peer = %name, error = %e, "anti-entropy round skipped"),
            }
        }
    }
}

/// One comparison with `peer`; returns how many records were added here.
pub(crate) async fn reconcile(grid: &Arc<Grid>, peer: &str) -> Result<u64, GridError> {
    let Some(state) = grid.peer(peer).filter(|p| p.reachable) else {
        return Ok(0);
    };
    let theirs: Digests = grid.client.get_json(&state.url, "/grid/v1/digests").await?;
    let ours = bucketed(grid).await?;
    let mut added = 0;
    for (b, (mine, their_digest)) in ours.iter().zip(&theirs.buckets).enumerate().take(BUCKETS) {
        if digest(mine) == *their_digest {
            continue;
        }
        let list: BucketList = grid
            .client
            .get_json(&state.url, &format!("/grid/v1/digests/{b}"))
            .await?;
        for item in list.instances {
            if mine
                .binary_search_by(|x| x.sop_instance_uid.cmp(&item.sop_instance_uid))
                .is_ok()
            {
                continue;
            }
            let answer: RecordAnswer = grid
                .client
                .get_json(
                    &state.url,
                    &format!("/grid/v1/records/{}", item.sop_instance_uid),
                )
                .await?;
            let applied = grid
                .archive
                .apply_remote_record(&answer.record, peer)
                .await?;
            if applied == pacsgrid_archive::RemoteApply::Inserted {
                added += 1;
            }
            for h in answer.holders.iter().filter(|h| h.site != grid.site) {
                if grid.holder_valid(h) {
                    grid.archive
                        .set_holder(&item.sop_instance_uid, &item.hash, h, true)
                        .await?;
                }
            }
        }
    }
    if added > 0 {
        grid.placement_due.notify_one();
    }
    Ok(added)
}
