//! Errors of the access point: refusals (an answer, not a fault) and audit failures.

use crate::operation::Operation;
use crate::principal::Principal;

/// A request that the rules refuse; carries what protocols need to answer it (401 or 403,
/// A-ASSOCIATE-RJ, DIMSE status 0124H) and a reason fit for the log and the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Nobody could be identified: no credentials, or credentials that did not check out
    /// (HTTP 401).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The requester is known but not allowed this operation (HTTP 403, DIMSE 0124H).
    #[error("{who} may not {what}")]
    Forbidden {
        /// Who asked, as logged.
        who: String,
        /// The operation refused, in words.
        what: String,
    },
    /// A calling AE that is not configured, or calls from a host it is not bound to
    /// (A-ASSOCIATE-RJ, calling AE title not recognized).
    #[error("calling AE {ae:?} from {host} is not admitted: {why}")]
    UnknownAe {
        /// The calling AE title.
        ae: String,
        /// The peer address.
        host: String,
        /// Not configured, or the wrong host.
        why: String,
    },
}

impl Denied {
    /// A refusal of `op` to `who`.
    pub fn forbidden(who: &Principal, op: &Operation) -> Denied {
        Denied::Forbidden {
            who: who.describe(),
            what: op.describe(),
        }
    }
}

/// Why the access point could not do its job; the caller must then fail the request, since
/// an access that cannot be audited must not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The audit log refused the record (disk full, log closed).
    #[error("audit log: {0}")]
    Audit(#[from] pacsgrid_audit::AuditError),
    /// The audit trail was asked for, but auditing is off on this node.
    #[error("auditing is off on this node ([audit] enabled = false)")]
    NotAuditing,
    /// The access configuration is inconsistent.
    #[error("access configuration: {0}")]
    Config(String),
}
