//! The default index: one SQLite database file in WAL mode.
//!
//! One writer connection behind a mutex serialises every write (SQLite allows one writer at
//! a time anyway, and serialising in-process avoids busy retries); a small pool of
//! read-only connections answers queries concurrently, which WAL allows. All database work
//! runs on tokio's blocking threads.
//!
//! Each commit waits for an fsync (`synchronous=FULL`), a few milliseconds on real disks.
//! Inserts arriving while a commit is under way are therefore committed together by the
//! next holder of the writer (group commit), each in its own savepoint, and every caller is
//! answered only after the commit that holds its insert.

use crate::index::{Index, IndexError, InsertOutcome};
use crate::model::*;
use crate::query_sql::{
    find_sql, fold, from_clause, locate_sql, Dialect, Params, SqlValue, RETRIEVAL_ORDER,
    STORED_INSTANCE_COLUMNS,
};
use async_trait::async_trait;
use pacsgrid_dicom::attrs::Level;
use pacsgrid_dicom::Query;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};

mod grid;

/// How many read connections answer queries at once.
const READERS: usize = 4;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Schema steps; `PRAGMA user_version` is the number of steps applied. Append, never edit.
static MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];

const SCHEMA_V1: &str = r"
CREATE TABLE patients (
    id            INTEGER PRIMARY KEY,
    patient_id    TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    name          TEXT NOT NULL,
    name_lc       TEXT NOT NULL, -- lowercased in Rust: PN matching is case-insensitive
    birth_date    TEXT NOT NULL,
    sex           TEXT NOT NULL,
    num_studies   INTEGER NOT NULL DEFAULT 0,
    num_series    INTEGER NOT NULL DEFAULT 0,
    num_instances INTEGER NOT NULL DEFAULT 0,
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_issuer ON patients(issuer);
CREATE INDEX patients_name_lc ON patients(name_lc);
CREATE INDEX patients_birth_date ON patients(birth_date);
CREATE INDEX patients_sex ON patients(sex);

CREATE TABLE studies (
    id                     INTEGER PRIMARY KEY,
    patient                INTEGER NOT NULL REFERENCES patients(id),
    study_uid              TEXT NOT NULL UNIQUE,
    date                   TEXT NOT NULL,
    time                   TEXT NOT NULL,
    accession              TEXT NOT NULL,
    study_id               TEXT NOT NULL,
    description            TEXT NOT NULL,
    referring_physician    TEXT NOT NULL,
    referring_physician_lc TEXT NOT NULL,
    num_series             INTEGER NOT NULL DEFAULT 0,
    num_instances          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX studies_patient ON studies(patient);
CREATE INDEX studies_date ON studies(date);
CREATE INDEX studies_time ON studies(time);
CREATE INDEX studies_accession ON studies(accession);
CREATE INDEX studies_study_id ON studies(study_id);
CREATE INDEX studies_description ON studies(description);
CREATE INDEX studies_referring_physician_lc ON studies(referring_physician_lc);

CREATE TABLE series (
    id            INTEGER PRIMARY KEY,
    study         INTEGER NOT NULL REFERENCES studies(id),
    series_uid    TEXT NOT NULL UNIQUE,
    modality      TEXT NOT NULL,
    number        INTEGER,
    description   TEXT NOT NULL,
    body_part     TEXT NOT NULL,
    date          TEXT NOT NULL,
    time          TEXT NOT NULL,
    num_instances INTEGER NOT NULL DEFAULT 0
);
-- (study, modality) serves the foreign key, ModalitiesInStudy and its matching.
CREATE INDEX series_study_modality ON series(study, modality);
CREATE INDEX series_modality ON series(modality);
CREATE INDEX series_number ON series(number);
CREATE INDEX series_description ON series(description);
CREATE INDEX series_body_part ON series(body_part);
CREATE INDEX series_date ON series(date);
CREATE INDEX series_time ON series(time);

CREATE TABLE instances (
    id               INTEGER PRIMARY KEY,
    series           INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid    TEXT NOT NULL,
    number           INTEGER,
    transfer_syntax  TEXT NOT NULL,
    hash             TEXT NOT NULL,
    size             INTEGER NOT NULL,
    dataset_offset   INTEGER NOT NULL,
    origin_site      TEXT NOT NULL,
    source           TEXT NOT NULL,
    received_at_ms   INTEGER NOT NULL
);
CREATE INDEX instances_series_number ON instances(series, number);
CREATE INDEX instances_sop_class_uid ON instances(sop_class_uid);
CREATE INDEX instances_number ON instances(number);
CREATE INDEX instances_hash ON instances(hash);

-- SOPClassesInStudy without scanning every instance of the study.
CREATE TABLE study_sop_classes (
    study         INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    sop_class_uid TEXT NOT NULL,
    PRIMARY KEY (study, sop_class_uid)
) WITHOUT ROWID;

CREATE TABLE instance_holders (
    instance INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    site     TEXT NOT NULL,
    PRIMARY KEY (instance, site)
) WITHOUT ROWID;
CREATE INDEX instance_holders_site ON instance_holders(site);

CREATE TABLE quarantine (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    kept_hash        TEXT NOT NULL,
    quarantined_hash TEXT NOT NULL,
    reason           TEXT NOT NULL,
    source           TEXT NOT NULL,
    at_ms            INTEGER NOT NULL
);
CREATE INDEX quarantine_sop_instance_uid ON quarantine(sop_instance_uid);
CREATE INDEX quarantine_hash ON quarantine(quarantined_hash);

-- AUTOINCREMENT: a sequence number is never reused, even after the newest row is removed.
CREATE TABLE changes (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL CHECK (kind IN ('stored', 'deleted', 'quarantined')),
    sop_instance_uid TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    hash             TEXT NOT NULL,
    at_ms            INTEGER NOT NULL
);

-- One row of running totals, so that stats do not count whole tables.
CREATE TABLE totals (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    patients    INTEGER NOT NULL,
    studies     INTEGER NOT NULL,
    series      INTEGER NOT NULL,
    instances   INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    quarantined INTEGER NOT NULL
);
INSERT INTO totals VALUES (1, 0, 0, 0, 0, 0, 0);
";

/// Crash recovery asks whether a blob's hash was deleted; tombstones are few, so a partial
/// index keeps that lookup cheap without indexing every feed entry.
const SCHEMA_V2: &str = r"
CREATE INDEX changes_deleted_hash ON changes(hash) WHERE kind = 'deleted';
";

/// The grid (V3): feed entries name the site and incarnation they speak for and may say
/// that a site holds or released bytes; holders carry their incarnation; peers' cursors and
/// cross-site conflicts are kept. SQLite cannot change a CHECK constraint, so the feed table
/// is rebuilt, keeping its sequence so that no number is ever reused.
const SCHEMA_V3: &str = r"
CREATE TABLE changes_v3 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL
                     CHECK (kind IN ('stored', 'deleted', 'quarantined', 'held', 'released')),
    sop_instance_uid TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    hash             TEXT NOT NULL,
    at_ms            INTEGER NOT NULL,
    site             TEXT NOT NULL DEFAULT '',
    incarnation      TEXT NOT NULL DEFAULT ''
);
INSERT INTO changes_v3 (seq, kind, sop_instance_uid, study_uid, series_uid, hash, at_ms)
    SELECT seq, kind, sop_instance_uid, study_uid, series_uid, hash, at_ms FROM changes;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'changes_v3', seq FROM sqlite_sequence WHERE name = 'changes'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes_v3');
UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'changes'))
    WHERE name = 'changes_v3';
