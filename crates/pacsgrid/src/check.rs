//! `pacsgrid check`: is the configuration usable, and does the index agree with the blob store?

use crate::config::Config;
use anyhow::Context;
use pacsgrid_archive::{Archive, ArchiveConfig};
use pacsgrid_store::{BlobBackend, S3BlobStore};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// With `config`, validates it and checks its blob store first (for S3: the bucket is
/// listed, written, read and cleaned), printing each check; then, when the data directory
/// holds an index, prints the consistency report as JSON. Exits 0 only when all is well.
pub async fn run(
    config: Option<&Path>,
    data: Option<&Path>,
    rehash: bool,
) -> anyhow::Result<ExitCode> {
    let Some(path) = config else {
        let data = data.unwrap_or(Path::new("./pacsgrid-data"));
        return consistency(data, BlobBackend::Folder, rehash).await;
    };
    let cfg = Config::load(path)?;
    cfg.validate()?;
    println!("ok: {} is a valid configuration", path.display());
    let data: PathBuf = data
        .map(Path::to_path_buf)
        .or_else(|| cfg.node.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./pacsgrid-data"));
    let backend = cfg.storage.backend();
    match &backend {
        BlobBackend::Folder => println!("ok: blobs in the folder {}", data.join("blobs").display()),
        BlobBackend::S3(s3) => {
            // A scratch staging area: checking must not disturb a running node's staging files.
            let scratch = tempfile::tempdir().context("creating a scratch directory")?;
            let store = S3BlobStore::connect(s3, scratch.path())
                .with_context(|| format!("storage.s3 ({})", s3.location()))?;
            let checked = store
                .probe()
                .await
                .with_context(|| format!("storage.s3: {} is not usable", s3.location()))?;
            println!("ok: blobs in {}: {checked}", s3.location());
        }
    }
    if !data.join("index.sqlite").exists() {
        println!(
            "ok: no index in {} yet, nothing to compare with the blob store",
            data.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    consistency(&data, backend, rehash).await
}

/// Prints a JSON report; exits 0 only when nothing is orphaned, missing or corrupt.
async fn consistency(data: &Path, blobs: BlobBackend, rehash: bool) -> anyhow::Result<ExitCode> {
    if !data.join("index.sqlite").exists() {
        anyhow::bail!("{} holds no pacsgrid index", data.display());
    }
    let archive = Archive::open_for_check(ArchiveConfig {
        data_dir: data.to_path_buf(),
        site: "local".into(),
        default_issuer: "PACSGRID".into(),
        blobs,
    })
    .await
    .with_context(|| format!("opening {}", data.display()))?;
    let report = archive.check(rehash).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
