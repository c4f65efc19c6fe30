//! The archive's service to the grid layer: the change feed with full records, applying
//! what peers report, holders, replicas, and byte removal once every peer is told.
//!
//! The grid never reads the index or the blob store itself; these methods keep the same
//! rules as local stores (verified, fsynced bytes before a holder is announced).

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::grid_link::{GridControl, RemoteFetch};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use pacsgrid_store::{
    BlobChunks, BlobError, BlobReader, FeedEntry, GridConflict, Holder, HolderChange, Holdings,
    InsertOutcome, InstanceRecord, PeerChange, PeerCursor, PeerOutcome, StagedBlob, StoredInstance,
    Tombstone, TombstoneOutcome,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How many remote instances a retrieve fetches ahead of the one it sends.
pub const READ_AHEAD: usize = 4;

/// Instances up to this size fetched for a retrieve are held in memory rather than written
/// to a staging file and read back. With at most `2 * READ_AHEAD` fetches pending, read-ahead
/// holds at most 32 MiB.
pub const MEMORY_FETCH_MAX: u64 = 4 << 20;

/// A fetch started ahead of need: resolves to the verified bytes.
type Pending = Shared<BoxFuture<'static, Result<Got, String>>>;

/// What a fetch for a retrieve yields: verified bytes, not yet opened.
#[derive(Clone)]
enum Got {
    /// Held in memory as received, in order (cheap to clone).
    Memory(Arc<[Bytes]>),
    /// In a staging file that only this fetch knows.
    Staged(Arc<PathBuf>),
}

impl Got {
    /// Ready to read. A staging file is unlinked once open: open files stay readable after
    /// their name is gone, so nothing is left to clean up.
    async fn open(self) -> Result<Fetched, ArchiveError> {
        match self {
            Got::Memory(bytes) => Ok(Fetched::Memory(bytes)),
            Got::Staged(path) => {
                let file = tokio::fs::File::open(path.as_path()).await;
                let _ = tokio::fs::remove_file(path.as_path()).await;
                Ok(Fetched::File(file?))
            }
        }
    }
}

/// Bytes fetched from another site for a retrieve, already verified against their hash.
pub(crate) enum Fetched {
    /// Held in memory as received, in order.
    Memory(Arc<[Bytes]>),
    /// In an open file: unlinked, or the blob store's cached copy.
    File(tokio::fs::File),
}

impl Fetched {
    /// The bytes from `offset` on, as a reader.
    pub(crate) async fn into_reader(self, offset: u64) -> Result<BlobReader, ArchiveError> {
        match self {
            Fetched::Memory(parts) => {
                let rest: Vec<std::io::Result<Bytes>> = skip(&parts, offset).map(Ok).collect();
                Ok(Box::pin(tokio_util::io::StreamReader::new(
                    futures::stream::iter(rest),
                )))
            }
            Fetched::File(mut file) => {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                Ok(Box::pin(file))
            }
        }
    }

    /// The bytes as chunks of up to `chunk` bytes.
    pub(crate) fn into_chunks(self, chunk: usize, hash: &str) -> BlobChunks {
        let chunk = chunk.max(1);
        match self {
            Fetched::Memory(parts) => {
                let pieces: Vec<Result<Bytes, BlobError>> = skip(&parts, 0)
                    .flat_map(|b| {
                        (0..b.len())
                            .step_by(chunk)
                            .map(move |at| Ok(b.slice(at..(at + chunk).min(b.len()))))
                    })
                    .collect();
                Box::pin(futures::stream::iter(pieces))
            }
            Fetched::File(file) => {
                let what = PathBuf::from(hash);
                let stream = tokio_util::io::ReaderStream::with_capacity(file, chunk);
                Box::pin(stream.map(move |r| {
                    r.map_err(|source| BlobError::Io {
                        path: what.clone(),
                        source,
                    })
                }))
            }
        }
    }
}

/// The bytes of `parts` (pieces of one object, in order) from `offset` on, as pieces that
/// share the received buffers; empty pieces are left out.
fn skip(parts: &[Bytes], offset: u64) -> impl Iterator<Item = Bytes> + '_ {
    let mut before = offset;
    parts.iter().filter_map(move |p| {
        let len = p.len() as u64;
        if before >= len {
            before -= len;
            return None;
        }
        // `before` < `len`, a usize: the cast cannot truncate.
        let piece = p.slice(before as usize..);
        before = 0;
        Some(piece)
    })
}

