//! What an association asks of the access point: whether its AE may do each operation, and
//! the audit records of what it did. Handlers call these few functions; the rules and the
//! records themselves live in `pacsgrid-access` and `pacsgrid-audit`.

use crate::identifier::Refusal;
use pacsgrid_access::{AccessPoint, Operation, Principal, StudyTally};
use pacsgrid_archive::{Archive, AuditMark, Incoming, PendingAudit, StoredInstance, Subject};
use pacsgrid_audit::{AuditEvent, Participant};
use pacsgrid_dicom::status;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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
    /// Kept with each instance stored until its record is written (auditing on only).
    mark: Option<AuditMark>,
}

/// A session name unique across the node's restarts: start time and a counter.
fn new_session() -> String {
    static START: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    });
    format!("dimse-{start:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
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
    /// The access state of a newly admitted association; with auditing on, its stores are
    /// marked in the index until their records are written.
    pub fn new(who: Principal, access: &AccessPoint) -> AssocAccess {
        let mark = access.is_auditing().then(|| AuditMark {
            session: new_session(),
            who: who.participant().to_json(),
        });
        AssocAccess {
            who,
            refused: HashSet::new(),
            stored: StudyTally::new(),
            mark,
        }
    }

    /// Has `incoming` leave this association's audit mark with its index row.
    pub fn mark(&self, incoming: &mut Incoming) {
        if let Some(m) = &self.mark {
            incoming.mark_for_audit(m.clone());
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
    pub async fn stored(&mut self, access: &AccessPoint, archive: &Archive, subject: &Subject) {
        self.stored.add(
            &subject.study_uid,
            Some(&subject.patient_id),
            Some(&subject.issuer),
            &subject.sop_class_uid,
        );
        if self.stored.len() >= FLUSH_STUDIES {
            self.flush(access, archive).await;
        }
    }

    /// Writes one "instances stored" record per study stored so far, then drops the marks
    /// they replace. Called when the association ends, before the release is answered.
    pub async fn flush(&mut self, access: &AccessPoint, archive: &Archive) {
        if self.stored.is_empty() {
            return;
        }
        let tally = std::mem::take(&mut self.stored);
        let template = AuditEvent::instances_stored(access.source(), self.who.participant());
        let (studies, instances) = (tally.len(), tally.instances());
        if let Err(e) = access.record_all(tally.into_events(&template)).await {
            // the marks stay: the next start writes these records
            tracing::error!(error = %e, studies, instances, "could not audit stored instances");
            return;
        }
        if let Some(m) = &self.mark {
            if let Err(e) = archive.clear_audit_marks(&m.session).await {
                // harmless but for a repeated record after the next restart
                tracing::warn!(error = %e, "could not drop the audit marks of recorded stores");
            }
        }
    }
}

/// Marks read per round at start-up.
const RECOVER_PAGE: u32 = 10_000;

/// Writes the "instances stored" records that a previous run acknowledged but never wrote
/// (it stopped in the middle of an association), from the marks kept with the instances:
/// one record per session and study, dated when its first instance was stored, saying how
/// it was recovered. Run at start-up, before any association. What cannot be done now is
/// logged and left for the next start.
pub async fn recover_unaudited_stores(access: &AccessPoint, archive: &Archive) {
    let mut recovered = 0u64;
    loop {
        let page = match archive.pending_audits(RECOVER_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not read the stores the last run left unaudited");
                return;
            }
        };
        let Some(last) = page.last().map(|p| p.id) else {
            break;
        };
        let n = page.len() as u64;
        if access.is_auditing() {
            if let Err(e) = access.record_all(recovered_events(access, page)).await {
                tracing::error!(error = %e, "could not write the audit records of stores the last run acknowledged; kept for the next start");
                return;
            }
        }
        if let Err(e) = archive.clear_audit_marks_through(last).await {
            tracing::error!(error = %e, "could not drop the audit marks just recorded");
            return;
        }
        recovered += n;
    }
    if recovered > 0 && access.is_auditing() {
        tracing::warn!(
            instances = recovered,
            "the last run stopped in the middle of associations: wrote the audit records of the stores it had acknowledged"
        );
    } else if recovered > 0 {
        tracing::warn!(
            instances = recovered,
            "the last run left stores unaudited, and auditing is now off: dropped their marks"
        );
    }
}

/// One event per (session, study) of the marks, in the order first stored.
fn recovered_events(access: &AccessPoint, page: Vec<PendingAudit>) -> Vec<AuditEvent> {
    let mut sessions: BTreeMap<(i64, String), (String, i64, StudyTally)> = BTreeMap::new();
    let mut first_id: BTreeMap<String, i64> = BTreeMap::new();
    for p in page {
        let first = *first_id.entry(p.mark.session.clone()).or_insert(p.id);
        let entry = sessions
            .entry((first, p.mark.session.clone()))
            .or_insert_with(|| (p.mark.who.clone(), p.at_ms, StudyTally::new()));
        entry.2.add(
            &p.study_uid,
            Some(&p.patient_id),
            Some(&p.issuer),
            &p.sop_class_uid,
        );
    }
    let mut events = Vec::new();
    for (_, (who, at_ms, tally)) in sessions {
        let sender = Participant::from_json(&who)
            .unwrap_or_else(|| Participant::user("unknown sender", None));
        let template = AuditEvent::instances_stored(access.source(), sender)
            .outcome(
                pacsgrid_audit::Outcome::Success,
                Some("recorded at restart: the node stopped before the association ended"),
            )
            .at_unix_ms(at_ms);
        events.extend(tally.into_events(&template));
    }
    events
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
