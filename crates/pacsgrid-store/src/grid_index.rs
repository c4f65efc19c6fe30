//! The grid's part of the index contract: what a node knows about the other sites' data.
//!
//! Merge rules (every method here must keep them, whatever order peers' entries arrive in):
//! - An instance's metadata, once recorded, is not changed by a peer; the same SOP Instance
//!   UID with other bytes is a conflict, recorded beside it and never merged.
//! - A holder fact "site S holds hash H" is valid for one incarnation of S (a data directory's
//!   life). Facts of an older incarnation are dropped when a newer one is seen.
//! - A tombstone beats every record of the same (UID, hash) received before it was written;
//!   an instance stored again after its deletion (a later `received_at_ms`) comes back.
//! - Every method is idempotent: applying an entry twice changes nothing the second time and
//!   writes no new feed entry, so entries relayed through several sites settle.

use crate::index::{IndexError, InsertOutcome};
use crate::model::{ChangeKind, Deletion, InstanceRecord};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A site that holds an instance's bytes, in one incarnation of its data directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Holder {
    /// Site name.
    pub site: String,
    /// The holder's incarnation when it announced the copy.
    pub incarnation: String,
}

/// One change-feed entry as a peer needs it to rebuild the same knowledge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// Sequence number in this node's feed.
    pub seq: i64,
    /// What happened.
    pub kind: ChangeKind,
    /// The instance concerned.
    pub sop_instance_uid: String,
    /// Its study.
    pub study_uid: String,
    /// Its series.
    pub series_uid: String,
    /// The content hash concerned.
    pub hash: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// For `held`, `released` and locally `stored` entries, the site whose copy this is;
    /// for `deleted`, the site that deleted; empty when the entry was learned from a peer.
    pub site: String,
    /// The incarnation of `site` the entry speaks for (empty when `site` is).
    pub incarnation: String,
    /// For `stored` entries: the instance's metadata, if it is still recorded.
    pub record: Option<InstanceRecord>,
}

/// What [`GridIndex::set_holder`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderChange {
    /// The holder set changed; the feed entry has this sequence number.
    Changed {
        /// Sequence number of the `held` or `released` entry.
        seq: i64,
    },
    /// It was already so.
    Unchanged,
    /// No instance with this UID and hash is recorded (unknown, deleted, or a conflict).
    Unknown,
}

/// A deletion learned from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The deleted instance.
    pub sop_instance_uid: String,
    /// Its study.
    pub study_uid: String,
    /// Its series.
    pub series_uid: String,
    /// The content hash deleted.
    pub hash: String,
    /// When it was deleted.
    pub at_ms: i64,
    /// The site where it was deleted.
    pub site: String,
}

/// What [`GridIndex::apply_tombstone`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TombstoneOutcome {
    /// The instance was recorded here and is now removed.
    Applied(Deletion),
    /// The instance was not recorded here; the tombstone is kept so that it travels on
    /// and stops a late copy of the record from bringing it back.
    Recorded {
        /// Sequence number of the `deleted` entry.
        seq: i64,
    },
    /// This tombstone was already applied.
    Known,
}

/// One entry of a peer's feed as this node applies it, in a page given to
/// [`GridIndex::apply_peer_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// An instance's metadata, as given to [`GridIndex::insert_remote`] (boxed: it is
    /// much larger than the other changes).
    Record(Box<InstanceRecord>),
    /// A holder fact, as given to [`GridIndex::set_holder`].
    Holder {
        /// The instance concerned.
        sop_instance_uid: String,
        /// Its content hash.
        hash: String,
        /// The site whose copy this is.
        holder: Holder,
        /// Whether it holds (`held`) or no longer holds (`released`) the bytes.
        holds: bool,
    },
    /// A deletion, as given to [`GridIndex::apply_tombstone`].
    Tombstone(Tombstone),
}

/// What applying one [`PeerChange`] did: the outcome its single method would have given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutcome {
    /// Of a [`PeerChange::Record`].
    Record(InsertOutcome),
    /// Of a [`PeerChange::Holder`].
    Holder(HolderChange),
    /// Of a [`PeerChange::Tombstone`].
    Tombstone(TombstoneOutcome),
}

/// How far this node has read one peer's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCursor {
    /// The peer's site name.
    pub site: String,
    /// The peer's incarnation the cursor belongs to (a new one starts again at 0).
    pub incarnation: String,
    /// Sequence number of the last entry applied.
    pub cursor: i64,
}