/// A read-ahead entry not taken this long after it was started belongs to a retrieve that
/// was abandoned: it is dropped when room is needed.
const AHEAD_STALE: std::time::Duration = std::time::Duration::from_secs(60);

/// Fetches started ahead of a retrieve, by content hash, with when they were started; at
/// most `2 * READ_AHEAD` at once, so an abandoned retrieve holds little memory and leaves few
/// staging files (the staging area is emptied at start).
#[derive(Default)]
pub struct ReadAhead(Mutex<HashMap<String, (std::time::Instant, Pending)>>);

impl ReadAhead {
    /// Drops the entries of abandoned retrieves, so that they do not keep read-ahead off
    /// for every later one; a finished fetch's staging file goes with its entry.
    fn drop_stale(ahead: &mut HashMap<String, (std::time::Instant, Pending)>) {
        ahead.retain(|_, (started, pending)| {
            if started.elapsed() < AHEAD_STALE {
                return true;
            }
            if let Some(Ok(Got::Staged(path))) = pending.peek() {
                let _ = std::fs::remove_file(path.as_path());
            }
            false
        });
    }
}

/// What applying a peer's record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteApply {
    /// New here.
    Inserted,
    /// Already known (or deleted since): nothing changed.
    Known,
    /// This node records other bytes under the same UID: kept apart and reported.
    Conflict {
        /// Hash recorded here.
        local_hash: String,
    },
}

impl Archive {
    /// Joins the archive to a grid: missing bytes are fetched through `remote`, the REST
    /// API reaches `control`, and deleted bytes wait for the grid's collector.
    pub fn attach_grid(&self, remote: Arc<dyn RemoteFetch>, control: Arc<dyn GridControl>) {
        let _ = self.remote.set(remote);
        let _ = self.control.set(control);
    }

    /// The grid operations, when the node is part of a grid.
    pub fn grid_control(&self) -> Option<Arc<dyn GridControl>> {
        self.control.get().cloned()
    }

    /// This node's site name.
    pub fn site(&self) -> &str {
        &self.cfg.site
    }

    /// This data directory's incarnation (see `GridIndex::incarnation`).
    pub async fn incarnation(&self) -> Result<String, ArchiveError> {
        Ok(self.index.incarnation().await?)
    }

    /// This node as a holder.
    pub async fn holder(&self) -> Result<Holder, ArchiveError> {
        Ok(Holder {
            site: self.cfg.site.clone(),
            incarnation: self.index.incarnation().await?,
        })
    }

    /// Feed entries after `after` as peers read them: entries about this node's own copies
    /// and deletions name this site and incarnation.
    pub async fn grid_feed(&self, after: i64, limit: u32) -> Result<Vec<FeedEntry>, ArchiveError> {
        let mut entries = self.index.feed(after, limit).await?;
        let inc = self.index.incarnation().await?;
        for e in entries.iter_mut().filter(|e| e.site.is_empty()) {
            use pacsgrid_store::ChangeKind::*;
            match e.kind {
                Deleted => e.site = self.cfg.site.clone(),
                Quarantined => {
                    e.site = self.cfg.site.clone();
                    e.incarnation = inc.clone();
                }
                Stored | Held | Released => {}
            }
        }
        Ok(entries)
    }

    /// Records an instance a peer announced; a different object under a known UID is
    /// recorded as a conflict (logged once), never merged.
    pub async fn apply_remote_record(
        &self,
        record: &InstanceRecord,
        from_site: &str,
    ) -> Result<RemoteApply, ArchiveError> {
        match self.index.insert_remote(record).await? {
            InsertOutcome::Inserted { .. } => Ok(RemoteApply::Inserted),
            InsertOutcome::Duplicate => Ok(RemoteApply::Known),
            InsertOutcome::Conflict { existing_hash } => {
                self.note_conflict(record, &existing_hash, from_site)
                    .await?;
                Ok(RemoteApply::Conflict {
                    local_hash: existing_hash,
                })
            }
        }
    }

