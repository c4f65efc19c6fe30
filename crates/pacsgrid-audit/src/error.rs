//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong with the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the log open for writing.
    #[error("{0} is in use by another process")]
    Locked(PathBuf),
    /// The last complete record is not valid, so the chain cannot be continued safely.
    #[error("{path}: the last record (at byte {offset}) is not valid ({reason}); run `pacsgrid audit verify`")]
    BadTail {
        /// The log.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or fsync failed; nothing more is appended until the node restarts,
    /// because what reached the disk is then unknown.
    #[error("the audit log failed earlier and accepts no more records: {0}")]
    Poisoned(String),
    /// The writer stopped.
    #[error("the audit log is closed")]
    Closed,
    /// A line of the log is not a record (search stops at none: it reports and goes on).
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// TLS setup failed (certificates, keys, server name).
    #[error("syslog TLS: {0}")]
    Tls(String),
    /// The configuration is inconsistent.
    #[error("audit configuration: {0}")]
    Config(String),
}

impl AuditError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
