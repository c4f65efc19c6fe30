//! The scale-out index: a PostgreSQL database, for archives whose index outgrows one file
//! or must live on a database server that is backed up and replicated on its own.
//!
//! The tables are those of the SQLite index, in a schema of their own per node (several
//! nodes may share one database). Writes are serialised in-process, as with SQLite: the
//! change feed must be gap-free in commit order, because peers read it by sequence number
//! and never look back; a write transaction also takes a transaction-level advisory lock,
//! so a second process pointed at the same schema waits instead of interleaving numbers.
//! Text columns use the "C" collation so that range matching and ordering are by code
//! point, as in SQLite and in the reference semantics, whatever the database's locale.

use crate::index::IndexError;
use crate::grid_index::*;
use crate::index::{Index, InsertOutcome};
use crate::model::*;
use async_trait::async_trait;
use pacsgrid_dicom::Query;
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::path::PathBuf;

mod grid;

/// `[storage.postgres]`: where the index database is and how to log in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user@host:5432/database` (libpq form; `sslmode=require`
    /// and the other URL parameters apply). A password in the URL works but is better kept
    /// in `password_file`.
    pub url: String,
    /// Schema holding this node's tables, created if missing; each node needs its own.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// File whose content (trimmed) is the password, kept out of the config file; absent:
    /// the URL's password or `PGPASSWORD`.
    pub password_file: Option<PathBuf>,
    /// Most connections the node opens (one writer, the rest answer queries).
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

/// An [`Index`] kept in a PostgreSQL schema.
#[derive(Clone)]
pub struct PostgresIndex {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: PgPool,
    schema: String,
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
        IndexError::Database(e.to_string())
    }
}

impl PostgresIndex {
    /// Connects to the database of `cfg`, creating and migrating this node's schema if
    /// needed. Fails (naming the server, never the password) if the database cannot be
    /// reached or logged into, so a node that could not record what it acknowledges does
    /// not start.
    pub async fn open(cfg: &PostgresConfig) -> Result<PostgresIndex, IndexError> {
        todo_open(cfg).await
    }
}

async fn todo_open(cfg: &PostgresConfig) -> Result<PostgresIndex, IndexError> {
    cfg.validate()?;
    Err(stub())
}

fn stub() -> IndexError {
    IndexError::Database("the PostgreSQL index is being written".into())
}
#[async_trait]
impl Index for PostgresIndex {
    async fn insert( &self, _record: &InstanceRecord, _site: &str, ) -> Result<InsertOutcome, IndexError> {
        Err(stub())
    }
    async fn insert_marked( &self, _record: &InstanceRecord, _site: &str, _mark: &AuditMark, ) -> Result<InsertOutcome, IndexError> {
        Err(stub())
    }
    async fn clear_audit_marks(&self, _session: &str) -> Result<u64, IndexError> {
        Err(stub())
    }
    async fn pending_audits(&self, _limit: u32) -> Result<Vec<PendingAudit>, IndexError> {
        Err(stub())
    }
    async fn clear_audit_marks_through(&self, _id: i64) -> Result<u64, IndexError> {
        Err(stub())
    }
    async fn quarantine(&self, _entry: &QuarantineEntry) -> Result<i64, IndexError> {
        Err(stub())
    }
    async fn quarantined(&self, _limit: u32) -> Result<Vec<QuarantineEntry>, IndexError> {
        Err(stub())
    }
    async fn find( &self, _query: &Query, _limit: u32, _offset: u32, ) -> Result<Vec<AttrValues>, IndexError> {
        Err(stub())
    }
    async fn locate(&self, _query: &Query) -> Result<Vec<StoredInstance>, IndexError> {
        Err(stub())
    }
    async fn instance(&self, _sop_instance_uid: &str) -> Result<Option<StoredInstance>, IndexError> {
        Err(stub())
    }
    async fn changes(&self, _since: i64, _limit: u32) -> Result<Vec<Change>, IndexError> {
        Err(stub())
    }
    async fn all_hashes(&self) -> Result<Vec<String>, IndexError> {
        Err(stub())
    }
    async fn stats(&self) -> Result<IndexStats, IndexError> {
        Err(stub())
    }
    async fn delete(&self, _target: &DeleteTarget, _at_ms: i64) -> Result<Deletion, IndexError> {
        Err(stub())
    }
    async fn tombstoned(&self, _hash: &str) -> Result<bool, IndexError> {
        Err(stub())
    }
    async fn provenance(&self, _sop_instance_uid: &str) -> Result<Option<Provenance>, IndexError> {
        Err(stub())
    }
    async fn feed_head(&self) -> Result<i64, IndexError> {
        Err(stub())
    }
}

/// One queued insert.
struct InsertJob;
