//! Archive errors, and the DIMSE status each store failure maps to.

use pacsgrid_dicom::status;
use pacsgrid_store::{BlobError, IndexError};

/// Why an object was not stored. The message is meant for the sender and the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes do not parse as a DICOM data set (truncated, malformed).
    #[error("cannot understand the data set: {0}")]
    CannotUnderstand(String),
    /// The data set contradicts the command or lacks what identifies it (UID mismatch,
    /// invalid UID, missing Study/Series/SOP Instance UID).
    #[error("data set does not match: {0}")]
    Mismatch(String),
    /// The SOP class is not a storage class this node accepts.
    #[error("SOP class {0} is not a storage SOP class")]
    NotStorage(String),
    /// The node is out of space or another resource.
    #[error("out of resources: {0}")]
    OutOfResources(String),
    /// An internal failure (I/O, database); the object was not stored.
    #[error("internal failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// The C-STORE response status for this failure.
    pub fn dimse_status(&self) -> u16 {
        match self {
            StoreError::CannotUnderstand(_) => status::ERROR_CANNOT_UNDERSTAND,
            StoreError::Mismatch(_) => status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            StoreError::NotStorage(_) => status::SOP_CLASS_NOT_SUPPORTED,
            StoreError::OutOfResources(_) => status::REFUSED_OUT_OF_RESOURCES,
            StoreError::Internal(_) => status::FAILED_UNABLE_TO_PROCESS,
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            StoreError::OutOfResources(format!("disk full: {e}"))
        } else {
            StoreError::Internal(format!("I/O: {e}"))
        }
    }
}

impl From<BlobError> for StoreError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Io { source, path } if source.raw_os_error() == Some(28) => {
                StoreError::OutOfResources(format!("disk full writing {}", path.display()))
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

impl From<IndexError> for StoreError {
    fn from(e: IndexError) -> Self {
        match e {
            // A database server that is away comes back: tell the sender to try again.
            IndexError::Unreachable(_) => StoreError::OutOfResources(e.to_string()),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// Errors of archive operations other than storing.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A local file could not be read or written.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A stored object could not be converted to the transfer syntax asked for.
    #[error("cannot convert {sop_instance_uid} from {from} to {to}: {why}")]
    Transcode {
        /// The instance.
        sop_instance_uid: String,
        /// Its stored transfer syntax.
        from: String,
        /// The transfer syntax asked for.
        to: String,
        /// Why not.
        why: String,
    },
    /// The bytes are not on this node and no other site could provide them.
    #[error("instance bytes {hash} are not held here and could not be fetched: {why}")]
    Unavailable {
        /// The content hash wanted.
        hash: String,
        /// What the grid reported.
        why: String,
    },
    /// Bytes received from another site do not match their content hash.
    #[error("bytes received for {expected} hash to {actual}: refused")]
    HashMismatch {
        /// The hash the bytes should have.
        expected: String,
        /// The hash they had.
        actual: String,
    },
}
