//! Copies of indexed instances received from other sites.
//!
//! A copy is received into a partial file named by its hash (`DATA/partial/<hash>`), so a
//! transfer that is cut off (the peer gone, this node killed) continues from the bytes it
//! has instead of starting over. Nothing is trusted for that: the bytes already there are
//! hashed again, and the copy counts as this node's only after [`Replica::finish`] has
//! verified every byte against the content hash and fsynced them.
//!
//! Copies are written around the page cache where the blob store keeps the file as it is
//! ([`pacsgrid_store::direct`]): nobody reads another site's copy soon, and a re-replication
//! of a lost site should not push the studies being read out of memory.

use crate::archive::Archive;
use crate::error::ArchiveError;
use bytes::Bytes;
use pacsgrid_store::blob::is_valid_hash;
use pacsgrid_store::direct::{aligned_down, DirectWriter};
use pacsgrid_store::StagedBlob;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Received bytes are handed to the file in batches of about this size: one blocking-pool hop
/// per batch (a whole instance is usually one), and a bound on what a replica holds in memory.
const REPLICA_BATCH: usize = 2 << 20;

/// The folder of partial copies, in the data directory.
const PARTIAL_DIR: &str = "partial";

/// A cut-off copy with fewer bytes than this is removed rather than kept: receiving them
/// again costs less than a file left behind for every small instance.
pub(crate) const KEEP_PARTIAL_MIN: u64 = 1 << 20;

/// Partial copies untouched for this long are removed at start: their instance may have
/// been deleted or placed elsewhere since.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(2 * 24 * 3600);

/// Bytes of an indexed instance being received from another site; they count as this
/// node's copy only after [`Replica::finish`] has verified and fsynced them.
pub struct Replica {
    archive: Arc<Archive>,
    expected: String,
    /// The file and the running hash; taken while a batch is written.
    sink: Option<ReplicaSink>,
    /// Received chunks not yet written: kept as received, so they are copied only once,
    /// into the file.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Bytes of the copy so far, those a partial copy already had included.
    size: u64,
    /// The bytes a partial copy already had when this replica began.
    resumed_from: u64,
    /// Removed on drop unless the bytes went into the blob store, or it is a partial copy
    /// worth keeping.
    path: Option<PathBuf>,
    /// Whether `path` is the partial copy under the hash (kept when cut off), rather than a
    /// private staging file (another replica of the same bytes holds the partial copy).
    resumable: bool,
    /// The bytes failed their check: the file goes whatever its size.
    discard: bool,
}

/// The blocking side of a [`Replica`]: hashing and writing run on the blocking pool, off the
/// threads that drive the network.
struct ReplicaSink {
    /// The file. A partial copy is opened (and locked) when the replica begins; a private
    /// staging file is created by the first blocking hop that needs it, so for an instance
    /// that arrives in one batch creating, writing, hashing and fsyncing are one hop. (A
    /// replica dropped while that hop runs may leave a staging file behind; the staging
    /// area is emptied at start, and it was never a copy.)
    file: Option<DirectWriter>,
    /// The partial copy's handle that holds its lock, for as long as the replica lives.
    _lock: Option<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    /// The blob's size from the index: how large the write buffer needs to be.
    size: u64,
    /// Whether to write around the page cache.
    direct: bool,
}

impl ReplicaSink {
    /// The file, created now if it is not yet.
    fn file(&mut self) -> std::io::Result<&mut DirectWriter> {
        match &mut self.file {
            Some(f) => Ok(f),
            none => Ok(none.insert(DirectWriter::create_new(
                &self.path,
                self.size,
                self.direct,
            )?)),
        }
    }

    fn write_all(&mut self, chunks: &[Bytes]) -> std::io::Result<()> {
        self.file()?;
        let Self { file, hasher, .. } = self;
        let file = file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("replica file missing"))?;
        for c in chunks {
            hasher.update(c);
            file.write_all(c)?;
        }
        Ok(())
    }

    /// Writes what is left and fsyncs the file.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("replica file missing"))?;
        file.finish()?;
        Ok(())
    }
}

/// Opens (creating it if needed) the partial copy at `path`, locked so that no other replica
/// writes to it, and hashes the bytes it keeps: a whole number of blocks, so that it can be
/// continued with direct writes (a cut-off tail of less than a block is dropped). Returns
/// the locked handle, the bytes kept and their hash; `None` when another replica holds it.
fn open_partial(path: &Path) -> std::io::Result<Option<(File, u64, blake3::Hasher)>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    let len = aligned_down(file.metadata()?.len());
    let mut hasher = blake3::Hasher::new();
    let hashed = std::io::copy(&mut (&mut file).take(len), &mut hasher)?;
    Ok(Some((file, hashed, hasher)))
}

