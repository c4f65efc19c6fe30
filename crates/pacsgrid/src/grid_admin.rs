//! `pacsgrid grid status` and `pacsgrid prefetch`: ask a running node over its HTTP API
//! (the node owns its data directory, so these never open it themselves).

use crate::config::Config;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Which node to ask.
#[derive(Args, Debug)]
pub struct NodeAddress {
    /// The node's configuration file (its HTTP port is read from it).
    #[arg(long, conflicts_with = "url")]
    pub config: Option<PathBuf>,
    /// The node's HTTP base URL, e.g. http://127.0.0.1:8042.
    #[arg(long)]
    pub url: Option<String>,
}

/// Flags of `grid status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// Print the JSON document (`under_replicated` is an integer scripts can poll).
    #[arg(long)]
    pub json: bool,
}

/// Flags of `prefetch`.
#[derive(Args, Debug)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// PatientID whose studies are pulled to the node.
    #[arg(long)]
    pub patient: String,
    /// IssuerOfPatientID; without it, the patient ID under every issuer.
    #[arg(long)]
    pub issuer: Option<String>,
}

fn base_url(a: &NodeAddress) -> anyhow::Result<String> {
    if let Some(u) = &a.url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let Some(path) = &a.config else {
        bail!("say which node: --config FILE or --url URL");
    };
    let cfg = Config::load(path)?;
    let host = match cfg.http.bind.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    Ok(format!("http://{host}:{}", cfg.http.port))
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the node's answer")?;
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("").to_string();
        bail!("the node answered {status}: {detail}");
    }
    Ok(body)
}

/// `pacsgrid grid status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/v1/grid", base_url(&args.node)?);
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot reach the node at {url}"))?;
    let st = answer(resp).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "site {}: {} instances in the grid, {} under-replicated (copies = {}), {} conflicts",
        st["site"].as_str().unwrap_or("?"),
        st["instances"],
        st["under_replicated"],
        st["copies"],
        st["conflicts"].as_array().map(|c| c.len()).unwrap_or(0)
    );
    println!(
        "{:<12} {:<12} {:>10} {:>10} {:>8} {:>10}  last error",
        "site", "state", "since", "feed head", "lag", "held"
    );
    let now_ms = st["now_ms"].as_i64();
    for s in st["sites"].as_array().into_iter().flatten() {
        let state = if s["self"].as_bool() == Some(true) {
            "this site"
        } else if s["lost"].as_bool() == Some(true) {
            "LOST"
        } else if s["reachable"].as_bool() == Some(true) {
            "reachable"
        } else {
            "unreachable"
        };
        // serde_json's Display ignores width, so each value is made a string first.
        let field = |v: &serde_json::Value| match v {
            serde_json::Value::Null => "-".to_string(),
            v => v.to_string(),
        };
        println!(
            "{:<12} {:<12} {:>10} {:>10} {:>8} {:>10}  {}",
            s["name"].as_str().unwrap_or("?"),
            state,
            since(now_ms, s["since_ms"].as_i64()),
            field(&s["feed_head"]),
            field(&s["lag"]),
            field(&s["instances_held"]),
            s["last_error"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a site has been in its state, as "42 s", "7 min" or "3 h" ("-" when unknown).
fn since(now_ms: Option<i64>, since_ms: Option<i64>) -> String {
    let (Some(now), Some(since)) = (now_ms, since_ms) else {
        return "-".into();
    };
    let secs = (now - since).max(0) / 1000;
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// `pacsgrid prefetch`.
pub async fn prefetch(args: PrefetchArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/api/v1/prefetch", base_url(&args.node)?);
    let body = serde_json::json!({ "patient_id": args.patient, "issuer": args.issuer });
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the node at {url}"))?;
    let r = answer(resp).await?;
    println!(
        "prefetch of patient {}: {} studies, {} instances queued, {} already here",
        args.patient,
        r["studies"].as_array().map(|s| s.len()).unwrap_or(0),
        r["instances_queued"],
        r["instances_local"]
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::since;

    #[test]
    fn since_reads_as_seconds_minutes_or_hours() {
        assert_eq!(since(Some(10_000), None), "-");
        assert_eq!(since(Some(10_000), Some(1_000)), "9 s");
        assert_eq!(since(Some(600_000), Some(0)), "10 min");
        assert_eq!(since(Some(3 * 3_600_000 + 5), Some(0)), "3 h");
        // a peer's clock ahead of ours never shows a negative time
        assert_eq!(since(Some(0), Some(5_000)), "0 s");
    }
}
