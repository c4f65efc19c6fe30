//! Receiving one object: streamed to a staging file, hashed, validated, then committed.

use crate::archive::Archive;
use crate::error::StoreError;
use pacsgrid_store::AuditMark;
use std::sync::Arc;

/// What the sender declared about an object before its data set arrives (the C-STORE
/// command and the presentation context, or the STOW-RS part headers).
#[derive(Debug, Clone)]
pub struct IncomingMeta {
    /// AffectedSOPClassUID of the command.
    pub sop_class_uid: String,
    /// AffectedSOPInstanceUID of the command.
    pub sop_instance_uid: String,
    /// The transfer syntax the data set is encoded in.
    pub transfer_syntax: String,
    /// Who sends it (calling AE title, user), for provenance and logs.
    pub source: String,
}

/// The result of a successful store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored.
    Stored {
        /// The instance.
        sop_instance_uid: String,
        /// Its study.
        study_uid: String,
        /// Content hash.
        hash: String,
        /// Change-feed sequence number.
        seq: i64,
        /// Whose data it is.
        subject: Subject,
    },
    /// Already stored with identical bytes: nothing changed.
    Duplicate {
        /// The instance.
        sop_instance_uid: String,
        /// Content hash.
        hash: String,
        /// Whose data it is.
        subject: Subject,
    },
    /// Already stored with different bytes: the first is kept, this one set aside.
    Quarantined {
        /// The instance.
        sop_instance_uid: String,
        /// Hash of the object kept.
        kept_hash: String,
        /// Hash of the object set aside.
        quarantined_hash: String,
        /// Whose data it is.
        subject: Subject,
    },
}

/// Whose data a received object is, as its header says: what the audit trail records of a
/// store (PS3.15: one patient, the study, the SOP class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// PatientID.
    pub patient_id: String,
    /// IssuerOfPatientID (the site's default issuer when the sender gave none).
    pub issuer: String,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SOPClassUID.
    pub sop_class_uid: String,
}

impl StoreOutcome {
    /// Whose data the object was, whatever became of it.
    pub fn subject(&self) -> &Subject {
        match self {
            StoreOutcome::Stored { subject, .. }
            | StoreOutcome::Duplicate { subject, .. }
            | StoreOutcome::Quarantined { subject, .. } => subject,
        }
    }
}

/// An object being received. Write the data set bytes as they arrive, then
/// [`Incoming::finish`]. Dropping it without finishing removes the staged file.
pub struct Incoming {
    pub(crate) archive: Arc<Archive>,
    pub(crate) inner: crate::archive::Staging,
}

impl Incoming {
    /// Appends data set bytes (in the declared transfer syntax, as received).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.inner.write(data).await
    }

    /// Has the index keep `mark` with the instance, in the same commit: the store is not in
    /// the audit trail yet, and the mark lets a restart write its record if the node stops
    /// before the session does.
    pub fn mark_for_audit(&mut self, mark: AuditMark) {
        self.inner.mark = Some(mark);
    }

    /// Validates, hashes and commits the object; returns only once it is durable.
    pub async fn finish(self) -> Result<StoreOutcome, StoreError> {
        let Incoming { archive, inner } = self;
        archive.commit(inner).await
    }
}