DROP TABLE changes;
ALTER TABLE changes_v3 RENAME TO changes;
CREATE INDEX changes_deleted_hash ON changes(hash) WHERE kind = 'deleted';
CREATE INDEX changes_deleted_sop ON changes(sop_instance_uid) WHERE kind = 'deleted';

ALTER TABLE instance_holders ADD COLUMN incarnation TEXT NOT NULL DEFAULT '';

CREATE TABLE node_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE grid_peers (
    site        TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    cursor      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE grid_conflicts (
    sop_instance_uid TEXT NOT NULL,
    hash             TEXT NOT NULL,
    local_hash       TEXT NOT NULL,
    site             TEXT NOT NULL,
    at_ms            INTEGER NOT NULL,
    PRIMARY KEY (sop_instance_uid, hash)
) WITHOUT ROWID;
";

/// Audit marks (V4): a store acknowledged before its session's audit record was written
/// leaves a row here, committed with the instance, until that record is on disk.
const SCHEMA_V4: &str = r"
CREATE TABLE audit_marks (
    id               INTEGER PRIMARY KEY,
    session          TEXT NOT NULL,
    who              TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    patient_id       TEXT NOT NULL,
    issuer           TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    at_ms            INTEGER NOT NULL
);
CREATE INDEX audit_marks_session ON audit_marks(session);
";

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> Self {
        IndexError::Database(e.to_string())
    }
}

/// An [`Index`] kept in a SQLite database file.
#[derive(Clone)]
pub struct SqliteIndex {
    inner: Arc<Inner>,
}

/// Locks a queue; a panic elsewhere while it was held leaves a usable list of jobs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Inserts waiting for the next group commit.
    pending: Mutex<Vec<InsertJob>>,
    /// Holder changes waiting for the next group commit.
    pending_holders: Mutex<Vec<grid::HolderJob>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Arc<Semaphore>,
    /// See [`crate::GridIndex::incarnation`].
    incarnation: String,
}

impl std::fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIndex")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn configure(conn: &Connection, reader: bool) -> Result<(), IndexError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    if reader {
        // The WAL mode is persistent in the file; readers only promise not to write.
        conn.pragma_update(None, "query_only", true)?;
    } else {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(IndexError::Database(format!(
                "could not switch the index to WAL mode (got {mode:?})"
            )));
        }
    }
    // FULL: a commit is on disk when it returns, so an acknowledged store survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// How durable a commit is when `insert` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync of the WAL): survives power loss on its own.
    Full,
    /// Survives a process crash; after power loss the last commits may be missing. Only
    /// for an owner that can rebuild them, as the archive does from its fsynced blobs
    /// (every blob is a complete Part 10 object, re-indexed on the next start).
    Rebuildable,
}

/// Brings the schema up to the newest version, one transaction per step.
fn migrate(conn: &mut Connection) -> Result<(), IndexError> {
    let known = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write transaction: another process may have migrated meanwhile.
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > known {
            return Err(IndexError::Database(format!(
                "index schema version {version} is newer than this program knows ({known}); \
                 refusing to use it"
            )));
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "index schema migrated");
    }
}

fn open_reader(path: &Path) -> Result<Connection, IndexError> {
    let conn = Connection::open(path)?;
    configure(&conn, true)?;
    Ok(conn)
}

fn task_err(e: tokio::task::JoinError) -> IndexError {
    IndexError::Task(e.to_string())
}

impl Inner {
    /// Locks the writer connection.
    fn writer_conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, IndexError> {
        // A panic while holding the lock poisons it; the transaction guard has rolled back
        // by then, and we make sure no transaction is left open before going on.
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        Ok(conn)
    }
}

impl SqliteIndex {
    /// Opens (creating and migrating if needed) the index database at `path`.
    pub fn open(path: &Path) -> Result<SqliteIndex, IndexError> {
        SqliteIndex::open_with(path, Durability::Full)
    }