/// The same SOP Instance UID seen with two different contents at two sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridConflict {
    /// The UID both objects claim.
    pub sop_instance_uid: String,
    /// Hash of the object recorded here.
    pub local_hash: String,
    /// Hash of the other object.
    pub hash: String,
    /// The site that announced the other object.
    pub site: String,
    /// When it was noticed.
    pub at_ms: i64,
}

/// One instance with where its bytes are, for placement and repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// Row id, for paging.
    pub id: i64,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// StudyInstanceUID (placement keeps a study together).
    pub study_uid: String,
    /// Content hash.
    pub hash: String,
    /// Size of the bytes.
    pub size: u64,
    /// The site where it entered the grid.
    pub origin_site: String,
    /// Sites holding the bytes, sorted by site.
    pub holders: Vec<Holder>,
}

/// Grid metadata kept by every node's index; see the module docs for the merge rules.
#[async_trait]
pub trait GridIndex: Send + Sync + 'static {
    /// A random name of this index's life, made when the database was created: a wiped
    /// data directory is a new incarnation, so peers forget the copies the old one had.
    async fn incarnation(&self) -> Result<String, IndexError>;

    /// Records an instance's metadata learned from a peer, without a holder (holders come
    /// as their own entries). `Duplicate` also when a tombstone written after the record's
    /// arrival exists; `Conflict` leaves the recorded instance alone.
    async fn insert_remote(&self, record: &InstanceRecord) -> Result<InsertOutcome, IndexError>;

    /// Adds (`holds`) or removes a holder of an instance, writing a `held` / `released`
    /// feed entry when that changes anything. A newer incarnation replaces an older one.
    async fn set_holder(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        holder: &Holder,
        holds: bool,
    ) -> Result<HolderChange, IndexError>;

    /// Forgets every copy `site` announced under another incarnation than `incarnation`
    /// (its data directory was wiped); returns how many were dropped. Writes no feed entry:
    /// every node does this itself when it meets the new incarnation.
    async fn drop_stale_holders(&self, site: &str, incarnation: &str) -> Result<u64, IndexError>;

    /// Applies a peer's deletion (see [`TombstoneOutcome`]).
    async fn apply_tombstone(&self, t: &Tombstone) -> Result<TombstoneOutcome, IndexError>;

    /// Applies a page of a peer's feed in order and saves the peer's cursor, in one
    /// transaction: all of it or none. Each change has the effect, the outcome (one per
    /// change, in order) and the idempotence of its single method.
    async fn apply_peer_page(
        &self,
        changes: Vec<PeerChange>,
        cursor: &PeerCursor,
    ) -> Result<Vec<PeerOutcome>, IndexError>;

    /// Feed entries after `after`, oldest first, at most `limit`, with the metadata of
    /// `stored` entries; what peers pull.
    async fn feed(&self, after: i64, limit: u32) -> Result<Vec<FeedEntry>, IndexError>;

    /// One instance's full record and holders.
    async fn record(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(InstanceRecord, Vec<Holder>)>, IndexError>;

    /// Instances with row id above `after_id`, by id, at most `limit`, with their holders.
    async fn holdings(&self, after_id: i64, limit: u32) -> Result<Vec<Holdings>, IndexError>;

    /// The saved feed cursors of every peer.
    async fn peer_cursors(&self) -> Result<Vec<PeerCursor>, IndexError>;

    /// Saves one peer's feed cursor (durably, so a restart resumes there).
    async fn save_peer_cursor(&self, cursor: &PeerCursor) -> Result<(), IndexError>;

    /// Records a conflict; `false` if it was already recorded.
    async fn record_conflict(&self, conflict: &GridConflict) -> Result<bool, IndexError>;

    /// Every recorded conflict, oldest first.
    async fn conflicts(&self) -> Result<Vec<GridConflict>, IndexError>;

    /// Whether an instance or a quarantine entry still references these bytes.
    async fn referenced(&self, hash: &str) -> Result<bool, IndexError>;

    /// Hashes deleted here whose bytes nothing references any more, with the sequence
    /// number of their newest tombstone in this node's feed: the bytes may go once every
    /// peer has read the feed that far.
    async fn removable(&self) -> Result<Vec<(String, i64)>, IndexError>;
}
