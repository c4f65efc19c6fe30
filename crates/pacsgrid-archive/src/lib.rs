//! The node's one service API.
//!
//! Protocols (DIMSE, DICOMweb) and the grid never touch the blob store or the index
//! directly: they store, query and open instances through [`Archive`], which enforces the
//! order that makes acknowledgements safe (parse header, hash, blob, index, feed) and the
//! duplicate and quarantine rules.

mod archive;
mod error;
mod grid_link;
mod grid_ops;
mod header;
mod incoming;
mod part10;
mod replica;
pub mod transcode;
mod walk;

pub use archive::{Archive, ArchiveConfig, ConsistencyReport, DeleteReport};
pub use error::{ArchiveError, StoreError};
pub use grid_link::{GridControl, RemoteFetch};
pub use grid_ops::RemoteApply;
pub use incoming::{Incoming, IncomingMeta, StoreOutcome, Subject};
pub use pacsgrid_store::{
    AttrValues, AuditMark, BlobChunks, BlobError, BlobReader, Change, ChangeKind, DeleteTarget,
    FeedEntry, GridConflict, Holder, HolderChange, Holdings, IndexError, IndexStats, InsertOutcome,
    InstanceRecord, PeerChange, PeerCursor, PeerOutcome, PendingAudit, Provenance, QuarantineEntry,
    Space, StoredInstance, Tombstone, TombstoneOutcome,
};
pub use replica::Replica;