    /// Opens an index with a chosen commit durability (see [`Durability`]).
    pub fn open_with(path: &Path, durability: Durability) -> Result<SqliteIndex, IndexError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| IndexError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let mut writer = Connection::open(path)?;
        configure(&writer, false)?;
        if durability == Durability::Rebuildable {
            writer.pragma_update(None, "synchronous", "NORMAL")?;
        }
        migrate(&mut writer)?;
        let incarnation = grid::ensure_incarnation(&writer, path)?;
        let readers = (0..READERS)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteIndex {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                pending: Mutex::new(Vec::new()),
                pending_holders: Mutex::new(Vec::new()),
                readers: Mutex::new(readers),
                reader_slots: Arc::new(Semaphore::new(READERS)),
                incarnation,
            }),
        })
    }

    /// The schema version of the database (the number of migration steps applied).
    pub async fn schema_version(&self) -> Result<i64, IndexError> {
        self.read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
    }

    /// Queues an insert for the next group commit and waits until it is committed.
    async fn queue_insert(
        &self,
        record: &InstanceRecord,
        site: &str,
        mark: Option<AuditMark>,
    ) -> Result<InsertOutcome, IndexError> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.inner.pending).push(InsertJob {
            record: record.clone(),
            site: site.to_string(),
            incarnation: self.inner.incarnation.clone(),
            mark,
            reply,
        });
        self.commit_queued(|i| &i.pending, run_batch).await?;
        outcome.await.map_err(|_| {
            IndexError::Task("the insert was dropped before it was committed".into())
        })?
    }

    /// Commits what waits in `queue` (the caller has just added its job): whoever holds the
    /// writer next commits every queued job, ours included, with `run`; while it waits for
    /// the disk, new jobs queue up for the following commit. So when our turn at the writer
    /// ends, our job has been committed and answered, by us or by another caller.
    pub(crate) async fn commit_queued<J: Send + 'static>(
        &self,
        queue: fn(&Inner) -> &Mutex<Vec<J>>,
        run: fn(&mut Connection, Vec<J>),
    ) -> Result<(), IndexError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<(), IndexError> {
            let mut conn = inner.writer_conn()?;
            loop {
                let jobs: Vec<J> = {
                    let mut pending = lock(queue(&inner));
                    let n = pending.len().min(MAX_BATCH);
                    pending.drain(..n).collect()
                };
                if jobs.is_empty() {
                    return Ok(());
                }
                run(&mut conn, jobs);
            }
        })
        .await
        .map_err(task_err)?
    }

    /// Runs write work on the single writer connection.
    async fn write<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        F: FnOnce(&mut Connection) -> Result<T, IndexError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer_conn()?;
            f(&mut conn)
        })
        .await
        .map_err(task_err)?
    }

    /// Runs read work on one of the reader connections.
    async fn read<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        F: FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .inner
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| IndexError::Task(e.to_string()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            // A connection is lost only if work panicked while using it: open a new one.
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let out = f(&conn);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            out
        })
        .await
        .map_err(task_err)?
    }
}

// ---------------------------------------------------------------------------------------
// insert

/// One queued insert and where its outcome goes once the batch holding it is committed.
struct InsertJob {
    record: InstanceRecord,
    /// The holder recorded with it: this node's site and incarnation, or empty for a record
    /// learned from a peer.
    site: String,
    incarnation: String,
    /// Kept with the instance when its store still needs an audit record.
    mark: Option<AuditMark>,
    reply: oneshot::Sender<Result<InsertOutcome, IndexError>>,
}

/// Most inserts committed together; bounds how long the first of a batch waits.
const MAX_BATCH: usize = 256;

/// Commits every queued insert in one transaction (see [`group_commit`]).
fn run_batch(conn: &mut Connection, jobs: Vec<InsertJob>) {
    group_commit(
        conn,
        jobs,
        |tx, job| {
            let out = insert_in(tx, &job.record, &job.site, &job.incarnation)?;
            if let Some(mark) = &job.mark {
                keep_mark(tx, &job.record, mark)?;
            }
            Ok(out)
        },
        |job| job.reply,
    );
}

/// Group commit: runs every job in one transaction, each in its own savepoint so it is
/// all-or-nothing on its own, and reports every outcome (Duplicate and Conflict included)
/// only after the commit that makes it durable.
pub(crate) fn group_commit<J, O>(
    conn: &mut Connection,
    jobs: Vec<J>,
    apply: impl Fn(&Connection, &J) -> Result<O, IndexError>,
    reply_of: impl Fn(J) -> oneshot::Sender<Result<O, IndexError>>,
) {
    let fail = |jobs: Vec<J>, what: String| {
        for job in jobs {
            let _ = reply_of(job).send(Err(IndexError::Database(what.clone())));
        }
    };
    // IMMEDIATE takes the write lock first, so the existence checks and the writes see the
    // same state even if another process shares the file.
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail(jobs, format!("begin: {e}")),
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let one = (|| {
            let sp = tx.savepoint()?;
            let out = apply(&sp, job)?;
            sp.commit()?;
            Ok(out)
        })();
        outcomes.push(one);
    }
    match tx.commit() {
        Ok(()) => {
            for (job, out) in jobs.into_iter().zip(outcomes) {
                // The caller may have gone away (cancelled); the write stands regardless.
                let _ = reply_of(job).send(out);
            }
        }
        Err(e) => fail(jobs, format!("commit: {e}")),
    }
}

/// Keeps the audit mark of a received instance inside the caller's transaction.
fn keep_mark(tx: &Connection, r: &InstanceRecord, mark: &AuditMark) -> Result<(), IndexError> {
    tx.prepare_cached(
        "INSERT INTO audit_marks
             (session, who, sop_instance_uid, study_uid, patient_id, issuer, sop_class_uid, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        mark.session,
        mark.who,
        r.instance.sop_instance_uid,
        r.study.study_uid,
        r.patient.patient_id,
        r.patient.issuer,
        r.instance.sop_class_uid,
        r.received_at_ms,
    ])?;
    Ok(())
}

