//! `GET /changes` (the change feed, read with a cursor) and `GET /quarantine`.

use super::params::{Params, RawParams};
use super::time::rfc3339_ms;
use crate::access::Audit;
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::Json;
use pacsgrid_archive::{Change, QuarantineEntry};
use serde::Serialize;

/// Feed entries per page when `limit` is not given.
pub(crate) const CHANGES_DEFAULT_LIMIT: u32 = 1000;
/// The largest `limit` of a feed page.
pub(crate) const CHANGES_MAX_LIMIT: u32 = 10_000;
/// Quarantine entries returned when `limit` is not given.
pub(crate) const QUARANTINE_DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` of the quarantine list.
pub(crate) const QUARANTINE_MAX_LIMIT: u32 = 1000;

/// One feed entry.
#[derive(Debug, Serialize)]
pub(crate) struct ChangeView {
    /// Sequence number, strictly increasing, never reused.
    pub seq: i64,
    /// `stored`, `deleted` (a tombstone) or `quarantined`.
    pub kind: &'static str,
    /// The instance concerned.
    pub sop_instance_uid: String,
    /// Its study.
    pub study_uid: String,
    /// Its series.
    pub series_uid: String,
    /// The content hash concerned.
    pub hash: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl From<Change> for ChangeView {
    fn from(c: Change) -> ChangeView {
        ChangeView {
            seq: c.seq,
            kind: c.kind.as_str(),
            sop_instance_uid: c.sop_instance_uid,
            study_uid: c.study_uid,
            series_uid: c.series_uid,
            hash: c.hash,
            at: rfc3339_ms(c.at_ms),
            at_ms: c.at_ms,
        }
    }
}

/// A page of the feed.
#[derive(Debug, Serialize)]
pub(crate) struct ChangesPage {
    /// Entries with `seq > since`, oldest first.
    pub items: Vec<ChangeView>,
    /// The cursor for the next request (`since=next_since`): the last `seq` returned, or
    /// `since` when nothing was.
    pub next_since: i64,
    /// Whether more entries follow right now.
    pub more: bool,
}

/// `GET /changes?since=N&limit=M`.
pub(crate) async fn changes(
    State(state): State<HttpState>,
    audit: Audit,
    raw: RawParams,
) -> Result<Json<ChangesPage>, Problem> {
    let p = Params::new(raw, &["since", "limit"])?;
    let since = p.int("since", 0, 0, i64::MAX)?;
    let limit = p.int(
        "limit",
        i64::from(CHANGES_DEFAULT_LIMIT),
        1,
        i64::from(CHANGES_MAX_LIMIT),
    )?;
    let limit = u32::try_from(limit).unwrap_or(CHANGES_MAX_LIMIT);
    // The feed names studies and instances: reading it is a query, recorded as one.
    let (recorded, entries) = tokio::join!(
        audit.record(vec![audit.query()]),
        state.archive.changes(since, limit + 1)
    );
    recorded?;
    let mut entries = entries?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_since = entries.last().map(|c| c.seq).unwrap_or(since);
    Ok(Json(ChangesPage {
        items: entries.into_iter().map(ChangeView::from).collect(),
        next_since,
        more,
    }))
}

/// A quarantined object.
#[derive(Debug, Serialize)]
pub(crate) struct QuarantineView {
    /// Entry id.
    pub id: i64,
    /// The SOP Instance UID both objects claim.
    pub sop_instance_uid: String,
    /// Hash of the object kept (the first one stored).
    pub kept_hash: String,
    /// Hash of the object set aside.
    pub quarantined_hash: String,
    /// Why it was set aside.
    pub reason: String,
    /// Who sent it.
    pub source: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The quarantine list.
#[derive(Debug, Serialize)]
pub(crate) struct QuarantineList {
    /// Entries, newest first.
    pub items: Vec<QuarantineView>,
}

/// `GET /quarantine?limit=M`.
pub(crate) async fn quarantine(
    State(state): State<HttpState>,
    audit: Audit,
    raw: RawParams,
) -> Result<Json<QuarantineList>, Problem> {
    let p = Params::new(raw, &["limit"])?;
    let limit = p.int(
        "limit",
        i64::from(QUARANTINE_DEFAULT_LIMIT),
        1,
        i64::from(QUARANTINE_MAX_LIMIT),
    )?;
    let limit = u32::try_from(limit).unwrap_or(QUARANTINE_MAX_LIMIT);
    let (recorded, entries) = tokio::join!(
        audit.record(vec![audit.query()]),
        state.archive.quarantined(limit)
    );
    recorded?;
    let items = entries?
        .into_iter()
        .map(|q: QuarantineEntry| QuarantineView {
            id: q.id,
            sop_instance_uid: q.sop_instance_uid,
            kept_hash: q.kept_hash,
            quarantined_hash: q.quarantined_hash,
            reason: q.reason,
            source: q.source,
            at: rfc3339_ms(q.at_ms),
            at_ms: q.at_ms,
        })
        .collect();
    Ok(Json(QuarantineList { items }))
}
