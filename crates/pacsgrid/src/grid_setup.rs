//! `pacsgrid grid init` and `pacsgrid grid add-site`: a grid CA, one certificate and one
//! ready-to-run config file per site, and `grid.json`, the summary that scripts read.

use crate::config::Config;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pacsgrid_grid::{validate_site_name, GridCa, GridConfig, GridPeer};
use pacsgrid_store::PostgresConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const SUMMARY_FILE: &str = "grid.json";
const LOOPBACK: &str = "127.0.0.1";
const AE_PREFIX: &str = "PACSGRID_";
const AE_MAX: usize = 16;
/// Ports per site: DICOM at the block's start, HTTP +1, grid +2.
const PORT_BLOCK: u32 = 10;

/// `pacsgrid grid ...`: setting up the sites of a data grid.
#[derive(Subcommand, Debug)]
pub enum GridCommand {
    /// Creates a grid: CA, site certificates, one config per site and grid.json, in DIR.
    Init(InitArgs),
    /// Adds a site to a grid made by `grid init`, and prints what the other sites must add.
    AddSite(AddSiteArgs),
    /// Shows the grid as a running node sees it (sites, lag, copies, conflicts).
    Status(crate::grid_admin::StatusArgs),
}

/// Flags of `grid init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Site names, comma separated (lowercase a-z, 0-9, '-'; at least two).
    #[arg(long, value_delimiter = ',', required = true)]
    pub sites: Vec<String>,
    /// Directory to write into (created if missing; must not hold a grid CA already).
    #[arg(long)]
    pub out: PathBuf,
    /// First port; site i gets DICOM base+10*i, HTTP +1, grid +2.
    #[arg(long, default_value_t = 4100)]
    pub base_port: u16,
    /// Copies of each instance the grid keeps (K).
    #[arg(long, default_value_t = 2)]
    pub copies: usize,
    /// Seconds a site may be unreachable before it is counted as lost.
    #[arg(long = "lost-after", default_value_t = 3600)]
    pub lost_after: u64,
    /// Extra host names or IP addresses to put in every site certificate (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Keep every site's index in this PostgreSQL database (`postgres://user@host/db`), each
    /// site in a schema of its own (`site_<name>`); default: SQLite in each data directory.
    /// Keep a password out of the URL: set `password_file` in the configs, or PGPASSWORD.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Flags of `grid add-site`.
#[derive(Args, Debug)]
pub struct AddSiteArgs {
    /// The new site's name.
    pub name: String,
    /// The grid directory written by `grid init` (holds ca.key and grid.json).
    #[arg(long)]
    pub dir: PathBuf,
    /// Extra host names or IP addresses for the new site's certificate (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
}

/// `grid.json`: what scripts need to drive the grid's sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GridSummary {
    copies: usize,
    lost_after_secs: u64,
    ca_cert: PathBuf,
    /// The PostgreSQL database of the sites' indexes, when `--postgres` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    postgres: Option<String>,
    sites: Vec<SiteSummary>,
}

/// One site in `grid.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SiteSummary {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    ae_title: String,
    dicom_port: u16,
    http_port: u16,
    grid_url: String,
}

