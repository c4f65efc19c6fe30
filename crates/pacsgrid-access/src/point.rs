//! The access point: every service path asks it whether a principal may do an operation, and
//! hands it the audit record of what was done. Refusals are logged and audited here, once.

use crate::ae::AeRights;
use crate::config::AccessConfig;
use crate::error::{AccessError, Denied};
use crate::logins::Logins;
use crate::operation::Operation;
use crate::principal::Principal;
use crate::rules::{self, View};
use crate::token::Authenticator;
use pacsgrid_audit::{AlertKind, AuditEvent, AuditLog, AuditSource, Filter, Record, Search};
use std::net::IpAddr;

/// The node's one access point; share it behind an `Arc` between DIMSE, HTTP and the grid.
pub struct AccessPoint {
    source: AuditSource,
    log: Option<AuditLog>,
    ae: AeRights,
    http: Authenticator,
    logins: Logins,
}

impl std::fmt::Debug for AccessPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPoint")
            .field("source", &self.source)
            .field("auditing", &self.log.is_some())
            .field("ae", &self.ae)
            .field("http", &self.http)
            .finish()
    }
}

impl AccessPoint {
    /// An access point for `cfg`, reporting as `source` into `log` (`None`: auditing is off,
    /// which only benchmarks should do).
    pub fn new(
        cfg: &AccessConfig,
        source: AuditSource,
        log: Option<AuditLog>,
    ) -> Result<AccessPoint, AccessError> {
        Ok(AccessPoint {
            source,
            log,
            ae: AeRights::new(&cfg.ae)?,
            http: Authenticator::new(&cfg.http)?,
            logins: Logins::default(),
        })
    }

    /// An access point with no rules and no audit log, for tests and tools that serve
    /// nobody but their caller.
    pub fn open_door(site: &str) -> AccessPoint {
        AccessPoint {
            source: AuditSource {
                site: site.to_string(),
                source_id: site.to_string(),
                ae_title: None,
                host: None,
            },
            log: None,
            ae: AeRights::default(),
            http: Authenticator::default(),
            logins: Logins::default(),
        }
    }

    /// The node as audit source.
    pub fn source(&self) -> &AuditSource {
        &self.source
    }

    /// Whether records are written (false only when `[audit] enabled = false`).
    pub fn is_auditing(&self) -> bool {
        self.log.is_some()
    }

    /// The AE rules.
    pub fn ae_rights(&self) -> &AeRights {
        &self.ae
    }

    /// The HTTP authenticator.
    pub fn http(&self) -> &Authenticator {
        &self.http
    }

    /// Admits (or refuses, audited) an association from `calling_ae` at `peer`.
    pub async fn admit_ae(&self, calling_ae: &str, peer: IpAddr) -> Result<Principal, Denied> {
        match self.ae.admit(calling_ae, peer) {
            Ok(p) => Ok(p),
            Err(denied) => {
                let who = Principal {
                    id: calling_ae.trim().to_string(),
                    kind: crate::PrincipalKind::Ae,
                    host: Some(peer.to_string()),
                    channel: crate::Channel::Dimse,
                    grants: crate::Grants::Roles(Default::default()),
                };
                self.refused(&who, &denied).await;
                Err(denied)
            }
        }
    }

    /// Authenticates an HTTP request from its `Authorization` header. A failure is audited,
    /// and so is the first use of each credential since the node started (as a login).
    pub async fn authenticate_http(
        &self,
        authorization: Option<&str>,
        host: Option<String>,
        channel: crate::Channel,
    ) -> Result<Principal, Denied> {
        match self
            .http
            .authenticate(authorization, host.clone(), channel)
            .await
        {
            Ok(p) => {
                if let Some(credential) = authorization.filter(|_| self.http.is_configured()) {
                    if self.logins.first_use(credential) {
                        self.logged_in(&p).await;
                    }
                }
                Ok(p)
            }
            Err(denied) => {
                let mut who = Principal::anonymous(channel, host);
                who.grants = crate::Grants::Roles(Default::default());
                self.refused(&who, &denied).await;
                Err(denied)
            }
        }
    }

    /// Records that `who` presented a credential for the first time. Failing to write it is
    /// logged, not returned: the request's own record fails the request if the trail is down.
    async fn logged_in(&self, who: &Principal) {
        tracing::info!(user = %who.id, kind = ?who.kind, channel = ?who.channel, "login");
        let ev = AuditEvent::login(&self.source, who.participant());
        if let Err(e) = self.append(ev).await {
            tracing::error!(error = %e, user = %who.id, "could not audit a login");
        }
    }

