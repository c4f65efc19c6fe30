//! The scale-out index: a PostgreSQL database, for archives whose index outgrows one file
//! or must live on a database server that is backed up and replicated on its own.
//!
//! The tables are those of the SQLite index, in a schema of their own per site (several
//! sites may share one database). Writes are serialised: the change feed must be numbered
//! in commit order, because peers read it by sequence number and never look back. In one
//! process a mutex does it; every write transaction also takes the schema's advisory lock,
//! so that several node processes of one site (DESIGN.md, "Scale") can share the schema.
//! Text columns use the "C" collation so that range matching and ordering are by code
//! point, as in SQLite and in the reference semantics, whatever the database's locale.

use crate::index::{Index, IndexError, InsertOutcome};
use crate::model::*;
use crate::query_sql::{
    find_sql, fold, from_clause, locate_sql, Dialect, Params, SqlValue, RETRIEVAL_ORDER,
    STORED_INSTANCE_COLUMNS,
};
use async_trait::async_trait;
use pacsgrid_dicom::attrs::Level;
use pacsgrid_dicom::Query;
use serde::Deserialize;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

mod grid;

/// `[storage.postgres]`: where the index database is and how to log in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user@host:5432/database` (libpq form; `sslmode=require`
    /// and the other URL parameters apply). A password in the URL works but is better kept
    /// in `password_file`.
    pub url: String,
    /// Schema holding this site's tables, created if missing. Each site needs its own; the
    /// node processes of one site may share it.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// File whose content (trimmed) is the password, kept out of the config file; absent:
    /// the URL's password or `PGPASSWORD`.
    pub password_file: Option<PathBuf>,
    /// Most connections the node opens: one writes, the others answer queries.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_schema() -> String {
    "pacsgrid".into()
}

fn default_max_connections() -> u32 {
    8
}