/// Records one instance inside the caller's transaction.
fn insert_in(
    tx: &Connection,
    r: &InstanceRecord,
    site: &str,
    incarnation: &str,
) -> Result<InsertOutcome, IndexError> {
    if site.is_empty() && grid::deleted_after(tx, r)? {
        return Ok(InsertOutcome::Duplicate);
    }
    let existing: Option<String> = tx
        .prepare_cached("SELECT hash FROM instances WHERE sop_instance_uid = ?1")?
        .query_row([&r.instance.sop_instance_uid], |row| row.get(0))
        .optional()?;
    if let Some(existing_hash) = existing {
        return Ok(if existing_hash == r.hash {
            InsertOutcome::Duplicate
        } else {
            InsertOutcome::Conflict { existing_hash }
        });
    }

    let (mut new_patients, mut new_studies, mut new_series) = (0i64, 0i64, 0i64);
    let series_row: Option<(i64, i64)> = tx
        .prepare_cached("SELECT id, study FROM series WHERE series_uid = ?1")?
        .query_row([&r.series.series_uid], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (series_id, study_id, patient_row, study_uid) = match series_row {
        Some((series_id, study_id)) => {
            fill_series(tx, series_id, &r.series)?;
            let (study_uid, patient_row): (String, i64) = tx
                .prepare_cached("SELECT study_uid, patient FROM studies WHERE id = ?1")?
                .query_row([study_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            if study_uid == r.study.study_uid {
                fill_study(tx, study_id, &r.study)?;
            } else {
                // The series is filed where it first arrived; the instance follows it.
                tracing::warn!(
                    sop_instance_uid = %r.instance.sop_instance_uid,
                    series_uid = %r.series.series_uid,
                    recorded_study = %study_uid,
                    claimed_study = %r.study.study_uid,
                    "instance claims another study than its series; filed under the series' study"
                );
            }
            fill_patient_if_same(tx, patient_row, &r.patient)?;
            (series_id, study_id, patient_row, study_uid)
        }
        None => {
            let study_row: Option<(i64, i64)> = tx
                .prepare_cached("SELECT id, patient FROM studies WHERE study_uid = ?1")?
                .query_row([&r.study.study_uid], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let (study_id, patient_row) = match study_row {
                Some((study_id, patient_row)) => {
                    fill_study(tx, study_id, &r.study)?;
                    fill_patient_if_same(tx, patient_row, &r.patient)?;
                    (study_id, patient_row)
                }
                None => {
                    let p = &r.patient;
                    let found: Option<i64> = tx
                        .prepare_cached(
                            "SELECT id FROM patients WHERE patient_id = ?1 AND issuer = ?2",
                        )?
                        .query_row([&p.patient_id, &p.issuer], |row| row.get(0))
                        .optional()?;
                    let patient_row = match found {
                        Some(id) => {
                            fill_patient(tx, id, p)?;
                            id
                        }
                        None => {
                            tx.prepare_cached(
                                "INSERT INTO patients (patient_id, issuer, name, name_lc, birth_date, sex)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            )?
                            .execute(params![
                                p.patient_id,
                                p.issuer,
                                p.name,
                                fold(&p.name),
                                p.birth_date,
                                p.sex
                            ])?;
                            new_patients = 1;
                            tx.last_insert_rowid()
                        }
                    };
                    let s = &r.study;
                    tx.prepare_cached(
                        "INSERT INTO studies (patient, study_uid, date, time, accession, study_id,
                             description, referring_physician, referring_physician_lc)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        patient_row,
                        s.study_uid,
                        s.date,
                        s.time,
                        s.accession,
                        s.study_id,
                        s.description,
                        s.referring_physician,
                        fold(&s.referring_physician)
                    ])?;
                    new_studies = 1;
                    let study_id = tx.last_insert_rowid();
                    tx.prepare_cached(
                        "UPDATE patients SET num_studies = num_studies + 1 WHERE id = ?1",
                    )?
                    .execute([patient_row])?;
                    (study_id, patient_row)
                }
            };
            let s = &r.series;
            tx.prepare_cached(
                "INSERT INTO series (study, series_uid, modality, number, description, body_part, date, time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                study_id,
                s.series_uid,
                s.modality,
                s.number,
                s.description,
                s.body_part,
                s.date,
                s.time
            ])?;
            new_series = 1;
            let series_id = tx.last_insert_rowid();
            tx.prepare_cached("UPDATE studies SET num_series = num_series + 1 WHERE id = ?1")?
                .execute([study_id])?;
            tx.prepare_cached("UPDATE patients SET num_series = num_series + 1 WHERE id = ?1")?
                .execute([patient_row])?;
            (series_id, study_id, patient_row, r.study.study_uid.clone())
        }
    };

    let i = &r.instance;
    tx.prepare_cached(
        "INSERT INTO instances (series, sop_instance_uid, sop_class_uid, number, transfer_syntax,
             hash, size, dataset_offset, origin_site, source, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        series_id,
        i.sop_instance_uid,
        i.sop_class_uid,
        i.number,
        i.transfer_syntax,
        r.hash,
        r.size,
        r.dataset_offset,
        r.origin_site,
        r.source,
        r.received_at_ms
    ])?;
    let instance_row = tx.last_insert_rowid();
    tx.prepare_cached("UPDATE series SET num_instances = num_instances + 1 WHERE id = ?1")?
        .execute([series_id])?;
    tx.prepare_cached("UPDATE studies SET num_instances = num_instances + 1 WHERE id = ?1")?
        .execute([study_id])?;
    tx.prepare_cached("UPDATE patients SET num_instances = num_instances + 1 WHERE id = ?1")?
        .execute([patient_row])?;
    if !i.sop_class_uid.is_empty() {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO study_sop_classes (study, sop_class_uid) VALUES (?1, ?2)",
        )?
        .execute(params![study_id, i.sop_class_uid])?;
    }
    if !site.is_empty() {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO instance_holders (instance, site, incarnation) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![instance_row, site, incarnation])?;
    }
    tx.prepare_cached(
        "UPDATE totals SET patients = patients + ?1, studies = studies + ?2, series = series + ?3,
             instances = instances + 1, bytes = bytes + ?4 WHERE id = 1",
    )?
    .execute(params![new_patients, new_studies, new_series, r.size])?;
    let seq = append_entry(
        tx,
        ChangeKind::Stored,
        [
            &i.sop_instance_uid,
            &study_uid,
            &r.series.series_uid,
            &r.hash,
        ],
        r.received_at_ms,
        site,
        incarnation,
    )?;
    Ok(InsertOutcome::Inserted { seq })
}

fn append_change(
    tx: &Connection,
    kind: ChangeKind,
    sop_instance_uid: &str,
    study_uid: &str,
    series_uid: &str,
    hash: &str,
    at_ms: i64,
) -> Result<i64, IndexError> {
    append_entry(
        tx,
        kind,
        [sop_instance_uid, study_uid, series_uid, hash],
        at_ms,
        "",
        "",
    )
}

/// Appends a feed entry; `site` and `incarnation` say whose copy or deletion it speaks of
/// (see `FeedEntry`), empty when that is this node or nobody.
fn append_entry(
    tx: &Connection,
    kind: ChangeKind,
    [sop_instance_uid, study_uid, series_uid, hash]: [&str; 4],
    at_ms: i64,
    site: &str,
    incarnation: &str,
) -> Result<i64, IndexError> {
    tx.prepare_cached(
        "INSERT INTO changes (kind, sop_instance_uid, study_uid, series_uid, hash, at_ms, site, incarnation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        kind.as_str(),
        sop_instance_uid,
        study_uid,
        series_uid,
        hash,
        at_ms,
        site,
        incarnation
    ])?;
    Ok(tx.last_insert_rowid())
}

// The fill statements write only when a blank can be filled, so the common case (a later
// instance of a known series) touches no page of the parent rows but the counters.

