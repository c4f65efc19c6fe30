//! The grid's audit trail: what each peer site was sent, and peers refused at the door.
//!
//! Patient data leaves a site through its feed (each `stored` entry carries the instance's
//! record); blob pulls and on-the-fly fetches are of instances whose records went that way,
//! and the person who asked for them is audited where they asked. Feed pages are tallied per
//! peer and study and written every [`FLUSH_EVERY`] as one "instances transferred" record per
//! (peer, study), so a busy grid does not write one record per page.

use pacsgrid_access::{AccessPoint, Denied, Grants, Principal, PrincipalKind, StudyTally};
use pacsgrid_archive::FeedEntry;
use pacsgrid_audit::AuditEvent;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often tallied disclosures are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Tallies of what each peer was sent, waiting for the next flush.
pub(crate) struct Disclosures {
    access: Arc<AccessPoint>,
    pending: Mutex<BTreeMap<String, StudyTally>>,
}

impl Disclosures {
    /// Disclosures audited through `access`.
    pub fn new(access: Arc<AccessPoint>) -> Disclosures {
        Disclosures {
            access,
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// The access point, for refusals at the grid port.
    pub fn access(&self) -> &Arc<AccessPoint> {
        &self.access
    }

    /// Notes the records a feed page sent to `peer`.
    pub fn feed_sent(&self, peer: &str, entries: &[FeedEntry]) {
        let mut records = entries.iter().filter_map(|e| e.record.as_ref()).peekable();
        if records.peek().is_none() || !self.access.is_auditing() {
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let tally = pending.entry(peer.to_string()).or_default();
        for r in records {
            tally.add(
                &r.study.study_uid,
                Some(&r.patient.patient_id),
                Some(&r.patient.issuer),
                &r.instance.sop_class_uid,
            );
        }
    }

    /// Writes every pending tally: one record per (peer, study).
    pub async fn flush(&self) {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        for (peer, tally) in pending {
            let site = Principal::site(&peer, None);
            let template =
                AuditEvent::instances_transferred(self.access.source(), site.participant(), None);
            if let Err(e) = self.access.record_all(tally.into_events(&template)).await {
                tracing::error!(peer, error = %e, "could not audit what a peer site was sent");
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                r = stop.wait_for(|s| *s) => { drop(r); true },
            };
            if stopping {
                break;
            }
            self.flush().await;
        }
        self.flush().await;
    }
}

/// Audits a connection refused at the grid port: a failed TLS handshake (a certificate of
/// another CA, none at all) or a certificate naming a site that is not configured.
pub(crate) async fn refused(access: &AccessPoint, site: Option<&str>, host: String, why: &str) {
    let who = Principal {
        id: site.unwrap_or("unknown peer").to_string(),
        kind: PrincipalKind::Site,
        host: Some(host),
        channel: pacsgrid_access::Channel::Grid,
        grants: Grants::Roles(Default::default()),
    };
    access
        .refused(&who, &Denied::Unauthenticated(why.to_string()))
        .await;
}
