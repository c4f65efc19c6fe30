//! `pacsgrid import --to AE@host:port`: sends files over C-STORE.

use crate::import::Summary;
use anyhow::Context;
use indicatif::ProgressBar;
use pacsgrid_dicom::status::{self, Category};
use pacsgrid_dimse::client::{contexts_for, read_part10_header};
use pacsgrid_dimse::config::DEFAULT_MAX_PDU_LENGTH;
use pacsgrid_dimse::{RemoteAe, StoreScu};
use std::path::PathBuf;

/// Parses `AE@host:port`.
pub fn parse_target(target: &str) -> anyhow::Result<(String, String, u16)> {
    let (ae, addr) = target
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("--to must be AE@host:port, got {target:?}"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--to must be AE@host:port, got {target:?}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid port in {target:?}"))?;
    Ok((ae.to_string(), host.to_string(), port))
}

/// Sends every file over one association; files that are not DICOM Part 10 are rejected
/// with why, and so is every file the receiver answers with a failure status.
pub async fn send(
    target: &str,
    calling_ae: &str,
    files: &[PathBuf],
    bar: &ProgressBar,
) -> anyhow::Result<Summary> {
    let (ae, host, port) = parse_target(target)?;
    let mut summary = Summary::default();
    let mut sendable = Vec::new();
    for f in files {
        match read_part10_header(f).await {
            Ok(h) => sendable.push((f.clone(), h)),
            Err(e) => {
                summary.rejected.push((f.clone(), e.to_string()));
                bar.inc(1);
            }
        }
    }
    if sendable.is_empty() {
        return Ok(summary);
    }
    let contexts = contexts_for(
        sendable
            .iter()
            .map(|(_, h)| (h.sop_class_uid.clone(), h.transfer_syntax.clone())),
    );
    let remote = RemoteAe {
        ae_title: ae,
        host,
        port,
        tls: None,
    };
    let mut scu = StoreScu::connect(&remote, calling_ae, DEFAULT_MAX_PDU_LENGTH, contexts)
        .await
        .with_context(|| format!("cannot associate with {target}"))?;
    for (f, _) in &sendable {
        match scu.send_file(f).await {
            Ok(resp) => match status::category(resp.status) {
                Category::Success => summary.stored += 1,
                Category::Warning => summary.quarantined += 1,
                _ => summary.rejected.push((
                    f.clone(),
                    format!(
                        "status 0x{:04X}: {}",
                        resp.status,
                        resp.error_comment.unwrap_or_default()
                    ),
                )),
            },
            Err(e) => summary.rejected.push((f.clone(), e.to_string())),
        }
        bar.inc(1);
    }
    if let Err(e) = scu.release().await {
        tracing::warn!(error = %e, "association release failed");
    }
    Ok(summary)
}
