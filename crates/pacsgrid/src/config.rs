//! The node's configuration: a typed TOML file (unknown keys refused) overridden by
//! `PACSGRID_*` environment variables and command-line flags.

use pacsgrid_grid::GridConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole configuration file. Every key is optional; see `pacsgrid.example.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node identity and storage.
    #[serde(default)]
    pub node: NodeSection,
    /// The DICOM (DIMSE) service.
    #[serde(default)]
    pub dicom: DicomSection,
    /// The HTTP service.
    #[serde(default)]
    pub http: HttpSection,
    /// Remote AEs a C-MOVE may send to.
    #[serde(default)]
    pub remote_ae: Vec<RemoteAeEntry>,
    /// Membership in a data grid; absent for a node that stands alone.
    #[serde(default)]
    pub grid: Option<GridConfig>,
    /// The audit trail: local log and optional syslog forwarding.
    #[serde(default)]
    pub audit: pacsgrid_audit::AuditConfig,
    /// Who may connect and what they may do: AE rights, HTTP tokens and API keys.
    #[serde(default)]
    pub access: pacsgrid_access::AccessConfig,
    /// The de-identified view researchers are served.
    #[serde(default)]
    pub deid: DeidSection,
    /// Where blob bytes rest (the data directory, or an S3 bucket) and which engine keeps the
    /// index (SQLite in the data directory, or PostgreSQL).
    #[serde(default)]
    pub storage: StorageSection,
}

/// `[storage]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `"folder"` keeps blobs under the data directory; `"s3"` in the `[storage.s3]` bucket.
    #[serde(default)]
    pub blobs: BlobsKind,
    /// The bucket, when `blobs = "s3"`.
    pub s3: Option<pacsgrid_store::S3Config>,
    /// `"sqlite"` keeps the index in `DATA/index.sqlite`; `"postgres"` in the
    /// `[storage.postgres]` database.
    #[serde(default)]
    pub index: IndexKind,
    /// The database, when `index = "postgres"`.
    pub postgres: Option<pacsgrid_store::PostgresConfig>,
}

/// `storage.blobs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobsKind {
    /// `DATA/blobs`, one file per object.
    #[default]
    Folder,
    /// An S3-compatible object store (`[storage.s3]`).
    S3,
}

/// `storage.index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// `DATA/index.sqlite`, embedded.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`[storage.postgres]`).
    Postgres,
}

impl StorageSection {
    /// The index backend the archive opens; `validate` has checked that they fit together.
    pub fn index_backend(&self) -> pacsgrid_store::IndexBackend {
        match (self.index, &self.postgres) {
            (IndexKind::Postgres, Some(pg)) => pacsgrid_store::IndexBackend::Postgres(pg.clone()),
            _ => pacsgrid_store::IndexBackend::Sqlite,
        }
    }

    /// The blob backend the archive opens; `validate` has checked that they fit together.
    pub fn backend(&self) -> pacsgrid_store::BlobBackend {
        match (self.blobs, &self.s3) {
            (BlobsKind::S3, Some(s3)) => pacsgrid_store::BlobBackend::S3(s3.clone()),
            _ => pacsgrid_store::BlobBackend::Folder,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_blobs()?;
        self.validate_index()
    }

    fn validate_index(&self) -> Result<(), ConfigError> {
        match (self.index, &self.postgres) {
            (IndexKind::Postgres, None) => Err(ConfigError::Invalid(
                "storage.index = \"postgres\" needs a [storage.postgres] section with at least `url`"
                    .into(),
            )),
            (IndexKind::Sqlite, Some(_)) => Err(ConfigError::Invalid(
                "[storage.postgres] is set but storage.index is \"sqlite\": set storage.index = \
                 \"postgres\" to keep the index in that database, or remove [storage.postgres]"
                    .into(),
            )),
            (IndexKind::Postgres, Some(pg)) => pg
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string())),
            (IndexKind::Sqlite, None) => Ok(()),
        }
    }

    fn validate_blobs(&self) -> Result<(), ConfigError> {
        match (self.blobs, &self.s3) {
            (BlobsKind::S3, None) => Err(ConfigError::Invalid(
                "storage.blobs = \"s3\" needs a [storage.s3] section with at least `bucket`".into(),
            )),
            (BlobsKind::Folder, Some(_)) => Err(ConfigError::Invalid(
                "[storage.s3] is set but storage.blobs is \"folder\": set storage.blobs = \"s3\" \
                 to keep blobs in the bucket, or remove [storage.s3]"
                    .into(),
            )),
            (BlobsKind::S3, Some(s3)) => s3
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string())),
            (BlobsKind::Folder, None) => Ok(()),
        }
    }
}

