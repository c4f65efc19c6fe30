//! HTTP authentication: bearer tokens (JWT from a configured issuer, checked against its
//! JWKS) and static API keys stored hashed, each mapped to roles.

mod api_key;
mod jwks;
mod jwt;

pub use api_key::{key_hash, new_api_key, ApiKeyRule, NewApiKey, KEY_PREFIX};
pub use jwt::JwtConfig;

use crate::error::{AccessError, Denied};
use crate::principal::{Channel, Grants, Principal, PrincipalKind};
use api_key::ApiKeys;
use jwt::JwtVerifier;
use serde::Deserialize;
use std::sync::Arc;

/// `[access.http]`: how people and programs on HTTP prove who they are. With nothing
/// configured, HTTP requests are anonymous and unrestricted (loopback only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// `[access.http.jwt]`: the token issuer for people.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// `[[access.http.api_key]]`: static keys for programs.
    #[serde(default)]
    pub api_key: Vec<ApiKeyRule>,
}

/// Checks the credentials of HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    keys: ApiKeys,
}

impl Authenticator {
    /// The authenticator of a configuration: reads a JWKS file, checks API key entries, and
    /// starts fetching a JWKS URL when a runtime is running.
    pub fn new(cfg: &HttpAuthConfig) -> Result<Authenticator, AccessError> {
        Ok(Authenticator {
            jwt: cfg
                .jwt
                .as_ref()
                .map(JwtVerifier::new)
                .transpose()?
                .map(Arc::new),
            keys: ApiKeys::new(&cfg.api_key)?,
        })
    }

    /// Whether any credentials are configured; without them every request is anonymous.
    pub fn is_configured(&self) -> bool {
        self.jwt.is_some() || !self.keys.is_empty()
    }

    /// The principal of a request with this `Authorization` header value, from `host`.
    /// A refusal's reason is short and never repeats the credentials.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        host: Option<String>,
        channel: Channel,
    ) -> Result<Principal, Denied> {
        if !self.is_configured() {
            return Ok(Principal::anonymous(channel, host));
        }
        let refuse = |why: &str| Denied::Unauthenticated(why.to_string());
        let value = authorization
            .ok_or_else(|| refuse("no bearer token"))?
            .trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refuse("only Bearer credentials are accepted"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(refuse("empty bearer token"));
        }
        let principal = |id: String, kind, roles| Principal {
            id,
            kind,
            host: host.clone(),
            channel,
            grants: Grants::Roles(roles),
        };
        // A JWT is three base64url parts; API keys made here have no dots.
        if token.split('.').count() == 3 {
            let Some(jwt) = &self.jwt else {
                return Err(refuse(
                    "JWTs are not accepted: no [access.http.jwt] issuer is configured",
                ));
            };
            let id = jwt.verify(token).await.map_err(Denied::Unauthenticated)?;
            return Ok(principal(id.user, PrincipalKind::User, id.roles));
        }
        match self.keys.lookup(token) {
            Some((name, roles)) => Ok(principal(
                name.to_string(),
                PrincipalKind::ApiKey,
                roles.clone(),
            )),
            None => Err(refuse("unknown API key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Role;

    fn keyed() -> (Authenticator, String) {
        let k = new_api_key().unwrap();
        let cfg: HttpAuthConfig = toml::from_str(&format!(
            "[[api_key]]\nname = \"ris\"\nsha256 = \"{}\"\nroles = [\"modality\"]\n",
            k.sha256
        ))
        .unwrap();
        (Authenticator::new(&cfg).unwrap(), k.key)
    }

    #[tokio::test]
    async fn nothing_configured_is_anonymous() {
        let a = Authenticator::default();
        assert!(!a.is_configured());
        let p = a
            .authenticate(Some("Bearer whatever"), None, Channel::Rest)
            .await
            .unwrap();
        assert_eq!(p.kind, PrincipalKind::Anonymous);
        assert_eq!(p.grants, Grants::Unrestricted);
    }

    #[tokio::test]
    async fn api_keys_authenticate_and_everything_else_is_refused() {
        let (a, key) = keyed();
        assert!(a.is_configured());
        let host = Some("10.0.0.1".to_string());
        let p = a
            .authenticate(
                Some(&format!("bearer {key}")),
                host.clone(),
                Channel::DicomWeb,
            )
            .await
            .unwrap();
        assert_eq!(
            (p.id.as_str(), p.kind.clone()),
            ("ris", PrincipalKind::ApiKey)
        );
        assert_eq!(p.grants, Grants::Roles([Role::Modality].into()));
        assert_eq!(p.host, host);
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer   "),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer pgk_wrong"),
            Some("Bearer a.b.c"),
        ] {
            let e = a.authenticate(bad, None, Channel::Rest).await.unwrap_err();
            assert!(matches!(e, Denied::Unauthenticated(_)), "{bad:?}");
            assert!(!e.to_string().contains(&key));
        }
    }
}