impl PostgresConfig {
    /// A config for `url` with every other key at its default.
    pub fn new(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.to_string(),
            schema: default_schema(),
            password_file: None,
            max_connections: default_max_connections(),
        }
    }

    /// Checks what can be checked without the network, so a bad value stops the start (or
    /// `pacsgrid check`) with the key's name.
    pub fn validate(&self) -> Result<(), IndexError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(IndexError::Config(format!(
                "storage.postgres.url must start with postgres:// or postgresql:// (got {:?})",
                redact(&self.url)
            )));
        }
        let s = &self.schema;
        let schema_ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            && !s.as_bytes()[0].is_ascii_digit()
            && !s.starts_with("pg_");
        if !schema_ok {
            return Err(IndexError::Config(format!(
                "storage.postgres.schema must be 1-63 lowercase letters, digits or '_', not \
                 starting with a digit or pg_ (got {s:?})"
            )));
        }
        if self.max_connections < 2 {
            return Err(IndexError::Config(
                "storage.postgres.max_connections must be at least 2 (one writer, one reader)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Schema steps; `schema_version.version` is the number of steps applied. Append, never edit.
static MIGRATIONS: &[&str] = &[SCHEMA_V1];

/// The tables of the SQLite index at its version 4, in PostgreSQL's words: identity keys,
/// BIGINT everywhere (sizes and times exceed 32 bits), text in the "C" collation.
const SCHEMA_V1: &str = r#"
CREATE TABLE patients (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    patient_id    TEXT COLLATE "C" NOT NULL,
    issuer        TEXT COLLATE "C" NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    name_lc       TEXT COLLATE "C" NOT NULL,
    birth_date    TEXT COLLATE "C" NOT NULL,
    sex           TEXT COLLATE "C" NOT NULL,
    num_studies   BIGINT NOT NULL DEFAULT 0,
    num_series    BIGINT NOT NULL DEFAULT 0,
    num_instances BIGINT NOT NULL DEFAULT 0,
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_issuer ON patients(issuer);
CREATE INDEX patients_name_lc ON patients(name_lc);
CREATE INDEX patients_birth_date ON patients(birth_date);
CREATE INDEX patients_sex ON patients(sex);

CREATE TABLE studies (
    id                     BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    patient                BIGINT NOT NULL REFERENCES patients(id),
    study_uid              TEXT COLLATE "C" NOT NULL UNIQUE,
    date                   TEXT COLLATE "C" NOT NULL,
    time                   TEXT COLLATE "C" NOT NULL,
    accession              TEXT COLLATE "C" NOT NULL,
    study_id               TEXT COLLATE "C" NOT NULL,
    description            TEXT COLLATE "C" NOT NULL,
    referring_physician    TEXT COLLATE "C" NOT NULL,
    referring_physician_lc TEXT COLLATE "C" NOT NULL,
    num_series             BIGINT NOT NULL DEFAULT 0,
    num_instances          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX studies_patient ON studies(patient);
CREATE INDEX studies_date ON studies(date);
CREATE INDEX studies_time ON studies(time);
CREATE INDEX studies_accession ON studies(accession);
CREATE INDEX studies_study_id ON studies(study_id);
CREATE INDEX studies_description ON studies(description);
CREATE INDEX studies_referring_physician_lc ON studies(referring_physician_lc);

CREATE TABLE series (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    study         BIGINT NOT NULL REFERENCES studies(id),
    series_uid    TEXT COLLATE "C" NOT NULL UNIQUE,
    modality      TEXT COLLATE "C" NOT NULL,
    number        BIGINT,
    description   TEXT COLLATE "C" NOT NULL,
    body_part     TEXT COLLATE "C" NOT NULL,
    date          TEXT COLLATE "C" NOT NULL,
    time          TEXT COLLATE "C" NOT NULL,
    num_instances BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX series_study_modality ON series(study, modality);
CREATE INDEX series_modality ON series(modality);
CREATE INDEX series_number ON series(number);
CREATE INDEX series_description ON series(description);
CREATE INDEX series_body_part ON series(body_part);
CREATE INDEX series_date ON series(date);
CREATE INDEX series_time ON series(time);

CREATE TABLE instances (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    series           BIGINT NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT COLLATE "C" NOT NULL UNIQUE,
    sop_class_uid    TEXT COLLATE "C" NOT NULL,
    number           BIGINT,
    transfer_syntax  TEXT COLLATE "C" NOT NULL,
    hash             TEXT COLLATE "C" NOT NULL,
    size             BIGINT NOT NULL,
    dataset_offset   BIGINT NOT NULL,
    origin_site      TEXT COLLATE "C" NOT NULL,
    source           TEXT COLLATE "C" NOT NULL,
    received_at_ms   BIGINT NOT NULL
);
CREATE INDEX instances_series_number ON instances(series, number);
CREATE INDEX instances_sop_class_uid ON instances(sop_class_uid);
CREATE INDEX instances_number ON instances(number);
CREATE INDEX instances_hash ON instances(hash);

CREATE TABLE study_sop_classes (
    study         BIGINT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    sop_class_uid TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (study, sop_class_uid)
);

CREATE TABLE instance_holders (
    instance    BIGINT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    site        TEXT COLLATE "C" NOT NULL,
    incarnation TEXT COLLATE "C" NOT NULL DEFAULT '',
    PRIMARY KEY (instance, site)
);
CREATE INDEX instance_holders_site ON instance_holders(site);

CREATE TABLE quarantine (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    sop_instance_uid TEXT COLLATE "C" NOT NULL,
    kept_hash        TEXT COLLATE "C" NOT NULL,
    quarantined_hash TEXT COLLATE "C" NOT NULL,
    reason           TEXT COLLATE "C" NOT NULL,
    source           TEXT COLLATE "C" NOT NULL,
    at_ms            BIGINT NOT NULL
);
CREATE INDEX quarantine_sop_instance_uid ON quarantine(sop_instance_uid);
CREATE INDEX quarantine_hash ON quarantine(quarantined_hash);

-- A sequence never goes back, so a number is never reused, even after the newest row goes.
CREATE TABLE changes (
    seq              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind             TEXT COLLATE "C" NOT NULL
                     CHECK (kind IN ('stored', 'deleted', 'quarantined', 'held', 'released')),
    sop_instance_uid TEXT COLLATE "C" NOT NULL,
    study_uid        TEXT COLLATE "C" NOT NULL,
    series_uid       TEXT COLLATE "C" NOT NULL,
    hash             TEXT COLLATE "C" NOT NULL,
    at_ms            BIGINT NOT NULL,
    site             TEXT COLLATE "C" NOT NULL DEFAULT '',
    incarnation      TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX changes_deleted_hash ON changes(hash) WHERE kind = 'deleted';
CREATE INDEX changes_deleted_sop ON changes(sop_instance_uid) WHERE kind = 'deleted';

CREATE TABLE totals (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    patients    BIGINT NOT NULL,
    studies     BIGINT NOT NULL,
    series      BIGINT NOT NULL,
    instances   BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    quarantined BIGINT NOT NULL
);
INSERT INTO totals VALUES (1, 0, 0, 0, 0, 0, 0);

CREATE TABLE node_meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);

CREATE TABLE grid_peers (
    site        TEXT COLLATE "C" PRIMARY KEY,
    incarnation TEXT COLLATE "C" NOT NULL,
    cursor      BIGINT NOT NULL
);

CREATE TABLE grid_conflicts (
    sop_instance_uid TEXT COLLATE "C" NOT NULL,
    hash             TEXT COLLATE "C" NOT NULL,
    local_hash       TEXT COLLATE "C" NOT NULL,
    site             TEXT COLLATE "C" NOT NULL,
    at_ms            BIGINT NOT NULL,
    PRIMARY KEY (sop_instance_uid, hash)
);

CREATE TABLE audit_marks (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    session          TEXT COLLATE "C" NOT NULL,
    who              TEXT COLLATE "C" NOT NULL,
    sop_instance_uid TEXT COLLATE "C" NOT NULL,
    study_uid        TEXT COLLATE "C" NOT NULL,
    patient_id       TEXT COLLATE "C" NOT NULL,
    issuer           TEXT COLLATE "C" NOT NULL,
    sop_class_uid    TEXT COLLATE "C" NOT NULL,
    at_ms            BIGINT NOT NULL
);
CREATE INDEX audit_marks_session ON audit_marks(session);
"#;

/// An [`Index`] kept in a PostgreSQL schema.
#[derive(Clone)]
pub struct PostgresIndex {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Connections answering reads.
    pool: PgPool,
    /// The one connection that writes (writes are serialised anyway).
    write_pool: PgPool,
    schema: String,
    /// Key of the advisory lock every write transaction takes (see the module docs).
    lock_key: i64,
    /// Held by whoever writes: the feed's numbers must be committed in order.
    writer: tokio::sync::Mutex<()>,
    /// Inserts waiting for the next group commit.
    pending: Mutex<Vec<InsertJob>>,
    /// Holder changes waiting for the next group commit.
    pending_holders: Mutex<Vec<grid::HolderJob>>,
    /// See [`crate::GridIndex::incarnation`].
    incarnation: String,
}

impl std::fmt::Debug for PostgresIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIndex")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl From<sqlx::Error> for IndexError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The server is gone or not answering: the store can be tried again later.
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                IndexError::Unreachable(e.to_string())
            }
            other => IndexError::Database(other.to_string()),
        }
    }
}

/// Locks a queue; a panic elsewhere while it was held leaves a usable list of jobs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stable 64-bit key for the advisory lock of one schema (FNV-1a: the same in every
/// process, unlike std's randomly seeded hasher).
fn advisory_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "pacsgrid-index:".bytes().chain(schema.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A count or size as PostgreSQL stores it (BIGINT); larger values cannot occur in practice
/// but are refused rather than wrapped.
fn to_db(n: u64, what: &str) -> Result<i64, IndexError> {
    i64::try_from(n).map_err(|_| IndexError::Database(format!("{what} {n} exceeds BIGINT")))
}

/// A count or size read back; a negative one would be corruption, shown as 0.
fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `LIMIT` value for a page size where 0 means no cap (`LIMIT NULL` is no limit).
pub(super) fn sql_limit(limit: u32) -> Option<i64> {
    (limit > 0).then(|| i64::from(limit))
}

impl PostgresIndex {
    /// Connects to the database of `cfg`, creating and migrating this node's schema if
    /// needed. Fails (naming the server, never the password) if the database cannot be
    /// reached or logged into, so a node that could not record what it acknowledges does
    /// not start.
    pub async fn open(cfg: &PostgresConfig) -> Result<PostgresIndex, IndexError> {
        cfg.validate()?;
        let where_ = format!("{} (schema {})", redact(&cfg.url), cfg.schema);
        let unreachable = |e: sqlx::Error| IndexError::Unreachable(format!("{where_}: {e}"));
        let mut opts = PgConnectOptions::from_str(&cfg.url).map_err(|e| {
            IndexError::Config(format!("storage.postgres.url {}: {e}", redact(&cfg.url)))
        })?;
        if let Some(file) = &cfg.password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                IndexError::Config(format!(
                    "storage.postgres.password_file {}: {e}",
                    file.display()
                ))
            })?;
            opts = opts.password(pw.trim());
        }
        // Every statement names tables without a schema; the search path picks this node's.
        opts = opts
            // An acknowledged store must outlive a crash of the database server, whatever
            // the server's default: each commit waits for its WAL flush.
            .options([
                ("search_path", cfg.schema.as_str()),
                ("synchronous_commit", "on"),
            ])
            .application_name("pacsgrid");
        // One connection first: the pool retries until its timeout, while a start-up with a
        // wrong address or password should fail at once with the server's own reason.
        PgConnection::connect_with(&opts)
            .await
            .map_err(unreachable)?
            .close()
            .await
            .map_err(unreachable)?;
        // The writer has a connection of its own, so that a burst of queries cannot hold
        // every connection while a store waits to commit.
        let pools = |n: u32| {
            PgPoolOptions::new()
                .max_connections(n)
                .min_connections(1)
                // a store waits this long for a connection while the server is away, then
                // is refused (out of resources) and may be sent again
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
        };
        let write_pool = pools(1).await.map_err(unreachable)?;
        let pool = pools(cfg.max_connections - 1).await.map_err(unreachable)?;
        let lock_key = advisory_key(&cfg.schema);
        migrate(&pool, &cfg.schema, lock_key).await?;
        let incarnation = grid::ensure_incarnation(&pool, &where_).await?;
        tracing::info!(database = %where_, "index in PostgreSQL");
        Ok(PostgresIndex {
            inner: Arc::new(Inner {
                pool,
                write_pool,
                schema: cfg.schema.clone(),
                lock_key,
                writer: tokio::sync::Mutex::new(()),
                pending: Mutex::new(Vec::new()),
                pending_holders: Mutex::new(Vec::new()),
                incarnation,
            }),
        })
    }

    /// The schema version of the database (the number of migration steps applied).
    pub async fn schema_version(&self) -> Result<i64, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM schema_version WHERE id = 1")
                .fetch_one(&self.inner.pool)
                .await?,
        )
    }

    /// Takes the writer lock and begins a write transaction: every write outside the group
    /// commit goes through here, so none can forget the lock.
    async fn write_tx(
        &self,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, ()>,
            Transaction<'static, Postgres>,
        ),
        IndexError,
    > {
        let writer = self.inner.writer.lock().await;
        Ok((writer, begin_write(&self.inner).await?))
    }

    /// Begins a read-only transaction that sees one snapshot for all its statements.
    async fn begin_read(&self) -> Result<Transaction<'static, Postgres>, IndexError> {
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Queues an insert for the next group commit and waits until it is committed.
    /// `site` and `incarnation` name the holder recorded with it (empty for a record learned
    /// from a peer).
    async fn queue_insert(
        &self,
        record: &InstanceRecord,
        site: &str,
        incarnation: &str,
        mark: Option<AuditMark>,
    ) -> Result<InsertOutcome, IndexError> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.inner.pending).push(InsertJob {
            record: record.clone(),
            site: site.to_string(),
            incarnation: incarnation.to_string(),
            mark,
            reply,
        });
        self.commit_queued(|i| &i.pending).await?;
        outcome.await.map_err(|_| {
            IndexError::Task("the insert was dropped before it was committed".into())
        })?
    }

    /// Commits what waits in `queue` (the caller has just added its job): whoever holds the
    /// writer next commits every queued job, ours included; while it waits for the disk, new
    /// jobs queue up for the following commit. The work runs in a task of its own, so a
    /// caller that goes away (a client hung up) does not cut off the others' jobs.
    pub(crate) async fn commit_queued<J: QueuedWrite>(
        &self,
        queue: fn(&Inner) -> &Mutex<Vec<J>>,
    ) -> Result<(), IndexError> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _writer = inner.writer.lock().await;
            loop {
                let jobs: Vec<J> = {
                    let mut pending = lock(queue(&inner));
                    let n = pending.len().min(MAX_BATCH);
                    pending.drain(..n).collect()
                };
                if jobs.is_empty() {
                    return;
                }
                group_commit(&inner, jobs).await;
            }
        })
        .await
        .map_err(|e| IndexError::Task(e.to_string()))
    }
}

