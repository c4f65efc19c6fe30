//! What an association asks of the access point: whether its AE may do each operation, and
//! the audit records of what it did. Handlers call these few functions; the rules and the
//! records themselves live in `pacsgrid-access` and `pacsgrid-audit`.

use crate::identifier::Refusal;
use pacsgrid_access::{AccessPoint, Operation, Principal, StudyTally};
use pacsgrid_archive::{StoredInstance, Subject};
use pacsgrid_audit::{AuditEvent, Participant};
use pacsgrid_dicom::status;
use std::collections::HashSet;

/// Stored instances are audited per study when the association ends, or earlier once this
/// many studies are pending, so a long-lived association (a router) is not unaudited for hours.
const FLUSH_STUDIES: usize = 64;

/// The access state of one association: who is on the other end, which refusals were already
/// audited, and the studies it stored that are not yet in the audit log.
pub(crate) struct AssocAccess {
    /// The requester, as admitted.
    pub who: Principal,
    refused: HashSet<&'static str>,
    stored: StudyTally,
}

fn kind(op: &Operation) -> &'static str {
    match op {
        Operation::Store => "store",
        Operation::Query => "find",
        Operation::Retrieve => "get",
        Operation::Move { .. } => "move",
        _ => "other",
    }
}

impl AssocAccess {
    /// The access state of a newly admitted association.
    pub fn new(who: Principal) -> AssocAccess {
        AssocAccess {
            who,
            refused: HashSet::new(),
            stored: StudyTally::new(),
        }
    }

    /// Whether the association may do `op`. A refusal answers 0124H (refused: not authorized)
    /// and is audited the first time per kind of operation: a modality without store rights
    /// sending 500 images leaves one record, not 500.
    pub async fn permit(&mut self, access: &AccessPoint, op: &Operation) -> Result<(), Refusal> {
        let denied = if self.refused.contains(kind(op)) {
            if pacsgrid_access::rules::allows(&self.who.grants, op) {
                return Ok(());
            }
            pacsgrid_access::Denied::forbidden(&self.who, op)
        } else {
            match access.authorize(&self.who, op).await {
                Ok(()) => return Ok(()),
                Err(d) => {
                    self.refused.insert(kind(op));
                    d
                }
            }
        };
        Err(Refusal {
            status: status::REFUSED_NOT_AUTHORIZED,
            comment: denied.to_string(),
        })
    }

    /// Counts an instance the association stored (or sent again, or that was quarantined).
    pub async fn stored(&mut self, access: &AccessPoint, subject: &Subject) {
        self.stored.add(
            &subject.study_uid,
            Some(&subject.patient_id),
            Some(&subject.issuer),
            &subject.sop_class_uid,
        );
        if self.stored.len() >= FLUSH_STUDIES {
            self.flush(access).await;
        }
    }

    /// Writes one "instances stored" record per study stored so far. Called when the
    /// association ends, before the release is answered.
    pub async fn flush(&mut self, access: &AccessPoint) {
        if self.stored.is_empty() {
            return;
        }
        let tally = std::mem::take(&mut self.stored);
        let template = AuditEvent::instances_stored(access.source(), self.who.participant());
        let (studies, instances) = (tally.len(), tally.instances());
        if let Err(e) = access.record_all(tally.into_events(&template)).await {
            tracing::error!(error = %e, studies, instances, "could not audit stored instances");
        }
    }
}

/// The audit record of a C-FIND: the identifier as received, under its information model.
pub(crate) fn query_event(
    access: &AccessPoint,
    who: &Principal,
    model_uid: &str,
    identifier: &[u8],
    transfer_syntax: &str,
) -> AuditEvent {
    AuditEvent::query(access.source(), who.participant(), model_uid, identifier)
        .query_transfer_syntax(transfer_syntax)
}

/// Tallies the studies a C-GET or C-MOVE sent, for one record per study at its end.
#[derive(Default)]
pub(crate) struct Sent(StudyTally);

impl Sent {
    /// Counts one instance that reached the receiver.
    pub fn add(&mut self, inst: &StoredInstance) {
        self.0.add(
            &inst.study_uid,
            Some(&inst.patient_id),
            Some(&inst.issuer),
            &inst.sop_class_uid,
        );
    }

    /// Writes one "instances transferred" record per study: to the requester itself (C-GET)
    /// or to `destination` (C-MOVE). Fails only when the log cannot take it.
    pub async fn record(
        self,
        access: &AccessPoint,
        who: &Principal,
        destination: Option<Participant>,
    ) -> Result<(), pacsgrid_access::AccessError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let template =
            AuditEvent::instances_transferred(access.source(), who.participant(), destination);
        access.record_all(self.0.into_events(&template)).await
    }
}
