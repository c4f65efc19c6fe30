//! The `[grid]` section of a node's configuration: where this site listens for its peers,
//! its credentials, the peers themselves and the replication policy.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// `[grid]`: this site's membership in a grid and the grid's policy as this site applies it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Bind address of this site's grid HTTPS port, e.g. "127.0.0.1:4102".
    pub listen: String,
    /// How peers reach this site, e.g. "https://127.0.0.1:4102".
    pub url: String,
    /// The grid CA certificate (PEM); peers must present certificates it signed.
    pub ca_cert: PathBuf,
    /// This site's certificate (PEM), signed by the grid CA.
    pub cert: PathBuf,
    /// This site's private key (PEM).
    pub key: PathBuf,
    /// Number of sites that must hold each instance's bytes (K).
    #[serde(default = "default_copies")]
    pub copies: usize,
    /// Site names tried first when choosing where the extra copies go.
    #[serde(default)]
    pub preferred_backup: Vec<String>,
    /// A peer unreachable this long is counted as lost and its copies are replaced.
    #[serde(default = "default_lost_after_secs")]
    pub lost_after_secs: u64,
    /// How often each peer's change feed is pulled, in milliseconds.
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// How often placement is re-checked, in seconds.
    #[serde(default = "default_repair_interval_secs")]
    pub repair_interval_secs: u64,
    /// How often local blobs are re-hashed, in seconds (0 = never).
    #[serde(default = "default_scrub_interval_secs")]
    pub scrub_interval_secs: u64,
    /// How often digests are compared with peers, in seconds (0 = never).
    #[serde(default = "default_anti_entropy_interval_secs")]
    pub anti_entropy_interval_secs: u64,
    /// Blob transfers run in parallel at most.
    #[serde(default = "default_transfer_concurrency")]
    pub transfer_concurrency: usize,
    /// Bandwidth cap for pulls in MB/s (0 = none).
    #[serde(default)]
    pub transfer_max_mbps: u64,
    /// Keep the bytes fetched for an on-the-fly retrieve (as cache, not as a policy copy).
    #[serde(default)]
    pub cache_retrieved: bool,
    /// `[grid.prefetch]`: priors pulled in advance when a new study arrives.
    #[serde(default)]
    pub prefetch: PrefetchRule,
    /// `[[grid.peers]]`: the other sites of the grid.
    #[serde(default)]
    pub peers: Vec<GridPeer>,
}

/// One `[[grid.peers]]`: another site and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GridPeer {
    /// The peer's site name, as its certificate names it.
    pub name: String,
    /// The peer's grid URL, e.g. "https://127.0.0.1:4112".
    pub url: String,
}

/// `[grid.prefetch]`: which prior studies of a patient are pulled when a new one arrives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRule {
    /// Whether prefetch runs at all.
    #[serde(default)]
    pub enabled: bool,
    /// At most this many prior studies.
    #[serde(default = "default_last_n")]
    pub last_n: usize,
    /// Only priors at most this many days old (0 = any age).
    #[serde(default)]
    pub within_days: u32,
    /// Only priors with one of these modalities (empty = any).
    #[serde(default)]
    pub modalities: Vec<String>,
}

impl Default for PrefetchRule {
    fn default() -> Self {
        PrefetchRule {
            enabled: false,
            last_n: default_last_n(),
            within_days: 0,
            modalities: Vec::new(),
        }
    }
}

fn default_copies() -> usize {
    2
}
fn default_lost_after_secs() -> u64 {
    3600
}
fn default_sync_interval_ms() -> u64 {
    250
}
fn default_repair_interval_secs() -> u64 {
    2
}
fn default_scrub_interval_secs() -> u64 {
    86400
}
fn default_anti_entropy_interval_secs() -> u64 {
    600
}
fn default_transfer_concurrency() -> usize {
    4
}
fn default_last_n() -> usize {
    3
}

impl GridConfig {
    /// A section with the given addresses and credentials and every other key at its default.
    pub fn new(listen: String, url: String, ca_cert: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        GridConfig {
            listen,
            url,
            ca_cert,
            cert,
            key,
            copies: default_copies(),
            preferred_backup: Vec::new(),
            lost_after_secs: default_lost_after_secs(),
            sync_interval_ms: default_sync_interval_ms(),
            repair_interval_secs: default_repair_interval_secs(),
            scrub_interval_secs: default_scrub_interval_secs(),
            anti_entropy_interval_secs: default_anti_entropy_interval_secs(),
            transfer_concurrency: default_transfer_concurrency(),
            transfer_max_mbps: 0,
            cache_retrieved: false,
            prefetch: PrefetchRule::default(),
            peers: Vec::new(),
        }
    }

    /// Makes the credential paths absolute against `base` (the config file's directory), so a
    /// config keeps working whatever directory the node is started from.
    pub fn resolve_relative_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_cert, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The names of the configured peers: the sites whose certificates this site accepts.
    pub fn peer_names(&self) -> HashSet<String> {
        self.peers.iter().map(|p| p.name.clone()).collect()
    }