/// Where a node keeps its data, for messages: the data directory, and the bucket and the
/// database when those are used (the database's URL without its password).
pub fn describe_storage(data_dir: &Path, storage: &StorageSection) -> String {
    let mut out = format!("data directory {}", data_dir.display());
    if let pacsgrid_store::BlobBackend::S3(s3) = storage.backend() {
        out.push_str(&format!(" with blobs in {}", s3.location()));
    }
    if let pacsgrid_store::IndexBackend::Postgres(pg) = storage.index_backend() {
        out.push_str(&format!(
            " with the index in PostgreSQL at {} (schema {})",
            pacsgrid_store::postgres::redact(&pg.url),
            pg.schema
        ));
    }
    out
}

/// `[deid]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeidSection {
    /// The secret that keys pseudonyms and date shifts. Absent: `DATA/deid.secret`, made
    /// on first start. Sites that must give one patient one pseudonym share one file.
    pub secret_file: Option<PathBuf>,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Data directory (index, blobs, staging).
    pub data_dir: Option<PathBuf>,
    /// Site name, recorded as origin of what this node receives.
    #[serde(default = "default_site")]
    pub site: String,
    /// Issuer recorded for patients that arrive without IssuerOfPatientID.
    #[serde(default = "default_issuer")]
    pub default_issuer: String,
}

/// `[dicom]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSection {
    /// Our AE title.
    #[serde(default = "default_ae")]
    pub ae_title: String,
    /// TCP port.
    #[serde(default = "default_dicom_port")]
    pub port: u16,
    /// Address to listen on.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Largest PDU we accept (bytes).
    #[serde(default = "default_max_pdu")]
    pub max_pdu_length: u32,
    /// Concurrent associations; more are rejected (A-ASSOCIATE-RJ, transient).
    #[serde(default = "default_max_assoc")]
    pub max_associations: usize,
    /// Time allowed to complete association negotiation, in seconds.
    #[serde(default = "default_assoc_timeout")]
    pub association_timeout_secs: u64,
    /// An association silent this long is aborted, in seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// If set, only these calling AE titles may associate.
    pub allowed_calling_aes: Option<Vec<String>>,
    /// Reject associations whose called AE title is not ours (off by default, as in
    /// Orthanc: many modalities are configured with a wrong or generic called AE).
    #[serde(default)]
    pub check_called_ae: bool,
    /// Serve plain (unencrypted) DICOM on `port`; false closes it, so that only the TLS
    /// port is open.
    #[serde(default = "default_true")]
    pub plain: bool,
    /// The DICOM TLS port; absent: no TLS.
    #[serde(default)]
    pub tls: Option<DicomTlsSection>,
}

/// `[dicom.tls]`: DICOM over TLS (PS3.15 BCP 195 profile) on its own port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomTlsSection {
    /// TCP port of the TLS service.
    #[serde(default = "default_dicom_tls_port")]
    pub port: u16,
    /// Address to listen on; defaults to `[dicom] bind`.
    pub bind: Option<String>,
    /// PEM certificate chain of the node (end-entity first).
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA bundle: when set, every client must present a certificate chaining to it.
    pub client_ca: Option<PathBuf>,
}

