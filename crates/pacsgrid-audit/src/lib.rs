//! The audit trail (IHE ATNA, DICOM PS3.15 A.5): typed audit events rendered as DICOM audit
//! messages, an append-only tamper-evident local log with group commit, its verification and
//! search, and forwarding to a syslog collector over TLS.
//!
//! Every service path calls one access point that appends here; this crate knows nothing of
//! DIMSE or HTTP.

pub mod config;
pub mod error;
pub mod event;
pub mod log;
pub mod record;
pub mod search;
pub mod syslog;
pub mod verify;
pub mod xml;

#[cfg(test)]
mod samples;

pub use config::{AuditConfig, SyslogConfig};
pub use error::AuditError;
pub use event::{
    Action, AlertKind, AuditEvent, AuditSource, EventKind, Outcome, Participant, ParticipantObject,
    PatientRef, Role, StudyRef,
};
pub use log::{AuditLog, TornTail, LOG_FILE};
pub use record::Record;
pub use search::{parse_since, Filter, Search};
pub use syslog::{SyslogForwarder, CURSOR_FILE};
pub use verify::{verify, BadRecord, VerifyReport};
