//! [`GridIndex`] for PostgreSQL: peers' records, holders, tombstones, cursors and conflicts.

use super::{stub, PostgresIndex};
use crate::grid_index::*;
use crate::index::{IndexError, InsertOutcome};
use crate::model::*;
use async_trait::async_trait;

/// One queued holder change.
pub(super) struct HolderJob;

#[async_trait]
impl GridIndex for PostgresIndex {
    async fn incarnation(&self) -> Result<String, IndexError> {
        Err(stub())
    }
    async fn insert_remote(&self, _record: &InstanceRecord) -> Result<InsertOutcome, IndexError> {
        Err(stub())
    }
    async fn set_holder( &self, _sop_instance_uid: &str, _hash: &str, _holder: &Holder, _holds: bool, ) -> Result<HolderChange, IndexError> {
        Err(stub())
    }
    async fn drop_stale_holders(&self, _site: &str, _incarnation: &str) -> Result<u64, IndexError> {
        Err(stub())
    }
    async fn apply_tombstone(&self, _t: &Tombstone) -> Result<TombstoneOutcome, IndexError> {
        Err(stub())
    }
    async fn apply_peer_page( &self, _changes: Vec<PeerChange>, _cursor: &PeerCursor, ) -> Result<Vec<PeerOutcome>, IndexError> {
        Err(stub())
    }
    async fn feed(&self, _after: i64, _limit: u32) -> Result<Vec<FeedEntry>, IndexError> {
        Err(stub())
    }
    async fn record( &self, _sop_instance_uid: &str, ) -> Result<Option<(InstanceRecord, Vec<Holder>)>, IndexError> {
        Err(stub())
    }
    async fn holdings(&self, _after_id: i64, _limit: u32) -> Result<Vec<Holdings>, IndexError> {
        Err(stub())
    }
    async fn peer_cursors(&self) -> Result<Vec<PeerCursor>, IndexError> {
        Err(stub())
    }
    async fn save_peer_cursor(&self, _cursor: &PeerCursor) -> Result<(), IndexError> {
        Err(stub())
    }
    async fn record_conflict(&self, _conflict: &GridConflict) -> Result<bool, IndexError> {
        Err(stub())
    }
    async fn conflicts(&self) -> Result<Vec<GridConflict>, IndexError> {
        Err(stub())
    }
    async fn referenced(&self, _hash: &str) -> Result<bool, IndexError> {
        Err(stub())
    }
    async fn removable(&self) -> Result<Vec<(String, i64)>, IndexError> {
        Err(stub())
    }
}
