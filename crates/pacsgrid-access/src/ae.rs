//! AE rights for DIMSE: which calling AE titles may associate, from which hosts, and which of
//! store / find / retrieve they may use (and to which destinations they may move).

use crate::error::{AccessError, Denied};
use crate::principal::{Channel, Grants, Principal, PrincipalKind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, ToSocketAddrs};

/// One DIMSE right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AeRight {
    /// C-STORE to this node.
    Store,
    /// C-FIND.
    Find,
    /// C-GET, and C-MOVE to the allowed destinations.
    Retrieve,
}

/// One `[[access.ae]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeRule {
    /// The calling AE title.
    pub title: String,
    /// Host names or IP addresses it must call from; absent: any host.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// What it may do: any of "store", "find", "retrieve".
    pub may: Vec<AeRight>,
    /// AE titles it may C-MOVE to; absent: any configured destination.
    #[serde(default)]
    pub move_destinations: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Entry {
    hosts: Option<Vec<IpAddr>>,
    grants: Grants,
}

/// The configured AEs, looked up at association time. With no rules configured every
/// calling AE is admitted with every right (the embedded default, loopback only).
#[derive(Debug, Clone, Default)]
pub struct AeRights {
    rules: Option<BTreeMap<String, Entry>>,
}

impl AeRights {
    /// Builds the lookup table, resolving host names once, now. An empty list means no
    /// restriction; a rule naming a host that does not resolve is a configuration error.
    pub fn new(rules: &[AeRule]) -> Result<AeRights, AccessError> {
        if rules.is_empty() {
            return Ok(AeRights { rules: None });
        }
        let mut map = BTreeMap::new();
        for r in rules {
            let title = r.title.trim().to_string();
            if title.is_empty() || title.len() > 16 {
                return Err(AccessError::Config(format!(
                    "[[access.ae]] title {:?} must be 1 to 16 characters",
                    r.title
                )));
            }
            let hosts = match &r.hosts {
                None => None,
                Some(hs) => Some(resolve_all(&title, hs)?),
            };
            let grants = Grants::Ae {
                rights: r.may.iter().copied().collect(),
                move_destinations: r
                    .move_destinations
                    .as_ref()
                    .map(|d| d.iter().map(|s| s.trim().to_string()).collect()),
            };
            if map.insert(title.clone(), Entry { hosts, grants }).is_some() {
                return Err(AccessError::Config(format!(
                    "[[access.ae]] {title:?} is listed twice"
                )));
            }
        }
        Ok(AeRights { rules: Some(map) })
    }

    /// Whether any AE rules are configured (when none are, any AE may do anything).
    pub fn is_restricted(&self) -> bool {
        self.rules.is_some()
    }

    /// The principal of an association from `calling_ae` at `peer`, or why it is not admitted.
    pub fn admit(&self, calling_ae: &str, peer: IpAddr) -> Result<Principal, Denied> {
        let calling = calling_ae.trim();
        let principal = |grants| Principal {
            id: calling.to_string(),
            kind: PrincipalKind::Ae,
            host: Some(peer.to_string()),
            channel: Channel::Dimse,
            grants,
        };
        let Some(rules) = &self.rules else {
            return Ok(principal(Grants::Unrestricted));
        };
        let refuse = |why: &str| Denied::UnknownAe {
            ae: calling.to_string(),
            host: peer.to_string(),
            why: why.to_string(),
        };
        let entry = rules
            .get(calling)
            .ok_or_else(|| refuse("not a configured AE"))?;
        if let Some(hosts) = &entry.hosts {
            let peer = canonical(peer);
            if !hosts.iter().any(|h| canonical(*h) == peer) {
                return Err(refuse("not from one of its configured hosts"));
            }
        }
        Ok(principal(entry.grants.clone()))
    }
}

/// IPv4 peers may show up as IPv4-mapped IPv6 addresses on a dual-stack socket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn resolve_all(title: &str, hosts: &[String]) -> Result<Vec<IpAddr>, AccessError> {
    let mut out = Vec::new();
    for h in hosts {
        if let Ok(ip) = h.trim().parse::<IpAddr>() {
            out.push(ip);
            continue;
        }
        let addrs = (h.trim(), 0).to_socket_addrs().map_err(|e| {
            AccessError::Config(format!(
                "[[access.ae]] {title:?}: host {h:?} does not resolve: {e}"
            ))
        })?;
        out.extend(addrs.map(|a| a.ip()));
    }
    Ok(out)
}

impl Grants {
    /// The AE rights these grants hold, for logs; empty for non-AE grants.
    pub fn ae_rights(&self) -> BTreeSet<AeRight> {
        match self {
            Grants::Ae { rights, .. } => rights.clone(),
            _ => BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> AeRule {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn no_rules_admit_anyone_unrestricted() {
        let r = AeRights::new(&[]).unwrap();
        let p = r.admit("ANY", "10.1.1.1".parse().unwrap()).unwrap();
        assert_eq!(p.grants, Grants::Unrestricted);
        assert!(!r.is_restricted());
    }

    #[test]
    fn rules_bind_titles_to_hosts_and_rights() {
        let r = AeRights::new(&[
            rule("title = \"CT1\"\nhosts = [\"127.0.0.1\"]\nmay = [\"store\"]"),
            rule("title = \"WS\"\nmay = [\"find\", \"retrieve\"]\nmove_destinations = [\"WS\"]"),
        ])
        .unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let p = r.admit("CT1 ", lo).unwrap();
        assert_eq!(p.grants.ae_rights(), [AeRight::Store].into());
        // the same title from another host is not the same AE
        assert!(matches!(
            r.admit("CT1", "10.0.0.9".parse().unwrap()),
            Err(Denied::UnknownAe { .. })
        ));
        // IPv4-mapped IPv6 is the same host
        assert!(r.admit("CT1", "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(matches!(
            r.admit("NOBODY", lo),
            Err(Denied::UnknownAe { .. })
        ));
        assert!(r.admit("WS", "10.0.0.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_rules_are_configuration_errors() {
        assert!(AeRights::new(&[rule("title = \"\"\nmay = []")]).is_err());
        let twice = rule("title = \"A\"\nmay = []");
        assert!(AeRights::new(&[twice.clone(), twice]).is_err());
        assert!(toml::from_str::<AeRule>("title = \"A\"\nmay = [\"delete\"]").is_err());
    }
}
