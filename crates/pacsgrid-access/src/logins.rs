//! First uses of HTTP credentials. Bearer tokens and API keys have no login step, so the first
//! request that presents a credential is taken as its holder logging in (PS3.15 A.5.3.8 User
//! Authentication), and is recorded once rather than on every request.

use ring::digest::{digest, SHA256};
use std::collections::HashSet;
use std::sync::Mutex;

/// Credentials remembered at most; past it the memory starts over, so a long-lived node
/// records some logins again instead of growing without bound.
const REMEMBERED: usize = 16_384;

/// The credentials already seen since the node started, kept as SHA-256 digests (never the
/// secrets themselves).
#[derive(Debug, Default)]
pub(crate) struct Logins {
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl Logins {
    /// `true` the first time `credential` is presented (and again after the memory was
    /// cleared); the caller records a login then.
    pub fn first_use(&self, credential: &str) -> bool {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, credential.trim().as_bytes()).as_ref());
        // a poisoned lock only means another request panicked while inserting: the set is
        // still a set, so keep using it
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_new_once() {
        let l = Logins::default();
        assert!(l.first_use("Bearer abc"));
        assert!(!l.first_use("Bearer abc"));
        assert!(!l.first_use(" Bearer abc "));
        assert!(l.first_use("Bearer abd"));
    }

    #[test]
    fn memory_is_bounded() {
        let l = Logins::default();
        for i in 0..REMEMBERED + 10 {
            l.first_use(&format!("k{i}"));
        }
        assert!(l.seen.lock().unwrap().len() <= REMEMBERED);
    }
}