fn fill_patient(tx: &Connection, id: i64, p: &PatientAttrs) -> Result<(), IndexError> {
    tx.prepare_cached(
        "UPDATE patients SET
             name = CASE WHEN name = '' THEN ?2 ELSE name END,
             name_lc = CASE WHEN name = '' THEN ?3 ELSE name_lc END,
             birth_date = CASE WHEN birth_date = '' THEN ?4 ELSE birth_date END,
             sex = CASE WHEN sex = '' THEN ?5 ELSE sex END
         WHERE id = ?1 AND ((name = '' AND ?2 <> '') OR (birth_date = '' AND ?4 <> '')
             OR (sex = '' AND ?5 <> ''))",
    )?
    .execute(params![id, p.name, fold(&p.name), p.birth_date, p.sex])?;
    Ok(())
}

fn fill_patient_if_same(tx: &Connection, id: i64, p: &PatientAttrs) -> Result<(), IndexError> {
    let (patient_id, issuer): (String, String) = tx
        .prepare_cached("SELECT patient_id, issuer FROM patients WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if patient_id == p.patient_id && issuer == p.issuer {
        fill_patient(tx, id, p)
    } else {
        // Never re-file a study under another patient silently: keep it where it is.
        tracing::warn!(
            recorded_patient = %patient_id,
            recorded_issuer = %issuer,
            claimed_patient = %p.patient_id,
            claimed_issuer = %p.issuer,
            "instance names another patient than its study; filed under the study's patient"
        );
        Ok(())
    }
}

fn fill_study(tx: &Connection, id: i64, s: &StudyAttrs) -> Result<(), IndexError> {
    tx.prepare_cached(
        "UPDATE studies SET
             date = CASE WHEN date = '' THEN ?2 ELSE date END,
             time = CASE WHEN time = '' THEN ?3 ELSE time END,
             accession = CASE WHEN accession = '' THEN ?4 ELSE accession END,
             study_id = CASE WHEN study_id = '' THEN ?5 ELSE study_id END,
             description = CASE WHEN description = '' THEN ?6 ELSE description END,
             referring_physician_lc = CASE WHEN referring_physician = '' THEN ?8
                 ELSE referring_physician_lc END,
             referring_physician = CASE WHEN referring_physician = '' THEN ?7
                 ELSE referring_physician END
         WHERE id = ?1 AND ((date = '' AND ?2 <> '') OR (time = '' AND ?3 <> '')
             OR (accession = '' AND ?4 <> '') OR (study_id = '' AND ?5 <> '')
             OR (description = '' AND ?6 <> '') OR (referring_physician = '' AND ?7 <> ''))",
    )?
    .execute(params![
        id,
        s.date,
        s.time,
        s.accession,
        s.study_id,
        s.description,
        s.referring_physician,
        fold(&s.referring_physician)
    ])?;
    Ok(())
}

fn fill_series(tx: &Connection, id: i64, s: &SeriesAttrs) -> Result<(), IndexError> {
    tx.prepare_cached(
        "UPDATE series SET
             modality = CASE WHEN modality = '' THEN ?2 ELSE modality END,
             number = COALESCE(number, ?3),
             description = CASE WHEN description = '' THEN ?4 ELSE description END,
             body_part = CASE WHEN body_part = '' THEN ?5 ELSE body_part END,
             date = CASE WHEN date = '' THEN ?6 ELSE date END,
             time = CASE WHEN time = '' THEN ?7 ELSE time END
         WHERE id = ?1 AND ((modality = '' AND ?2 <> '') OR (number IS NULL AND ?3 IS NOT NULL)
             OR (description = '' AND ?4 <> '') OR (body_part = '' AND ?5 <> '')
             OR (date = '' AND ?6 <> '') OR (time = '' AND ?7 <> ''))",
    )?
    .execute(params![
        id,
        s.modality,
        s.number,
        s.description,
        s.body_part,
        s.date,
        s.time
    ])?;
    Ok(())
}

fn value_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null | ValueRef::Blob(_) | ValueRef::Text(b"") => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn sql_limit(limit: u32) -> i64 {
    if limit == 0 {
        -1
    } else {
        i64::from(limit)
    }
}

fn find_sync(
    conn: &Connection,
    query: &Query,
    limit: u32,
    offset: u32,
) -> Result<Vec<AttrValues>, IndexError> {
    let (sql, params, returned) = find_sql(query, limit, offset, Dialect::Sqlite)?;
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values(params)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = AttrValues::new();
        for (i, attr) in returned.iter().enumerate() {
            if let Some(v) = value_text(row.get_ref(i)?) {
                values.insert(attr.tag, v);
            }
        }
        out.push(values);
    }
    Ok(out)
}

fn stored_instance(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredInstance> {
    Ok(StoredInstance {
        study_uid: row.get(0)?,
        series_uid: row.get(1)?,
        sop_instance_uid: row.get(2)?,
        sop_class_uid: row.get(3)?,
        transfer_syntax: row.get(4)?,
        hash: row.get(5)?,
        size: row.get(6)?,
        dataset_offset: row.get(7)?,
        patient_id: row.get(8)?,
        issuer: row.get(9)?,
    })
}

fn locate_sync(conn: &Connection, query: &Query) -> Result<Vec<StoredInstance>, IndexError> {
    let (sql, params) = locate_sql(query, Dialect::Sqlite)?;
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values(params)), stored_instance)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The bound values of a translated query, as rusqlite takes them.
fn values(params: Params) -> impl Iterator<Item = Value> {
    params.values.into_iter().map(|v| match v {
        SqlValue::Int(n) => Value::Integer(n),
        SqlValue::Text(t) => Value::Text(t),
    })
}