/// Runs a `grid` subcommand.
pub fn run(cmd: GridCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GridCommand::Init(args) => init(args),
        GridCommand::AddSite(args) => add_site(args),
        GridCommand::Status(_) => bail!("grid status runs in the async runtime"),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let names: Vec<String> = args.sites.iter().map(|s| s.trim().to_string()).collect();
    if names.len() < 2 {
        bail!(
            "a grid needs at least 2 sites, --sites names {}",
            names.len()
        );
    }
    let mut seen = HashSet::new();
    for name in &names {
        validate_site_name(name)?;
        if !seen.insert(name.as_str()) {
            bail!("site {name:?} is named twice in --sites");
        }
    }
    if args.copies < 1 || args.copies > names.len() {
        bail!(
            "--copies {} must be between 1 and the number of sites ({})",
            args.copies,
            names.len()
        );
    }
    let last_port = u32::from(args.base_port) + PORT_BLOCK * (names.len() as u32 - 1) + 2;
    if last_port > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for {} sites (10 ports each)",
            args.base_port,
            names.len()
        );
    }
    if let Some(url) = &args.postgres {
        // before anything is written, so that a mistyped URL leaves no half-made grid
        PostgresConfig::new(url)
            .validate()
            .map_err(|e| anyhow::anyhow!("--postgres: {e}"))?;
    }
    let ca_key = args.out.join(pacsgrid_grid::pki::CA_KEY_FILE);
    if ca_key.exists() {
        bail!(
            "{} already exists: refusing to overwrite an existing grid (choose another --out, \
             or extend this grid with `pacsgrid grid add-site`)",
            ca_key.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let dir = args
        .out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;

    let ca = GridCa::create(&dir)?;
    let mut taken_aes = HashSet::new();
    let mut sites = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let ae_title = ae_title_for(name, &taken_aes);
        taken_aes.insert(ae_title.clone());
        let dicom_port = (u32::from(args.base_port) + PORT_BLOCK * i as u32) as u16;
        sites.push(site_summary(&dir, name, ae_title, dicom_port));
    }
    let summary = GridSummary {
        copies: args.copies,
        lost_after_secs: args.lost_after,
        ca_cert: dir.join(pacsgrid_grid::pki::CA_CERT_FILE),
        postgres: args.postgres.clone(),
        sites,
    };
    for site in &summary.sites {
        let peers: Vec<&SiteSummary> = summary
            .sites
            .iter()
            .filter(|s| s.name != site.name)
            .collect();
        write_site(&dir, &ca, &summary, site, &peers, &args.hosts)?;
    }
    write_summary(&dir, &summary)?;

    println!(
        "grid of {} sites written to {} (copies = {}, lost after {} s)",
        summary.sites.len(),
        dir.display(),
        summary.copies,
        summary.lost_after_secs
    );
    for s in &summary.sites {
        println!(
            "  {:<12} DICOM {} at {LOOPBACK}:{}  HTTP {}  grid {}",
            s.name, s.ae_title, s.dicom_port, s.http_port, s.grid_url
        );
    }
    println!("start each site with:");
    for s in &summary.sites {
        println!("  pacsgrid serve --config {}", s.config.display());
    }
    Ok(())
}

fn add_site(args: AddSiteArgs) -> anyhow::Result<()> {
    let name = args.name.trim().to_string();
    validate_site_name(&name)?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot open grid directory {}", args.dir.display()))?;
    let summary_path = dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&summary_path)
        .with_context(|| format!("cannot read {}", summary_path.display()))?;
    let mut summary: GridSummary = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a grid summary", summary_path.display()))?;
    if summary.sites.iter().any(|s| s.name == name) {
        bail!("site {name:?} is already in {}", summary_path.display());
    }
    let ca = GridCa::load(&dir)
        .with_context(|| format!("cannot load the grid CA from {}", dir.display()))?;
    let taken_aes: HashSet<String> = summary.sites.iter().map(|s| s.ae_title.clone()).collect();
    let ae_title = ae_title_for(&name, &taken_aes);
    let next_block = summary
        .sites
        .iter()
        .map(|s| u32::from(s.dicom_port) + PORT_BLOCK)
        .max()
        .unwrap_or(4100);
    if next_block + 2 > u32::from(u16::MAX) {
        bail!("no free port block left after {}", next_block - PORT_BLOCK);
    }
    let site = site_summary(&dir, &name, ae_title, next_block as u16);
    let peers: Vec<&SiteSummary> = summary.sites.iter().collect();
    write_site(&dir, &ca, &summary, &site, &peers, &args.hosts)?;
    let others: Vec<String> = peers
        .iter()
        .map(|s| s.config.display().to_string())
        .collect();
    summary.sites.push(site.clone());
    write_summary(&dir, &summary)?;

    println!(
        "site {} written: {} (DICOM {} at {LOOPBACK}:{}, HTTP {}, grid {})",
        site.name,
        site.config.display(),
        site.ae_title,
        site.dicom_port,
        site.http_port,
        site.grid_url
    );
    println!(
        "start it with:\n  pacsgrid serve --config {}",
        site.config.display()
    );
    println!(
        "add these entries to the config of every other site ({}) and restart them:\n",
        others.join(", ")
    );
    print!("{}", peer_entries(&site));
    Ok(())
}

