//! The `[audit]` configuration section.

use crate::error::AuditError;
use serde::Deserialize;
use std::path::PathBuf;

/// `[audit]`: whether to audit, and where to forward records besides the local log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit records (default true). Turning it off is for benchmarks only: patient data
    /// access then leaves no trace.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Forward records to a syslog collector (RFC 5424 over TLS, RFC 5425), as IHE ATNA asks.
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
}

fn default_enabled() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            syslog: None,
        }
    }
}

/// `[audit.syslog]`: the collector and the TLS material to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The collector, "host:port" (6514 is the registered syslog-over-TLS port).
    pub address: String,
    /// PEM file of the CA certificate(s) the collector's certificate must chain to.
    pub ca_cert: PathBuf,
    /// PEM certificate chain to present to the collector (mutual TLS, as ATNA requires).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Name to verify the collector's certificate against; defaults to the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl SyslogConfig {
    /// Checks what types cannot: an address with a port, and a client certificate only
    /// together with its key.
    pub fn validate(&self) -> Result<(), AuditError> {
        let port_ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !port_ok {
            return Err(AuditError::Config(format!(
                "audit.syslog.address {:?} must be host:port",
                self.address
            )));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(AuditError::Config(
                "audit.syslog.client_cert and client_key go together".into(),
            ));
        }
        Ok(())
    }

    /// The name the collector's certificate is checked against.
    pub fn server_name(&self) -> &str {
        if let Some(n) = &self.server_name {
            return n;
        }
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: AuditConfig = toml::from_str("").unwrap();
        assert!(c.enabled && c.syslog.is_none());
        let err = toml::from_str::<AuditConfig>("enabeld = false").unwrap_err();
        assert!(err.to_string().contains("enabeld"), "{err}");
        let c: AuditConfig =
            toml::from_str("[syslog]\naddress = \"[::1]:6514\"\nca_cert = \"ca.pem\"\n").unwrap();
        let s = c.syslog.unwrap();
        s.validate().unwrap();
        assert_eq!(s.server_name(), "::1");
    }

    #[test]
    fn half_a_client_identity_is_refused() {
        let s = SyslogConfig {
            address: "collector:6514".into(),
            ca_cert: "ca.pem".into(),
            client_cert: Some("c.pem".into()),
            client_key: None,
            server_name: None,
        };
        assert!(s.validate().is_err());
        assert_eq!(s.server_name(), "collector");
        let no_port = SyslogConfig {
            address: "collector".into(),
            client_cert: None,
            ..s
        };
        assert!(no_port.validate().is_err());
    }
}
