//! `pacsgrid check`: does the index agree with the blob store?

use anyhow::Context;
use pacsgrid_archive::{Archive, ArchiveConfig};
use std::path::Path;
use std::process::ExitCode;

/// Prints a JSON report; exits 0 only when nothing is orphaned, missing or corrupt.
pub async fn run(data: &Path, rehash: bool) -> anyhow::Result<ExitCode> {
    if !data.join("index.sqlite").exists() {
        anyhow::bail!("{} holds no pacsgrid index", data.display());
    }
    let archive = Archive::open_for_check(ArchiveConfig {
        data_dir: data.to_path_buf(),
        site: "local".into(),
        default_issuer: "PACSGRID".into(),
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