/// The TOML another site adds to know `site`: its grid peer entry and its DICOM AE.
fn peer_entries(site: &SiteSummary) -> String {
    format!(
        "[[grid.peers]]\nname = {:?}\nurl = {:?}\n\n[[remote_ae]]\nae_title = {:?}\nhost = {:?}\nport = {}\n",
        site.name, site.grid_url, site.ae_title, LOOPBACK, site.dicom_port
    )
}

/// "PACSGRID_" + the upper-cased name, cut to the 16 characters an AE title allows; when two
/// long names would cut to the same title, a number replaces the tail so C-MOVE can tell
/// them apart.
fn ae_title_for(name: &str, taken: &HashSet<String>) -> String {
    let full: String = format!("{AE_PREFIX}{}", name.to_uppercase());
    let cut: String = full.chars().take(AE_MAX).collect();
    if !taken.contains(&cut) {
        return cut;
    }
    (2..)
        .map(|n| {
            let suffix = n.to_string();
            let head: String = full.chars().take(AE_MAX - suffix.len()).collect();
            format!("{head}{suffix}")
        })
        .find(|t| !taken.contains(t))
        .unwrap_or(cut)
}

fn site_summary(dir: &Path, name: &str, ae_title: String, dicom_port: u16) -> SiteSummary {
    SiteSummary {
        name: name.to_string(),
        config: dir.join(format!("{name}.toml")),
        data_dir: dir.join(format!("{name}-data")),
        ae_title,
        dicom_port,
        http_port: dicom_port + 1,
        grid_url: format!("https://{LOOPBACK}:{}", dicom_port + 2),
    }
}

/// The config file of one site, in the binary's schema (sections in reading order).
#[derive(Serialize)]
struct SiteFile<'a> {
    node: NodeOut<'a>,
    dicom: ListenOut<'a>,
    http: ListenOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<StorageOut>,
    remote_ae: Vec<RemoteAeOut<'a>>,
    grid: &'a GridConfig,
}

/// `[storage]` of a site whose index is in PostgreSQL.
#[derive(Serialize)]
struct StorageOut {
    index: &'static str,
    postgres: PostgresOut,
}

#[derive(Serialize)]
struct PostgresOut {
    url: String,
    schema: String,
}

/// The schema of a site's index: site names may hold '-' and start with a digit, schema
/// names may not.
fn site_schema(name: &str) -> String {
    format!("site_{}", name.replace('-', "_"))
}

#[derive(Serialize)]
struct NodeOut<'a> {
    site: &'a str,
    data_dir: &'a Path,
    default_issuer: String,
}

#[derive(Serialize)]
struct ListenOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ae_title: Option<&'a str>,
    port: u16,
    bind: &'a str,
}

#[derive(Serialize)]
struct RemoteAeOut<'a> {
    ae_title: &'a str,
    host: &'a str,
    port: u16,
}

