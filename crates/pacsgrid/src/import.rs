//! `pacsgrid import`: stores files and folders into a data directory or to a remote AE.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pacsgrid_archive::{Archive, ArchiveConfig, StoreOutcome};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Data directory of a node that is not running (default ./pacsgrid-data).
    #[arg(long, env = "PACSGRID_DATA", conflicts_with = "to")]
    pub data: Option<PathBuf>,
    /// Send over C-STORE instead, to AE@host:port (for example PACSGRID@127.0.0.1:11112).
    #[arg(long)]
    pub to: Option<String>,
    /// Our calling AE title when sending.
    #[arg(long, default_value = "PACSGRID-IMPORT")]
    pub calling_ae: String,
    /// The node's TOML configuration: a local import then uses its data directory, site and
    /// default issuer, so imported objects are recorded as the node would record them.
    #[arg(long, env = "PACSGRID_CONFIG", conflicts_with = "to")]
    pub config: Option<PathBuf>,
    /// Issuer recorded for patients without IssuerOfPatientID (local import). Default: the
    /// config's `node.default_issuer`, else PACSGRID.
    #[arg(long)]
    pub default_issuer: Option<String>,
    /// Site name recorded as origin (local import). Default: the config's `node.site`, else
    /// "local".
    #[arg(long, env = "PACSGRID_SITE")]
    pub site: Option<String>,
    /// Files or folders (folders are walked recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Counts for the summary line.
#[derive(Default)]
pub struct Summary {
    /// Newly stored.
    pub stored: u64,
    /// Already there with the same bytes.
    pub duplicates: u64,
    /// Set aside: same UID, different bytes.
    pub quarantined: u64,
    /// Refused, with why.
    pub rejected: Vec<(PathBuf, String)>,
    /// Not offered at all: files that are not DICOM instances (a CD's DICOMDIR, viewer
    /// programs, text), with why. They do not make the import fail.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Summary {
    fn print(&self) -> ExitCode {
        for (p, why) in &self.skipped {
            println!("skipped {}: {why}", p.display());
        }
        for (p, why) in &self.rejected {
            println!("rejected {}: {why}", p.display());
        }
        println!(
            "stored {}, duplicates {}, quarantined {}, skipped {}, rejected {}",
            self.stored,
            self.duplicates,
            self.quarantined,
            self.skipped.len(),
            self.rejected.len()
        );
        if self.rejected.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Lists every regular file under the paths, in a stable order.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if !p.exists() {
            anyhow::bail!("{} does not exist", p.display());
        }
        for entry in walkdir::WalkDir::new(p).sort_by_file_name() {
            let entry = entry.with_context(|| format!("walking {}", p.display()))?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

fn progress(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Why a file is not offered for storing, or `None` when it is offered: a DICOM Part 10 file,
/// or one named `.dcm`. A folder copied from a patient CD holds a DICOMDIR (an index of the
/// medium, not an instance), a viewer and its files beside the images: those are skipped,
/// not failures.
fn skip_reason(path: &Path) -> Option<String> {
    let is_dicomdir = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"));
    if is_dicomdir {
        return Some("a DICOMDIR (the index of a medium), not an instance".into());
    }
    // a file named as DICOM is offered whatever it holds: if it is not, the store says why,
    // and the import fails, as the user meant it to be stored
    let named_dicom = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["dcm", "dicom", "dic"]
            .iter()
            .any(|d| e.eq_ignore_ascii_case(d))
    });
    if named_dicom {
        return None;
    }
    let mut head = [0u8; 132];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) if &head[128..] == b"DICM" => None,
        Ok(()) => Some("not a DICOM Part 10 file (no DICM prefix after the preamble)".into()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Some("not a DICOM Part 10 file (shorter than a preamble)".into())
        }
        // an unreadable file is offered anyway: the store fails on it, and the import with it
        Err(_) => None,
    }
}

/// Runs the import.
pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let (mut files, mut skipped) = (Vec::new(), Vec::new());
    for f in collect_files(&args.paths)? {
        match skip_reason(&f) {
            None => files.push(f),
            Some(why) => skipped.push((f, why)),
        }
    }
    let bar = progress(files.len());
    let mut summary = match &args.to {
        Some(target) => crate::import_remote::send(target, &args.calling_ae, &files, &bar).await?,
        None => import_local(&args, &files, &bar).await?,
    };
    summary.skipped = skipped;
    bar.finish_and_clear();
    Ok(summary.print())
}

async fn import_local(
    args: &ImportArgs,
    files: &[PathBuf],
    bar: &ProgressBar,
) -> anyhow::Result<Summary> {
    let cfg = match &args.config {
        Some(path) => crate::config::Config::load(path)?,
        None => crate::config::Config::default(),
    };
    // the node's own checks: above all, blobs go where the node keeps them
    cfg.validate()?;
    let node = cfg.node.clone();
    let data = args
        .data
        .clone()
        .or(node.data_dir)
        .unwrap_or_else(|| PathBuf::from("./pacsgrid-data"));
    let archive = Archive::open(ArchiveConfig {
        data_dir: data.clone(),
        site: args.site.clone().unwrap_or(node.site),
        default_issuer: args.default_issuer.clone().unwrap_or(node.default_issuer),
        blobs: cfg.storage.backend(),
        index: cfg.storage.index_backend(),
    })
    .await
    .with_context(|| {
        format!(
            "opening {} (is a node running on it?)",
            crate::config::describe_storage(&data, &cfg.storage)
        )
    })?;
    let access = crate::access::open(&cfg, &data)?;
    let mut imported = pacsgrid_access::StudyTally::new();
    let mut summary = Summary::default();
    for f in files {
        let result = archive.store_file(f, "import").await;
        if let Ok(outcome) = &result {
            let s = outcome.subject();
            imported.add(
                &s.study_uid,
                Some(&s.patient_id),
                Some(&s.issuer),
                &s.sop_class_uid,
            );
        }
        record(&mut summary, f, result.map_err(|e| e.to_string()));
        bar.inc(1);
    }
    // one "import" record per study, naming where the files came from
    let origin = args
        .paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .map(|p| format!("file://{}", p.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let template =
        pacsgrid_audit::AuditEvent::import(access.point.source(), access.operator(), &origin);
    access
        .point
        .record_all(imported.into_events(&template))
        .await
        .context("auditing the import")?;
    archive.close();
    Ok(summary)
}

/// Adds one file's result to the summary.
pub fn record(summary: &mut Summary, path: &Path, result: Result<StoreOutcome, String>) {
    match result {
        Ok(StoreOutcome::Stored { .. }) => summary.stored += 1,
        Ok(StoreOutcome::Duplicate { .. }) => summary.duplicates += 1,
        Ok(StoreOutcome::Quarantined { .. }) => summary.quarantined += 1,
        Err(why) => summary.rejected.push((path.to_path_buf(), why)),
    }
}
