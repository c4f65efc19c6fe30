//! [`GridIndex`] for SQLite: peers' records, holders, tombstones, cursors and conflicts.

use super::{append_entry, delete_in, referenced, sql_limit, SqliteIndex};
use crate::grid_index::*;
use crate::index::{IndexError, InsertOutcome};
use crate::model::*;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use tokio::sync::oneshot;

/// Reads this database's incarnation, making one on first use: a hash of the moment, the
/// process and the path is unique enough to tell two lives of a data directory apart.
pub(super) fn ensure_incarnation(conn: &Connection, path: &Path) -> Result<String, IndexError> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT value FROM node_meta WHERE key = 'incarnation'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = existing {
        return Ok(v);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{nanos}/{}/{}", std::process::id(), path.display());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&seed, &mut h);
    let a = std::hash::Hasher::finish(&h);
    std::hash::Hash::hash(&a.wrapping_add(nanos as u64), &mut h);
    let value = format!("{a:016x}{:016x}", std::hash::Hasher::finish(&h));
    conn.execute(
        "INSERT OR IGNORE INTO node_meta (key, value) VALUES ('incarnation', ?1)",
        [&value],
    )?;
    Ok(conn.query_row(
        "SELECT value FROM node_meta WHERE key = 'incarnation'",
        [],
        |r| r.get(0),
    )?)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a tombstone for this record's (UID, hash) was written at or after the record
/// arrived: a peer's late copy of the record must not bring the instance back.
pub(super) fn deleted_after(tx: &Connection, r: &InstanceRecord) -> Result<bool, IndexError> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted'
                 AND sop_instance_uid = ?1 AND hash = ?2 AND at_ms >= ?3)",
        )?
        .query_row(
            params![r.instance.sop_instance_uid, r.hash, r.received_at_ms],
            |row| row.get(0),
        )?)
}

const RECORD_SQL: &str = "SELECT p.patient_id, p.issuer, p.name, p.birth_date, p.sex,
        st.study_uid, st.date, st.time, st.accession, st.study_id, st.description,
        st.referring_physician,
        se.series_uid, se.modality, se.number, se.description, se.body_part, se.date, se.time,
        i.sop_instance_uid, i.sop_class_uid, i.number, i.transfer_syntax, i.hash, i.size,
        i.dataset_offset, i.origin_site, i.source, i.received_at_ms, i.id
    FROM instances i JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
    JOIN patients p ON p.id = st.patient WHERE i.sop_instance_uid = ?1";

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(InstanceRecord, i64)> {
    Ok((
        InstanceRecord {
            patient: PatientAttrs {
                patient_id: r.get(0)?,
                issuer: r.get(1)?,
                name: r.get(2)?,
                birth_date: r.get(3)?,
                sex: r.get(4)?,
            },
            study: StudyAttrs {
                study_uid: r.get(5)?,
                date: r.get(6)?,
                time: r.get(7)?,
                accession: r.get(8)?,
                study_id: r.get(9)?,
                description: r.get(10)?,
                referring_physician: r.get(11)?,
            },
            series: SeriesAttrs {
                series_uid: r.get(12)?,
                modality: r.get(13)?,
                number: r.get(14)?,
                description: r.get(15)?,
                body_part: r.get(16)?,
                date: r.get(17)?,
                time: r.get(18)?,
            },
            instance: InstanceAttrs {
                sop_instance_uid: r.get(19)?,
                sop_class_uid: r.get(20)?,
                number: r.get(21)?,
                transfer_syntax: r.get(22)?,
            },
            hash: r.get(23)?,
            size: r.get(24)?,
            dataset_offset: r.get(25)?,
            origin_site: r.get(26)?,
            source: r.get(27)?,
            received_at_ms: r.get(28)?,
        },
        r.get(29)?,
    ))
}

fn record_sync(conn: &Connection, sop: &str) -> Result<Option<(InstanceRecord, i64)>, IndexError> {
    Ok(conn
        .prepare_cached(RECORD_SQL)?
        .query_row([sop], record_row)
        .optional()?)
}