/// Begins a transaction holding the schema's advisory write lock.
async fn begin_write(inner: &Inner) -> Result<Transaction<'static, Postgres>, IndexError> {
    let mut tx = inner.write_pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(inner.lock_key)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Brings the schema up to the newest version, one transaction per step, under the
/// schema's advisory lock so that two nodes starting at once do not both migrate.
async fn migrate(pool: &PgPool, schema: &str, lock_key: i64) -> Result<(), IndexError> {
    let known = MIGRATIONS.len() as i64;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key)
        .execute(&mut *tx)
        .await?;
    // `schema` was validated: lowercase letters, digits and '_' only.
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
         INSERT INTO {schema}.schema_version VALUES (1, 0) ON CONFLICT (id) DO NOTHING;"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    loop {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key)
            .execute(&mut *tx)
            .await?;
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM schema_version WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
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
        sqlx::raw_sql(step).execute(&mut *tx).await?;
        sqlx::query("UPDATE schema_version SET version = $1 WHERE id = 1")
            .bind(version + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = version + 1, schema, "index schema migrated");
    }
}

// ---------------------------------------------------------------------------------------
// group commit

/// Most jobs committed together; bounds how long the first of a batch waits.
const MAX_BATCH: usize = 256;

/// A write that waits in a queue for the next group commit.
#[async_trait]
pub(crate) trait QueuedWrite: Send + Sync + 'static {
    /// What the write answers.
    type Out: Send + 'static;
    /// Does the write inside the batch's transaction (in a savepoint of its own).
    async fn apply(&self, tx: &mut PgConnection) -> Result<Self::Out, IndexError>;
    /// Where the outcome goes once the batch is committed.
    fn reply(self) -> oneshot::Sender<Result<Self::Out, IndexError>>;
}

/// Runs every job in one transaction, each in its own savepoint so it is all-or-nothing
/// on its own, and reports every outcome only after the commit that makes it durable.
async fn group_commit<J: QueuedWrite>(inner: &Inner, jobs: Vec<J>) {
    // Each job gets the error, of the same kind: an unreachable server stays "unreachable",
    // so that the store is refused as one to try again.
    let fail = |jobs: Vec<J>, step: &str, e: IndexError| {
        for job in jobs {
            let err = match &e {
                IndexError::Unreachable(m) => IndexError::Unreachable(format!("{step}: {m}")),
                other => IndexError::Database(format!("{step}: {other}")),
            };
            let _ = job.reply().send(Err(err));
        }
    };
    let mut tx = match begin_write(inner).await {
        Ok(tx) => tx,
        Err(e) => return fail(jobs, "begin", e),
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    if jobs.len() == 1 {
        // Alone in its batch (a sender storing one instance at a time): no savepoint, two
        // round trips fewer. A failure drops the transaction, which rolls it all back.
        let out = jobs[0].apply(&mut tx).await;
        if let Err(e) = out {
            drop(tx);
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.reply().send(Err(e));
            }
            return;
        }
        outcomes.push(out);
    } else {
        for job in &jobs {
            let one = async {
                let mut sp = tx.begin().await?;
                let out = job.apply(&mut sp).await?;
                sp.commit().await?;
                Ok(out)
            }
            .await;
            outcomes.push(one);
        }
    }
    match tx.commit().await {
        Ok(()) => {
            for (job, out) in jobs.into_iter().zip(outcomes) {
                // The caller may have gone away (cancelled); the write stands regardless.
                let _ = job.reply().send(out);
            }
        }
        Err(e) => fail(jobs, "commit", e.into()),
    }
}

