//! Who is asking: a remote AE, a person or program on HTTP, a grid site, or the node itself,
//! with what they were granted when they were identified.

use crate::ae::AeRight;
use pacsgrid_audit::Participant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The service path a request came in on; audit records and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// DICOM upper layer (C-STORE, C-FIND, C-GET, C-MOVE).
    Dimse,
    /// QIDO-RS, WADO-RS, STOW-RS.
    DicomWeb,
    /// The REST admin and browsing API.
    Rest,
    /// Another site of the grid, over mutual TLS.
    Grid,
    /// The node itself, or its command line run by an operator.
    Local,
}

/// What a person or program on HTTP may be; each grants a fixed set of operations
/// (see [`crate::rules`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including deletes, grid maintenance and the audit trail.
    Admin,
    /// Reads and reports on everything at the site and in the grid.
    Radiologist,
    /// Reads.
    Clinician,
    /// De-identified data only: searches and reads through the de-identified view of
    /// DICOMweb, nothing identified anywhere.
    Researcher,
    /// Stores images, nothing else.
    Modality,
}

impl Role {
    /// Every role, in a stable order (tables, tests, help texts).
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Radiologist,
        Role::Clinician,
        Role::Researcher,
        Role::Modality,
    ];

    /// The role's name as written in configuration and tokens.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Radiologist => "radiologist",
            Role::Clinician => "clinician",
            Role::Researcher => "researcher",
            Role::Modality => "modality",
        }
    }

    /// The role of a name from a token or a configuration file (case-insensitive).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// What kind of requester a principal is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A DICOM application entity; `id` is its calling AE title.
    Ae,
    /// A person authenticated by a token from the configured issuer; `id` is the subject.
    User,
    /// A program authenticated by a static API key; `id` is the key's name.
    ApiKey,
    /// A grid site authenticated by its certificate; `id` is the site name.
    Site,
    /// A request on a node that has no authentication configured (loopback, or `--insecure`).
    Anonymous,
    /// The node itself or its operator at the console.
    Node,
}

/// What a principal was granted when it was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// No access rules are configured for this path: everything is allowed (and still
    /// audited). Only permitted on loopback unless the operator said `--insecure`.
    Unrestricted,
    /// HTTP roles.
    Roles(BTreeSet<Role>),
    /// The rights of a configured AE, and where it may send C-MOVE results (`None`: any
    /// configured destination).
    Ae {
        /// Store, find, retrieve.
        rights: BTreeSet<AeRight>,
        /// Allowed C-MOVE destinations.
        move_destinations: Option<BTreeSet<String>>,
    },
    /// A grid peer: may read feeds, records and blobs of the grid protocol.
    GridPeer,
}

/// Who is asking, from where, on which path, and with which grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity: AE title, token subject, API key name, site name, or "anonymous".
    pub id: String,
    /// What kind of identity `id` is.
    pub kind: PrincipalKind,
    /// The peer address (IP), as seen on the connection.
    pub host: Option<String>,
    /// The service path.
    pub channel: Channel,
    /// What it may do.
    pub grants: Grants,
}

impl Principal {
    /// The requester of an HTTP request on a node without authentication.
    pub fn anonymous(channel: Channel, host: Option<String>) -> Principal {
        Principal {
            id: "anonymous".into(),
            kind: PrincipalKind::Anonymous,
            host,
            channel,
            grants: Grants::Unrestricted,
        }
    }

    /// The node acting on its own (start, stop, background work) or its operator's CLI.
    pub fn node(id: &str) -> Principal {
        Principal {
            id: id.to_string(),
            kind: PrincipalKind::Node,
            host: None,
            channel: Channel::Local,
            grants: Grants::Unrestricted,
        }
    }

    /// A grid site authenticated by its certificate.
    pub fn site(name: &str, host: Option<String>) -> Principal {
        Principal {
            id: name.to_string(),
            kind: PrincipalKind::Site,
            host,
            channel: Channel::Grid,
            grants: Grants::GridPeer,
        }
    }

    /// The principal as an audit participant (AE title in AlternativeUserID for AEs).
    pub fn participant(&self) -> Participant {
        match self.kind {
            PrincipalKind::Ae => Participant::ae(&self.id, self.host.as_deref()),
            _ => Participant::user(&self.id, self.host.as_deref()),
        }
    }

    /// A short description for logs and error messages, e.g. `AE "CT1" at 10.0.0.5`.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            PrincipalKind::Ae => "AE",
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "API key",
            PrincipalKind::Site => "site",
            PrincipalKind::Anonymous => "anonymous client",
            PrincipalKind::Node => "node",
        };
        let mut s = if self.kind == PrincipalKind::Anonymous {
            what.to_string()
        } else {
            format!("{what} {:?}", self.id)
        };
        if let Grants::Roles(roles) = self.grants.clone().non_empty() {
            let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            s.push_str(&format!(" (roles: {})", names.join(", ")));
        }
        if let Some(h) = &self.host {
            s.push_str(" at ");
            s.push_str(h);
        }
        s
    }
}

impl Grants {
    fn non_empty(self) -> Grants {
        match self {
            Grants::Roles(r) if r.is_empty() => Grants::Unrestricted,
            g => g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse(" Admin "), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn description_names_kind_roles_and_host() {
        let p = Principal {
            id: "alice".into(),
            kind: PrincipalKind::User,
            host: Some("10.0.0.7".into()),
            channel: Channel::DicomWeb,
            grants: Grants::Roles([Role::Clinician].into()),
        };
        assert_eq!(
            p.describe(),
            "user \"alice\" (roles: clinician) at 10.0.0.7"
        );
        let a = Principal::anonymous(Channel::Rest, None);
        assert_eq!(a.describe(), "anonymous client");
        assert_eq!(a.participant().user_id, "anonymous");
    }
}
