//! Pulling one peer's change feed: a cursor per peer, saved with each page in the same
//! transaction as its entries, so the pull is
//! resumable after any outage; applying an entry twice changes nothing (see the merge rules
//! of `GridIndex`), so a page read again after a crash is harmless.

use crate::protocol::{FeedPage, Hello};
use crate::service::{now_ms, Grid, GridError};
use pacsgrid_archive::{
    ChangeKind, FeedEntry, Holder, HolderChange, InsertOutcome, PeerChange, PeerCursor,
    PeerOutcome, Tombstone,
};
use std::sync::Arc;
use std::time::Duration;

/// Most time a peer may take to answer its hello before it is counted unreachable: a site
/// that hangs (accepting connections, answering nothing) is found within seconds, and the
/// retrieves that need its bytes stop waiting on it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries asked for per request.
const PAGE: u32 = 500;

/// Pulls `peer`'s feed until the service stops.
pub(crate) async fn run(grid: Arc<Grid>, peer: String) {
    let interval = Duration::from_millis(grid.cfg.sync_interval_ms.max(10));
    loop {
        let more = match sync_once(&grid, &peer).await {
            Ok(more) => {
                mark(&grid, &peer, None);
                more
            }
            Err(e) => {
                mark(&grid, &peer, Some(e.to_string()));
                false
            }
        };
        if grid.stopping() {
            return;
        }
        if !more && !grid.pause(interval).await {
            return;
        }
    }
}

/// Records the outcome of a contact; a change of reachability is logged once.
fn mark(grid: &Grid, peer: &str, error: Option<String>) {
    let lost_after = grid.cfg.lost_after_secs;
    grid.update_peer(peer, |p| {
        let ok = error.is_none();
        if ok != p.reachable {
            p.since_ms = now_ms();
            if ok {
                tracing::info!(peer, "peer site reachable");
            } else {
                tracing::warn!(
                    peer,
                    error = error.as_deref().unwrap_or(""),
                    lost_after_secs = lost_after,
                    "peer site unreachable"
                );
            }
        }
        p.reachable = ok;
        p.last_error = error;
    });
}

/// One hello and one page of the feed; `true` when more entries are waiting.
async fn sync_once(grid: &Arc<Grid>, peer: &str) -> Result<bool, GridError> {
    let Some(state) = grid.peer(peer) else {
        return Ok(false);
    };
    let hello: Hello = grid
        .client
        .get_json_within(&state.url, "/grid/v1/hello", HELLO_TIMEOUT)
        .await?;
    if hello.site != peer {
        return Err(GridError::Config(format!(
            "peer at {} says it is site {:?}, configured as {peer:?}",
            state.url, hello.site
        )));
    }
    let mut cursor = state.cursor;
    if state.incarnation.as_deref() != Some(hello.incarnation.as_str()) {
        if let Some(old) = &state.incarnation {
            tracing::warn!(
                peer,
                old = %old,
                new = %hello.incarnation,
                "peer site has a new data directory: forgetting the copies it held before and reading its feed from the start"
            );
        }
        let dropped = grid
            .archive
            .drop_stale_holders(peer, &hello.incarnation)
            .await?;
        if dropped > 0 {
            tracing::info!(peer, dropped, "stale holder records dropped");
            grid.placement_due.notify_one();
        }
        cursor = 0;
        grid.archive
            .save_peer_cursor(&PeerCursor {
                site: peer.to_string(),
                incarnation: hello.incarnation.clone(),
                cursor,
            })
            .await?;
    }
    let my_inc = grid.archive.incarnation().await?;
    grid.update_peer(peer, |p| {
        p.incarnation = Some(hello.incarnation.clone());
        p.cursor = cursor;
        p.head = hello.feed_head;
        p.preferred = hello.preferred_backup.clone();
        p.acked = hello
            .cursors
            .get(&grid.site)
            .filter(|(inc, _)| *inc == my_inc)
            .cloned();
    });
    if hello.feed_head <= cursor {
        return Ok(false);
    }
    let page: FeedPage = grid
        .client
        .get_json(
            &state.url,
            &format!("/grid/v1/feed?after={cursor}&limit={PAGE}"),
        )
        .await?;
    if page.incarnation != hello.incarnation {
        // replaced between the two requests: the next round starts over
        return Ok(true);
    }
    let mut changes = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        changes.extend(changes_of(grid, peer, e));
        cursor = e.seq;
    }
    let saved = PeerCursor {
        site: peer.to_string(),
        incarnation: page.incarnation.clone(),
        cursor,
    };
    // The whole page and the cursor in one transaction: one commit a page, not one or two
    // an entry, and a crash leaves either all of the page applied or none of it.
    let outcomes = grid.archive.apply_peer_page(changes, &saved, peer).await?;
    // New instances, and released copies (one may leave an instance short), call for a
    // placement pass.
    let new_records = page.entries.iter().any(|e| e.kind == ChangeKind::Released)
        || outcomes
            .iter()
            .any(|o| matches!(o, PeerOutcome::Record(InsertOutcome::Inserted { .. })));
    grid.update_peer(peer, |p| {
        p.cursor = cursor;
        p.head = page.head;
    });
    if new_records {
        grid.placement_due.notify_one();
    } else if outcomes
        .iter()
        .any(|o| matches!(o, PeerOutcome::Holder(HolderChange::Changed { .. })))
    {
        grid.recount_due.notify_one();
    }
    Ok(page.entries.len() as u32 >= PAGE)
}

/// What one entry of `peer`'s feed asks this node to apply: none, one or two changes.
fn changes_of(grid: &Grid, peer: &str, e: &FeedEntry) -> Vec<PeerChange> {
    // A holder fact is taken only from the holder itself: each site's statements about its
    // own copies then arrive in the order it made them. Relayed copies of them could be older
    // than what the holder said since (a copy released by a scrub, then made again), and
    // applying them would flip the fact back and forth between relaying sites.
    let about_other = e.site == peer && e.site != grid.site;
    let holder = Holder {
        site: e.site.clone(),
        incarnation: e.incarnation.clone(),
    };
    let holder_fact = |holds: bool| {
        (about_other && grid.holder_valid(&holder)).then(|| PeerChange::Holder {
            sop_instance_uid: e.sop_instance_uid.clone(),
            hash: e.hash.clone(),
            holder: holder.clone(),
            holds,
        })
    };
    match e.kind {
        ChangeKind::Stored => e
            .record
            .iter()
            .map(|rec| PeerChange::Record(Box::new(rec.clone())))
            .chain(holder_fact(true))
            .collect(),
        ChangeKind::Held | ChangeKind::Released => holder_fact(e.kind == ChangeKind::Held)
            .into_iter()
            .collect(),
        ChangeKind::Deleted => vec![PeerChange::Tombstone(Tombstone {
            sop_instance_uid: e.sop_instance_uid.clone(),
            study_uid: e.study_uid.clone(),
            series_uid: e.series_uid.clone(),
            hash: e.hash.clone(),
            at_ms: e.at_ms,
            site: if e.site.is_empty() {
                peer.to_string()
            } else {
                e.site.clone()
            },
        })],
        // A site's quarantine is its own matter; conflicts between sites show as records.
        ChangeKind::Quarantined => Vec::new(),
    }
}