    /// Records a conflict between `record` and the instance recorded here (logged once).
    async fn note_conflict(
        &self,
        record: &InstanceRecord,
        existing_hash: &str,
        from_site: &str,
    ) -> Result<(), ArchiveError> {
        let conflict = GridConflict {
            sop_instance_uid: record.instance.sop_instance_uid.clone(),
            local_hash: existing_hash.to_string(),
            hash: record.hash.clone(),
            site: record.origin_site.clone(),
            at_ms: now_ms(),
        };
        if self.index.record_conflict(&conflict).await? {
            tracing::warn!(
                sop_instance_uid = %conflict.sop_instance_uid,
                local_hash = %existing_hash,
                other_hash = %record.hash,
                origin = %record.origin_site,
                via = from_site,
                "grid conflict: the same SOP Instance UID with other bytes at another site; both kept, not merged"
            );
        }
        Ok(())
    }

    /// Applies a page of `from_site`'s feed and saves its cursor in one transaction (see
    /// `GridIndex::apply_peer_page`), then records and logs conflicts and deletions as
    /// [`Archive::apply_remote_record`] and [`Archive::apply_tombstone`] do.
    pub async fn apply_peer_page(
        &self,
        changes: Vec<PeerChange>,
        cursor: &PeerCursor,
        from_site: &str,
    ) -> Result<Vec<PeerOutcome>, ArchiveError> {
        let outcomes = self.index.apply_peer_page(changes.clone(), cursor).await?;
        for (change, out) in changes.iter().zip(&outcomes) {
            match (change, out) {
                (
                    PeerChange::Record(record),
                    PeerOutcome::Record(InsertOutcome::Conflict { existing_hash }),
                ) => {
                    self.note_conflict(record, existing_hash, from_site).await?;
                }
                (
                    PeerChange::Tombstone(t),
                    PeerOutcome::Tombstone(TombstoneOutcome::Applied(_)),
                ) => log_tombstone(t),
                _ => {}
            }
        }
        Ok(outcomes)
    }

    /// Records that `holder` holds (or no longer holds) an instance's bytes.
    pub async fn set_holder(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        holder: &Holder,
        holds: bool,
    ) -> Result<HolderChange, ArchiveError> {
        Ok(self
            .index
            .set_holder(sop_instance_uid, hash, holder, holds)
            .await?)
    }

    /// Forgets the copies of a site's earlier incarnation.
    pub async fn drop_stale_holders(
        &self,
        site: &str,
        incarnation: &str,
    ) -> Result<u64, ArchiveError> {
        Ok(self.index.drop_stale_holders(site, incarnation).await?)
    }

    /// Applies a peer's deletion to the index; the bytes stay until the collector removes
    /// them (see [`Archive::removable_blobs`]).
    pub async fn apply_tombstone(&self, t: &Tombstone) -> Result<TombstoneOutcome, ArchiveError> {
        let out = self.index.apply_tombstone(t).await?;
        if let TombstoneOutcome::Applied(_) = &out {
            log_tombstone(t);
        }
        Ok(out)
    }

