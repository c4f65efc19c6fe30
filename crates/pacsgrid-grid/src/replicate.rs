//! The placement pass: every site checks, for each instance in the grid's index, whether the
//! policy names it as a holder and it lacks the bytes, and pulls them if so. Because every
//! site decides for itself from the same facts, a lost site's copies are re-made by the
//! survivors with no one acting, and a rebuilt site pulls back what is assigned to it.

use crate::placement;
use crate::service::{now_ms, Grid, PlacementFigures};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Instances read from the index per page.
const PAGE: u32 = 1000;

/// Least time from one pass to a recount asked for by new holder facts: copies land in
/// streams, and a pass reads the whole index.
const RECOUNT_GAP: Duration = Duration::from_millis(200);

/// How long a recount asked for after a quiet spell waits, gathering the facts that come
/// with the first (a feed page, the other copies finishing at the same time).
const RECOUNT_GATHER: Duration = Duration::from_millis(30);

/// Runs placement passes until the service stops: every `repair_interval_secs`, or sooner
/// when new records arrived.
pub(crate) async fn run(grid: Arc<Grid>) {
    let interval = Duration::from_secs(grid.cfg.repair_interval_secs.max(1));
    loop {
        if let Err(e) = pass(&grid).await {
            tracing::warn!(error = %e, "placement pass failed");
        }
        let passed = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = grid.placement_due.notified() => {
                // let a burst of feed entries settle into one pass
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            _ = grid.recount_due.notified() => {
                // At most a few recounts a second while copies land, but the one after the
                // last copy of a run comes soon, not a whole gap later: the grid's status
                // (under-replicated instances) settles that much sooner.
                let wait = RECOUNT_GAP.saturating_sub(passed.elapsed()).max(RECOUNT_GATHER);
                tokio::time::sleep(wait).await;
            },
            _ = grid.stopped() => return,
        }
        if grid.stopping() {
            return;
        }
    }
}

/// One pass over the index: starts the pulls this site owes and recounts the copies.
pub(crate) async fn pass(grid: &Arc<Grid>) -> Result<(), pacsgrid_archive::ArchiveError> {
    let healthy = grid.healthy_sites();
    let k = grid.cfg.copies.max(1);
    let want = k.min(healthy.len());
    let mut figures = PlacementFigures::default();
    let mut prefs_cache: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pages = std::pin::pin!(grid.holding_pages(PAGE));
    while let Some(page) = futures::StreamExt::next(&mut pages).await {
        let page = page?;
        for h in page {
            figures.instances += 1;
            let valid: Vec<_> = h
                .holders
                .iter()
                .filter(|x| grid.holder_valid(x))
                .cloned()
                .collect();
            for x in &valid {
                *figures.held.entry(x.site.clone()).or_default() += 1;
            }
            let healthy_copies = valid.iter().filter(|x| healthy.contains(&x.site)).count();
            if healthy_copies < want {
                figures.under_replicated += 1;
            }
            if valid.iter().any(|x| x.site == grid.site) {
                continue;
            }
            let prefs = prefs_cache
                .entry(h.origin_site.clone())
                .or_insert_with(|| grid.preferences_of(&h.origin_site));
            let targets = placement::targets(&h.study_uid, &h.origin_site, prefs, &healthy, k);
            // A record may arrive (relayed) before any holder of it is known: wait for one.
            if targets.contains(&grid.site) && !grid.sources(&valid).is_empty() {
                start_pull(grid, h.sop_instance_uid, h.hash, h.size, valid);
            }
        }
    }
    figures.at_ms = now_ms();
    *grid.figures.write().unwrap_or_else(|p| p.into_inner()) = figures;
    Ok(())
}

/// Starts pulling one instance's bytes unless a pull is running or backing off.
pub(crate) fn start_pull(
    grid: &Arc<Grid>,
    sop: String,
    hash: String,
    size: u64,
    holders: Vec<pacsgrid_archive::Holder>,
) {
    {
        let backoff = grid.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((when, _)) = backoff.get(&hash) {
            if *when > Instant::now() {
                return;
            }
        }
        let mut inflight = grid.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if !inflight.insert(hash.clone()) {
            return;
        }
    }
    let grid = Arc::clone(grid);
    tokio::spawn(async move {
        let permit = Arc::clone(&grid.transfers).acquire_owned().await;
        let sources = grid.sources(&holders);
        let result = match permit {
            Ok(permit) if !grid.stopping() => {
                grid.pull_copy(&sop, &hash, size, &sources, permit).await
            }
            _ => Err("stopping".into()),
        };
        let idle = {
            let mut inflight = grid.inflight.lock().unwrap_or_else(|p| p.into_inner());
            inflight.remove(&hash);
            inflight.is_empty()
        };
        if idle && result.is_ok() {
            // the last pull of a run: recount now rather than at the next interval
            grid.recount_due.notify_one();
        }
        let mut backoff = grid.backoff.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(from) => {
                backoff.remove(&hash);
                tracing::info!(sop_instance_uid = %sop, from = %from, bytes = size, "copy made and verified");
            }
            Err(why) => {
                let tries = backoff.get(&hash).map(|b| b.1).unwrap_or(0) + 1;
                let wait = Duration::from_millis((500u64 << tries.min(7)).min(60_000));
                backoff.insert(hash.clone(), (Instant::now() + wait, tries));
                tracing::warn!(sop_instance_uid = %sop, tries, retry_in_ms = wait.as_millis() as u64, error = %why, "copy failed; will retry");
            }
        }
    });
}
