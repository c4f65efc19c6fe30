//! The default blob store: one file per object in a local folder.
//!
//! Layout: `root/blobs/<h[0..2]>/<hash>` for objects and `root/staging/` for files being
//! received. The 256 fan-out directories are all created when the store is opened: with a
//! deeper, lazily created fan-out nearly every new object created a directory and paid two
//! extra directory fsyncs, a third of the ingest time. One level keeps ten million objects at
//! about 40 000 files a directory, which ext4 and XFS index without trouble.

use crate::blob::{is_valid_hash, BlobChunks, BlobError, BlobReader, BlobStore, Space, StagedBlob};
use async_trait::async_trait;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A [`BlobStore`] that keeps each object as a file under a local folder.
#[derive(Debug, Clone)]
pub struct FolderBlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    blobs: PathBuf,
    staging: PathBuf,
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> BlobError {
    BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a directory's entries durable (a rename or a creation inside it).
fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Removes whatever a crash left in a staging area: those files were never acknowledged to a
/// sender. Every backend stages locally, so each empties its staging area when opened.
pub(crate) fn empty_staging(staging: &Path) -> Result<usize, BlobError> {
    let entries = std::fs::read_dir(staging).map_err(|e| io_err(staging, e))?;
    let mut removed = 0usize;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(staging, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(|e| io_err(&path, e))?.is_dir();
        let res = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match res {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %staging.display(), "removed unacknowledged staged files left by a previous run");
    }
    Ok(removed)
}

impl FolderBlobStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes whatever a crash left
    /// in its staging area: those files were never acknowledged to a sender. One process
    /// owns a root; several nodes sharing storage use an object store instead.
    pub fn open(root: &Path) -> Result<FolderBlobStore, BlobError> {
        let blobs = root.join("blobs");
        let staging = root.join("staging");
        for dir in [&blobs, &staging] {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        fsync_dir(root)?;
        let mut created = false;
        for i in 0..=255u8 {
            let dir = blobs.join(format!("{i:02x}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => created = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&dir, e)),
            }
        }
        if created {
            fsync_dir(&blobs)?;
        }
        empty_staging(&staging)?;
        Ok(FolderBlobStore {
            inner: Arc::new(Inner { blobs, staging }),
        })
    }

    /// The path an object with this (valid) hash has in the store.
    fn path_of(&self, hash: &str) -> Result<PathBuf, BlobError> {
        if !is_valid_hash(hash) {
            return Err(BlobError::InvalidHash(hash.to_string()));
        }
        Ok(self.inner.blobs.join(&hash[0..2]).join(hash))
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T, F>(what: &Path, f: F) -> Result<T, BlobError>
where
    F: FnOnce() -> Result<T, BlobError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(what, std::io::Error::other(e.to_string())))?
}

#[async_trait]
impl BlobStore for FolderBlobStore {
    fn staging_dir(&self) -> &Path {
        &self.inner.staging
    }

    async fn put(&self, staged: StagedBlob) -> Result<(), BlobError> {
        let target = self.path_of(&staged.hash)?;
        let what = target.clone();
        blocking(&what, move || {
            let Some(leaf) = target.parent() else {
                return Err(io_err(&target, ErrorKind::InvalidInput.into()));
            };
            if target.exists() {
                // Content-addressed: the object there has these very bytes already.
                return match std::fs::remove_file(&staged.path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(&staged.path, e)),
                    _ => Ok(()),
                };
            }
            // rename(2) replaces atomically, so a concurrent put of the same hash is harmless.
            std::fs::rename(&staged.path, &target).map_err(|e| io_err(&staged.path, e))?;
            fsync_dir(leaf)
        })
        .await
    }

    async fn open(&self, hash: &str, offset: u64) -> Result<BlobReader, BlobError> {
        // A reader over `chunks`: one blocking hop per MiB instead of one per read, and the
        // first chunk is read here so that a missing blob is NotFound at open, not later.
        let mut chunks = self.chunks(hash, offset, READ_CHUNK).await?;
        let first = futures::StreamExt::next(&mut chunks).await.transpose()?;
        let rest = futures::StreamExt::chain(futures::stream::iter(first.map(Ok)), chunks);
        let io = futures::StreamExt::map(rest, |r| r.map_err(std::io::Error::other));
        Ok(Box::pin(tokio_util::io::StreamReader::new(io)))
    }

    async fn chunks(&self, hash: &str, offset: u64, chunk: usize) -> Result<BlobChunks, BlobError> {
        // One blocking-pool hop per chunk, reading straight into the chunk's buffer: tokio's
        // File hops per read and copies through its own buffer, which halved WADO-RS speed.
        let path = Arc::new(self.path_of(hash)?);
        let chunk = chunk.max(1);
        let hash = hash.to_string();
        let stream = futures::stream::try_unfold(ChunkState::Start { offset }, move |state| {
            let (path, hash) = (Arc::clone(&path), hash.clone());
            async move {
                if matches!(state, ChunkState::Done) {
                    return Ok(None);
                }
                let opened = Arc::clone(&path);
                let read = tokio::task::spawn_blocking(move || read_chunk(&opened, state, chunk))
                    .await
                    .map_err(|e| io_err(&path, std::io::Error::other(e)))?;
                match read {
                    Ok((buf, _)) if buf.is_empty() => Ok(None),
                    Ok((buf, next)) => Ok(Some((bytes::Bytes::from(buf), next))),
                    Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::NotFound(hash)),
                    Err(e) => Err(io_err(&path, e)),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn space(&self) -> Result<Option<Space>, BlobError> {
        let dir = self.inner.blobs.clone();
        let stat = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || rustix::fs::statvfs(&dir)
        })
        .await
        .map_err(|e| io_err(&dir, std::io::Error::other(e)))?
        .map_err(|e| io_err(&dir, e.into()))?;
        let frag = stat.f_frsize;
        Ok(Some(Space {
            total_bytes: stat.f_blocks.saturating_mul(frag),
            available_bytes: stat.f_bavail.saturating_mul(frag),
        }))
    }

    async fn size(&self, hash: &str) -> Result<u64, BlobError> {
        let path = self.path_of(hash)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(BlobError::NotFound(hash.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(BlobError::NotFound(hash.to_string())),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn delete(&self, hash: &str) -> Result<(), BlobError> {
        let path = self.path_of(hash)?;
        // Empty fan-out directories are left in place: removing them would race with a put.
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let blobs = self.inner.blobs.clone();
        let what = blobs.clone();
        blocking(&what, move || {
            let mut out = Vec::new();
            for l1 in read_dir_sorted(&blobs)? {
                let Some(n1) = file_name(&l1) else { continue };
                if n1.len() != 2 || !l1.is_dir() {
                    continue;
                }
                for f in read_dir_sorted(&l1)? {
                    // Only names that belong here count: stray files are not objects.
                    if let Some(h) = file_name(&f) {
                        if is_valid_hash(&h) && h[0..2] == n1 {
                            out.push(h);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    fn keeps_staged_file(&self) -> bool {
        true
    }

    fn local_path(&self, hash: &str) -> Option<PathBuf> {
        self.path_of(hash).ok()
    }
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, BlobError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A fan-out directory removed by hand while we walk is simply empty.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        out.push(entry.map_err(|e| io_err(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Chunk size of readers returned by `open`.
const READ_CHUNK: usize = 1 << 20;

/// Where a chunked read of a blob file stands.
enum ChunkState {
    /// Not opened yet: the first chunk opens the file in the same blocking hop.
    Start { offset: u64 },
    /// Open, positioned after the last chunk, with this many bytes left.
    Reading { file: std::fs::File, remaining: u64 },
    /// Everything was read.
    Done,
}

/// Reads the next chunk (up to `chunk` bytes; shorter only at the end of the file).
fn read_chunk(
    path: &Path,
    state: ChunkState,
    chunk: usize,
) -> std::io::Result<(Vec<u8>, ChunkState)> {
    use std::io::Seek;
    let (file, remaining) = match state {
        ChunkState::Start { offset } => {
            let mut file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            if offset > 0 {
                file.seek(std::io::SeekFrom::Start(offset))?;
            }
            (file, len.saturating_sub(offset))
        }
        ChunkState::Reading { file, remaining } => (file, remaining),
        ChunkState::Done => return Ok((Vec::new(), ChunkState::Done)),
    };
    // Size the buffer to what is left and read straight into its uninitialised capacity:
    // zeroing a full chunk for a smaller object cost more than the read itself, and
    // read_to_end grows its reads from 8 KiB, seven syscalls for a 512 KiB object.
    let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(chunk);
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        match rustix::io::read(&file, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The allocator may round the capacity up; a chunk never exceeds what was asked for.
    buf.truncate(want);
    let remaining = remaining.saturating_sub(buf.len() as u64);
    let next = if buf.len() < chunk || remaining == 0 {
        ChunkState::Done
    } else {
        ChunkState::Reading { file, remaining }
    };
    Ok((buf, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_empties_the_staging_area() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobStore::open(dir.path()).unwrap();
        std::fs::write(store.staging_dir().join("half-written"), b"x").unwrap();
        std::fs::create_dir(store.staging_dir().join("sub")).unwrap();
        drop(store);
        let store = FolderBlobStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(store.staging_dir()).unwrap().count(), 0);
        assert!(dir.path().join("blobs").is_dir());
    }

    #[test]
    fn layout_fans_out_by_hash_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobStore::open(dir.path()).unwrap();
        let h = "ab".repeat(32);
        let p = store.local_path(&h).unwrap();
        assert_eq!(p, dir.path().join("blobs").join("ab").join(&h));
        // every fan-out directory exists from the start, so a put never creates one
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            256
        );
        assert_eq!(store.local_path("../../etc/passwd"), None);
        assert_eq!(store.local_path(&"AB".repeat(32)), None);
    }

    #[tokio::test]
    async fn chunks_return_exactly_the_bytes_from_the_offset() {
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobStore::open(dir.path()).unwrap();
        let h = "cd".repeat(32);
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(store.local_path(&h).unwrap(), &data).unwrap();
        for (offset, chunk) in [
            (0u64, 1000usize),
            (0, 2500),
            (0, 4096),
            (132, 1000),
            (2500, 7),
        ] {
            let parts: Vec<bytes::Bytes> = store
                .chunks(&h, offset, chunk)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= chunk));
            assert_eq!(
                parts.concat(),
                data[offset as usize..],
                "offset {offset} chunk {chunk}"
            );
        }
        let missing = store.chunks(&"ef".repeat(32), 0, 10).await.unwrap();
        let err = missing.try_collect::<Vec<_>>().await.unwrap_err();
        assert!(matches!(err, BlobError::NotFound(_)), "{err}");
        assert!(store.chunks("../x", 0, 10).await.is_err());
    }
}
