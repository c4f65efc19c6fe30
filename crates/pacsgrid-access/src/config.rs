//! The `[access]` configuration section: AE rights for DIMSE and authentication for HTTP.

use crate::ae::AeRule;
use crate::token::HttpAuthConfig;
use serde::Deserialize;

/// `[access]`: who may connect and what they may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// `[[access.ae]]`: the calling AEs admitted on DIMSE. None listed: any AE, any right.
    #[serde(default)]
    pub ae: Vec<AeRule>,
    /// `[access.http]`: tokens and API keys for HTTP.
    #[serde(default)]
    pub http: HttpAuthConfig,
}
