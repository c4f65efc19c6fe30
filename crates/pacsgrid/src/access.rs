//! The node's access point at start-up: opens the audit log (DATA/audit), starts syslog
//! forwarding, builds the AE and HTTP rules, refuses an insecure configuration on a
//! non-loopback address unless `--insecure` was given, and audits start, stop and changes of
//! the configuration file.

use crate::config::Config;
use anyhow::Context;
use pacsgrid_access::{AccessPoint, Principal};
use pacsgrid_audit::{AuditEvent, AuditLog, AuditSource, SyslogForwarder};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the audit log lives inside the data directory.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The running access point and what keeps its records flowing.
pub struct Access {
    /// Shared by DIMSE, HTTP and the grid.
    pub point: Arc<AccessPoint>,
    syslog: Option<SyslogForwarder>,
    launcher: Principal,
}

/// Opens the audit log and builds the access point for `cfg`.
pub fn open(cfg: &Config, data_dir: &Path) -> anyhow::Result<Access> {
    let host = host_name();
    let source = AuditSource {
        site: cfg.node.site.clone(),
        source_id: cfg.node.site.clone(),
        ae_title: Some(cfg.dicom.ae_title.clone()),
        host: host.clone(),
    };
    let (log, syslog) = if cfg.audit.enabled {
        let dir = audit_dir(data_dir);
        let log = AuditLog::open(&dir)
            .with_context(|| format!("opening the audit log in {}", dir.display()))?;
        let syslog = match &cfg.audit.syslog {
            Some(s) => Some(
                SyslogForwarder::spawn(&log, s, host.as_deref().unwrap_or("-"))
                    .context("starting audit forwarding to syslog")?,
            ),
            None => None,
        };
        (Some(log), syslog)
    } else {
        tracing::warn!(
            "auditing is off ([audit] enabled = false): access to patient data leaves no trace"
        );
        (None, None)
    };
    let point = AccessPoint::new(&cfg.access, source, log).context("in [access]")?;
    let launcher = Principal::node(&std::env::var("USER").unwrap_or_else(|_| "operator".into()));
    Ok(Access {
        point: Arc::new(point),
        syslog,
        launcher,
    })
}

impl Access {
    /// The operator running this process, as an audit participant.
    pub fn operator(&self) -> pacsgrid_audit::Participant {
        self.launcher.participant()
    }

    /// Records that the node started, and that its configuration file changed since the last
    /// start (its hash is kept beside the audit log).
    pub async fn started(&self, config_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<()> {
        let p = &self.point;
        let ev = AuditEvent::application_start(p.source(), Some(self.launcher.participant()));
        p.record(ev).await.context("auditing the start")?;
        if let Some(path) = config_file {
            if let Some(what) = config_changed(path, &audit_dir(data_dir)) {
                let ev = AuditEvent::configuration_change(
                    p.source(),
                    self.launcher.participant(),
                    &what,
                );
                p.record(ev)
                    .await
                    .context("auditing a configuration change")?;
            }
        }
        Ok(())
    }

    /// Records the stop, then lets syslog forwarding finish.
    pub async fn stopped(self) {
        let p = &self.point;
        let ev = AuditEvent::application_stop(p.source(), Some(self.launcher.participant()));
        if let Err(e) = p.record(ev).await {
            tracing::error!(error = %e, "could not audit the stop");
        }
        if let Some(s) = self.syslog {
            s.shutdown().await;
        }
    }
}

/// If the file's content differs from the last start's, remembers the new hash and says what
/// changed; the first start with a file counts as a change too (it set the configuration).
fn config_changed(path: &Path, dir: &Path) -> Option<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the config file to audit it");
            return None;
        }
    };
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let mark = dir.join("config.blake3");
    let before = std::fs::read_to_string(&mark).ok();
    if before.as_deref().map(str::trim) == Some(hash.as_str()) {
        return None;
    }
    if let Err(e) = std::fs::write(&mark, &hash) {
        tracing::warn!(file = %mark.display(), error = %e, "cannot remember the config hash");
    }
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Some(format!("file://{}#blake3={hash}", full.display()))
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether an address string (an IP, or a host name) is loopback only.
fn is_loopback(bind: &str) -> bool {
    match bind.trim().parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bind.trim().eq_ignore_ascii_case("localhost"),
    }
}

