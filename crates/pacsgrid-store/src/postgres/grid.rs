//! [`GridIndex`] for PostgreSQL: peers' records, holders, tombstones, cursors and conflicts.

use super::{
    append_entry, delete_in, from_db, lock, referenced, sql_limit, PostgresIndex, QueuedWrite,
};
use crate::grid_index::*;
use crate::index::{IndexError, InsertOutcome};
use crate::model::*;
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::oneshot;

/// Reads this database's incarnation, making one on first use: a hash of the moment, the
/// process and the database's address is unique enough to tell two lives of it apart.
pub(super) async fn ensure_incarnation(pool: &PgPool, place: &str) -> Result<String, IndexError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{nanos}/{}/{place}", std::process::id());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&seed, &mut h);
    let a = std::hash::Hasher::finish(&h);
    std::hash::Hash::hash(&a.wrapping_add(nanos as u64), &mut h);
    let value = format!("{a:016x}{:016x}", std::hash::Hasher::finish(&h));
    sqlx::query(
        "INSERT INTO node_meta (key, value) VALUES ('incarnation', $1) ON CONFLICT DO NOTHING",
    )
    .bind(&value)
    .execute(pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM node_meta WHERE key = 'incarnation'")
            .fetch_one(pool)
            .await?,
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a tombstone for this record's (UID, hash) was written at or after the record
/// arrived: a peer's late copy of the record must not bring the instance back.
pub(super) async fn deleted_after(
    tx: &mut PgConnection,
    r: &InstanceRecord,
) -> Result<bool, IndexError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted'
             AND sop_instance_uid = $1 AND hash = $2 AND at_ms >= $3)",
    )
    .bind(&r.instance.sop_instance_uid)
    .bind(&r.hash)
    .bind(r.received_at_ms)
    .fetch_one(tx)
    .await?)
}

const RECORD_SQL: &str = "SELECT p.patient_id, p.issuer, p.name, p.birth_date, p.sex,
        st.study_uid, st.date, st.time, st.accession, st.study_id, st.description,
        st.referring_physician,
        se.series_uid, se.modality, se.number, se.description, se.body_part, se.date, se.time,
        i.sop_instance_uid, i.sop_class_uid, i.number, i.transfer_syntax, i.hash, i.size,
        i.dataset_offset, i.origin_site, i.source, i.received_at_ms, i.id
    FROM instances i JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
    JOIN patients p ON p.id = st.patient WHERE i.sop_instance_uid = $1";

fn record_row(r: &PgRow) -> Result<(InstanceRecord, i64), sqlx::Error> {
    Ok((
        InstanceRecord {
            patient: PatientAttrs {
                patient_id: r.try_get(0)?,
                issuer: r.try_get(1)?,
                name: r.try_get(2)?,
                birth_date: r.try_get(3)?,
                sex: r.try_get(4)?,
            },
            study: StudyAttrs {
                study_uid: r.try_get(5)?,
                date: r.try_get(6)?,
                time: r.try_get(7)?,
                accession: r.try_get(8)?,
                study_id: r.try_get(9)?,
                description: r.try_get(10)?,
                referring_physician: r.try_get(11)?,
            },
            series: SeriesAttrs {
                series_uid: r.try_get(12)?,
                modality: r.try_get(13)?,
                number: r.try_get(14)?,
                description: r.try_get(15)?,
                body_part: r.try_get(16)?,
                date: r.try_get(17)?,
                time: r.try_get(18)?,
            },
            instance: InstanceAttrs {
                sop_instance_uid: r.try_get(19)?,
                sop_class_uid: r.try_get(20)?,
                number: r.try_get(21)?,
                transfer_syntax: r.try_get(22)?,
            },
            hash: r.try_get(23)?,
            size: from_db(r.try_get(24)?),
            dataset_offset: from_db(r.try_get(25)?),
            origin_site: r.try_get(26)?,
            source: r.try_get(27)?,
            received_at_ms: r.try_get(28)?,
        },
        r.try_get(29)?,
    ))
}

async fn record_in(
    conn: &mut PgConnection,
    sop: &str,
) -> Result<Option<(InstanceRecord, i64)>, IndexError> {
    let row = sqlx::query(RECORD_SQL)
        .bind(sop)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(record_row).transpose()?)
}

