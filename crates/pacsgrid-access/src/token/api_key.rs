//! Static API keys for programs: `[[access.http.api_key]]` entries hold the SHA-256 of each
//! key, never the key, and a presented key is hashed and compared in constant time.

use crate::error::AccessError;
use crate::principal::Role;
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;

/// The prefix of keys made by `pacsgrid access new-key`, so that a leaked one is recognisable
/// in logs and by secret scanners.
pub const KEY_PREFIX: &str = "pgk_";

/// One `[[access.http.api_key]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRule {
    /// The program's name, as audit records show it.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// What the program may be.
    pub roles: Vec<Role>,
}

#[derive(Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    roles: BTreeSet<Role>,
}

/// The configured keys, ready for lookup.
#[derive(Clone, Default)]
pub(crate) struct ApiKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

impl ApiKeys {
    /// Checks the entries: names unique and non-empty, hashes 64 hex digits and unique.
    pub(crate) fn new(rules: &[ApiKeyRule]) -> Result<ApiKeys, AccessError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(rules.len());
        for r in rules {
            let name = r.name.trim().to_string();
            let bad = |why: &str| {
                AccessError::Config(format!("[[access.http.api_key]] {:?}: {why}", r.name))
            };
            if name.is_empty() {
                return Err(bad("name must not be empty"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(r.sha256.trim(), &mut hash).map_err(|_| {
                bad("sha256 must be the 64 hex digits of the key's SHA-256 (see `pacsgrid access new-key`)")
            })?;
            if entries.iter().any(|e| e.name == name) {
                return Err(bad("the name is listed twice"));
            }
            if entries.iter().any(|e| e.hash == hash) {
                return Err(bad("the same key is listed twice"));
            }
            entries.push(Entry {
                name,
                hash,
                roles: r.roles.iter().copied().collect(),
            });
        }
        Ok(ApiKeys { entries })
    }

    /// Whether no key is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name and roles of `key`, if it is one of the configured keys. Every entry is
    /// compared, in constant time, so the answer's timing says nothing about the hashes.
    pub(crate) fn lookup(&self, key: &str) -> Option<(&str, &BTreeSet<Role>)> {
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some((e.name.as_str(), &e.roles));
            }
        }
        found
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The hex SHA-256 of a key, as `[[access.http.api_key]] sha256` holds it.
pub fn key_hash(key: &str) -> String {
    hex::encode(sha256(key.as_bytes()))
}

/// A freshly made key and the hash to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The key, to hand to the program once; it is not stored anywhere.
    pub key: String,
    /// Its hex SHA-256.
    pub sha256: String,
}

/// Makes a new random key (256 bits from the system's random source).
pub fn new_api_key() -> Result<NewApiKey, AccessError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AccessError::Config("the system random source failed".into()))?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let sha256 = key_hash(&key);
    Ok(NewApiKey { key, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, key: &str, roles: &[Role]) -> ApiKeyRule {
        ApiKeyRule {
            name: name.into(),
            sha256: key_hash(key),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn hash_match_and_mismatch() {
        let k = ApiKeys::new(&[
            rule("ris", "secret-1", &[Role::Modality]),
            rule("viewer", "secret-2", &[Role::Clinician, Role::Radiologist]),
        ])
        .unwrap();
        let (name, roles) = k.lookup("secret-2").unwrap();
        assert_eq!(name, "viewer");
        assert!(roles.contains(&Role::Radiologist));
        assert_eq!(k.lookup("secret-1").unwrap().0, "ris");
        assert!(k.lookup("secret-3").is_none());
        assert!(k.lookup("").is_none());
        assert!(k.lookup("secret-1 ").is_none());
    }

    #[test]
    fn new_keys_are_random_and_hash_to_what_is_printed() {
        let a = new_api_key().unwrap();
        let b = new_api_key().unwrap();
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with(KEY_PREFIX) && a.key.len() == KEY_PREFIX.len() + 43);
        assert_eq!(a.sha256, key_hash(&a.key));
        let k = ApiKeys::new(&[ApiKeyRule {
            name: "x".into(),
            sha256: a.sha256.to_uppercase(),
            roles: vec![],
        }])
        .unwrap();
        assert_eq!(k.lookup(&a.key).unwrap().0, "x");
    }

    #[test]
    fn bad_entries_are_configuration_errors() {
        let ok = rule("a", "k", &[]);
        assert!(ApiKeys::new(&[ApiKeyRule {
            sha256: "abc".into(),
            ..ok.clone()
        }])
        .is_err());
        assert!(ApiKeys::new(&[ApiKeyRule {
            name: " ".into(),
            ..ok.clone()
        }])
        .is_err());
        assert!(ApiKeys::new(&[ok.clone(), ok.clone()]).is_err());
        assert!(ApiKeys::new(&[ok.clone(), rule("b", "k", &[])]).is_err());
        assert!(
            toml::from_str::<ApiKeyRule>("name=\"a\"\nsha256=\"00\"\nroles=[\"root\"]").is_err()
        );
    }
}