/// Issues `site`'s certificate and writes its key, certificate and config; the config is
/// then read back with the node's own loader, so a file that would not start is never left.
fn write_site(
    dir: &Path,
    ca: &GridCa,
    summary: &GridSummary,
    site: &SiteSummary,
    peers: &[&SiteSummary],
    hosts: &[String],
) -> anyhow::Result<()> {
    let creds = ca.issue_site(&site.name, hosts)?;
    let (cert, key) = creds.write(dir, &site.name)?;
    let grid_port = site.dicom_port + 2;
    let mut grid = GridConfig::new(
        format!("{LOOPBACK}:{grid_port}"),
        site.grid_url.clone(),
        summary.ca_cert.clone(),
        cert,
        key,
    );
    grid.copies = summary.copies;
    grid.lost_after_secs = summary.lost_after_secs;
    grid.peers = peers
        .iter()
        .map(|p| GridPeer {
            name: p.name.clone(),
            url: p.grid_url.clone(),
        })
        .collect();
    let file = SiteFile {
        node: NodeOut {
            site: &site.name,
            data_dir: &site.data_dir,
            default_issuer: site.name.to_uppercase(),
        },
        dicom: ListenOut {
            ae_title: Some(&site.ae_title),
            port: site.dicom_port,
            bind: LOOPBACK,
        },
        http: ListenOut {
            ae_title: None,
            port: site.http_port,
            bind: LOOPBACK,
        },
        storage: summary.postgres.as_ref().map(|url| StorageOut {
            index: "postgres",
            postgres: PostgresOut {
                url: url.clone(),
                schema: site_schema(&site.name),
            },
        }),
        remote_ae: peers
            .iter()
            .map(|p| RemoteAeOut {
                ae_title: &p.ae_title,
                host: LOOPBACK,
                port: p.dicom_port,
            })
            .collect(),
        grid: &grid,
    };
    let body = toml::to_string(&file).context("cannot write the site config as TOML")?;
    let text = format!(
        "# pacsgrid site {:?}, written by `pacsgrid grid init`; see pacsgrid.example.toml.\n\
         # Start with: pacsgrid serve --config {}\n\n{body}",
        site.name,
        site.config.display()
    );
    std::fs::write(&site.config, text)
        .with_context(|| format!("cannot write {}", site.config.display()))?;
    let check = Config::load(&site.config)?;
    check
        .validate()
        .with_context(|| format!("{} does not validate", site.config.display()))?;
    Ok(())
}