async fn holders_of(conn: &mut PgConnection, instance: i64) -> Result<Vec<Holder>, IndexError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT site, incarnation FROM instance_holders WHERE instance = $1 ORDER BY site",
    )
    .bind(instance)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(site, incarnation)| Holder { site, incarnation })
        .collect())
}

/// The row id, study and series of the instance with this UID and hash.
async fn instance_with_hash(
    tx: &mut PgConnection,
    sop: &str,
    hash: &str,
) -> Result<Option<(i64, String, String)>, IndexError> {
    Ok(sqlx::query_as(
        "SELECT i.id, st.study_uid, se.series_uid FROM instances i
         JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
         WHERE i.sop_instance_uid = $1 AND i.hash = $2",
    )
    .bind(sop)
    .bind(hash)
    .fetch_optional(tx)
    .await?)
}

/// One queued holder change and where its outcome goes once the batch holding it is
/// committed.
pub(crate) struct HolderJob {
    sop: String,
    hash: String,
    holder: Holder,
    holds: bool,
    reply: oneshot::Sender<Result<HolderChange, IndexError>>,
}

#[async_trait]
impl QueuedWrite for HolderJob {
    type Out = HolderChange;

    async fn apply(&self, tx: &mut PgConnection) -> Result<HolderChange, IndexError> {
        set_holder_in(tx, &self.sop, &self.hash, &self.holder, self.holds).await
    }

    fn reply(self) -> oneshot::Sender<Result<HolderChange, IndexError>> {
        self.reply
    }
}

/// Adds or removes a holder inside the caller's transaction (see `GridIndex::set_holder`).
async fn set_holder_in(
    tx: &mut PgConnection,
    sop: &str,
    hash: &str,
    holder: &Holder,
    holds: bool,
) -> Result<HolderChange, IndexError> {
    let Some((id, study, series)) = instance_with_hash(tx, sop, hash).await? else {
        return Ok(HolderChange::Unknown);
    };
    let current: Option<String> = sqlx::query_scalar(
        "SELECT incarnation FROM instance_holders WHERE instance = $1 AND site = $2",
    )
    .bind(id)
    .bind(&holder.site)
    .fetch_optional(&mut *tx)
    .await?;
    let kind = match (holds, current) {
        (true, Some(inc)) if inc == holder.incarnation => return Ok(HolderChange::Unchanged),
        (true, _) => {
            sqlx::query(
                "INSERT INTO instance_holders (instance, site, incarnation) VALUES ($1, $2, $3)
                 ON CONFLICT (instance, site) DO UPDATE SET incarnation = EXCLUDED.incarnation",
            )
            .bind(id)
            .bind(&holder.site)
            .bind(&holder.incarnation)
            .execute(&mut *tx)
            .await?;
            ChangeKind::Held
        }
        (false, Some(inc)) if inc == holder.incarnation => {
            sqlx::query("DELETE FROM instance_holders WHERE instance = $1 AND site = $2")
                .bind(id)
                .bind(&holder.site)
                .execute(&mut *tx)
                .await?;
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
    )
    .await?;
    Ok(HolderChange::Changed { seq })
}

/// Applies a peer's deletion inside the caller's transaction (see `GridIndex::apply_tombstone`).
async fn apply_tombstone_in(
    tx: &mut PgConnection,
    t: &Tombstone,
) -> Result<TombstoneOutcome, IndexError> {
    let live: Option<(String, i64)> =
        sqlx::query_as("SELECT hash, received_at_ms FROM instances WHERE sop_instance_uid = $1")
            .bind(&t.sop_instance_uid)
            .fetch_optional(&mut *tx)
            .await?;
    let out = match live {
        Some((hash, received)) if hash == t.hash && received <= t.at_ms => {
            let d = delete_in(
                tx,
                &DeleteTarget::Instance(t.sop_instance_uid.clone()),
                t.at_ms,
                &t.site,
            )
            .await?;
            TombstoneOutcome::Applied(d)
        }
        // Stored again after this deletion, or another object under the UID: not ours.
        Some(_) => return Ok(TombstoneOutcome::Known),
        None => {
            let known: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted'
                     AND sop_instance_uid = $1 AND hash = $2)",
            )
            .bind(&t.sop_instance_uid)
            .bind(&t.hash)
            .fetch_one(&mut *tx)
            .await?;
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
            )
            .await?;
            TombstoneOutcome::Recorded { seq }
        }
    };
    Ok(out)
}