    /// One instance's record and holders.
    pub async fn grid_record(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<(InstanceRecord, Vec<Holder>)>, ArchiveError> {
        Ok(self.index.record(sop_instance_uid).await?)
    }

    /// A page of instances with their holders.
    pub async fn holdings(&self, after_id: i64, limit: u32) -> Result<Vec<Holdings>, ArchiveError> {
        Ok(self.index.holdings(after_id, limit).await?)
    }

    /// Saved feed cursors of the peers.
    pub async fn peer_cursors(&self) -> Result<Vec<PeerCursor>, ArchiveError> {
        Ok(self.index.peer_cursors().await?)
    }

    /// Saves a peer's feed cursor.
    pub async fn save_peer_cursor(&self, cursor: &PeerCursor) -> Result<(), ArchiveError> {
        Ok(self.index.save_peer_cursor(cursor).await?)
    }

    /// Recorded cross-site conflicts.
    pub async fn grid_conflicts(&self) -> Result<Vec<GridConflict>, ArchiveError> {
        Ok(self.index.conflicts().await?)
    }

    /// Deleted bytes still on this node, with the feed position of their tombstone.
    pub async fn removable_blobs(&self) -> Result<Vec<(String, i64)>, ArchiveError> {
        let mut out = Vec::new();
        for (hash, seq) in self.index.removable().await? {
            if self.blobs.exists(&hash).await? {
                out.push((hash, seq));
            }
        }
        Ok(out)
    }

    /// Removes deleted bytes (a hash from [`Archive::removable_blobs`]), unless a store has
    /// referenced them again meanwhile.
    pub async fn remove_deleted_blob(&self, hash: &str) -> Result<bool, ArchiveError> {
        let _gc = self.blob_gc.write().await;
        // Only hashes from `removable_blobs` come here: a store may have referenced the
        // bytes again since, which the exclusive lock rules out from here on.
        if self.index.referenced(hash).await? {
            return Ok(false);
        }
        self.blobs.delete(hash).await?;
        tracing::info!(%hash, "bytes of a deleted instance removed: every peer has the tombstone");
        Ok(true)
    }

    /// Whether this node has the bytes.
    pub async fn has_blob(&self, hash: &str) -> Result<bool, ArchiveError> {
        Ok(self.blobs.exists(hash).await?)
    }

    /// The blob's size and its bytes from `offset` on as chunks, for a peer (never fetched
    /// from elsewhere). An offset at or past the end gives no chunks.
    pub async fn blob_chunks(
        &self,
        hash: &str,
        offset: u64,
        chunk: usize,
    ) -> Result<(u64, BlobChunks), ArchiveError> {
        let size = self.blobs.size(hash).await?;
        Ok((size, self.blobs.chunks(hash, offset, chunk).await?))
    }

    /// Re-reads a local blob and tells whether it still matches its hash.
    pub async fn verify_blob(&self, hash: &str) -> Result<bool, ArchiveError> {
        Ok(self.hash_blob(hash).await? == hash)
    }

    /// Removes a local blob found corrupt, so that a verified copy can take its place.
    pub async fn discard_corrupt_blob(&self, hash: &str) -> Result<(), ArchiveError> {
        let _gc = self.blob_gc.write().await;
        self.blobs.delete(hash).await?;
        tracing::error!(%hash, "corrupt blob removed; a verified copy will be fetched from another site");
        Ok(())
    }

    /// Tells the archive which instances a retrieve will send next, so that bytes held at
    /// other sites are fetched while the current instance is being sent (a no-op outside a
    /// grid and for local bytes).
    pub fn read_ahead(self: &Arc<Self>, upcoming: &[StoredInstance]) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        for inst in upcoming.iter().take(READ_AHEAD) {
            let mut ahead = self.ahead.0.lock().unwrap_or_else(|p| p.into_inner());
            if ahead.len() >= 2 * READ_AHEAD {
                ReadAhead::drop_stale(&mut ahead);
            }
            if ahead.len() >= 2 * READ_AHEAD || ahead.contains_key(&inst.hash) {
                continue;
            }
            let (archive, remote, inst2) = (Arc::clone(self), Arc::clone(remote), inst.clone());
            let task = tokio::spawn(async move {
                if archive.blobs.exists(&inst2.hash).await.unwrap_or(false) {
                    return Err("held here".to_string());
                }
                if remote.keep_fetched() {
                    // into a file, which the retrieve that takes it keeps as the cached copy
                    archive
                        .fetch_to_staging(remote.as_ref(), &inst2)
                        .await
                        .map(|path| Got::Staged(Arc::new(path)))
                } else {
                    archive.fetch_uncached(remote.as_ref(), &inst2).await
                }
            });
            let pending = async move { task.await.map_err(|e| e.to_string())? }
                .boxed()
                .shared();
            ahead.insert(inst.hash.clone(), (std::time::Instant::now(), pending));
        }
    }