fn holders_of(conn: &Connection, instance: i64) -> Result<Vec<Holder>, IndexError> {
    let mut stmt = conn.prepare_cached(
        "SELECT site, incarnation FROM instance_holders WHERE instance = ?1 ORDER BY site",
    )?;
    let rows = stmt.query_map([instance], |r| {
        Ok(Holder {
            site: r.get(0)?,
            incarnation: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row id, study and series of the instance with this UID and hash.
fn instance_with_hash(
    tx: &Connection,
    sop: &str,
    hash: &str,
) -> Result<Option<(i64, String, String)>, IndexError> {
    Ok(tx
        .prepare_cached(
            "SELECT i.id, st.study_uid, se.series_uid FROM instances i
             JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
             WHERE i.sop_instance_uid = ?1 AND i.hash = ?2",
        )?
        .query_row([sop, hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
}

/// One queued holder change and where its outcome goes once the batch holding it is
/// committed.
pub(super) struct HolderJob {
    sop: String,
    hash: String,
    holder: Holder,
    holds: bool,
    reply: oneshot::Sender<Result<HolderChange, IndexError>>,
}

/// Commits queued holder changes in one transaction (see [`super::group_commit`]).
pub(super) fn run_holder_batch(conn: &mut Connection, jobs: Vec<HolderJob>) {
    super::group_commit(
        conn,
        jobs,
        |tx, job| set_holder_in(tx, &job.sop, &job.hash, &job.holder, job.holds),
        |job| job.reply,
    );
}

/// Adds or removes a holder inside the caller's transaction (see `GridIndex::set_holder`).
fn set_holder_in(
    tx: &Connection,
    sop: &str,
    hash: &str,
    holder: &Holder,
    holds: bool,
) -> Result<HolderChange, IndexError> {
    let Some((id, study, series)) = instance_with_hash(tx, sop, hash)? else {
        return Ok(HolderChange::Unknown);
    };
    let current: Option<String> = tx
        .prepare_cached(
            "SELECT incarnation FROM instance_holders WHERE instance = ?1 AND site = ?2",
        )?
        .query_row(params![id, holder.site], |r| r.get(0))
        .optional()?;
    let kind = match (holds, current) {
        (true, Some(inc)) if inc == holder.incarnation => return Ok(HolderChange::Unchanged),
        (true, _) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO instance_holders (instance, site, incarnation)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, holder.site, holder.incarnation])?;
            ChangeKind::Held
        }
        (false, Some(inc)) if inc == holder.incarnation => {
            tx.prepare_cached("DELETE FROM instance_holders WHERE instance = ?1 AND site = ?2")?
                .execute(params![id, holder.site])?;
            ChangeKind::Released
        }
        // A release by another incarnation than the recorded copy's says nothing of it.
        (false, _) => return Ok(HolderChange::Unchanged),
    };
    let seq = append_entry(
        tx,
        kind,
        [sop, &study, &series, hash],
        now_ms(),
        &holder.site,
        &holder.incarnation,
    )?;
    Ok(HolderChange::Changed { seq })
}

fn apply_tombstone_tx(
    conn: &mut Connection,
    t: &Tombstone,
) -> Result<TombstoneOutcome, IndexError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = apply_tombstone_in(&tx, t)?;
    tx.commit()?;
    Ok(out)
}

/// Applies a peer's deletion inside the caller's transaction (see `GridIndex::apply_tombstone`).
fn apply_tombstone_in(tx: &Connection, t: &Tombstone) -> Result<TombstoneOutcome, IndexError> {
    let live: Option<(String, i64)> = tx
        .prepare_cached("SELECT hash, received_at_ms FROM instances WHERE sop_instance_uid = ?1")?
        .query_row([&t.sop_instance_uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let out = match live {
        Some((hash, received)) if hash == t.hash && received <= t.at_ms => {
            let d = delete_in(
                tx,
                &DeleteTarget::Instance(t.sop_instance_uid.clone()),
                t.at_ms,
                &t.site,
            )?;
            TombstoneOutcome::Applied(d)
        }
        // Stored again after this deletion, or another object under the UID: not ours.
        Some(_) => return Ok(TombstoneOutcome::Known),
        None => {
            let known: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted'
                         AND sop_instance_uid = ?1 AND hash = ?2)",
                )?
                .query_row([&t.sop_instance_uid, &t.hash], |r| r.get(0))?;
            if known {
                return Ok(TombstoneOutcome::Known);
            }
            let seq = append_entry(
                tx,
                ChangeKind::Deleted,
                [&t.sop_instance_uid, &t.study_uid, &t.series_uid, &t.hash],
                t.at_ms,
                &t.site,
                "",
            )?;
            TombstoneOutcome::Recorded { seq }
        }
    };
    Ok(out)
}

fn save_cursor_in(tx: &Connection, c: &PeerCursor) -> Result<(), IndexError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO grid_peers (site, incarnation, cursor) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![c.site, c.incarnation, c.cursor])?;
    Ok(())
}

/// A peer's feed page and its cursor in one transaction: one commit (one fsync) a page
/// instead of one or two per entry.
fn apply_peer_page_tx(
    conn: &mut Connection,
    changes: &[PeerChange],
    cursor: &PeerCursor,
) -> Result<Vec<PeerOutcome>, IndexError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        out.push(match change {
            PeerChange::Record(rec) => PeerOutcome::Record(super::insert_in(&tx, rec, "", "")?),
            PeerChange::Holder {
                sop_instance_uid,
                hash,
                holder,
                holds,
            } => PeerOutcome::Holder(set_holder_in(&tx, sop_instance_uid, hash, holder, *holds)?),
            PeerChange::Tombstone(t) => PeerOutcome::Tombstone(apply_tombstone_in(&tx, t)?),
        });
    }
    save_cursor_in(&tx, cursor)?;
    tx.commit()?;
    Ok(out)
}