async fn save_cursor_in(tx: &mut PgConnection, c: &PeerCursor) -> Result<(), IndexError> {
    sqlx::query(
        "INSERT INTO grid_peers (site, incarnation, cursor) VALUES ($1, $2, $3)
         ON CONFLICT (site) DO UPDATE SET incarnation = EXCLUDED.incarnation,
             cursor = EXCLUDED.cursor",
    )
    .bind(&c.site)
    .bind(&c.incarnation)
    .bind(c.cursor)
    .execute(tx)
    .await?;
    Ok(())
}

/// Feed rows after `after`, without the records of `stored` entries.
pub(super) async fn entries(
    conn: &mut PgConnection,
    after: i64,
    limit: u32,
) -> Result<Vec<FeedEntry>, IndexError> {
    let rows = sqlx::query(
        "SELECT seq, kind, sop_instance_uid, study_uid, series_uid, hash, at_ms, site, incarnation
         FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(sql_limit(limit))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(1)?;
            let kind = ChangeKind::parse(&kind).ok_or_else(|| {
                IndexError::Database(format!("unknown change kind {kind:?} in the feed"))
            })?;
            Ok(FeedEntry {
                seq: r.try_get(0)?,
                kind,
                sop_instance_uid: r.try_get(2)?,
                study_uid: r.try_get(3)?,
                series_uid: r.try_get(4)?,
                hash: r.try_get(5)?,
                at_ms: r.try_get(6)?,
                site: r.try_get(7)?,
                incarnation: r.try_get(8)?,
                record: None,
            })
        })
        .collect()
}

