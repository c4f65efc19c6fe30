//! The fabric layer: where bytes rest and what the node knows about them.
//!
//! [`BlobStore`] keeps immutable objects addressed by their content hash; [`Index`] keeps the
//! patient / study / series / instance attributes, holders, quarantine and the change feed.
//! Each trait has an embedded backend (a local folder, SQLite) and a scale-out one (an
//! S3-compatible bucket, PostgreSQL), and one conformance suite that every backend must pass.

pub mod blob;
#[cfg(test)]
mod conformance;
pub mod direct;
pub mod folder;
pub mod grid_index;
pub mod index;
pub mod model;
pub mod postgres;
mod query_sql;
pub mod s3;
pub mod sqlite;

pub use blob::{BlobBackend, BlobChunks, BlobError, BlobReader, BlobStore, Space, StagedBlob};
pub use folder::FolderBlobStore;
pub use grid_index::{
    FeedEntry, GridConflict, GridIndex, Holder, HolderChange, Holdings, PeerChange, PeerCursor,
    PeerOutcome, Tombstone, TombstoneOutcome,
};
pub use index::{Index, IndexBackend, IndexError, InsertOutcome};
pub use model::*;
pub use postgres::{PostgresConfig, PostgresIndex};
pub use s3::{S3BlobStore, S3Config};
pub use sqlite::{Durability, SqliteIndex};