    /// Checks what types cannot: policy bounds, peer names and URLs. `own_site` is this
    /// node's site name (`[node] site`).
    pub fn validate(&self, own_site: &str) -> Result<(), String> {
        if self.listen.trim().is_empty() {
            return Err("grid.listen must not be empty".into());
        }
        check_https("grid.url", &self.url)?;
        if self.copies < 1 {
            return Err("grid.copies must be at least 1".into());
        }
        if self.transfer_concurrency < 1 {
            return Err("grid.transfer_concurrency must be at least 1".into());
        }
        if self.sync_interval_ms == 0 {
            return Err("grid.sync_interval_ms must be at least 1".into());
        }
        let mut seen = HashSet::new();
        for peer in &self.peers {
            crate::pki::validate_site_name(&peer.name).map_err(|e| format!("grid.peers: {e}"))?;
            if peer.name == own_site {
                return Err(format!(
                    "grid.peers names {:?}, which is this site's own name ([node] site)",
                    peer.name
                ));
            }
            if !seen.insert(peer.name.as_str()) {
                return Err(format!("grid.peers names {:?} twice", peer.name));
            }
            check_https(&format!("grid.peers {:?} url", peer.name), &peer.url)?;
        }
        if self.copies > 1 + self.peers.len() {
            return Err(format!(
                "grid.copies = {} but the grid has only {} sites (this one and {} peers)",
                self.copies,
                1 + self.peers.len(),
                self.peers.len()
            ));
        }
        for name in &self.preferred_backup {
            if !seen.contains(name.as_str()) {
                return Err(format!(
                    "grid.preferred_backup names {name:?}, which is not a configured peer"
                ));
            }
        }
        Ok(())
    }
}

fn check_https(what: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{what} {url:?} must be an https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{what} {url:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        grid: GridConfig,
    }

    const FULL: &str = r#"
[grid]
listen = "127.0.0.1:4102"
url = "https://127.0.0.1:4102"
ca_cert = "/abs/ca.pem"
cert = "a.pem"
key = "a.key"
copies = 2
preferred_backup = ["b"]
lost_after_secs = 5
sync_interval_ms = 100
repair_interval_secs = 1
scrub_interval_secs = 0
anti_entropy_interval_secs = 0
transfer_concurrency = 2
transfer_max_mbps = 10
cache_retrieved = true
[grid.prefetch]
enabled = true
last_n = 2
within_days = 30
modalities = ["CT"]
[[grid.peers]]
name = "b"
url = "https://127.0.0.1:4112"
[[grid.peers]]
name = "c"
url = "https://127.0.0.1:4122"
"#;

    fn parse(text: &str) -> Result<GridConfig, toml::de::Error> {
        toml::from_str::<File>(text).map(|f| f.grid)
    }

    #[test]
    fn full_section_parses_and_validates() {
        let g = parse(FULL).unwrap();
        assert_eq!(g.copies, 2);
        assert_eq!(g.peers.len(), 2);
        assert_eq!(g.prefetch.modalities, vec!["CT".to_string()]);
        assert!(g.cache_retrieved);
        g.validate("a").unwrap();
        assert_eq!(g.peer_names().len(), 2);
    }

    #[test]
    fn minimal_section_gets_defaults() {
        let g = parse(
            "[grid]\nlisten = \"127.0.0.1:1\"\nurl = \"https://x:1\"\nca_cert = \"c\"\ncert = \"a\"\nkey = \"k\"\n",
        )
        .unwrap();
        assert_eq!(g.copies, 2);
        assert_eq!(g.lost_after_secs, 3600);
        assert_eq!(g.sync_interval_ms, 250);
        assert_eq!(g.repair_interval_secs, 2);
        assert_eq!(g.scrub_interval_secs, 86400);
        assert_eq!(g.anti_entropy_interval_secs, 600);
        assert_eq!(g.transfer_concurrency, 4);
        assert_eq!(g.transfer_max_mbps, 0);
        assert!(!g.prefetch.enabled);
        assert_eq!(g.prefetch.last_n, 3);
        // No peers: a grid of one cannot hold two copies.
        assert!(g.validate("a").unwrap_err().contains("copies"));
    }

    #[test]
    fn missing_required_and_unknown_keys_are_refused() {
        let err = parse("[grid]\nlisten = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        let err = parse(&FULL.replace("copies = 2", "copys = 2")).unwrap_err();
        assert!(err.to_string().contains("copys"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let g = parse(FULL).unwrap();
        assert!(g.validate("b").unwrap_err().contains("own name"));
        let mut dup = g.clone();
        dup.peers[1].name = "b".into();
        assert!(dup.validate("a").unwrap_err().contains("twice"));
        let mut http = g.clone();
        http.peers[0].url = "http://127.0.0.1:4112".into();
        assert!(http.validate("a").unwrap_err().contains("https"));
        let mut own = g.clone();
        own.url = "127.0.0.1:4102".into();
        assert!(own.validate("a").unwrap_err().contains("https"));
        let mut zero = g.clone();
        zero.copies = 0;
        assert!(zero.validate("a").unwrap_err().contains("at least 1"));
        let mut many = g.clone();
        many.copies = 4;
        assert!(many.validate("a").unwrap_err().contains("only 3 sites"));
        let mut pref = g.clone();
        pref.preferred_backup = vec!["z".into()];
        assert!(pref
            .validate("a")
            .unwrap_err()
            .contains("not a configured peer"));
        let mut bad = g;
        bad.peers[0].name = "B!".into();
        assert!(bad.validate("a").is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut g = parse(FULL).unwrap();
        g.resolve_relative_paths(Path::new("/etc/pacsgrid"));
        assert_eq!(g.ca_cert, PathBuf::from("/abs/ca.pem"));
        assert_eq!(g.cert, PathBuf::from("/etc/pacsgrid/a.pem"));
        assert_eq!(g.key, PathBuf::from("/etc/pacsgrid/a.key"));
    }

    #[test]
    fn serialises_back_to_the_same_section() {
        let g = parse(FULL).unwrap();
        #[derive(Serialize)]
        struct Out<'a> {
            grid: &'a GridConfig,
        }
        let text = toml::to_string(&Out { grid: &g }).unwrap();
        assert_eq!(parse(&text).unwrap(), g);
    }
}