/// Writes grid.json through a temporary file, so a reader never sees half of it.
fn write_summary(dir: &Path, summary: &GridSummary) -> anyhow::Result<()> {
    let path = dir.join(SUMMARY_FILE);
    let tmp = dir.join(format!(".{SUMMARY_FILE}.tmp"));
    let mut text = serde_json::to_string_pretty(summary)?;
    text.push('\n');
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ae_titles_are_cut_to_16_and_kept_distinct() {
        let mut taken = HashSet::new();
        assert_eq!(ae_title_for("a", &taken), "PACSGRID_A");
        let one = ae_title_for("hospital-north", &taken);
        assert_eq!(one, "PACSGRID_HOSPITA");
        taken.insert(one);
        let two = ae_title_for("hospital-south", &taken);
        assert_eq!(two, "PACSGRID_HOSPIT2");
        assert!(two.len() <= 16);
    }

    #[test]
    fn init_writes_loadable_configs_and_add_site_extends_the_grid() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("grid");
        init(InitArgs {
            sites: vec!["a".into(), "b".into(), "c".into()],
            out: out.clone(),
            base_port: 5000,
            copies: 2,
            lost_after: 5,
            hosts: vec!["localhost".into()],
            postgres: None,
        })
        .unwrap();
        let cfg = Config::load(&out.join("b.toml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node.site, "b");
        assert_eq!(cfg.node.default_issuer, "B");
        assert_eq!(cfg.dicom.ae_title, "PACSGRID_B");
        assert_eq!(cfg.dicom.port, 5010);
        assert_eq!(cfg.http.port, 5011);
        assert_eq!(cfg.remote_ae.len(), 2);
        let grid = cfg.grid.unwrap();
        assert_eq!(grid.listen, "127.0.0.1:5012");
        assert_eq!(grid.lost_after_secs, 5);
        assert_eq!(grid.peer_names().len(), 2);
        assert!(grid.cert.is_absolute());

        let err = init(InitArgs {
            sites: vec!["a".into(), "b".into()],
            out: out.clone(),
            base_port: 5000,
            copies: 2,
            lost_after: 5,
            hosts: vec![],
            postgres: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");

        add_site(AddSiteArgs {
            name: "d".into(),
            dir: out.clone(),
            hosts: vec![],
        })
        .unwrap();
        let d = Config::load(&out.join("d.toml")).unwrap();
        d.validate().unwrap();
        assert_eq!(d.dicom.port, 5030);
        assert_eq!(d.grid.unwrap().peers.len(), 3);
        let summary: GridSummary =
            serde_json::from_str(&std::fs::read_to_string(out.join("grid.json")).unwrap()).unwrap();
        assert_eq!(summary.sites.len(), 4);
        assert!(add_site(AddSiteArgs {
            name: "d".into(),
            dir: out,
            hosts: vec![],
        })
        .is_err());
    }

    /// With --postgres every site's config keeps its index in the database, each site in a
    /// schema of its own that a schema name may hold, and a site added later does too.
    #[test]
    fn postgres_sites_get_a_schema_each() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("grid");
        let url = "postgres://pacs@db.example.org:5432/grid";
        init(InitArgs {
            sites: vec!["north-1".into(), "2nd".into()],
            out: out.clone(),
            base_port: 5100,
            copies: 2,
            lost_after: 5,
            hosts: vec![],
            postgres: Some(url.into()),
        })
        .unwrap();
        add_site(AddSiteArgs {
            name: "south".into(),
            dir: out.clone(),
            hosts: vec![],
        })
        .unwrap();
        for (site, schema) in [
            ("north-1", "site_north_1"),
            ("2nd", "site_2nd"),
            ("south", "site_south"),
        ] {
            let cfg = Config::load(&out.join(format!("{site}.toml"))).unwrap();
            cfg.validate().unwrap();
            let pacsgrid_store::IndexBackend::Postgres(pg) = cfg.storage.index_backend() else {
                panic!("{site}: index not in PostgreSQL");
            };
            assert_eq!((pg.url.as_str(), pg.schema.as_str()), (url, schema));
        }
        let err = init(InitArgs {
            sites: vec!["a".into(), "b".into()],
            out: tmp.path().join("other"),
            base_port: 5200,
            copies: 2,
            lost_after: 5,
            hosts: vec![],
            postgres: Some("mysql://x@y/z".into()),
        })
        .unwrap_err();
        assert!(err.to_string().contains("--postgres"), "{err}");
        assert!(
            !tmp.path().join("other").exists(),
            "a refused init wrote something"
        );
    }

    #[test]
    fn bad_site_lists_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let try_init = |sites: &[&str], copies: usize| {
            init(InitArgs {
                sites: sites.iter().map(|s| s.to_string()).collect(),
                out: tmp.path().join("g"),
                base_port: 4100,
                copies,
                lost_after: 3600,
                hosts: vec![],
                postgres: None,
            })
            .unwrap_err()
            .to_string()
        };
        assert!(try_init(&["a"], 1).contains("at least 2"));
        assert!(try_init(&["a", "a"], 1).contains("twice"));
        assert!(try_init(&["a", "B"], 1).contains("invalid site name"));
        assert!(try_init(&["a", "b"], 3).contains("--copies"));
        assert!(
            !tmp.path().join("g").exists(),
            "nothing written for a refused init"
        );
    }

    #[test]
    fn printed_peer_entries_are_valid_toml() {
        let site = site_summary(Path::new("/g"), "d", "PACSGRID_D".into(), 4130);
        let text = peer_entries(&site);
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            v["grid"]["peers"][0]["url"].as_str(),
            Some("https://127.0.0.1:4132")
        );
        assert_eq!(v["remote_ae"][0]["port"].as_integer(), Some(4130));
    }
}