// ---------------------------------------------------------------------------------------
// insert

/// One queued insert and where its outcome goes once the batch holding it is committed.
pub(crate) struct InsertJob {
    record: InstanceRecord,
    /// The holder recorded with it: this node's site and incarnation, or empty for a record
    /// learned from a peer.
    site: String,
    incarnation: String,
    /// Kept with the instance when its store still needs an audit record.
    mark: Option<AuditMark>,
    reply: oneshot::Sender<Result<InsertOutcome, IndexError>>,
}

#[async_trait]
impl QueuedWrite for InsertJob {
    type Out = InsertOutcome;

    async fn apply(&self, tx: &mut PgConnection) -> Result<InsertOutcome, IndexError> {
        let out = insert_in(tx, &self.record, &self.site, &self.incarnation).await?;
        if let Some(mark) = &self.mark {
            keep_mark(tx, &self.record, mark).await?;
        }
        Ok(out)
    }

    fn reply(self) -> oneshot::Sender<Result<InsertOutcome, IndexError>> {
        self.reply
    }
}

/// Keeps the audit mark of a received instance inside the caller's transaction.
async fn keep_mark(
    tx: &mut PgConnection,
    r: &InstanceRecord,
    mark: &AuditMark,
) -> Result<(), IndexError> {
    sqlx::query(
        "INSERT INTO audit_marks
             (session, who, sop_instance_uid, study_uid, patient_id, issuer, sop_class_uid, at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&mark.session)
    .bind(&mark.who)
    .bind(&r.instance.sop_instance_uid)
    .bind(&r.study.study_uid)
    .bind(&r.patient.patient_id)
    .bind(&r.patient.issuer)
    .bind(&r.instance.sop_class_uid)
    .bind(r.received_at_ms)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records one instance inside the caller's transaction (the contract of `Index::insert`).
pub(super) async fn insert_in(
    tx: &mut PgConnection,
    r: &InstanceRecord,
    site: &str,
    incarnation: &str,
) -> Result<InsertOutcome, IndexError> {
    if site.is_empty() && grid::deleted_after(tx, r).await? {
        return Ok(InsertOutcome::Duplicate);
    }
    // The instance (if recorded) and its series (if known) in one round trip.
    let (existing, series_id, series_study): (Option<String>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT (SELECT hash FROM instances WHERE sop_instance_uid = $1), se.id, se.study
             FROM (SELECT 1) one LEFT JOIN series se ON se.series_uid = $2",
        )
        .bind(&r.instance.sop_instance_uid)
        .bind(&r.series.series_uid)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(existing_hash) = existing {
        return Ok(if existing_hash == r.hash {
            InsertOutcome::Duplicate
        } else {
            InsertOutcome::Conflict { existing_hash }
        });
    }

    let (mut new_patients, mut new_studies, mut new_series) = (0i64, 0i64, 0i64);
    let series_row = series_id.zip(series_study);
    let (series_id, study_id, patient_row, study_uid) = match series_row {
        Some((series_id, study_id)) => {
            fill_series(tx, series_id, &r.series).await?;
            let (study_uid, patient_row): (String, i64) =
                sqlx::query_as("SELECT study_uid, patient FROM studies WHERE id = $1")
                    .bind(study_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if study_uid == r.study.study_uid {
                fill_study(tx, study_id, &r.study).await?;
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
            fill_patient_if_same(tx, patient_row, &r.patient).await?;
            (series_id, study_id, patient_row, study_uid)
        }
        None => {
            let study_row: Option<(i64, i64)> =
                sqlx::query_as("SELECT id, patient FROM studies WHERE study_uid = $1")
                    .bind(&r.study.study_uid)
                    .fetch_optional(&mut *tx)
                    .await?;
            let (study_id, patient_row) = match study_row {
                Some((study_id, patient_row)) => {
                    fill_study(tx, study_id, &r.study).await?;
                    fill_patient_if_same(tx, patient_row, &r.patient).await?;
                    (study_id, patient_row)
                }
                None => {
                    let p = &r.patient;
                    let found: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM patients WHERE patient_id = $1 AND issuer = $2",
                    )
                    .bind(&p.patient_id)
                    .bind(&p.issuer)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let patient_row = match found {
                        Some(id) => {
                            fill_patient(tx, id, p).await?;
                            id
                        }
                        None => {
                            new_patients = 1;
                            sqlx::query_scalar(
                                "INSERT INTO patients (patient_id, issuer, name, name_lc, birth_date, sex)
                                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                            )
                            .bind(&p.patient_id)
                            .bind(&p.issuer)
                            .bind(&p.name)
                            .bind(fold(&p.name))
                            .bind(&p.birth_date)
                            .bind(&p.sex)
                            .fetch_one(&mut *tx)
                            .await?
                        }
                    };
                    let s = &r.study;
                    let study_id: i64 = sqlx::query_scalar(
                        "INSERT INTO studies (patient, study_uid, date, time, accession, study_id,
                             description, referring_physician, referring_physician_lc)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                    )
                    .bind(patient_row)
                    .bind(&s.study_uid)
                    .bind(&s.date)
                    .bind(&s.time)
                    .bind(&s.accession)
                    .bind(&s.study_id)
                    .bind(&s.description)
                    .bind(&s.referring_physician)
                    .bind(fold(&s.referring_physician))
                    .fetch_one(&mut *tx)
                    .await?;
                    new_studies = 1;
                    sqlx::query("UPDATE patients SET num_studies = num_studies + 1 WHERE id = $1")
                        .bind(patient_row)
                        .execute(&mut *tx)
                        .await?;
                    (study_id, patient_row)
                }
            };
            let s = &r.series;
            let series_id: i64 = sqlx::query_scalar(
                "INSERT INTO series (study, series_uid, modality, number, description, body_part, date, time)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(study_id)
            .bind(&s.series_uid)
            .bind(&s.modality)
            .bind(s.number)
            .bind(&s.description)
            .bind(&s.body_part)
            .bind(&s.date)
            .bind(&s.time)
            .fetch_one(&mut *tx)
            .await?;
            new_series = 1;
            sqlx::query("UPDATE studies SET num_series = num_series + 1 WHERE id = $1")
                .bind(study_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE patients SET num_series = num_series + 1 WHERE id = $1")
                .bind(patient_row)
                .execute(&mut *tx)
                .await?;
            (series_id, study_id, patient_row, r.study.study_uid.clone())
        }
    };

    let i = &r.instance;
    let size = to_db(r.size, "size")?;
    let instance_row: i64 = sqlx::query_scalar(
        "INSERT INTO instances (series, sop_instance_uid, sop_class_uid, number, transfer_syntax,
             hash, size, dataset_offset, origin_site, source, received_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(series_id)
    .bind(&i.sop_instance_uid)
    .bind(&i.sop_class_uid)
    .bind(i.number)
    .bind(&i.transfer_syntax)
    .bind(&r.hash)
    .bind(size)
    .bind(to_db(r.dataset_offset, "dataset offset")?)
    .bind(&r.origin_site)
    .bind(&r.source)
    .bind(r.received_at_ms)
    .fetch_one(&mut *tx)
    .await?;
    // Counters, the study's SOP classes, the holder and the totals in one statement: a
    // round trip each would cost more than the statement itself.
    sqlx::query(
        "WITH a AS (UPDATE series SET num_instances = num_instances + 1 WHERE id = $1),
              b AS (UPDATE studies SET num_instances = num_instances + 1 WHERE id = $2),
              c AS (UPDATE patients SET num_instances = num_instances + 1 WHERE id = $3),
              d AS (INSERT INTO study_sop_classes (study, sop_class_uid)
                    SELECT $2, $4 WHERE $4 <> '' ON CONFLICT DO NOTHING),
              e AS (INSERT INTO instance_holders (instance, site, incarnation)
                    SELECT $5, $6, $7 WHERE $6 <> '' ON CONFLICT DO NOTHING)
         UPDATE totals SET patients = patients + $8, studies = studies + $9,
             series = series + $10, instances = instances + 1, bytes = bytes + $11
         WHERE id = 1",
    )
    .bind(series_id)
    .bind(study_id)
    .bind(patient_row)
    .bind(&i.sop_class_uid)
    .bind(instance_row)
    .bind(site)
    .bind(incarnation)
    .bind(new_patients)
    .bind(new_studies)
    .bind(new_series)
    .bind(size)
    .execute(&mut *tx)
    .await?;
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
    )
    .await?;
    Ok(InsertOutcome::Inserted { seq })
}

/// Appends a feed entry; `site` and `incarnation` say whose copy or deletion it speaks of
/// (see `FeedEntry`), empty when that is this node or nobody.
pub(super) async fn append_entry(
    tx: &mut PgConnection,
    kind: ChangeKind,
    [sop_instance_uid, study_uid, series_uid, hash]: [&str; 4],
    at_ms: i64,
    site: &str,
    incarnation: &str,
) -> Result<i64, IndexError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO changes (kind, sop_instance_uid, study_uid, series_uid, hash, at_ms, site, incarnation)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
    )
    .bind(kind.as_str())
    .bind(sop_instance_uid)
    .bind(study_uid)
    .bind(series_uid)
    .bind(hash)
    .bind(at_ms)
    .bind(site)
    .bind(incarnation)
    .fetch_one(tx)
    .await?)
}

// The fill statements write only when a blank can be filled, so the common case (a later
// instance of a known series) locks no parent row but for the counters.

async fn fill_patient(tx: &mut PgConnection, id: i64, p: &PatientAttrs) -> Result<(), IndexError> {
    sqlx::query(
        "UPDATE patients SET
             name = CASE WHEN name = '' THEN $2 ELSE name END,
             name_lc = CASE WHEN name = '' THEN $3 ELSE name_lc END,
             birth_date = CASE WHEN birth_date = '' THEN $4 ELSE birth_date END,
             sex = CASE WHEN sex = '' THEN $5 ELSE sex END
         WHERE id = $1 AND ((name = '' AND $2 <> '') OR (birth_date = '' AND $4 <> '')
             OR (sex = '' AND $5 <> ''))",
    )
    .bind(id)
    .bind(&p.name)
    .bind(fold(&p.name))
    .bind(&p.birth_date)
    .bind(&p.sex)
    .execute(tx)
    .await?;
    Ok(())
}

async fn fill_patient_if_same(
    tx: &mut PgConnection,
    id: i64,
    p: &PatientAttrs,
) -> Result<(), IndexError> {
    let (patient_id, issuer): (String, String) =
        sqlx::query_as("SELECT patient_id, issuer FROM patients WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if patient_id == p.patient_id && issuer == p.issuer {
        fill_patient(tx, id, p).await
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

async fn fill_study(tx: &mut PgConnection, id: i64, s: &StudyAttrs) -> Result<(), IndexError> {
    sqlx::query(
        "UPDATE studies SET
             date = CASE WHEN date = '' THEN $2 ELSE date END,
             time = CASE WHEN time = '' THEN $3 ELSE time END,
             accession = CASE WHEN accession = '' THEN $4 ELSE accession END,
             study_id = CASE WHEN study_id = '' THEN $5 ELSE study_id END,
             description = CASE WHEN description = '' THEN $6 ELSE description END,
             referring_physician_lc = CASE WHEN referring_physician = '' THEN $8
                 ELSE referring_physician_lc END,
             referring_physician = CASE WHEN referring_physician = '' THEN $7
                 ELSE referring_physician END
         WHERE id = $1 AND ((date = '' AND $2 <> '') OR (time = '' AND $3 <> '')
             OR (accession = '' AND $4 <> '') OR (study_id = '' AND $5 <> '')
             OR (description = '' AND $6 <> '') OR (referring_physician = '' AND $7 <> ''))",
    )
    .bind(id)
    .bind(&s.date)
    .bind(&s.time)
    .bind(&s.accession)
    .bind(&s.study_id)
    .bind(&s.description)
    .bind(&s.referring_physician)
    .bind(fold(&s.referring_physician))
    .execute(tx)
    .await?;
    Ok(())
}

async fn fill_series(tx: &mut PgConnection, id: i64, s: &SeriesAttrs) -> Result<(), IndexError> {
    sqlx::query(
        "UPDATE series SET
             modality = CASE WHEN modality = '' THEN $2 ELSE modality END,
             number = COALESCE(number, $3),
             description = CASE WHEN description = '' THEN $4 ELSE description END,
             body_part = CASE WHEN body_part = '' THEN $5 ELSE body_part END,
             date = CASE WHEN date = '' THEN $6 ELSE date END,
             time = CASE WHEN time = '' THEN $7 ELSE time END
         WHERE id = $1 AND ((modality = '' AND $2 <> '') OR (number IS NULL AND $3 IS NOT NULL)
             OR (description = '' AND $4 <> '') OR (body_part = '' AND $5 <> '')
             OR (date = '' AND $6 <> '') OR (time = '' AND $7 <> ''))",
    )
    .bind(id)
    .bind(&s.modality)
    .bind(s.number)
    .bind(&s.description)
    .bind(&s.body_part)
    .bind(&s.date)
    .bind(&s.time)
    .execute(tx)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// queries

/// A translated query ready to run: every placeholder bound.
fn bound(sql: &str, params: Params) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    let mut q = sqlx::query(sql);
    for v in params.values {
        q = match v {
            SqlValue::Int(n) => q.bind(n),
            SqlValue::Text(t) => q.bind(t),
        };
    }
    q
}

fn stored_instance(row: &PgRow) -> Result<StoredInstance, sqlx::Error> {
    Ok(StoredInstance {
        study_uid: row.try_get(0)?,
        series_uid: row.try_get(1)?,
        sop_instance_uid: row.try_get(2)?,
        sop_class_uid: row.try_get(3)?,
        transfer_syntax: row.try_get(4)?,
        hash: row.try_get(5)?,
        size: from_db(row.try_get(6)?),
        dataset_offset: from_db(row.try_get(7)?),
        patient_id: row.try_get(8)?,
        issuer: row.try_get(9)?,
    })
}

async fn quarantine_in(tx: &mut PgConnection, e: &QuarantineEntry) -> Result<i64, IndexError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO quarantine (sop_instance_uid, kept_hash, quarantined_hash, reason, source, at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(&e.sop_instance_uid)
    .bind(&e.kept_hash)
    .bind(&e.quarantined_hash)
    .bind(&e.reason)
    .bind(&e.source)
    .bind(e.at_ms)
    .fetch_one(&mut *tx)
    .await?;
    let (study_uid, series_uid): (String, String) = sqlx::query_as(
        "SELECT st.study_uid, se.series_uid FROM instances i
         JOIN series se ON se.id = i.series JOIN studies st ON st.id = se.study
         WHERE i.sop_instance_uid = $1",
    )
    .bind(&e.sop_instance_uid)
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or_default();
    append_entry(
        tx,
        ChangeKind::Quarantined,
        [
            &e.sop_instance_uid,
            &study_uid,
            &series_uid,
            &e.quarantined_hash,
        ],
        e.at_ms,
        "",
        "",
    )
    .await?;
    sqlx::query("UPDATE totals SET quarantined = quarantined + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
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

/// Removes `target` inside the caller's transaction; the tombstones name `site` as the
/// deleting site (empty: this node).
pub(super) async fn delete_in(
    tx: &mut PgConnection,
    target: &DeleteTarget,
    at_ms: i64,
    site: &str,
) -> Result<Deletion, IndexError> {
    let (cond, args): (&str, Vec<&str>) = match target {
        DeleteTarget::Patient { patient_id, issuer } => (
            "p.patient_id = $1 AND p.issuer = $2",
            vec![patient_id.as_str(), issuer.as_str()],
        ),
        DeleteTarget::Study(uid) => ("st.study_uid = $1", vec![uid.as_str()]),
        DeleteTarget::Series(uid) => ("se.series_uid = $1", vec![uid.as_str()]),
        DeleteTarget::Instance(uid) => ("i.sop_instance_uid = $1", vec![uid.as_str()]),
    };
    let sql = format!(
        "SELECT i.id, i.sop_instance_uid, st.study_uid, se.series_uid, i.hash, i.size,
                se.id, st.id, p.id
         FROM {} WHERE {cond} ORDER BY {RETRIEVAL_ORDER}",
        from_clause(Level::Image)
    );
    let mut q = sqlx::query(&sql);
    for a in args {
        q = q.bind(a);
    }
    let doomed = q
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Doomed {
                id: r.try_get(0)?,
                sop_instance_uid: r.try_get(1)?,
                study_uid: r.try_get(2)?,
                series_uid: r.try_get(3)?,
                hash: r.try_get(4)?,
                size: r.try_get(5)?,
                series: r.try_get(6)?,
                study: r.try_get(7)?,
                patient: r.try_get(8)?,
            })
        })
        .collect::<Result<Vec<Doomed>, sqlx::Error>>()?;
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
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
        let seq = append_entry(
            tx,
            ChangeKind::Deleted,
            [&d.sop_instance_uid, &d.study_uid, &d.series_uid, &d.hash],
            at_ms,
            site,
            "",
        )
        .await?;
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
        let left: i64 = sqlx::query_scalar(
            "UPDATE series SET num_instances = num_instances - $2 WHERE id = $1
             RETURNING num_instances",
        )
        .bind(series)
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
        if left <= 0 {
            sqlx::query("DELETE FROM series WHERE id = $1")
                .bind(series)
                .execute(&mut *tx)
                .await?;
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
        let left: i64 = sqlx::query_scalar(
            "UPDATE studies SET num_instances = num_instances - $2,
                 num_series = num_series - $3 WHERE id = $1
             RETURNING num_instances",
        )
        .bind(study)
        .bind(n)
        .bind(gone_series)
        .fetch_one(&mut *tx)
        .await?;
        if left <= 0 {
            // study_sop_classes go with the row (ON DELETE CASCADE).
            sqlx::query("DELETE FROM studies WHERE id = $1")
                .bind(study)
                .execute(&mut *tx)
                .await?;
            out.studies += 1;
            if let Some(d) = doomed.iter().find(|d| d.study == study) {
                *removed_studies_of_patient.entry(d.patient).or_default() += 1;
            }
        } else {
            // SOPClassesInStudy must forget a class whose last instance went.
            sqlx::query(
                "DELETE FROM study_sop_classes WHERE study = $1 AND sop_class_uid NOT IN
                     (SELECT i.sop_class_uid FROM instances i JOIN series se ON se.id = i.series
                      WHERE se.study = $1)",
            )
            .bind(study)
            .execute(&mut *tx)
            .await?;
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
        let left: i64 = sqlx::query_scalar(
            "UPDATE patients SET num_instances = num_instances - $2,
                 num_series = num_series - $3, num_studies = num_studies - $4 WHERE id = $1
             RETURNING num_instances",
        )
        .bind(patient)
        .bind(n)
        .bind(gone_series)
        .bind(gone_studies)
        .fetch_one(&mut *tx)
        .await?;
        if left <= 0 {
            sqlx::query("DELETE FROM patients WHERE id = $1")
                .bind(patient)
                .execute(&mut *tx)
                .await?;
            out.patients += 1;
        }
    }

    out.instances = doomed.len() as u64;
    out.bytes = from_db(bytes);
    sqlx::query(
        "UPDATE totals SET patients = patients - $1, studies = studies - $2,
             series = series - $3, instances = instances - $4, bytes = bytes - $5 WHERE id = 1",
    )
    .bind(out.patients as i64)
    .bind(out.studies as i64)
    .bind(out.series as i64)
    .bind(out.instances as i64)
    .bind(bytes)
    .execute(&mut *tx)
    .await?;

    for hash in hashes {
        if !referenced(tx, &hash).await? {
            out.unreferenced_hashes.push(hash);
        }
    }
    Ok(out)
}

/// Whether an instance or a quarantine entry still references these bytes.
pub(super) async fn referenced(conn: &mut PgConnection, hash: &str) -> Result<bool, IndexError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM instances WHERE hash = $1)
             OR EXISTS (SELECT 1 FROM quarantine WHERE quarantined_hash = $1)",
    )
    .bind(hash)
    .fetch_one(conn)
    .await?)
}

