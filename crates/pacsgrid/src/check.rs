//! `pacsgrid check`: is the configuration usable, and does the index agree with the blob store?

use crate::config::Config;
use anyhow::Context;
use pacsgrid_archive::{Archive, ArchiveConfig};
use pacsgrid_store::postgres::redact;
use pacsgrid_store::{BlobBackend, IndexBackend, PostgresIndex, S3BlobStore};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// With `config`, validates it and checks its blob store (for S3: the bucket is listed,
/// written, read and cleaned) and its index database (PostgreSQL: connected, schema ready),
/// printing each check; then, when the data directory holds an index, prints the
/// consistency report as JSON. With `reindex`, blobs the index does not know are indexed
/// first. Exits 0 only when all is well.
pub async fn run(
    config: Option<&Path>,
    data: Option<&Path>,
    rehash: bool,
    reindex: bool,
) -> anyhow::Result<ExitCode> {
    let Some(path) = config else {
        let data = data.unwrap_or(Path::new("./pacsgrid-data"));
        let defaults = crate::config::NodeSection::default();
        let cfg = ArchiveConfig {
            data_dir: data.to_path_buf(),
            site: defaults.site,
            default_issuer: defaults.default_issuer,
            blobs: BlobBackend::Folder,
            index: IndexBackend::Sqlite,
        };
        return consistency(cfg, rehash, reindex).await;
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
    let index = cfg.storage.index_backend();
    let compare = match &index {
        IndexBackend::Sqlite => data.join("index.sqlite").exists(),
        IndexBackend::Postgres(pg) => {
            let where_ = format!("PostgreSQL at {} (schema {})", redact(&pg.url), pg.schema);
            // the same open as the node's start: it connects, logs in and creates or
            // migrates the schema, so "ok" here means the node can start on it
            let index = PostgresIndex::open(pg)
                .await
                .with_context(|| format!("storage.postgres: cannot use the index in {where_}"))?;
            // its connections are closed before the consistency check opens its own
            drop(index);
            println!("ok: index in {where_}: connected, schema ready");
            // The rows are in the database, the blobs maybe in a bucket: only a data
            // directory a node has run on (it holds the LOCK file) has something to compare.
            data.join("LOCK").exists()
        }
    };
    if !compare && !reindex {
        println!(
            "ok: no index in {} yet, nothing to compare with the blob store",
            data.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = ArchiveConfig {
        data_dir: data,
        site: cfg.node.site.clone(),
        default_issuer: cfg.node.default_issuer.clone(),
        blobs: backend,
        index,
    };
    consistency(cfg, rehash, reindex).await
}

/// Prints a JSON report (after indexing unknown blobs, with `reindex`); exits 0 only when
/// nothing is orphaned, missing or corrupt.
async fn consistency(cfg: ArchiveConfig, rehash: bool, reindex: bool) -> anyhow::Result<ExitCode> {
    let data = cfg.data_dir.clone();
    if !reindex && cfg.index == IndexBackend::Sqlite && !data.join("index.sqlite").exists() {
        anyhow::bail!("{} holds no pacsgrid index", data.display());
    }
    let archive = Archive::open_for_check(cfg)
        .await
        .with_context(|| format!("opening {} (is a node running on it?)", data.display()))?;
    if reindex {
        // What crash recovery does at a start after an unclean stop: each blob the index
        // does not know is parsed and recorded (origin: this site, source "recovery").
        let (reindexed, removed) = archive.recover().await?;
        println!(
            "ok: {reindexed} blobs the index did not know are indexed; {removed} that were \
             not DICOM or were deleted are removed"
        );
    }
    let report = archive.check(rehash).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