impl DicomTlsSection {
    /// Makes relative paths relative to `base` (the config file's directory).
    fn resolve_relative_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.cert);
        fix(&mut self.key);
        if let Some(ca) = &mut self.client_ca {
            fix(ca);
        }
    }

    /// The files as the DIMSE crate takes them.
    pub fn files(&self) -> pacsgrid_dimse::TlsServerFiles {
        pacsgrid_dimse::TlsServerFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// TCP port.
    #[serde(default = "default_http_port")]
    pub port: u16,
    /// Address to listen on.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Origins that browser viewers may call the node from (CORS); `["*"]` allows any,
    /// empty (the default) sends no CORS headers.
    #[serde(default)]
    pub cors_allow_origins: Vec<String>,
    /// Largest STOW-RS request body accepted, in bytes; larger uploads get 413.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
}

/// One `[[remote_ae]]`: a destination for C-MOVE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAeEntry {
    /// Its AE title (the C-MOVE destination name).
    pub ae_title: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// PEM CA bundle the destination's certificate must chain to. When set, associations to
    /// it use DICOM TLS (its certificate must name `host`), presenting the `[dicom.tls]`
    /// certificate when it asks for one.
    pub tls_ca: Option<PathBuf>,
}

fn default_site() -> String {
    "local".into()
}
fn default_issuer() -> String {
    "PACSGRID".into()
}
fn default_ae() -> String {
    "PACSGRID".into()
}
fn default_dicom_port() -> u16 {
    11112
}
fn default_dicom_tls_port() -> u16 {
    2762
}
fn default_true() -> bool {
    true
}
fn default_http_port() -> u16 {
    8080
}
fn default_max_upload_bytes() -> u64 {
    16 << 30
}
fn default_bind() -> String {
    // loopback until the operator configures access rules (or says --insecure): a node must
    // not hand patient data to the network by default
    "127.0.0.1".into()
}
fn default_max_pdu() -> u32 {
    256 * 1024
}
fn default_max_assoc() -> usize {
    64
}
fn default_assoc_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    300
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data_dir: None,
            site: default_site(),
            default_issuer: default_issuer(),
        }
    }
}

