//! OIDC / JWT bearer tokens from one configured issuer, checked against its JWKS.
//!
//! Only signature checking is left to `jsonwebtoken` (ring): the header and the claims are
//! read and checked here, with strict types. jsonwebtoken 9's own claim validation treats a
//! claim of the wrong JSON type as absent (GHSA-h395-gr6q-cpjc: a string `nbf` skips the
//! not-before check), so it is not used at all.

use super::jwks::{Jwks, KeySet, Lookup, Remote};
use crate::error::AccessError;
use crate::principal::Role;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// `[access.http.jwt]`: the token issuer people log in with (an OIDC provider such as
/// Keycloak), and how its tokens name users and roles.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The issuer; a token's `iss` must equal it exactly.
    pub issuer: String,
    /// When set, a token's `aud` must be or contain it.
    #[serde(default)]
    pub audience: Option<String>,
    /// The issuer's key set (JWKS) as a file, read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The issuer's key set (JWKS) as a URL, fetched at start and when a token names an
    /// unknown key.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Extra CA certificates (PEM) to trust when fetching `jwks_url` over HTTPS, besides the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The claim holding role names; a dotted path reaches into objects
    /// (`realm_access.roles` for Keycloak realm roles).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim naming the user in audit records; `sub` when the token lacks it.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_user_claim() -> String {
    "preferred_username".into()
}

fn default_leeway() -> u64 {
    60
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user claim (or `sub`).
    pub user: String,
    /// The known roles the token carries; unknown names are ignored.
    pub roles: BTreeSet<Role>,
}

/// Checks tokens of one issuer.
#[derive(Debug)]
pub(crate) struct JwtVerifier {
    cfg: JwtConfig,
    jwks: Jwks,
}

/// The header fields this node reads.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// The algorithms accepted: asymmetric only (a shared secret would let anyone holding the
/// published key forge tokens).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl JwtVerifier {
    /// A verifier for `cfg`: reads the JWKS file now, or prepares the URL (and starts a
    /// first fetch when a runtime is running).
    pub(crate) fn new(cfg: &JwtConfig) -> Result<JwtVerifier, AccessError> {
        let bad = |why: &str| AccessError::Config(format!("[access.http.jwt]: {why}"));
        if cfg.issuer.trim().is_empty() {
            return Err(bad("issuer must not be empty"));
        }
        if cfg.roles_claim.split('.').any(str::is_empty) {
            return Err(bad("roles_claim must be a claim name or a dotted path"));
        }
        let jwks = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(f), None) => Jwks::Fixed(KeySet::from_file(f)?),
            (None, Some(u)) => {
                let remote = Arc::new(Remote::new(u, cfg.ca_file.as_deref())?);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let r = Arc::clone(&remote);
                    rt.spawn(async move { r.refresh().await });
                }
                Jwks::Remote(remote)
            }
            _ => return Err(bad("give exactly one of jwks_file and jwks_url")),
        };
        Ok(JwtVerifier {
            cfg: cfg.clone(),
            jwks,
        })
    }

    /// The identity of a valid token, or a short reason why it is not (never the token).
    pub(crate) async fn verify(&self, token: &str) -> Result<Identity, String> {
        self.verify_at(token, now()).await
    }

    async fn verify_at(&self, token: &str, now: i64) -> Result<Identity, String> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token".into());
        };
        let header: Header = b64_json(h64).ok_or("malformed token header")?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err("unsigned tokens (alg none) are refused".into());
        }
        let alg = Algorithm::from_str(&header.alg)
            .ok()
            .filter(|a| ALGORITHMS.contains(a))
            .ok_or_else(|| {
                format!(
                    "signature algorithm {:?} is not accepted",
                    clip(&header.alg)
                )
            })?;
        if header.crit.is_some() {
            return Err("tokens with critical header extensions are refused".into());
        }
        let key = match self.jwks.find(header.kid.as_deref(), alg).await {
            Lookup::Found(k) => k,
            Lookup::Unknown => {
                return Err(match &header.kid {
                    Some(kid) => format!("unknown signing key {:?}", clip(kid)),
                    None => "the token names no signing key (kid)".into(),
                })
            }
        };
        if !key.allows(alg) {
            return Err(format!("key does not sign with {alg:?}"));
        }
        let message_len = h64.len() + 1 + p64.len();
        let message = &token.as_bytes()[..message_len];
        match jsonwebtoken::crypto::verify(s64, message, &key.decoding, alg) {
            Ok(true) => {}
            _ => return Err("bad signature".into()),
        }
        let claims: serde_json::Map<String, Value> =
            b64_json(p64).ok_or("the token's claims are not a JSON object")?;
        self.check_claims(&claims, now)
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: i64,
    ) -> Result<Identity, String> {
        let leeway = i64::try_from(self.cfg.leeway_secs).unwrap_or(i64::MAX);
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.cfg.issuer => {}
            Some(_) => return Err("wrong issuer".into()),
            None => return Err("the token names no issuer".into()),
        }
        let exp = time_claim(claims, "exp")?.ok_or("the token has no expiry (exp)")?;
        if now > exp.saturating_add(leeway) {
            return Err("token expired".into());
        }
        if let Some(nbf) = time_claim(claims, "nbf")? {
            if now.saturating_add(leeway) < nbf {
                return Err("token not yet valid".into());
            }
        }
        if let Some(want) = &self.cfg.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err("wrong audience".into());
            }
        }
        let user = [self.cfg.user_claim.as_str(), "sub"]
            .iter()
            .find_map(|c| match claims.get(*c) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                _ => None,
            })
            .ok_or("the token names no user")?;
        Ok(Identity {
            user,
            roles: roles(claims, &self.cfg.roles_claim),
        })
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Keeps refusal reasons short when they quote token fields.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn b64_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A NumericDate claim: absent is `None`; anything but a number is a refusal.
fn time_claim(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| format!("{name} is not a time")),
        Some(_) => Err(format!("{name} is not a number")),
    }
}