/// Feed rows after `after`, without the records of `stored` entries.
pub(super) fn entries(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<FeedEntry>, IndexError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, sop_instance_uid, study_uid, series_uid, hash, at_ms, site, incarnation
         FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, sql_limit(limit)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: String = r.get(1)?;
        let kind = ChangeKind::parse(&kind).ok_or_else(|| {
            IndexError::Database(format!("unknown change kind {kind:?} in the feed"))
        })?;
        out.push(FeedEntry {
            seq: r.get(0)?,
            kind,
            sop_instance_uid: r.get(2)?,
            study_uid: r.get(3)?,
            series_uid: r.get(4)?,
            hash: r.get(5)?,
            at_ms: r.get(6)?,
            site: r.get(7)?,
            incarnation: r.get(8)?,
            record: None,
        });
    }
    Ok(out)
}

fn feed_sync(conn: &Connection, after: i64, limit: u32) -> Result<Vec<FeedEntry>, IndexError> {
    let mut out = entries(conn, after, limit)?;
    for e in out.iter_mut().filter(|e| e.kind == ChangeKind::Stored) {
        e.record = record_sync(conn, &e.sop_instance_uid)?
            .map(|(rec, _)| rec)
            .filter(|rec| rec.hash == e.hash);
    }
    Ok(out)
}

fn holdings_sync(
    conn: &Connection,
    after_id: i64,
    limit: u32,
) -> Result<Vec<Holdings>, IndexError> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.id, i.sop_instance_uid, st.study_uid, i.hash, i.size, i.origin_site
         FROM instances i JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
         WHERE i.id > ?1 ORDER BY i.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_id, sql_limit(limit)], |r| {
        Ok(Holdings {
            id: r.get(0)?,
            sop_instance_uid: r.get(1)?,
            study_uid: r.get(2)?,
            hash: r.get(3)?,
            size: r.get(4)?,
            origin_site: r.get(5)?,
            holders: Vec::new(),
        })
    })?;
    let mut out: Vec<Holdings> = rows.collect::<Result<_, _>>()?;
    let (Some(first), Some(last)) = (out.first().map(|h| h.id), out.last().map(|h| h.id)) else {
        return Ok(out);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT instance, site, incarnation FROM instance_holders
         WHERE instance BETWEEN ?1 AND ?2 ORDER BY instance, site",
    )?;
    let mut rows = stmt.query(params![first, last])?;
    let mut at = 0;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        while at < out.len() && out[at].id < id {
            at += 1;
        }
        if let Some(h) = out.get_mut(at).filter(|h| h.id == id) {
            h.holders.push(Holder {
                site: r.get(1)?,
                incarnation: r.get(2)?,
            });
        }
    }
    Ok(out)
}

#[async_trait]
impl GridIndex for SqliteIndex {
    async fn incarnation(&self) -> Result<String, IndexError> {
        Ok(self.inner.incarnation.clone())
    }

    async fn insert_remote(&self, record: &InstanceRecord) -> Result<InsertOutcome, IndexError> {
        let record = record.clone();
        let (reply, outcome) = oneshot::channel();
        // Through the group commit like a local store, with no holder.
        self.write(move |conn| {
            super::run_batch(
                conn,
                vec![super::InsertJob {
                    record,
                    site: String::new(),
                    incarnation: String::new(),
                    mark: None,
                    reply,
                }],
            );
            Ok(())
        })
        .await?;
        outcome.await.map_err(|_| {
            IndexError::Task("the insert was dropped before it was committed".into())
        })?
    }