/// Makes the folder of partial copies in `data_dir`, and removes the partial copies that no
/// transfer has touched for [`PARTIAL_MAX_AGE`]. Returns how many are kept to be continued.
pub(crate) fn prepare_partials(data_dir: &Path) -> std::io::Result<usize> {
    let dir = data_dir.join(PARTIAL_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut kept = 0;
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > PARTIAL_MAX_AGE);
        let ours = name.to_str().is_some_and(is_valid_hash);
        let is_dir = entry.file_type()?.is_dir();
        if stale || !ours || is_dir {
            tracing::info!(file = %entry.path().display(), "removing a stale partial copy");
            let res = if is_dir {
                std::fs::remove_dir_all(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            if let Err(e) = res {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a stale partial copy");
            }
        } else {
            kept += 1;
        }
    }
    Ok(kept)
}

impl Archive {
    /// Starts receiving a copy of indexed bytes from another site, continuing a partial
    /// copy of the same bytes if a transfer was cut off before; [`Replica::offset`] says
    /// from which byte the sender should go on. `size` is the blob's size from the index:
    /// a copy too small to be worth continuing skips the partial-copy folder (and its lock
    /// and extra rename), which keeps many small copies as cheap as before.
    pub async fn begin_replica(
        self: &Arc<Self>,
        hash: &str,
        size: u64,
    ) -> Result<Replica, ArchiveError> {
        let partial = (size >= KEEP_PARTIAL_MIN && is_valid_hash(hash))
            .then(|| self.cfg.data_dir.join(PARTIAL_DIR).join(hash));
        let direct = self.blobs.keeps_staged_file();
        let opened = match partial {
            // the folder was made when the archive opened (`prepare_partials`)
            Some(path) => tokio::task::spawn_blocking(move || {
                let Some((lock, len, hasher)) = open_partial(&path)? else {
                    return Ok(None);
                };
                let writer = DirectWriter::append(&path, len, size, direct)?;
                Ok::<_, std::io::Error>(Some((lock, writer, len, hasher, path)))
            })
            .await
            .map_err(|e| ArchiveError::Io(std::io::Error::other(e.to_string())))??,
            None => None,
        };
        let (lock, file, path, resumed_from, hasher, resumable) = match opened {
            Some((lock, writer, len, hasher, path)) => {
                (Some(lock), Some(writer), path, len, hasher, true)
            }
            None => (
                None,
                None,
                self.staging_file(),
                0,
                blake3::Hasher::new(),
                false,
            ),
        };
        Ok(Replica {
            archive: Arc::clone(self),
            expected: hash.to_string(),
            sink: Some(ReplicaSink {
                file,
                _lock: lock,
                path: path.clone(),
                hasher,
                size,
                direct,
            }),
            pending: Vec::new(),
            pending_len: 0,
            size: resumed_from,
            resumed_from,
            path: Some(path),
            resumable,
            discard: false,
        })
    }
}

impl Replica {
    /// The bytes a partial copy already had: the sender goes on from this offset.
    pub fn offset(&self) -> u64 {
        self.resumed_from
    }

    /// Drops the bytes a partial copy had, for a sender that sends the whole blob again
    /// (or a partial copy longer than the blob, which cannot be right).
    pub async fn restart(&mut self) -> Result<(), ArchiveError> {
        self.pending.clear();
        self.pending_len = 0;
        self.size = 0;
        self.resumed_from = 0;
        self.on_sink(|sink| {
            if let Some(f) = &mut sink.file {
                f.truncate()?;
            }
            sink.hasher = blake3::Hasher::new();
            Ok(())
        })
        .await
    }

    /// Appends received bytes.
    pub async fn write(&mut self, data: Bytes) -> Result<(), ArchiveError> {
        self.pending_len += data.len();
        self.size += data.len() as u64;
        self.pending.push(data);
        if self.pending_len >= REPLICA_BATCH {
            let chunks = std::mem::take(&mut self.pending);
            self.pending_len = 0;
            self.on_sink(move |sink| sink.write_all(&chunks)).await?;
        }
        Ok(())
    }

    /// Runs `f` on the sink on the blocking pool and puts the sink back.
    async fn on_sink<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut ReplicaSink) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let mut sink = self.sink.take().ok_or_else(|| {
            ArchiveError::Io(std::io::Error::other("replica write after failure"))
        })?;
        let (sink, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut sink);
            (sink, out)
        })
        .await
        .map_err(|e| ArchiveError::Io(std::io::Error::other(e.to_string())))?;
        self.sink = Some(sink);
        Ok(out?)
    }

    /// Verifies the bytes against the expected hash, makes them durable, puts them in the
    /// blob store and announces this node as a holder of `sop_instance_uid`.
    pub async fn finish(mut self, sop_instance_uid: &str) -> Result<(), ArchiveError> {
        let t0 = std::time::Instant::now();
        let chunks = std::mem::take(&mut self.pending);
        let expected = self.expected.clone();
        // A partial copy moves to the staging area under a private name before it is put,
        // as the blob store expects of every staged file.
        let staged_path = if self.resumable {
            self.archive.staging_file()
        } else {
            self.path.clone().unwrap_or_default()
        };
        let to = staged_path.clone();
        // The last bytes, the hash check and the fsync in one hop: a copy counts only once
        // its bytes are verified and on disk, and bytes that fail the check are not synced.
        let (actual, t_hash) = self
            .on_sink(move |sink| {
                sink.write_all(&chunks)?;
                let actual = sink.hasher.finalize().to_hex().to_string();
                let t_hash = t0.elapsed();
                if actual == expected {
                    sink.sync()?;
                    if to != sink.path {
                        std::fs::rename(&sink.path, &to)?;
                    }
                }
                Ok((actual, t_hash))
            })
            .await?;
        if actual != self.expected {
            self.discard = true;
            return Err(ArchiveError::HashMismatch {
                expected: std::mem::take(&mut self.expected),
                actual,
            });
        }
        if self.path.take().is_none() {
            return Err(ArchiveError::Io(std::io::Error::other(
                "replica finished twice",
            )));
        }
        // from here the staged file is the one to remove if the put fails
        self.path = Some(staged_path.clone());
        self.resumable = false;
        let t_sync = t0.elapsed();
        let staged = StagedBlob {
            path: staged_path,
            hash: actual.clone(),
            size: self.size,
        };
        {
            let _gc = self.archive.blob_gc.read().await;
            self.archive.blobs.put(staged).await?;
            self.path = None;
        }
        let t_put = t0.elapsed();
        let me = self.archive.holder().await?;
        self.archive
            .index
            .set_holder(sop_instance_uid, &actual, &me, true)
            .await?;
        tracing::debug!(
            sop_instance_uid,
            resumed_from = self.resumed_from,
            hash_ms = t_hash.as_secs_f64() * 1e3,
            sync_ms = (t_sync - t_hash).as_secs_f64() * 1e3,
            put_ms = (t_put - t_sync).as_secs_f64() * 1e3,
            announce_ms = (t0.elapsed() - t_put).as_secs_f64() * 1e3,
            "replica finish timings"
        );
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let Some(p) = self.path.take() else {
            return;
        };
        // A cut-off partial copy stays to be continued, if it holds enough to be worth it.
        // Bytes still pending in memory are not written: the next transfer asks for them.
        let keep = self.resumable
            && !self.discard
            && std::fs::metadata(&p).is_ok_and(|m| m.len() >= KEEP_PARTIAL_MIN);
        if !keep {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    #[test]
    fn a_partial_copy_keeps_whole_blocks_is_locked_while_open_and_goes_on() {
        use pacsgrid_store::direct::ALIGN;
        let dir = tempfile::tempdir().unwrap();
        let whole: Vec<u8> = (0..3 * ALIGN + 11).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join(hash_of(&whole));
        // cut off a few bytes into the second block: the tail of that block is dropped
        std::fs::write(&path, &whole[..ALIGN + 6]).unwrap();
        let (lock, len, mut hasher) = open_partial(&path).unwrap().unwrap();
        assert_eq!(len, ALIGN as u64);
        // a second replica of the same bytes does not get the file while the first has it
        assert!(open_partial(&path).unwrap().is_none());
        let mut w = DirectWriter::append(&path, len, whole.len() as u64, true).unwrap();
        w.write_all(&whole[ALIGN..]).unwrap();
        hasher.update(&whole[ALIGN..]);
        w.finish().unwrap();
        assert_eq!(hasher.finalize().to_hex().to_string(), hash_of(&whole));
        drop(lock);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert!(open_partial(&path).unwrap().is_some());
    }

    #[test]
    fn prepare_keeps_partial_copies_and_removes_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join(PARTIAL_DIR);
        std::fs::create_dir_all(partial.join("sub")).unwrap();
        std::fs::write(partial.join(hash_of(b"a")), b"a").unwrap();
        std::fs::write(partial.join("not-a-hash"), b"b").unwrap();
        assert_eq!(prepare_partials(dir.path()).unwrap(), 1);
        let left: Vec<_> = std::fs::read_dir(&partial)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![hash_of(b"a")]);
    }
}