fn quarantine_tx(conn: &mut Connection, e: &QuarantineEntry) -> Result<i64, IndexError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(
        "INSERT INTO quarantine (sop_instance_uid, kept_hash, quarantined_hash, reason, source, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        e.sop_instance_uid,
        e.kept_hash,
        e.quarantined_hash,
        e.reason,
        e.source,
        e.at_ms
    ])?;
    let id = tx.last_insert_rowid();
    let (study_uid, series_uid): (String, String) = tx
        .prepare_cached(
            "SELECT st.study_uid, se.series_uid FROM instances i
             JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
             WHERE i.sop_instance_uid = ?1",
        )?
        .query_row([&e.sop_instance_uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default();
    append_change(
        &tx,
        ChangeKind::Quarantined,
        &e.sop_instance_uid,
        &study_uid,
        &series_uid,
        &e.quarantined_hash,
        e.at_ms,
    )?;
    tx.prepare_cached("UPDATE totals SET quarantined = quarantined + 1 WHERE id = 1")?
        .execute([])?;
    tx.commit()?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// delete

/// One instance row about to be removed, with the rows above it.
struct Doomed {
    id: i64,
    sop_instance_uid: String,
    study_uid: String,
    series_uid: String,
    hash: String,
    size: i64,
    series: i64,
    study: i64,
    patient: i64,
}

fn delete_tx(
    conn: &mut Connection,
    target: &DeleteTarget,
    at_ms: i64,
) -> Result<Deletion, IndexError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = delete_in(&tx, target, at_ms, "")?;
    tx.commit()?;
    Ok(out)
}

/// Removes `target` inside the caller's transaction; the tombstones name `site` as the
/// deleting site (empty: this node).
fn delete_in(
    tx: &Connection,
    target: &DeleteTarget,
    at_ms: i64,
    site: &str,
) -> Result<Deletion, IndexError> {
    let (cond, args): (&str, Vec<&str>) = match target {
        DeleteTarget::Patient { patient_id, issuer } => (
            "p.patient_id = ?1 AND p.issuer = ?2",
            vec![patient_id.as_str(), issuer.as_str()],
        ),
        DeleteTarget::Study(uid) => ("st.study_uid = ?1", vec![uid.as_str()]),
        DeleteTarget::Series(uid) => ("se.series_uid = ?1", vec![uid.as_str()]),
        DeleteTarget::Instance(uid) => ("i.sop_instance_uid = ?1", vec![uid.as_str()]),
    };
    let sql = format!(
        "SELECT i.id, i.sop_instance_uid, st.study_uid, se.series_uid, i.hash, i.size,
                se.id, st.id, p.id
         FROM {} WHERE {cond} ORDER BY {RETRIEVAL_ORDER}",
        from_clause(Level::Image)
    );
    let doomed: Vec<Doomed> = tx
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| {
            Ok(Doomed {
                id: r.get(0)?,
                sop_instance_uid: r.get(1)?,
                study_uid: r.get(2)?,
                series_uid: r.get(3)?,
                hash: r.get(4)?,
                size: r.get(5)?,
                series: r.get(6)?,
                study: r.get(7)?,
                patient: r.get(8)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Deletion::default();
    if doomed.is_empty() {
        return Ok(out);
    }

    let mut per_series: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_study: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_patient: BTreeMap<i64, i64> = BTreeMap::new();
    let mut hashes: BTreeSet<String> = BTreeSet::new();
    let mut bytes = 0i64;
    for d in &doomed {
        // instance_holders go with the row (ON DELETE CASCADE).
        tx.prepare_cached("DELETE FROM instances WHERE id = ?1")?
            .execute([d.id])?;
        let seq = append_entry(
            tx,
            ChangeKind::Deleted,
            [&d.sop_instance_uid, &d.study_uid, &d.series_uid, &d.hash],
            at_ms,
            site,
            "",
        )?;
        out.tombstones.push(Change {
            seq,
            kind: ChangeKind::Deleted,
            sop_instance_uid: d.sop_instance_uid.clone(),
            study_uid: d.study_uid.clone(),
            series_uid: d.series_uid.clone(),
            hash: d.hash.clone(),
            at_ms,
        });
        *per_series.entry(d.series).or_default() += 1;
        *per_study.entry(d.study).or_default() += 1;
        *per_patient.entry(d.patient).or_default() += 1;
        hashes.insert(d.hash.clone());
        bytes += d.size;
    }

    let mut removed_series_of_study: BTreeMap<i64, i64> = BTreeMap::new();
    let mut removed_series_of_patient: BTreeMap<i64, i64> = BTreeMap::new();
    for (&series, &n) in &per_series {
        let left: i64 = tx
            .prepare_cached(
                "UPDATE series SET num_instances = num_instances - ?2 WHERE id = ?1
                 RETURNING num_instances",
            )?
            .query_row(params![series, n], |r| r.get(0))?;
        if left <= 0 {
            tx.prepare_cached("DELETE FROM series WHERE id = ?1")?
                .execute([series])?;
            out.series += 1;
            if let Some(d) = doomed.iter().find(|d| d.series == series) {
                *removed_series_of_study.entry(d.study).or_default() += 1;
                *removed_series_of_patient.entry(d.patient).or_default() += 1;
            }
        }
    }

    let mut removed_studies_of_patient: BTreeMap<i64, i64> = BTreeMap::new();
    for (&study, &n) in &per_study {
        let gone_series = removed_series_of_study.get(&study).copied().unwrap_or(0);
        let left: i64 = tx
            .prepare_cached(
                "UPDATE studies SET num_instances = num_instances - ?2,
                     num_series = num_series - ?3 WHERE id = ?1
                 RETURNING num_instances",
            )?
            .query_row(params![study, n, gone_series], |r| r.get(0))?;
        if left <= 0 {
            // study_sop_classes go with the row (ON DELETE CASCADE).
            tx.prepare_cached("DELETE FROM studies WHERE id = ?1")?
                .execute([study])?;
            out.studies += 1;
            if let Some(d) = doomed.iter().find(|d| d.study == study) {
                *removed_studies_of_patient.entry(d.patient).or_default() += 1;
            }
        } else {
            // SOPClassesInStudy must forget a class whose last instance went.
            tx.prepare_cached(
                "DELETE FROM study_sop_classes WHERE study = ?1 AND sop_class_uid NOT IN
                     (SELECT i.sop_class_uid FROM instances i JOIN series se ON se.id = i.series
                      WHERE se.study = ?1)",
            )?
            .execute([study])?;
        }
    }

    for (&patient, &n) in &per_patient {
        let gone_series = removed_series_of_patient
            .get(&patient)
            .copied()
            .unwrap_or(0);
        let gone_studies = removed_studies_of_patient
            .get(&patient)
            .copied()
            .unwrap_or(0);
        let left: i64 = tx
            .prepare_cached(
                "UPDATE patients SET num_instances = num_instances - ?2,
                     num_series = num_series - ?3, num_studies = num_studies - ?4 WHERE id = ?1
                 RETURNING num_instances",
            )?
            .query_row(params![patient, n, gone_series, gone_studies], |r| r.get(0))?;
        if left <= 0 {
            tx.prepare_cached("DELETE FROM patients WHERE id = ?1")?
                .execute([patient])?;
            out.patients += 1;
        }
    }

    out.instances = doomed.len() as u64;
    out.bytes = u64::try_from(bytes).unwrap_or(0);
    tx.prepare_cached(
        "UPDATE totals SET patients = patients - ?1, studies = studies - ?2,
             series = series - ?3, instances = instances - ?4, bytes = bytes - ?5 WHERE id = 1",
    )?
    .execute(params![
        out.patients as i64,
        out.studies as i64,
        out.series as i64,
        out.instances as i64,
        bytes
    ])?;

    for hash in hashes {
        if !referenced(tx, &hash)? {
            out.unreferenced_hashes.push(hash);
        }
    }
    Ok(out)
}

/// Whether an instance or a quarantine entry still references these bytes.
fn referenced(conn: &Connection, hash: &str) -> Result<bool, IndexError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM instances WHERE hash = ?1)
                 OR EXISTS (SELECT 1 FROM quarantine WHERE quarantined_hash = ?1)",
        )?
        .query_row([hash], |r| r.get(0))?)
}