    async fn set_holder(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        holder: &Holder,
        holds: bool,
    ) -> Result<HolderChange, IndexError> {
        let (reply, outcome) = oneshot::channel();
        super::lock(&self.inner.pending_holders).push(HolderJob {
            sop: sop_instance_uid.to_string(),
            hash: hash.to_string(),
            holder: holder.clone(),
            holds,
            reply,
        });
        // as for inserts: copies finished while a commit waits for the disk share the next
        self.commit_queued(|i| &i.pending_holders, run_holder_batch)
            .await?;
        outcome.await.map_err(|_| {
            IndexError::Task("the holder change was dropped before it was committed".into())
        })?
    }

    async fn apply_peer_page(
        &self,
        changes: Vec<PeerChange>,
        cursor: &PeerCursor,
    ) -> Result<Vec<PeerOutcome>, IndexError> {
        let cursor = cursor.clone();
        self.write(move |c| apply_peer_page_tx(c, &changes, &cursor))
            .await
    }

    async fn drop_stale_holders(&self, site: &str, incarnation: &str) -> Result<u64, IndexError> {
        let (site, inc) = (site.to_string(), incarnation.to_string());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM instance_holders WHERE site = ?1 AND incarnation <> ?2",
                [&site, &inc],
            )? as u64)
        })
        .await
    }

    async fn apply_tombstone(&self, t: &Tombstone) -> Result<TombstoneOutcome, IndexError> {
        let t = t.clone();
        self.write(move |c| apply_tombstone_tx(c, &t)).await
    }

    async fn feed(&self, after: i64, limit: u32) -> Result<Vec<FeedEntry>, IndexError> {
        self.read(move |c| feed_sync(c, after, limit)).await
    }

    async fn record(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(InstanceRecord, Vec<Holder>)>, IndexError> {
        let sop = sop_instance_uid.to_string();
        self.read(move |c| match record_sync(c, &sop)? {
            Some((rec, id)) => Ok(Some((rec, holders_of(c, id)?))),
            None => Ok(None),
        })
        .await
    }

    async fn holdings(&self, after_id: i64, limit: u32) -> Result<Vec<Holdings>, IndexError> {
        self.read(move |c| holdings_sync(c, after_id, limit)).await
    }

    async fn peer_cursors(&self) -> Result<Vec<PeerCursor>, IndexError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT site, incarnation, cursor FROM grid_peers ORDER BY site")?;
            let rows = stmt.query_map([], |r| {
                Ok(PeerCursor {
                    site: r.get(0)?,
                    incarnation: r.get(1)?,
                    cursor: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn save_peer_cursor(&self, cursor: &PeerCursor) -> Result<(), IndexError> {
        let c2 = cursor.clone();
        self.write(move |c| save_cursor_in(c, &c2)).await
    }

    async fn record_conflict(&self, conflict: &GridConflict) -> Result<bool, IndexError> {
        let g = conflict.clone();
        self.write(move |c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO grid_conflicts (sop_instance_uid, hash, local_hash, site, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![g.sop_instance_uid, g.hash, g.local_hash, g.site, g.at_ms],
            )? == 1)
        })
        .await
    }

    async fn conflicts(&self) -> Result<Vec<GridConflict>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT sop_instance_uid, local_hash, hash, site, at_ms FROM grid_conflicts
                 ORDER BY at_ms, sop_instance_uid",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(GridConflict {
                    sop_instance_uid: r.get(0)?,
                    local_hash: r.get(1)?,
                    hash: r.get(2)?,
                    site: r.get(3)?,
                    at_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn referenced(&self, hash: &str) -> Result<bool, IndexError> {
        let hash = hash.to_string();
        self.read(move |c| referenced(c, &hash)).await
    }

    async fn removable(&self) -> Result<Vec<(String, i64)>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT c.hash, MAX(c.seq) FROM changes c WHERE c.kind = 'deleted'
                   AND NOT EXISTS (SELECT 1 FROM instances WHERE hash = c.hash)
                   AND NOT EXISTS (SELECT 1 FROM quarantine WHERE quarantined_hash = c.hash)
                 GROUP BY c.hash ORDER BY 2",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