async fn holdings_in(
    conn: &mut PgConnection,
    after_id: i64,
    limit: u32,
) -> Result<Vec<Holdings>, IndexError> {
    let rows = sqlx::query(
        "SELECT i.id, i.sop_instance_uid, st.study_uid, i.hash, i.size, i.origin_site
         FROM instances i JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
         WHERE i.id > $1 ORDER BY i.id LIMIT $2",
    )
    .bind(after_id)
    .bind(sql_limit(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(Holdings {
                id: r.try_get(0)?,
                sop_instance_uid: r.try_get(1)?,
                study_uid: r.try_get(2)?,
                hash: r.try_get(3)?,
                size: from_db(r.try_get(4)?),
                origin_site: r.try_get(5)?,
                holders: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let (Some(first), Some(last)) = (out.first().map(|h| h.id), out.last().map(|h| h.id)) else {
        return Ok(out);
    };
    let holders: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT instance, site, incarnation FROM instance_holders
         WHERE instance BETWEEN $1 AND $2 ORDER BY instance, site",
    )
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await?;
    let mut at = 0;
    for (id, site, incarnation) in holders {
        while at < out.len() && out[at].id < id {
            at += 1;
        }
        if let Some(h) = out.get_mut(at).filter(|h| h.id == id) {
            h.holders.push(Holder { site, incarnation });
        }
    }
    Ok(out)
}

#[async_trait]
impl GridIndex for PostgresIndex {
    async fn incarnation(&self) -> Result<String, IndexError> {
        Ok(self.inner.incarnation.clone())
    }

    async fn insert_remote(&self, record: &InstanceRecord) -> Result<InsertOutcome, IndexError> {
        // Through the group commit like a local store, with no holder.
        self.queue_insert(record, "", "", None).await
    }

    async fn set_holder(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        holder: &Holder,
        holds: bool,
    ) -> Result<HolderChange, IndexError> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.inner.pending_holders).push(HolderJob {
            sop: sop_instance_uid.to_string(),
            hash: hash.to_string(),
            holder: holder.clone(),
            holds,
            reply,
        });
        // as for inserts: copies finished while a commit is under way share the next
        self.commit_queued(|i| &i.pending_holders).await?;
        outcome.await.map_err(|_| {
            IndexError::Task("the holder change was dropped before it was committed".into())
        })?
    }

    async fn apply_peer_page(
        &self,
        changes: Vec<PeerChange>,
        cursor: &PeerCursor,
    ) -> Result<Vec<PeerOutcome>, IndexError> {
        // A peer's feed page and its cursor in one transaction: one commit a page.
        let (_writer, mut tx) = self.write_tx().await?;
        let mut out = Vec::with_capacity(changes.len());
        for change in &changes {
            out.push(match change {
                PeerChange::Record(rec) => {
                    PeerOutcome::Record(super::insert_in(&mut tx, rec, "", "").await?)
                }
                PeerChange::Holder {
                    sop_instance_uid,
                    hash,
                    holder,
                    holds,
                } => PeerOutcome::Holder(
                    set_holder_in(&mut tx, sop_instance_uid, hash, holder, *holds).await?,
                ),
                PeerChange::Tombstone(t) => {
                    PeerOutcome::Tombstone(apply_tombstone_in(&mut tx, t).await?)
                }
            });
        }
        save_cursor_in(&mut tx, cursor).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn drop_stale_holders(&self, site: &str, incarnation: &str) -> Result<u64, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM instance_holders WHERE site = $1 AND incarnation <> $2")
            .bind(site)
            .bind(incarnation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn apply_tombstone(&self, t: &Tombstone) -> Result<TombstoneOutcome, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let out = apply_tombstone_in(&mut tx, t).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn feed(&self, after: i64, limit: u32) -> Result<Vec<FeedEntry>, IndexError> {
        let mut tx = self.begin_read().await?;
        let mut out = entries(&mut tx, after, limit).await?;
        for e in out.iter_mut().filter(|e| e.kind == ChangeKind::Stored) {
            e.record = record_in(&mut tx, &e.sop_instance_uid)
                .await?
                .map(|(rec, _)| rec)
                .filter(|rec| rec.hash == e.hash);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn record(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(InstanceRecord, Vec<Holder>)>, IndexError> {
        let mut tx = self.begin_read().await?;
        let out = match record_in(&mut tx, sop_instance_uid).await? {
            Some((rec, id)) => Some((rec, holders_of(&mut tx, id).await?)),
            None => None,
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn holdings(&self, after_id: i64, limit: u32) -> Result<Vec<Holdings>, IndexError> {
        let mut tx = self.begin_read().await?;
        let out = holdings_in(&mut tx, after_id, limit).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn peer_cursors(&self) -> Result<Vec<PeerCursor>, IndexError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT site, incarnation, cursor FROM grid_peers ORDER BY site")
                .fetch_all(&self.inner.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(site, incarnation, cursor)| PeerCursor {
                site,
                incarnation,
                cursor,
            })
            .collect())
    }

    async fn save_peer_cursor(&self, cursor: &PeerCursor) -> Result<(), IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        save_cursor_in(&mut tx, cursor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_conflict(&self, conflict: &GridConflict) -> Result<bool, IndexError> {
        let g = conflict;
        let (_writer, mut tx) = self.write_tx().await?;
        let n = sqlx::query(
            "INSERT INTO grid_conflicts (sop_instance_uid, hash, local_hash, site, at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&g.sop_instance_uid)
        .bind(&g.hash)
        .bind(&g.local_hash)
        .bind(&g.site)
        .bind(g.at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn conflicts(&self) -> Result<Vec<GridConflict>, IndexError> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT sop_instance_uid, local_hash, hash, site, at_ms FROM grid_conflicts
             ORDER BY at_ms, sop_instance_uid",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(sop_instance_uid, local_hash, hash, site, at_ms)| GridConflict {
                    sop_instance_uid,
                    local_hash,
                    hash,
                    site,
                    at_ms,
                },
            )
            .collect())
    }

    async fn referenced(&self, hash: &str) -> Result<bool, IndexError> {
        let mut conn = self.inner.pool.acquire().await?;
        referenced(&mut conn, hash).await
    }

    async fn removable(&self) -> Result<Vec<(String, i64)>, IndexError> {
        Ok(sqlx::query_as(
            "SELECT c.hash, MAX(c.seq) FROM changes c WHERE c.kind = 'deleted'
               AND NOT EXISTS (SELECT 1 FROM instances WHERE hash = c.hash)
               AND NOT EXISTS (SELECT 1 FROM quarantine WHERE quarantined_hash = c.hash)
             GROUP BY c.hash ORDER BY 2",
        )
        .fetch_all(&self.inner.pool)
        .await?)
    }
}
