//! The blob store contract: immutable objects named by content hash.

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::AsyncRead;

/// A readable blob, positioned where the caller asked.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send + Unpin>>;

/// A blob as a stream of chunks, for sending it on as it is read (HTTP bodies).
pub type BlobChunks = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

/// Errors of a blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob has this hash.
    #[error("blob {0} not found")]
    NotFound(String),
    /// The hash is not a lowercase hex digest (never used to build a path).
    #[error("invalid blob hash {0:?}")]
    InvalidHash(String),
    /// The backend failed.
    #[error("blob store I/O on {path}: {source}")]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes handed to `put` do not hash to the name they were to be stored under, so
    /// they were refused: a content-addressed store must never hold an object under a wrong name.
    #[error("refused to store blob {expected}: its bytes hash to {actual}")]
    HashMismatch {
        /// The hash the caller named.
        expected: String,
        /// The hash of the bytes actually read.
        actual: String,
    },
    /// An object store (S3) refused or failed a request; `what` names the bucket, object and
    /// endpoint and `cause` the service's answer in one line, so the message alone tells an
    /// operator where to look (the client's own error nests the same text several times).
    #[error("{what}: {cause}")]
    Remote {
        /// The operation, bucket, key and endpoint.
        what: String,
        /// The innermost reason, with the service's error code when it sent one.
        cause: String,
        /// The object store client's error, for callers that match on its kind.
        error: Box<object_store::Error>,
    },
    /// A backend's settings cannot work (an unreadable secret file, an invalid prefix).
    #[error("blob store configuration: {0}")]
    Config(String),
}

/// Which backend keeps a node's blobs, as the `[storage]` configuration chose it.
#[derive(Debug, Clone, Default)]
pub enum BlobBackend {
    /// Files under the data directory (`DATA/blobs`): one machine, no other service.
    #[default]
    Folder,
    /// An S3-compatible bucket, for storage that outgrows one machine's disks.
    S3(crate::s3::S3Config),
}

/// Capacity of the file system (or bucket) a blob store writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Size of the file system.
    pub total_bytes: u64,
    /// What an unprivileged writer can still use.
    pub available_bytes: u64,
}

/// A fully written, fsynced file in the store's staging area, with its hash, ready to be
/// moved into place by [`BlobStore::put`].
#[derive(Debug, Clone)]
pub struct StagedBlob {
    /// Path of the staged file (inside [`BlobStore::staging_dir`]).
    pub path: PathBuf,
    /// Lowercase hex content hash (BLAKE3) of the file's bytes.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
}

/// Where the bytes of instances rest: immutable, content-addressed objects.
///
/// Contract: `put` is idempotent (the same hash twice keeps one object) and durable when it
/// returns (the object survives a crash or power loss); objects are never modified in place.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A local directory where writers stage files before [`BlobStore::put`]; on the same
    /// file system as the store when the store is local, so that `put` is a rename.
    fn staging_dir(&self) -> &Path;

    /// Moves a staged file into the store under its hash, durably. If an object with this
    /// hash exists already, the staged file is removed and the existing object kept.
    async fn put(&self, staged: StagedBlob) -> Result<(), BlobError>;

    /// Opens a blob for reading from byte `offset`.
    async fn open(&self, hash: &str, offset: u64) -> Result<BlobReader, BlobError>;

    /// Reads a blob from byte `offset` as chunks of up to `chunk` bytes. The default reads
    /// through [`BlobStore::open`]; a backend overrides it when it can read with fewer copies.
    async fn chunks(&self, hash: &str, offset: u64, chunk: usize) -> Result<BlobChunks, BlobError> {
        let reader = self.open(hash, offset).await?;
        let what = PathBuf::from(hash);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, chunk.max(1));
        Ok(Box::pin(futures::StreamExt::map(stream, move |r| {
            r.map_err(|source| BlobError::Io {
                path: what.clone(),
                source,
            })
        })))
    }

    /// Room left where blobs are written, when the backend can tell (an object store may not).
    async fn space(&self) -> Result<Option<Space>, BlobError> {
        Ok(None)
    }

    /// The size of a blob, or `NotFound`.
    async fn size(&self, hash: &str) -> Result<u64, BlobError>;

    /// Whether a blob exists.
    async fn exists(&self, hash: &str) -> Result<bool, BlobError> {
        match self.size(hash).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob (absent is not an error).
    async fn delete(&self, hash: &str) -> Result<(), BlobError>;

    /// Every hash in the store, for consistency checks and repair.
    async fn list(&self) -> Result<Vec<String>, BlobError>;

    /// Whether [`BlobStore::put`] keeps the staged file itself (a rename), so that its bytes
    /// are not read again when stored: such files can be written around the page cache
    /// ([`crate::direct`]). A store that uploads the file reads it back, so the default is no.
    fn keeps_staged_file(&self) -> bool {
        false
    }

    /// A local path to the blob if the backend keeps it as a file (lets the archive parse
    /// headers without copying); `None` for remote backends.
    fn local_path(&self, hash: &str) -> Option<PathBuf>;
}

/// Whether a string is a well-formed content hash (64 lowercase hex digits).
pub fn is_valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