    /// The bytes a read-ahead fetch got for `inst`, taken (with its entry) if one was started;
    /// `None` when none was, or it failed (the bytes may be held here after all).
    pub(crate) async fn take_read_ahead(&self, inst: &StoredInstance) -> Option<Fetched> {
        let pending = self
            .ahead
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.hash)
            .map(|(_, pending)| pending)?;
        let t0 = std::time::Instant::now();
        let fetched = match pending.await.ok()? {
            Got::Staged(path) if self.remote.get().is_some_and(|r| r.keep_fetched()) => {
                self.keep_staged(inst, path.to_path_buf()).await.ok()?
            }
            got => got.open().await.ok()?,
        };
        tracing::debug!(
            sop_instance_uid = %inst.sop_instance_uid,
            waited_ms = t0.elapsed().as_secs_f64() * 1e3,
            "read-ahead bytes taken"
        );
        Some(fetched)
    }

    /// Fetches bytes for a retrieve that keeps no copy: into memory when the instance is
    /// small enough and the fetcher can, into a staging file otherwise.
    async fn fetch_uncached(
        &self,
        remote: &dyn RemoteFetch,
        inst: &StoredInstance,
    ) -> Result<Got, String> {
        if inst.size <= MEMORY_FETCH_MAX {
            if let Some(got) = remote
                .fetch_to_memory(&inst.sop_instance_uid, &inst.hash, inst.size)
                .await
            {
                return got.map(|parts| Got::Memory(parts.into()));
            }
        }
        let path = self.fetch_to_staging(remote, inst).await?;
        Ok(Got::Staged(Arc::new(path)))
    }

    /// Fetches bytes for a retrieve into a staging file of their own.
    async fn fetch_to_staging(
        &self,
        remote: &dyn RemoteFetch,
        inst: &StoredInstance,
    ) -> Result<PathBuf, String> {
        let dest = self.staging_file();
        match remote
            .fetch(&inst.sop_instance_uid, &inst.hash, inst.size, &dest)
            .await
        {
            Ok(()) => Ok(dest),
            Err(e) => {
                let _ = tokio::fs::remove_file(&dest).await;
                Err(e)
            }
        }
    }

    /// Why the bytes of `inst` cannot be had now: not held here, and every site that holds
    /// them is unreachable. `None` when they are here, when a holder is reachable, and on a
    /// node outside a grid (its missing bytes are a fault to report, not a wait).
    pub async fn unavailable(&self, inst: &StoredInstance) -> Option<String> {
        let remote = self.remote.get()?;
        if self.blobs.exists(&inst.hash).await.unwrap_or(true) {
            return None;
        }
        remote.unreachable(&inst.sop_instance_uid).await
    }

    /// Fetches an instance's bytes from another site for a retrieve, verified: in memory, in
    /// an unlinked file, or kept in the blob store as a cached copy.
    pub(crate) async fn fetch_remote(
        &self,
        inst: &StoredInstance,
    ) -> Result<Fetched, ArchiveError> {
        if let Some(fetched) = self.take_read_ahead(inst).await {
            return Ok(fetched);
        }
        let Some(remote) = self.remote.get() else {
            return Err(ArchiveError::Unavailable {
                hash: inst.hash.clone(),
                why: "not part of a grid".into(),
            });
        };
        let unavailable = |why: String| ArchiveError::Unavailable {
            hash: inst.hash.clone(),
            why,
        };
        if !remote.keep_fetched() {
            return self
                .fetch_uncached(remote.as_ref(), inst)
                .await
                .map_err(unavailable)?
                .open()
                .await;
        }
        let dest = self
            .fetch_to_staging(remote.as_ref(), inst)
            .await
            .map_err(unavailable)?;
        self.keep_staged(inst, dest).await
    }

    /// Keeps verified bytes fetched into `dest` as the blob store's cached copy and opens
    /// them for the retrieve; if they cannot be kept, the retrieve reads them all the same.
    async fn keep_staged(
        &self,
        inst: &StoredInstance,
        dest: PathBuf,
    ) -> Result<Fetched, ArchiveError> {
        let staged = StagedBlob {
            path: dest.clone(),
            hash: inst.hash.clone(),
            size: inst.size,
        };
        // The retrieve reads the copy through a handle opened before the put: the folder
        // store renames the same file into place, an object store uploads it and removes
        // it, and the open handle reads the verified bytes either way.
        let kept = async {
            let file = tokio::fs::File::open(&dest).await?;
            file.sync_all().await?;
            let _gc = self.blob_gc.read().await;
            self.blobs.put(staged).await?;
            Ok::<_, ArchiveError>(file)
        }
        .await;
        match kept {
            Ok(file) => Ok(Fetched::File(file)),
            Err(e) => {
                tracing::warn!(hash = %inst.hash, error = %e, "could not keep a cached copy");
                Got::Staged(Arc::new(dest)).open().await
            }
        }
    }
}

fn log_tombstone(t: &Tombstone) {
    tracing::info!(
        sop_instance_uid = %t.sop_instance_uid,
        hash = %t.hash,
        deleted_at = %t.site,
        "instance deleted by another site (tombstone applied)"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