    /// Whether `who` may do `op`; a refusal is logged and audited before it is returned.
    pub async fn authorize(&self, who: &Principal, op: &Operation) -> Result<(), Denied> {
        if rules::allows(&who.grants, op) {
            return Ok(());
        }
        let denied = Denied::forbidden(who, op);
        self.refused(who, &denied).await;
        Err(denied)
    }

    /// Whether `who` may do `op`, and in which view: `deidentified_offered` says the path
    /// can serve de-identified data, so that principals allowed nothing else (researchers)
    /// get [`View::DeIdentified`] there and a refusal everywhere else. A refusal is logged
    /// and audited before it is returned.
    pub async fn authorize_view(
        &self,
        who: &Principal,
        op: &Operation,
        deidentified_offered: bool,
    ) -> Result<View, Denied> {
        if let Some(view) = rules::view(&who.grants, op, deidentified_offered) {
            return Ok(view);
        }
        let mut denied = Denied::forbidden(who, op);
        if rules::view(&who.grants, op, true).is_some() {
            if let Denied::Forbidden { what, .. } = &mut denied {
                what.push_str(
                    " here: this path has no de-identified view, and de-identified data is all they may see",
                );
            }
        }
        self.refused(who, &denied).await;
        Err(denied)
    }

    /// Logs and audits a refusal. An audit failure here is logged, not returned: the request
    /// is refused either way.
    pub async fn refused(&self, who: &Principal, denied: &Denied) {
        tracing::warn!(
            requester = %who.describe(),
            channel = ?who.channel,
            reason = %denied,
            "access refused"
        );
        let alert = match denied {
            Denied::Forbidden { .. } => AlertKind::UseOfRestrictedFunction,
            Denied::Unauthenticated(_) | Denied::UnknownAe { .. } => AlertKind::NodeAuthentication,
        };
        let ev =
            AuditEvent::security_alert(&self.source, alert, who.participant(), &denied.to_string());
        if let Err(e) = self.append(ev).await {
            tracing::error!(error = %e, "could not audit a refusal");
        }
    }

    /// Writes `ev` durably (fsync) before returning; the caller acknowledges the access only
    /// after this succeeded, and fails the request if it did not.
    pub async fn record(&self, ev: AuditEvent) -> Result<(), AccessError> {
        self.append(ev).await
    }

    /// Writes several events; they are group-committed together.
    pub async fn record_all(&self, evs: Vec<AuditEvent>) -> Result<(), AccessError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        // all queued at once, so the writer commits them as one group (one fsync)
        let writes = evs.into_iter().map(|ev| log.append(ev));
        for r in futures::future::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    /// Reads the audit trail for `who`: the records matching `filter` with a sequence number
    /// above `after`, at most `limit`, oldest first. The reading is itself audited (Audit Log
    /// Used, with `request` as the query of the log's URI); the record is written while the
    /// log is searched, and nothing is returned unless it was written.
    pub async fn read_audit(
        &self,
        who: &Principal,
        filter: Filter,
        after: u64,
        limit: usize,
        request: &str,
    ) -> Result<Vec<Record>, AccessError> {
        let log = self.log.as_ref().ok_or(AccessError::NotAuditing)?;
        let path = log.path().to_path_buf();
        let mut uri = format!("file://{}", path.display());
        if !request.is_empty() {
            uri.push('?');
            uri.push_str(request);
        }
        let ev = AuditEvent::audit_log_used(&self.source, who.participant(), &uri);
        let search = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for item in Search::open(&path, filter)? {
                match item {
                    Ok(r) if r.seq > after => out.push(r),
                    Ok(_) => {}
                    // A damaged line is `audit verify`'s business; the search goes on.
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable audit record"),
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok::<_, pacsgrid_audit::AuditError>(out)
        });
        let (recorded, found) = tokio::join!(self.append(ev), search);
        recorded?;
        match found {
            Ok(r) => Ok(r?),
            Err(e) => Err(AccessError::Config(format!(
                "the audit search stopped: {e}"
            ))),
        }
    }

    async fn append(&self, ev: AuditEvent) -> Result<(), AccessError> {
        match &self.log {
            Some(log) => {
                log.append(ev).await?;
                Ok(())
            }
            None => Ok(()),
        }
    }
}