/// What makes `cfg` unsafe to expose beyond this machine, one reason a line; empty when it is
/// safe or listens on loopback only.
pub fn insecure_reasons(cfg: &Config, point: &AccessPoint) -> Vec<String> {
    let mut why = Vec::new();
    if !is_loopback(&cfg.http.bind) && !point.http().is_configured() {
        why.push(format!(
            "HTTP listens on {}:{} with no [access.http] tokens or API keys: anyone who can reach it reads and deletes patient data",
            cfg.http.bind, cfg.http.port
        ));
    }
    let ae_rules = point.ae_rights().is_restricted() || cfg.dicom.allowed_calling_aes.is_some();
    if cfg.dicom.plain && !is_loopback(&cfg.dicom.bind) && !ae_rules {
        why.push(format!(
            "DICOM listens on {}:{} with no [[access.ae]] rules: any AE may store, query and retrieve",
            cfg.dicom.bind, cfg.dicom.port
        ));
    }
    if let Some(tls) = &cfg.dicom.tls {
        let bind = tls.bind.as_deref().unwrap_or(&cfg.dicom.bind);
        // client certificates authenticate the caller; without them TLS only encrypts
        if !is_loopback(bind) && tls.client_ca.is_none() && !ae_rules {
            why.push(format!(
                "DICOM TLS listens on {bind}:{} with neither client_ca nor [[access.ae]] rules: any AE may store, query and retrieve",
                tls.port
            ));
        }
    }
    let tls_exposed = cfg
        .dicom
        .tls
        .as_ref()
        .is_some_and(|t| !is_loopback(t.bind.as_deref().unwrap_or(&cfg.dicom.bind)));
    let exposed = !is_loopback(&cfg.http.bind) || !is_loopback(&cfg.dicom.bind) || tls_exposed;
    if !cfg.audit.enabled && exposed {
        why.push("[audit] enabled = false on a node reachable from the network".into());
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn loopback_defaults_are_not_insecure() {
        let c = cfg("");
        let p = AccessPoint::new(
            &c.access,
            AccessPoint::open_door("x").source().clone(),
            None,
        )
        .unwrap();
        assert!(
            insecure_reasons(&c, &p).is_empty(),
            "{:?}",
            insecure_reasons(&c, &p)
        );
    }

    #[test]
    fn open_ports_without_rules_are_insecure() {
        let c = cfg("[http]\nbind = \"0.0.0.0\"\n[dicom]\nbind = \"0.0.0.0\"\n");
        let p = AccessPoint::new(
            &c.access,
            AccessPoint::open_door("x").source().clone(),
            None,
        )
        .unwrap();
        let why = insecure_reasons(&c, &p);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("HTTP") && why[1].contains("DICOM"));
        let c =
            cfg("[dicom]\nbind = \"0.0.0.0\"\n[[access.ae]]\ntitle = \"CT\"\nmay = [\"store\"]\n");
        let p = AccessPoint::new(
            &c.access,
            AccessPoint::open_door("x").source().clone(),
            None,
        )
        .unwrap();
        assert!(insecure_reasons(&c, &p).is_empty());
    }

    #[test]
    fn config_change_is_noticed_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("node.toml");
        std::fs::write(&f, "a = 1").unwrap();
        assert!(config_changed(&f, dir.path()).is_some());
        assert!(config_changed(&f, dir.path()).is_none());
        std::fs::write(&f, "a = 2").unwrap();
        assert!(config_changed(&f, dir.path()).is_some());
    }
}