#[async_trait]
impl Index for SqliteIndex {
    async fn insert(
        &self,
        record: &InstanceRecord,
        site: &str,
    ) -> Result<InsertOutcome, IndexError> {
        self.queue_insert(record, site, None).await
    }

    async fn insert_marked(
        &self,
        record: &InstanceRecord,
        site: &str,
        mark: &AuditMark,
    ) -> Result<InsertOutcome, IndexError> {
        self.queue_insert(record, site, Some(mark.clone())).await
    }

    async fn clear_audit_marks(&self, session: &str) -> Result<u64, IndexError> {
        let session = session.to_string();
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM audit_marks WHERE session = ?1")?
                    .execute([&session])? as u64,
            )
        })
        .await
    }

    async fn pending_audits(&self, limit: u32) -> Result<Vec<PendingAudit>, IndexError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, session, who, sop_instance_uid, study_uid, patient_id, issuer,
                        sop_class_uid, at_ms
                 FROM audit_marks ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([sql_limit(limit)], |r| {
                Ok(PendingAudit {
                    id: r.get(0)?,
                    mark: AuditMark {
                        session: r.get(1)?,
                        who: r.get(2)?,
                    },
                    sop_instance_uid: r.get(3)?,
                    study_uid: r.get(4)?,
                    patient_id: r.get(5)?,
                    issuer: r.get(6)?,
                    sop_class_uid: r.get(7)?,
                    at_ms: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn clear_audit_marks_through(&self, id: i64) -> Result<u64, IndexError> {
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM audit_marks WHERE id <= ?1")?
                .execute([id])? as u64)
        })
        .await
    }

    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<i64, IndexError> {
        let entry = entry.clone();
        self.write(move |c| quarantine_tx(c, &entry)).await
    }

    async fn quarantined(&self, limit: u32) -> Result<Vec<QuarantineEntry>, IndexError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, sop_instance_uid, kept_hash, quarantined_hash, reason, source, at_ms
                 FROM quarantine ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([sql_limit(limit)], |r| {
                Ok(QuarantineEntry {
                    id: r.get(0)?,
                    sop_instance_uid: r.get(1)?,
                    kept_hash: r.get(2)?,
                    quarantined_hash: r.get(3)?,
                    reason: r.get(4)?,
                    source: r.get(5)?,
                    at_ms: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn find(
        &self,
        query: &Query,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AttrValues>, IndexError> {
        let query = query.clone();
        self.read(move |c| find_sync(c, &query, limit, offset))
            .await
    }

    async fn locate(&self, query: &Query) -> Result<Vec<StoredInstance>, IndexError> {
        let query = query.clone();
        self.read(move |c| locate_sync(c, &query)).await
    }

    async fn instance(&self, sop_instance_uid: &str) -> Result<Option<StoredInstance>, IndexError> {
        let uid = sop_instance_uid.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {STORED_INSTANCE_COLUMNS} FROM {} WHERE i.sop_instance_uid = ?1",
                from_clause(Level::Image)
            );
            Ok(c.prepare_cached(&sql)?
                .query_row([&uid], stored_instance)
                .optional()?)
        })
        .await
    }

    async fn changes(&self, since: i64, limit: u32) -> Result<Vec<Change>, IndexError> {
        self.read(move |c| {
            Ok(grid::entries(c, since, limit)?
                .into_iter()
                .map(|e| Change {
                    seq: e.seq,
                    kind: e.kind,
                    sop_instance_uid: e.sop_instance_uid,
                    study_uid: e.study_uid,
                    series_uid: e.series_uid,
                    hash: e.hash,
                    at_ms: e.at_ms,
                })
                .collect())
        })
        .await
    }

    async fn all_hashes(&self) -> Result<Vec<String>, IndexError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT hash FROM instances UNION SELECT quarantined_hash FROM quarantine ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT patients, studies, series, instances, bytes, quarantined FROM totals WHERE id = 1",
            )?
            .query_row([], |r| {
                Ok(IndexStats {
                    patients: r.get(0)?,
                    studies: r.get(1)?,
                    series: r.get(2)?,
                    instances: r.get(3)?,
                    bytes: r.get(4)?,
                    quarantined: r.get(5)?,
                })
            })?)
        })
        .await
    }

    async fn delete(&self, target: &DeleteTarget, at_ms: i64) -> Result<Deletion, IndexError> {
        let target = target.clone();
        self.write(move |c| delete_tx(c, &target, at_ms)).await
    }

    async fn tombstoned(&self, hash: &str) -> Result<bool, IndexError> {
        let hash = hash.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted' AND hash = ?1)",
            )?
            .query_row([&hash], |r| r.get(0))?)
        })
        .await
    }

    async fn provenance(&self, sop_instance_uid: &str) -> Result<Option<Provenance>, IndexError> {
        let uid = sop_instance_uid.to_string();
        self.read(move |c| {
            let row: Option<(i64, Provenance)> = c
                .prepare_cached(
                    "SELECT id, origin_site, source, received_at_ms FROM instances
                     WHERE sop_instance_uid = ?1",
                )?
                .query_row([&uid], |r| {
                    Ok((
                        r.get(0)?,
                        Provenance {
                            origin_site: r.get(1)?,
                            source: r.get(2)?,
                            received_at_ms: r.get(3)?,
                            holders: Vec::new(),
                        },
                    ))
                })
                .optional()?;
            let Some((id, mut prov)) = row else {
                return Ok(None);
            };
            prov.holders = c
                .prepare_cached(
                    "SELECT site FROM instance_holders WHERE instance = ?1 ORDER BY site",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(Some(prov))
        })
        .await
    }

    async fn feed_head(&self) -> Result<i64, IndexError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")?
                    .query_row([], |r| r.get(0))?,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A V2 database (before the grid) keeps its feed and its sequence when migrated.
    #[tokio::test]
    async fn migration_to_v3_keeps_the_feed_and_its_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(SCHEMA_V2).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            for seq in [1, 2, 7] {
                conn.execute(
                    "INSERT INTO changes (seq, kind, sop_instance_uid, study_uid, series_uid, hash, at_ms)
                     VALUES (?1, 'stored', 'x', 's', 'se', 'h', 1)",
                    [seq],
                )
                .unwrap();
            }
            // the newest entry was numbered 9 once: 8 and 9 must never be reused
            conn.execute(
                "UPDATE sqlite_sequence SET seq = 9 WHERE name = 'changes'",
                [],
            )
            .unwrap();
        }
        let index = SqliteIndex::open(&path).unwrap();
        assert_eq!(
            index.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let seqs: Vec<i64> = index
            .changes(0, 0)
            .await
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 7]);
        let rec = crate::conformance::record(1, 1, 1, 1);
        let InsertOutcome::Inserted { seq } = index.insert(&rec, "A").await.unwrap() else {
            panic!("not inserted");
        };
        assert_eq!(seq, 10);
    }

    /// Selective keys must be answered from an index, not by scanning a table.
    #[test]
    fn selective_keys_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        drop(SqliteIndex::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let tag = |k: &str| pacsgrid_dicom::attrs::by_keyword(k).unwrap().tag;
        let cases: &[(Level, &str, &str, &str)] = &[
            (
                Level::Study,
                "StudyDate",
                "20200101-20201231",
                "studies_date",
            ),
            (Level::Study, "StudyDate", "-20201231", "studies_date"),
            (Level::Study, "AccessionNumber", "A123", "studies_accession"),
            (Level::Study, "PatientName", "DOE^*", "patients_name_lc"),
            (
                Level::Study,
                "PatientID",
                "12345",
                "sqlite_autoindex_patients_1",
            ),
            (Level::Study, "ModalitiesInStudy", "MG", "series_modality"),
            (
                Level::Study,
                "StudyInstanceUID",
                "1.2.3\\1.2.4",
                "sqlite_autoindex_studies_1",
            ),
            (Level::Series, "Modality", "MR", "series_modality"),
            (
                Level::Image,
                "SOPInstanceUID",
                "1.2.3",
                "sqlite_autoindex_instances_1",
            ),
        ];
        for (level, keyword, value, index) in cases {
            let q = Query::parse(
                pacsgrid_dicom::QueryModel::StudyRoot,
                *level,
                [(tag(keyword), *value)],
            )
            .unwrap();
            let (sql, params, _) = find_sql(&q, 0, 0, Dialect::Sqlite).unwrap();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(values(params)), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().any(|l| l.contains(index)),
                "{keyword}={value} does not use {index}: {plan:#?}"
            );
        }
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db").join("index.sqlite");
        let index = SqliteIndex::open(&path).unwrap();
        assert_eq!(
            index.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        let rec = crate::conformance::record(1, 1, 1, 1);
        assert!(matches!(
            index.insert(&rec, "A").await.unwrap(),
            InsertOutcome::Inserted { .. }
        ));
        drop(index);
        let index = SqliteIndex::open(&path).unwrap();
        assert_eq!(
            index.schema_version().await.unwrap(),
            MIGRATIONS.len() as i64
        );
        assert_eq!(index.stats().await.unwrap().instances, 1);
        assert_eq!(
            index.insert(&rec, "A").await.unwrap(),
            InsertOutcome::Duplicate
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        drop(SqliteIndex::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteIndex::open(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn settings_make_commits_durable() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("i.sqlite")).unwrap();
        let (mode, sync, fk): (String, i64, i64) = index
            .write(|c| {
                Ok((
                    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                    c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                    c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
        assert_eq!(fk, 1);
    }

    /// Run with `cargo test -p pacsgrid-store --release -- --ignored --nocapture timing`:
    /// 10 000 inserts awaited one after the other (one commit each, as from one sending
    /// association), then 10 000 from 16 concurrent tasks (group commits).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn timing_ten_thousand_inserts() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("i.sqlite")).unwrap();
        let started = std::time::Instant::now();
        for n in 0..10_000u32 {
            let rec = crate::conformance::record(n / 1000, n / 100 % 10, n / 10 % 10, n % 10);
            assert!(matches!(
                index.insert(&rec, "A").await.unwrap(),
                InsertOutcome::Inserted { .. }
            ));
        }
        let took = started.elapsed();
        eprintln!(
            "10000 sequential inserts: {took:?} ({:.0}/s, {:.2} ms each)",
            10_000.0 / took.as_secs_f64(),
            took.as_secs_f64() / 10.0
        );
        assert_eq!(index.stats().await.unwrap().instances, 10_000);

        let index = Arc::new(SqliteIndex::open(&dir.path().join("j.sqlite")).unwrap());
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..16u32)
            .map(|t| {
                let index = index.clone();
                tokio::spawn(async move {
                    for k in 0..625u32 {
                        let n = t * 625 + k;
                        let rec =
                            crate::conformance::record(n / 1000, n / 100 % 10, n / 10 % 10, n % 10);
                        assert!(matches!(
                            index.insert(&rec, "A").await.unwrap(),
                            InsertOutcome::Inserted { .. }
                        ));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = started.elapsed();
        eprintln!(
            "10000 inserts from 16 tasks: {took:?} ({:.0}/s)",
            10_000.0 / took.as_secs_f64()
        );
        assert_eq!(index.stats().await.unwrap().instances, 10_000);
    }
}