/// The known roles at the dotted `path`: an array of names, or one string of names
/// separated by spaces or commas.
fn roles(claims: &serde_json::Map<String, Value>, path: &str) -> BTreeSet<Role> {
    let mut segs = path.split('.');
    let first = segs.next().unwrap_or("");
    let mut v = claims.get(first);
    for seg in segs {
        v = v.and_then(|x| x.get(seg));
    }
    let names: Vec<&str> = match v {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    names.into_iter().filter_map(Role::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader};
    use serde_json::json;

    /// A fixed RSA test key (PKCS#1 DER, base64), made for these tests only.
    const RSA_KEY: &str = include_str!("testdata/rsa-test-key.b64");
    const OTHER_RSA_KEY: &str = include_str!("testdata/rsa-other-key.b64");

    struct Signer {
        kid: String,
        der: Vec<u8>,
    }

    fn b64(s: &str) -> Vec<u8> {
        let clean: String = s.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean)
            .unwrap()
    }

    fn jwk(signer: &Signer) -> Value {
        let pair = ring::rsa::KeyPair::from_der(&signer.der).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let e64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": signer.kid,
            "n": e64(&public.n),
            "e": e64(&public.e),
        })
    }

    fn sign(signer: &Signer, claims: &Value) -> String {
        let mut h = JwtHeader::new(Algorithm::RS256);
        h.kid = Some(signer.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(&signer.der)).unwrap()
    }

    struct Fixture {
        v: JwtVerifier,
        key: Signer,
        other: Signer,
        _dir: tempfile::TempDir,
    }

    const ISS: &str = "https://idp.example/realms/site";
    const NOW: i64 = 1_800_000_000;

    fn fixture(audience: Option<&str>, roles_claim: &str) -> Fixture {
        let key = Signer {
            kid: "k1".into(),
            der: b64(RSA_KEY),
        };
        let other = Signer {
            kid: "k1".into(),
            der: b64(OTHER_RSA_KEY),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let set = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            jwk(&key),
        ]});
        std::fs::write(&path, set.to_string()).unwrap();
        let cfg = JwtConfig {
            issuer: ISS.into(),
            audience: audience.map(str::to_string),
            jwks_file: Some(path),
            jwks_url: None,
            ca_file: None,
            roles_claim: roles_claim.into(),
            user_claim: default_user_claim(),
            leeway_secs: 60,
        };
        Fixture {
            v: JwtVerifier::new(&cfg).unwrap(),
            key,
            other,
            _dir: dir,
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "u-123", "preferred_username": "alice",
               "aud": ["pacsgrid", "account"], "exp": NOW + 300, "iat": NOW,
               "roles": ["clinician", "unknown-role"]})
    }

    fn with(mut c: Value, k: &str, v: Value) -> Value {
        c[k] = v;
        c
    }

    async fn check(f: &Fixture, token: &str) -> Result<Identity, String> {
        f.v.verify_at(token, NOW).await
    }

    #[tokio::test]
    async fn valid_token_names_user_and_known_roles() {
        let f = fixture(Some("pacsgrid"), "roles");
        let id = check(&f, &sign(&f.key, &claims())).await.unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.roles, [Role::Clinician].into());
        // without preferred_username the subject is the user
        let mut c = claims();
        c.as_object_mut().unwrap().remove("preferred_username");
        assert_eq!(check(&f, &sign(&f.key, &c)).await.unwrap().user, "u-123");
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_are_refused_beyond_the_leeway() {
        let f = fixture(None, "roles");
        let c = with(claims(), "exp", json!(NOW - 61));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "token expired"
        );
        let c = with(claims(), "exp", json!(NOW - 30));
        assert!(check(&f, &sign(&f.key, &c)).await.is_ok());
        let c = with(claims(), "nbf", json!(NOW + 120));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "token not yet valid"
        );
        // a time of the wrong type is a refusal, not an absent claim
        let c = with(claims(), "nbf", json!("99999999999"));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "nbf is not a number"
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(check(&f, &sign(&f.key, &c)).await.is_err());
    }

    #[tokio::test]
    async fn wrong_issuer_and_wrong_audience_are_refused() {
        let f = fixture(Some("pacsgrid"), "roles");
        let c = with(claims(), "iss", json!("https://evil.example"));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "wrong issuer"
        );
        let c = with(claims(), "iss", json!([ISS]));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "wrong issuer"
        );
        let c = with(claims(), "aud", json!("other-app"));
        assert_eq!(
            check(&f, &sign(&f.key, &c)).await.unwrap_err(),
            "wrong audience"
        );
        let c = with(claims(), "aud", json!("pacsgrid"));
        assert!(check(&f, &sign(&f.key, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_signature_unknown_kid_and_alg_none_are_refused() {
        let f = fixture(None, "roles");
        let forged = sign(&f.other, &claims());
        assert_eq!(check(&f, &forged).await.unwrap_err(), "bad signature");
        // a valid token with one claim changed
        let good = sign(&f.key, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let e64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let admin = with(claims(), "roles", json!(["admin"]));
        let tampered = format!("{}.{}.{}", parts[0], e64(&admin), parts[2]);
        assert_eq!(check(&f, &tampered).await.unwrap_err(), "bad signature");
        let stranger = Signer {
            kid: "k9".into(),
            der: b64(OTHER_RSA_KEY),
        };
        let err = check(&f, &sign(&stranger, &claims())).await.unwrap_err();
        assert!(err.starts_with("unknown signing key"), "{err}");
        let none = format!(
            "{}.{}.",
            e64(&json!({"alg": "none", "typ": "JWT"})),
            e64(&admin)
        );
        assert_eq!(
            check(&f, &none).await.unwrap_err(),
            "unsigned tokens (alg none) are refused"
        );
        // HMAC with a published key as secret, the classic confusion, is refused outright
        let hs = format!(
            "{}.{}.x",
            e64(&json!({"alg": "HS256", "kid": "hmac"})),
            e64(&admin)
        );
        assert!(check(&f, &hs).await.unwrap_err().contains("not accepted"));
        for garbage in ["", "abc", "a.b.c", "a.b.c.d", "....", "eyJ.eyJ.eyJ"] {
            assert!(check(&f, garbage).await.is_err(), "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn roles_from_a_dotted_path_or_a_string() {
        let f = fixture(None, "realm_access.roles");
        let c = with(
            claims(),
            "realm_access",
            json!({"roles": ["Radiologist", "offline_access"]}),
        );
        let id = check(&f, &sign(&f.key, &c)).await.unwrap();
        assert_eq!(id.roles, [Role::Radiologist].into());
        let f = fixture(None, "scope");
        let c = with(claims(), "scope", json!("openid admin,modality"));
        let id = check(&f, &sign(&f.key, &c)).await.unwrap();
        assert_eq!(id.roles, [Role::Admin, Role::Modality].into());
        // no roles at all: authenticated, with no grants
        let f = fixture(None, "nothing.here");
        let id = check(&f, &sign(&f.key, &claims())).await.unwrap();
        assert!(id.roles.is_empty());
    }

    #[test]
    fn configuration_needs_one_key_source() {
        let cfg: JwtConfig =
            toml::from_str("issuer = \"x\"\njwks_file = \"/nonexistent\"").unwrap();
        assert_eq!(cfg.roles_claim, "roles");
        assert_eq!(cfg.leeway_secs, 60);
        assert!(JwtVerifier::new(&cfg).is_err());
        let both: JwtConfig =
            toml::from_str("issuer = \"x\"\njwks_file = \"a\"\njwks_url = \"https://a/\"").unwrap();
        assert!(JwtVerifier::new(&both).is_err());
        assert!(toml::from_str::<JwtConfig>("jwks_file = \"a\"").is_err());
    }
}