#[async_trait]
impl Index for PostgresIndex {
    async fn insert(
        &self,
        record: &InstanceRecord,
        site: &str,
    ) -> Result<InsertOutcome, IndexError> {
        self.queue_insert(record, site, &self.inner.incarnation, None)
            .await
    }

    async fn insert_marked(
        &self,
        record: &InstanceRecord,
        site: &str,
        mark: &AuditMark,
    ) -> Result<InsertOutcome, IndexError> {
        self.queue_insert(record, site, &self.inner.incarnation, Some(mark.clone()))
            .await
    }

    async fn clear_audit_marks(&self, session: &str) -> Result<u64, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM audit_marks WHERE session = $1")
            .bind(session)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn pending_audits(&self, limit: u32) -> Result<Vec<PendingAudit>, IndexError> {
        let rows = sqlx::query(
            "SELECT id, session, who, sop_instance_uid, study_uid, patient_id, issuer,
                    sop_class_uid, at_ms
             FROM audit_marks ORDER BY id LIMIT $1",
        )
        .bind(sql_limit(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingAudit {
                    id: r.try_get(0)?,
                    mark: AuditMark {
                        session: r.try_get(1)?,
                        who: r.try_get(2)?,
                    },
                    sop_instance_uid: r.try_get(3)?,
                    study_uid: r.try_get(4)?,
                    patient_id: r.try_get(5)?,
                    issuer: r.try_get(6)?,
                    sop_class_uid: r.try_get(7)?,
                    at_ms: r.try_get(8)?,
                })
            })
            .collect()
    }

    async fn clear_audit_marks_through(&self, id: i64) -> Result<u64, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM audit_marks WHERE id <= $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<i64, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let id = quarantine_in(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn quarantined(&self, limit: u32) -> Result<Vec<QuarantineEntry>, IndexError> {
        let rows = sqlx::query(
            "SELECT id, sop_instance_uid, kept_hash, quarantined_hash, reason, source, at_ms
             FROM quarantine ORDER BY id DESC LIMIT $1",
        )
        .bind(sql_limit(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QuarantineEntry {
                    id: r.try_get(0)?,
                    sop_instance_uid: r.try_get(1)?,
                    kept_hash: r.try_get(2)?,
                    quarantined_hash: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    source: r.try_get(5)?,
                    at_ms: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn find(
        &self,
        query: &Query,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AttrValues>, IndexError> {
        let (sql, params, returned) = find_sql(query, limit, offset, Dialect::Postgres)?;
        let rows = bound(&sql, params).fetch_all(&self.inner.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = AttrValues::new();
            for (i, attr) in returned.iter().enumerate() {
                // every column was selected as text; NULL and '' both mean absent
                if let Some(v) = row
                    .try_get::<Option<String>, _>(i)?
                    .filter(|v| !v.is_empty())
                {
                    values.insert(attr.tag, v);
                }
            }
            out.push(values);
        }
        Ok(out)
    }

    async fn locate(&self, query: &Query) -> Result<Vec<StoredInstance>, IndexError> {
        let (sql, params) = locate_sql(query, Dialect::Postgres)?;
        let rows = bound(&sql, params).fetch_all(&self.inner.pool).await?;
        Ok(rows.iter().map(stored_instance).collect::<Result<_, _>>()?)
    }

    async fn instance(&self, sop_instance_uid: &str) -> Result<Option<StoredInstance>, IndexError> {
        let sql = format!(
            "SELECT {STORED_INSTANCE_COLUMNS} FROM {} WHERE i.sop_instance_uid = $1",
            from_clause(Level::Image)
        );
        let row = sqlx::query(&sql)
            .bind(sop_instance_uid)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(row.as_ref().map(stored_instance).transpose()?)
    }

    async fn changes(&self, since: i64, limit: u32) -> Result<Vec<Change>, IndexError> {
        let mut conn = self.inner.pool.acquire().await?;
        Ok(grid::entries(&mut conn, since, limit)
            .await?
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
    }

    async fn all_hashes(&self) -> Result<Vec<String>, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT hash FROM instances UNION SELECT quarantined_hash FROM quarantine ORDER BY 1",
        )
        .fetch_all(&self.inner.pool)
        .await?)
    }

    async fn stats(&self) -> Result<IndexStats, IndexError> {
        let r = sqlx::query(
            "SELECT patients, studies, series, instances, bytes, quarantined FROM totals WHERE id = 1",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(IndexStats {
            patients: from_db(r.try_get(0)?),
            studies: from_db(r.try_get(1)?),
            series: from_db(r.try_get(2)?),
            instances: from_db(r.try_get(3)?),
            bytes: from_db(r.try_get(4)?),
            quarantined: from_db(r.try_get(5)?),
        })
    }

    async fn delete(&self, target: &DeleteTarget, at_ms: i64) -> Result<Deletion, IndexError> {
        let (_writer, mut tx) = self.write_tx().await?;
        let out = delete_in(&mut tx, target, at_ms, "").await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn tombstoned(&self, hash: &str) -> Result<bool, IndexError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM changes WHERE kind = 'deleted' AND hash = $1)",
        )
        .bind(hash)
        .fetch_one(&self.inner.pool)
        .await?)
    }

    async fn provenance(&self, sop_instance_uid: &str) -> Result<Option<Provenance>, IndexError> {
        let mut tx = self.begin_read().await?;
        let row: Option<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT id, origin_site, source, received_at_ms FROM instances
             WHERE sop_instance_uid = $1",
        )
        .bind(sop_instance_uid)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, origin_site, source, received_at_ms)) = row else {
            return Ok(None);
        };
        let holders: Vec<String> = sqlx::query_scalar(
            "SELECT site FROM instance_holders WHERE instance = $1 ORDER BY site",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Provenance {
            origin_site,
            source,
            received_at_ms,
            holders,
        }))
    }

    async fn feed_head(&self) -> Result<i64, IndexError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM changes")
                .fetch_one(&self.inner.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GridIndex;

    use crate::conformance::postgres_test_config as test_config;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://pacs:s3cret@db.example:5432/pacs"),
            "postgres://pacs:***@db.example:5432/pacs"
        );
        assert_eq!(
            redact("postgres://pacs@db.example/pacs"),
            "postgres://pacs@db.example/pacs"
        );
        assert_eq!(redact("postgres:///pacs"), "postgres:///pacs");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let ok = PostgresConfig::new("postgres://u@h/db");
        assert!(ok.validate().is_ok());
        for (cfg, key) in [
            (PostgresConfig::new("mysql://u:pw@h/db"), "url"),
            (
                PostgresConfig {
                    schema: "Bad-Name".into(),
                    ..ok.clone()
                },
                "schema",
            ),
            (
                PostgresConfig {
                    schema: "pg_catalog".into(),
                    ..ok.clone()
                },
                "schema",
            ),
            (
                PostgresConfig {
                    max_connections: 1,
                    ..ok.clone()
                },
                "max_connections",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("storage.postgres.{key}")), "{e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_without_its_password() {
        // a port nothing listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = PostgresConfig::new(&format!("postgres://pacs:s3cret@127.0.0.1:{port}/pacs"));
        let e = PostgresIndex::open(&cfg).await.unwrap_err();
        assert!(matches!(e, IndexError::Unreachable(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema_version() {
        let Some(cfg) = test_config("reopen") else {
            return;
        };
        let rec = crate::conformance::record(1, 1, 1, 1);
        let inc = {
            let index = PostgresIndex::open(&cfg).await.unwrap();
            assert_eq!(
                index.schema_version().await.unwrap(),
                MIGRATIONS.len() as i64
            );
            index.insert(&rec, "A").await.unwrap();
            index.incarnation().await.unwrap()
        };
        let index = PostgresIndex::open(&cfg).await.unwrap();
        assert_eq!(index.incarnation().await.unwrap(), inc);
        assert_eq!(index.stats().await.unwrap().instances, 1);
        assert_eq!(
            index.insert(&rec, "A").await.unwrap(),
            InsertOutcome::Duplicate
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(cfg) = test_config("newer") else {
            return;
        };
        let index = PostgresIndex::open(&cfg).await.unwrap();
        sqlx::query("UPDATE schema_version SET version = 99")
            .execute(&index.inner.pool)
            .await
            .unwrap();
        let e = PostgresIndex::open(&cfg).await.unwrap_err().to_string();
        assert!(e.contains("newer than this program knows"), "{e}");
    }

    /// Two nodes may share one database: each schema is its own index, with its own feed,
    /// incarnation and lock.
    #[tokio::test]
    async fn schemas_in_one_database_are_separate_indexes() {
        let (Some(a), Some(mut b)) = (test_config("node_a"), test_config("node_b")) else {
            return;
        };
        b.schema.push('x');
        let (a, b) = (
            PostgresIndex::open(&a).await.unwrap(),
            PostgresIndex::open(&b).await.unwrap(),
        );
        a.insert(&crate::conformance::record(1, 1, 1, 1), "A")
            .await
            .unwrap();
        assert_eq!(a.feed_head().await.unwrap(), 1);
        assert_eq!(b.feed_head().await.unwrap(), 0);
        assert_eq!(b.stats().await.unwrap().instances, 0);
        assert_ne!(
            a.incarnation().await.unwrap(),
            b.incarnation().await.unwrap()
        );
        assert_ne!(a.inner.lock_key, b.inner.lock_key);
    }

    /// Several node processes of one site may share its schema (DESIGN.md, "Scale"): the
    /// advisory lock keeps their writes in one order, so the feed they share is numbered in
    /// commit order, each instance recorded once, whichever process stored it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_sharing_a_schema_write_one_feed() {
        let Some(cfg) = test_config("shared") else {
            return;
        };
        let a = Arc::new(PostgresIndex::open(&cfg).await.unwrap());
        let b = Arc::new(PostgresIndex::open(&cfg).await.unwrap());
        assert_eq!(
            a.incarnation().await.unwrap(),
            b.incarnation().await.unwrap(),
            "one site, one incarnation"
        );
        let mut tasks = Vec::new();
        for n in 0..60u32 {
            // both processes receive every instance: one records it, the other finds it there
            for index in [&a, &b] {
                let index = Arc::clone(index);
                let rec = crate::conformance::record(n / 20, n / 5 % 4, n % 5, n);
                tasks.push(tokio::spawn(async move { index.insert(&rec, "A").await }));
            }
        }
        let mut inserted = Vec::new();
        for t in tasks {
            match t.await.unwrap().unwrap() {
                InsertOutcome::Inserted { seq } => inserted.push(seq),
                InsertOutcome::Duplicate => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(inserted.len(), 60, "each instance recorded once");
        let feed = a.changes(0, 0).await.unwrap();
        let seqs: Vec<i64> = feed.iter().map(|c| c.seq).collect();
        inserted.sort();
        assert_eq!(
            seqs, inserted,
            "the feed holds exactly the inserts, in order"
        );
        assert_eq!(b.stats().await.unwrap().instances, 60);
    }

    /// An acknowledged insert must survive a crash of the database server: commits wait
    /// for the server's WAL flush even where the server's default says otherwise.
    #[tokio::test]
    async fn commits_wait_for_the_servers_disk() {
        let Some(cfg) = test_config("durable") else {
            return;
        };
        // a database whose default would acknowledge before the flush
        let admin = PostgresIndex::open(&cfg).await.unwrap();
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&admin.inner.pool)
            .await
            .unwrap();
        sqlx::query(&format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {db} SET synchronous_commit = off"
        ))
        .execute(&admin.inner.pool)
        .await
        .unwrap();
        let index = PostgresIndex::open(&cfg).await.unwrap();
        sqlx::query(&format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {db} RESET synchronous_commit"
        ))
        .execute(&admin.inner.pool)
        .await
        .unwrap();
        let mode: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&index.inner.pool)
            .await
            .unwrap();
        assert_eq!(mode, "on");
    }
}
