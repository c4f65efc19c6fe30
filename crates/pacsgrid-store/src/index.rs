//! The index contract: attributes, holders, quarantine and the change feed.

use crate::grid_index::GridIndex;
use crate::model::*;
use async_trait::async_trait;
use pacsgrid_dicom::Query;

/// Errors of an index backend.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed (I/O, corruption, constraint); the message says which.
    #[error("index database: {0}")]
    Database(String),
    /// A blocking task running the database work panicked or was cancelled.
    #[error("index task failed: {0}")]
    Task(String),
    /// The index is configured wrongly (a key's value); the message names the key.
    #[error("index configuration: {0}")]
    Config(String),
    /// The index database cannot be reached (PostgreSQL down, refused login); the message
    /// says where and why.
    #[error("index database unreachable: {0}")]
    Unreachable(String),
}

/// Which engine keeps a node's index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IndexBackend {
    /// A SQLite file in the data directory (`DATA/index.sqlite`): nothing else to run.
    #[default]
    Sqlite,
    /// Tables in a PostgreSQL schema, for an index that outgrows one machine's file.
    Postgres(crate::postgres::PostgresConfig),
}

/// What [`Index::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new instance was recorded, with this change-feed sequence number.
    Inserted {
        /// The feed entry's sequence number.
        seq: i64,
    },
    /// The same SOP Instance UID with the same hash is already recorded: nothing changed.
    Duplicate,
    /// The same SOP Instance UID is recorded with another hash: nothing changed in the
    /// instance tables; the caller decides (quarantine).
    Conflict {
        /// Hash of the instance already recorded.
        existing_hash: String,
    },
}

/// The metadata index of a node (with the grid's part, [`GridIndex`]).
///
/// Contract: every method is atomic; `insert` records the patient/study/series/instance rows,
/// the holder row for `site` and the feed entry in one transaction, durable when it returns
/// (several concurrent inserts may share one commit, each still all-or-nothing).
/// Patients are keyed by (patient_id, issuer) and never merged across issuers. For study,
/// series and patient attributes the first writer's values win; later instances only fill
/// values still empty. An instance whose series (or study) is already recorded under
/// another study (or patient) is filed where its series (or study) is, with a warning.
#[async_trait]
pub trait Index: GridIndex + Send + Sync + 'static {
    /// Records a stored instance held by `site` (unless its UID is already recorded).
    async fn insert(
        &self,
        record: &InstanceRecord,
        site: &str,
    ) -> Result<InsertOutcome, IndexError>;

    /// Like [`Index::insert`], and in the same transaction keeps `mark`: the store still needs
    /// an audit record. Kept whatever the outcome (a duplicate or conflict was received too).
    async fn insert_marked(
        &self,
        record: &InstanceRecord,
        site: &str,
        mark: &AuditMark,
    ) -> Result<InsertOutcome, IndexError>;

    /// Drops the marks of `session` once its audit records are on disk; returns how many.
    async fn clear_audit_marks(&self, session: &str) -> Result<u64, IndexError>;

    /// The oldest marks still kept, at most `limit`: stores whose session never wrote its
    /// audit record (the node stopped first).
    async fn pending_audits(&self, limit: u32) -> Result<Vec<PendingAudit>, IndexError>;

    /// Drops every mark up to and including `id` (after writing their records at start-up).
    async fn clear_audit_marks_through(&self, id: i64) -> Result<u64, IndexError>;

    /// Records a quarantined object and its feed entry (kind `quarantined`, hash of the
    /// object set aside); returns the new entry's id (the `id` given is ignored).
    async fn quarantine(&self, entry: &QuarantineEntry) -> Result<i64, IndexError>;

    /// The quarantined objects, newest first, at most `limit` (0 = no cap).
    async fn quarantined(&self, limit: u32) -> Result<Vec<QuarantineEntry>, IndexError>;

    /// Answers a query: one [`AttrValues`] per matched entity at `query.level`, with every
    /// stored and computed attribute of that level and the levels above. `limit` caps the
    /// answers (0 = no cap); `offset` skips the first ones in a stable order. Keys below
    /// `query.level` (never from `Query::parse`, only from queries built in code) select the
    /// entities having one descendant that matches all of them.
    async fn find(
        &self,
        query: &Query,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AttrValues>, IndexError>;

    /// Every instance under the entities the query matches, for retrieval: each study's
    /// instances together, its series by SeriesNumber and each series' instances by
    /// InstanceNumber (absent numbers last, ties in arrival order).
    async fn locate(&self, query: &Query) -> Result<Vec<StoredInstance>, IndexError>;

    /// One instance by SOP Instance UID.
    async fn instance(&self, sop_instance_uid: &str) -> Result<Option<StoredInstance>, IndexError>;

    /// Change-feed entries with `seq > since`, oldest first, at most `limit` (0 = no cap).
    async fn changes(&self, since: i64, limit: u32) -> Result<Vec<Change>, IndexError>;

    /// Every content hash the index references (instances and quarantine), for checks.
    async fn all_hashes(&self) -> Result<Vec<String>, IndexError>;

    /// Counts for status and metrics.
    async fn stats(&self) -> Result<IndexStats, IndexError>;

    /// Removes `target` and every instance under it, writing one `deleted` feed entry (a
    /// tombstone, stamped `at_ms`) per instance in the same transaction. Series, studies and
    /// patients left without instances are removed too, and the counters of those that stay
    /// are lowered. An unknown target removes nothing and returns an empty [`Deletion`].
    async fn delete(&self, target: &DeleteTarget, at_ms: i64) -> Result<Deletion, IndexError>;

    /// Whether the feed holds a tombstone for this content hash (an unindexed blob with one
    /// was deleted, and must not be brought back by crash recovery).
    async fn tombstoned(&self, hash: &str) -> Result<bool, IndexError>;

    /// Origin, source, arrival time and holders of one instance.
    async fn provenance(&self, sop_instance_uid: &str) -> Result<Option<Provenance>, IndexError>;

    /// The newest change-feed sequence number (0 for an empty feed).
    async fn feed_head(&self) -> Result<i64, IndexError>;
}
