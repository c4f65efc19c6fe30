//! The issuer's signing keys (a JWKS), from a file read at start or from a URL fetched at
//! start and again when a token names a key id not seen yet (at most once per
//! [`MIN_REFRESH`], so that forged key ids cannot make the node hammer the issuer).

use crate::error::AccessError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Least time between two fetches of the JWKS URL once one succeeded.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Least time between two fetches while none has succeeded yet (the issuer was down).
const MIN_RETRY: Duration = Duration::from_secs(5);
/// Largest JWKS accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which algorithms a key may verify, by its type and curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn allows(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            Family::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            Family::P256 => alg == A::ES256,
            Family::P384 => alg == A::ES384,
            Family::Ed25519 => alg == A::EdDSA,
        }
    }
}

/// One usable verification key.
pub(crate) struct Key {
    kid: Option<String>,
    /// The `alg` the key is pinned to, if the JWKS says.
    alg: Option<Algorithm>,
    family: Family,
    /// What verifies signatures.
    pub(crate) decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a signature made with `alg`.
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        self.family.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A parsed key set: the signature keys it holds that this node can use.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Arc<Key>>,
}

/// What looking a key up found.
pub(crate) enum Lookup {
    /// The key to verify with.
    Found(Arc<Key>),
    /// No key has the token's `kid` (or, without a `kid`, no single key fits).
    Unknown,
}

impl KeySet {
    /// Parses a JWKS document. Keys this node cannot use (symmetric, encryption, unknown
    /// types or curves) are skipped one by one, so that one odd key does not take the
    /// issuer's other keys with it; a set with no usable key at all is an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("no \"keys\" array")?;
        let mut keys = Vec::new();
        for (i, raw) in list.iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(j) => j,
                Err(e) => {
                    tracing::debug!(key = i, error = %e, "skipping a JWKS key this node cannot read");
                    continue;
                }
            };
            match usable(&jwk) {
                Some(k) => keys.push(Arc::new(k)),
                None => {
                    tracing::debug!(key = i, kid = ?jwk.common.key_id, "skipping a JWKS key that is not a signature key of a supported type")
                }
            }
        }
        if keys.is_empty() {
            return Err("no RSA, P-256, P-384 or Ed25519 signature key in it".into());
        }
        Ok(KeySet { keys })
    }

    /// Reads and parses a JWKS file.
    pub(crate) fn from_file(path: &Path) -> Result<KeySet, AccessError> {
        let bytes = std::fs::read(path).map_err(|e| {
            AccessError::Config(format!(
                "[access.http.jwt] jwks_file {}: {e}",
                path.display()
            ))
        })?;
        KeySet::parse(&bytes).map_err(|e| {
            AccessError::Config(format!(
                "[access.http.jwt] jwks_file {}: {e}",
                path.display()
            ))
        })
    }

    /// The key for a token with `kid` signed with `alg`. A token without a `kid` is
    /// accepted only when exactly one key could have signed it.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let mut fitting = self.keys.iter().filter(|k| match kid {
            Some(id) => k.kid.as_deref() == Some(id),
            None => k.allows(alg),
        });
        match (fitting.next(), fitting.next()) {
            (Some(k), None) => Lookup::Found(Arc::clone(k)),
            _ => Lookup::Unknown,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The key of a JWK, if it is a signature key of a supported type.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Family::Ed25519,
            _ => return None,
        },
        // A shared secret in a published key set is a misconfiguration: never trust it.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signature_alg(a)?),
    };
    if alg.is_some_and(|a| !family.allows(a)) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        decoding,
    })
}

fn signature_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm as A;
    Some(match a {
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return None,
    })
}

/// Where the keys come from.
pub(crate) enum Jwks {
    /// A file read once at start.
    Fixed(KeySet),
    /// A URL, refetched on unknown key ids.
    Remote(Arc<Remote>),
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Jwks::Fixed(k) => write!(f, "Jwks::Fixed({} keys)", k.len()),
            Jwks::Remote(r) => write!(f, "Jwks::Remote({})", r.url),
        }
    }
}

impl Jwks {
    /// The key for `kid` and `alg`; a remote set is refetched (rate-limited) when the key is
    /// not in it.
    pub(crate) async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match self {
            Jwks::Fixed(set) => set.find(kid, alg),
            Jwks::Remote(r) => {
                if let Lookup::Found(k) = r.current().find(kid, alg) {
                    return Lookup::Found(k);
                }
                r.refresh().await;
                r.current().find(kid, alg)
            }
        }
    }
}

/// A JWKS URL and what was last fetched from it.
pub(crate) struct Remote {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started, and whether one ever succeeded; held while fetching so
    /// that concurrent requests with an unknown key wait for one fetch instead of each
    /// starting their own.
    last: tokio::sync::Mutex<(Option<Instant>, bool)>,
}

impl Remote {
    /// A remote set for `url`, trusting the system's roots and those in `ca_file`. Nothing
    /// is fetched yet.
    pub(crate) fn new(url: &str, ca_file: Option<&Path>) -> Result<Remote, AccessError> {
        let bad = |why: String| AccessError::Config(format!("[access.http.jwt] jwks_url: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("{url:?}: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" => tracing::warn!(
                url,
                "the JWKS is fetched over plain HTTP: anyone on the path can swap the keys"
            ),
            s => return Err(bad(format!("scheme {s:?} is neither https nor http"))),
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("ca_file {}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| bad(format!("ca_file {}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| bad(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Remote {
            url: url.to_string(),
            client,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last: tokio::sync::Mutex::new((None, false)),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Fetches the set again unless the last fetch was too recent.
    pub(crate) async fn refresh(&self) {
        let mut last = self.last.lock().await;
        let (started, ever_ok) = *last;
        let gap = if ever_ok { MIN_REFRESH } else { MIN_RETRY };
        if started.is_some_and(|t| t.elapsed() < gap) {
            return;
        }
        last.0 = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(url = %self.url, keys = set.len(), "fetched the token issuer's keys");
                last.1 = true;
                match self.keys.write() {
                    Ok(mut k) => *k = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "cannot fetch the token issuer's keys")
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let rsp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !rsp.status().is_success() {
            return Err(format!("HTTP {}", rsp.status()));
        }
        if rsp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        let mut rsp = rsp;
        while let Some(chunk) = rsp.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        KeySet::parse(&body)
    }
}