impl Default for DicomSection {
    fn default() -> Self {
        DicomSection {
            ae_title: default_ae(),
            port: default_dicom_port(),
            bind: default_bind(),
            max_pdu_length: default_max_pdu(),
            max_associations: default_max_assoc(),
            association_timeout_secs: default_assoc_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            allowed_calling_aes: None,
            check_called_ae: false,
            plain: true,
            tls: None,
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            port: default_http_port(),
            bind: default_bind(),
            cors_allow_origins: Vec::new(),
            max_upload_bytes: default_max_upload_bytes(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key and line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the offending key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The DICOM TLS port's bind address: its own, or `[dicom] bind`.
    pub fn dicom_tls_bind(&self) -> Option<&str> {
        let tls = self.dicom.tls.as_ref()?;
        Some(tls.bind.as_deref().unwrap_or(&self.dicom.bind))
    }

    /// At least one DICOM port, and the plain and TLS ports apart.
    fn validate_dicom_ports(&self) -> Result<(), ConfigError> {
        match &self.dicom.tls {
            None if !self.dicom.plain => Err(ConfigError::Invalid(
                "dicom.plain = false needs a [dicom.tls] section: no DICOM port would be open"
                    .into(),
            )),
            Some(tls) if self.dicom.plain && tls.port == self.dicom.port => {
                Err(ConfigError::Invalid(format!(
                    "dicom.tls.port and dicom.port are both {}: the TLS and plain ports must differ",
                    tls.port
                )))
            }
            _ => Ok(()),
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Certificates usually sit beside the config file: relative paths mean "from there",
        // whatever directory the node is started in.
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        if let Some(grid) = &mut cfg.grid {
            grid.resolve_relative_paths(&base);
        }
        if let Some(tls) = &mut cfg.dicom.tls {
            tls.resolve_relative_paths(&base);
        }
        if let Some(f) = &mut cfg.deid.secret_file {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        if let Some(f) = cfg
            .storage
            .s3
            .as_mut()
            .and_then(|s3| s3.secret_access_key_file.as_mut())
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        if let Some(f) = cfg
            .storage
            .postgres
            .as_mut()
            .and_then(|pg| pg.password_file.as_mut())
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        for r in &mut cfg.remote_ae {
            if let Some(ca) = &mut r.tls_ca {
                if ca.is_relative() {
                    *ca = base.join(&*ca);
                }
            }
        }
        Ok(cfg)
    }

    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ae_ok = |ae: &str| {
            !ae.trim().is_empty()
                && ae.len() <= 16
                && ae.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
        };
        if !ae_ok(&self.dicom.ae_title) {
            return Err(ConfigError::Invalid(format!(
                "dicom.ae_title {:?} must be 1 to 16 printable ASCII characters",
                self.dicom.ae_title
            )));
        }
        for r in &self.remote_ae {
            if !ae_ok(&r.ae_title) {
                return Err(ConfigError::Invalid(format!(
                    "remote_ae.ae_title {:?} is not a valid AE title",
                    r.ae_title
                )));
            }
        }
        if self.dicom.max_pdu_length < 4096 {
            return Err(ConfigError::Invalid(
                "dicom.max_pdu_length must be at least 4096".into(),
            ));
        }
        if let Some(syslog) = &self.audit.syslog {
            syslog
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.validate_dicom_ports()?;
        self.storage.validate()?;
        if self.dicom.max_associations == 0 {
            return Err(ConfigError::Invalid(
                "dicom.max_associations must be at least 1".into(),
            ));
        }
        if let Some(grid) = &self.grid {
            pacsgrid_grid::validate_site_name(&self.node.site)
                .map_err(|e| ConfigError::Invalid(format!("node.site in a grid: {e}")))?;
            grid.validate(&self.node.site)
                .map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../pacsgrid.example.toml");
        let cfg: Config = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.remote_ae.len(), 1);
        assert!(cfg.audit.enabled);
        assert!(
            cfg.grid.is_none(),
            "the example's grid section is commented out"
        );
    }

    #[test]
    fn example_grid_section_parses_when_uncommented() {
        let text = include_str!("../../../pacsgrid.example.toml");
        let start = text.find("# [grid]").unwrap();
        let section: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg: Config = toml::from_str(&format!("[node]\nsite = \"a\"\n{section}")).unwrap();
        cfg.validate().unwrap();
        let grid = cfg.grid.unwrap();
        assert_eq!(grid.copies, 2);
        assert_eq!(grid.peers.len(), 1);
    }

    /// The commented-out section of pacsgrid.example.toml that starts at `header`, uncommented.
    fn example_section(header: &str) -> String {
        let text = include_str!("../../../pacsgrid.example.toml");
        let start = text.find(header).unwrap();
        text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn example_storage_s3_section_parses_when_uncommented() {
        let section = example_section("# [storage.s3]");
        let cfg: Config = toml::from_str(&format!("[storage]\nblobs = \"s3\"\n{section}")).unwrap();
        cfg.validate().unwrap();
        let s3 = cfg.storage.s3.unwrap();
        assert_eq!(s3.bucket, "pacsgrid-site-a");
        assert_eq!(s3.prefix, "blobs");
    }

    #[test]
    fn example_storage_postgres_section_parses_when_uncommented() {
        let section = example_section("# [storage.postgres]");
        let cfg: Config =
            toml::from_str(&format!("[storage]\nindex = \"postgres\"\n{section}")).unwrap();
        cfg.validate().unwrap();
        let pacsgrid_store::IndexBackend::Postgres(pg) = cfg.storage.index_backend() else {
            panic!("not postgres");
        };
        assert_eq!(pg.schema, "site_a");
        assert_eq!(pg.password_file, Some(PathBuf::from("pg.secret")));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = toml::from_str::<Config>("[dicom]\nae_titel = \"X\"\n").unwrap_err();
        assert!(err.to_string().contains("ae_titel"), "{err}");
    }

    #[test]
    fn grid_section_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "[node]\nsite = \"a\"\n[grid]\nlisten = \"127.0.0.1:4102\"\n\
             url = \"https://127.0.0.1:4102\"\nca_cert = \"ca.pem\"\ncert = \"/abs/a.pem\"\n\
             key = \"keys/a.key\"\ncopies = 1\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        cfg.validate().unwrap();
        let grid = cfg.grid.unwrap();
        assert_eq!(grid.ca_cert, dir.path().join("ca.pem"));
        assert_eq!(grid.cert, PathBuf::from("/abs/a.pem"));
        assert_eq!(grid.key, dir.path().join("keys/a.key"));
    }

    #[test]
    fn deid_secret_file_resolves_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[deid]\nsecret_file = \"keys/deid.secret\"\n").unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(
            cfg.deid.secret_file,
            Some(dir.path().join("keys/deid.secret"))
        );
        let none: Config = toml::from_str("").unwrap();
        assert!(none.deid.secret_file.is_none());
        assert!(toml::from_str::<Config>("[deid]\nsecret = \"x\"\n").is_err());
    }

    #[test]
    fn grid_validation_errors_reach_the_config() {
        let text = "[node]\nsite = \"a\"\n[grid]\nlisten = \"x:1\"\nurl = \"https://x:1\"\n\
                    ca_cert = \"c\"\ncert = \"c\"\nkey = \"k\"\ncopies = 3\n\
                    [[grid.peers]]\nname = \"b\"\nurl = \"https://x:2\"\n";
        let cfg: Config = toml::from_str(text).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("copies"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.dicom.port, 11112);
        assert_eq!(cfg.http.port, 8080);
        assert_eq!(cfg.dicom.ae_title, "PACSGRID");
        assert!(cfg.audit.enabled && cfg.audit.syslog.is_none());
    }

    #[test]
    fn dicom_tls_section_parses_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "[dicom]\nbind = \"127.0.0.1\"\nplain = false\n[dicom.tls]\ncert = \"tls/node.pem\"\n\
             key = \"/abs/node.key\"\nclient_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        cfg.validate().unwrap();
        assert!(!cfg.dicom.plain);
        let tls = cfg.dicom.tls.as_ref().unwrap();
        assert_eq!(tls.port, 2762);
        assert_eq!(tls.cert, dir.path().join("tls/node.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/node.key"));
        assert_eq!(tls.client_ca, Some(dir.path().join("ca.pem")));
        assert_eq!(cfg.dicom_tls_bind(), Some("127.0.0.1"));
        let cfg: Config = toml::from_str("").unwrap();
        assert!(cfg.dicom.plain && cfg.dicom.tls.is_none() && cfg.dicom_tls_bind().is_none());
    }

    #[test]
    fn dicom_port_combinations_are_checked() {
        let cfg: Config = toml::from_str("[dicom]\nplain = false\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("dicom.plain = false"), "{err}");
        let cfg: Config =
            toml::from_str("[dicom]\nport = 2762\n[dicom.tls]\ncert = \"c\"\nkey = \"k\"\n")
                .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("must differ"), "{err}");
        let cfg: Config = toml::from_str(
            "[dicom]\nport = 2762\nplain = false\n[dicom.tls]\ncert = \"c\"\nkey = \"k\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let err = toml::from_str::<Config>("[dicom.tls]\ncert = \"c\"\n").unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        let err = toml::from_str::<Config>("[dicom.tls]\ncert = \"c\"\nkey = \"k\"\nca = 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("ca"), "{err}");
    }

    #[test]
    fn storage_section_chooses_the_blob_backend() {
        let cfg: Config = toml::from_str("").unwrap();
        assert!(matches!(
            cfg.storage.backend(),
            pacsgrid_store::BlobBackend::Folder
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "[storage]\nblobs = \"s3\"\n[storage.s3]\nbucket = \"scans\"\n\
             endpoint = \"http://127.0.0.1:9000\"\nallow_http = true\naccess_key_id = \"AK\"\n\
             secret_access_key_file = \"keys/s3.secret\"\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        cfg.validate().unwrap();
        let pacsgrid_store::BlobBackend::S3(s3) = cfg.storage.backend() else {
            panic!("not s3");
        };
        assert_eq!(s3.bucket, "scans");
        assert_eq!(s3.prefix, "blobs");
        assert_eq!(
            s3.secret_access_key_file,
            Some(dir.path().join("keys/s3.secret"))
        );
        for (text, needle) in [
            ("[storage]\nblobs = \"s3\"\n", "[storage.s3]"),
            ("[storage.s3]\nbucket = \"scans\"\n", "storage.blobs"),
            (
                "[storage]\nblobs = \"s3\"\n[storage.s3]\nbucket = \"x\"\n",
                "bucket",
            ),
        ] {
            let cfg: Config = toml::from_str(text).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        for bad in [
            "[storage]\nblobs = \"nfs\"\n",
            "[storage]\nblobs = \"s3\"\n[storage.s3]\nbucket = \"b\"\nsecret_access_key = \"x\"\n",
        ] {
            assert!(toml::from_str::<Config>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_section_chooses_the_index_backend() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(
            cfg.storage.index_backend(),
            pacsgrid_store::IndexBackend::Sqlite
        );
        let cfg: Config = toml::from_str("[storage]\nindex = \"sqlite\"\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.storage.index_backend(),
            pacsgrid_store::IndexBackend::Sqlite
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\n\
             url = \"postgres://pacsgrid@db.example.org:5432/pacs\"\nschema = \"site_a\"\n\
             password_file = \"keys/pg.secret\"\nmax_connections = 4\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        cfg.validate().unwrap();
        let pacsgrid_store::IndexBackend::Postgres(pg) = cfg.storage.index_backend() else {
            panic!("not postgres");
        };
        assert_eq!(pg.url, "postgres://pacsgrid@db.example.org:5432/pacs");
        assert_eq!(pg.schema, "site_a");
        assert_eq!(pg.max_connections, 4);
        assert_eq!(pg.password_file, Some(dir.path().join("keys/pg.secret")));
        // the blob backend is chosen on its own
        assert!(matches!(
            cfg.storage.backend(),
            pacsgrid_store::BlobBackend::Folder
        ));
        let cfg: Config = toml::from_str(
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"postgres://h/d\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let pacsgrid_store::IndexBackend::Postgres(pg) = cfg.storage.index_backend() else {
            panic!("not postgres");
        };
        assert_eq!(pg, pacsgrid_store::PostgresConfig::new("postgres://h/d"));
    }

    #[test]
    fn index_settings_that_do_not_fit_are_refused_with_the_key() {
        for (text, needle) in [
            ("[storage]\nindex = \"postgres\"\n", "[storage.postgres]"),
            (
                "[storage.postgres]\nurl = \"postgres://h/d\"\n",
                "storage.index",
            ),
            (
                "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"mysql://h/d\"\n",
                "storage.postgres.url",
            ),
            (
                "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"postgres://h/d\"\n\
                 schema = \"Site-A\"\n",
                "storage.postgres.schema",
            ),
            (
                "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"postgres://h/d\"\n\
                 max_connections = 1\n",
                "storage.postgres.max_connections",
            ),
        ] {
            let cfg: Config = toml::from_str(text).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        // a password in a refused URL is not echoed back
        let cfg: Config = toml::from_str(
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"pg://u:hunter2@h/d\"\n",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        for bad in [
            "[storage]\nindex = \"mysql\"\n",
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\nurl = \"postgres://h/d\"\n\
             password = \"x\"\n",
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\nschema = \"a\"\n",
        ] {
            assert!(toml::from_str::<Config>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_is_described_without_the_password() {
        let cfg: Config = toml::from_str(
            "[storage]\nindex = \"postgres\"\n[storage.postgres]\n\
             url = \"postgres://pacs:hunter2@db:5432/pacs\"\nschema = \"site_a\"\n",
        )
        .unwrap();
        let text = describe_storage(Path::new("/srv/pacs"), &cfg.storage);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("/srv/pacs"), "{text}");
        assert!(text.contains("postgres://pacs:***@db:5432/pacs"), "{text}");
        assert!(text.contains("site_a"), "{text}");
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(
            describe_storage(Path::new("d"), &cfg.storage),
            "data directory d"
        );
    }

    #[test]
    fn audit_section_is_checked() {
        let cfg: Config =
            toml::from_str("[audit.syslog]\naddress = \"collector\"\nca_cert = \"ca.pem\"\n")
                .unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
        let err = toml::from_str::<Config>("[audit]\nsyslg = 1\n").unwrap_err();
        assert!(err.to_string().contains("syslg"), "{err}");
    }
}
