//! `pacsgrid serve`: opens the archive and runs the DICOM and HTTP services until stopped.

use crate::config::{Config, RemoteAeEntry};
use anyhow::Context;
use clap::Args;
use pacsgrid_archive::{Archive, ArchiveConfig};
use pacsgrid_dimse::{DimseConfig, DimseListener, DimseServer, RemoteAe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Flags of `serve`; each overrides the config file, and has a `PACSGRID_*` variable.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory (index, blobs). Default ./pacsgrid-data.
    #[arg(long, env = "PACSGRID_DATA")]
    pub data: Option<PathBuf>,
    /// Our DICOM AE title. Default PACSGRID.
    #[arg(long, env = "PACSGRID_AE_TITLE")]
    pub ae_title: Option<String>,
    /// DICOM port. Default 11112.
    #[arg(long, env = "PACSGRID_DICOM_PORT")]
    pub dicom_port: Option<u16>,
    /// HTTP port (/healthz, /metrics). Default 8080.
    #[arg(long, env = "PACSGRID_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// TOML configuration file (see pacsgrid.example.toml).
    #[arg(long, env = "PACSGRID_CONFIG")]
    pub config: Option<PathBuf>,
    /// Site name. Default "local".
    #[arg(long, env = "PACSGRID_SITE")]
    pub site: Option<String>,
    /// Start even though a port open to the network has no access rules (see the log for
    /// what is exposed). Without it such a configuration is refused.
    #[arg(long, env = "PACSGRID_INSECURE")]
    pub insecure: bool,
}

/// Builds the effective configuration: defaults, then the file, then env and flags.
pub fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data {
        cfg.node.data_dir = Some(d.clone());
    }
    if let Some(ae) = &args.ae_title {
        cfg.dicom.ae_title = ae.clone();
    }
    if let Some(p) = args.dicom_port {
        cfg.dicom.port = p;
    }
    if let Some(p) = args.http_port {
        cfg.http.port = p;
    }
    if let Some(s) = &args.site {
        cfg.node.site = s.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn dimse_config(cfg: &Config) -> anyhow::Result<DimseConfig> {
    let remote_aes = cfg
        .remote_ae
        .iter()
        .map(|r| remote_ae(cfg, r))
        .collect::<anyhow::Result<_>>()?;
    Ok(DimseConfig {
        ae_title: cfg.dicom.ae_title.clone(),
        accept_any_called_ae: !cfg.dicom.check_called_ae,
        max_pdu_length: cfg.dicom.max_pdu_length,
        max_associations: cfg.dicom.max_associations,
        association_timeout: Duration::from_secs(cfg.dicom.association_timeout_secs),
        idle_timeout: Duration::from_secs(cfg.dicom.idle_timeout_secs),
        allowed_calling_aes: cfg.dicom.allowed_calling_aes.clone(),
        remote_aes,
        ..DimseConfig::default()
    })
}

/// A C-MOVE destination; with `tls_ca`, its TLS client configuration is built (and its files
/// checked) now, so a bad path stops the start instead of failing the first C-MOVE.
fn remote_ae(cfg: &Config, r: &RemoteAeEntry) -> anyhow::Result<RemoteAe> {
    let tls = match &r.tls_ca {
        None => None,
        Some(ca) => {
            let identity = cfg
                .dicom
                .tls
                .as_ref()
                .map(|t| (t.cert.as_path(), t.key.as_path()));
            let client = pacsgrid_dimse::tls::client_config(ca, identity).with_context(|| {
                format!(
                    "[[remote_ae]] {}: cannot set up DICOM TLS to it",
                    r.ae_title
                )
            })?;
            Some(client)
        }
    };
    Ok(RemoteAe {
        ae_title: r.ae_title.clone(),
        host: r.host.clone(),
        port: r.port,
        tls,
    })
}

/// The DICOM ports of the configuration, bound: the plain one unless `[dicom] plain =
/// false`, the TLS one when `[dicom.tls]` is there (its files read and checked first, so a
/// missing file or a key that is not the certificate's stops the start with a clear error).
/// Also returns both addresses for the "ready" line ("off" for a closed one).
async fn dicom_listeners(cfg: &Config) -> anyhow::Result<(Vec<DimseListener>, String, String)> {
    let mut listeners = Vec::new();
    let mut plain_addr = "off".to_string();
    let mut tls_addr = "off".to_string();
    if let (Some(tls), Some(bind)) = (&cfg.dicom.tls, cfg.dicom_tls_bind()) {
        let server_config = pacsgrid_dimse::tls::server_config(&tls.files())
            .context("[dicom.tls]: cannot set up DICOM TLS")?;
        let addr = format!("{bind}:{}", tls.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen for DICOM TLS on {addr}"))?;
        listeners.push(DimseListener::tls(listener, server_config));
        tls_addr = match &tls.client_ca {
            Some(_) => format!("{addr} (client certificates required)"),
            None => addr,
        };
    }
    if cfg.dicom.plain {
        let addr = format!("{}:{}", cfg.dicom.bind, cfg.dicom.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen for DICOM on {addr}"))?;
        listeners.push(DimseListener::plain(listener));
        plain_addr = addr;
    }
    Ok((listeners, plain_addr, tls_addr))
}

/// Runs the node until SIGINT or SIGTERM, then stops accepting, lets running work finish
/// briefly and marks a clean stop.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = effective_config(&args)?;
    let data_dir = cfg
        .node
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./pacsgrid-data"));
    let archive = Archive::open(ArchiveConfig {
        data_dir: data_dir.clone(),
        site: cfg.node.site.clone(),
        default_issuer: cfg.node.default_issuer.clone(),
        blobs: cfg.storage.backend(),
        index: cfg.storage.index_backend(),
    })
    .await
    .with_context(|| {
        format!(
            "opening {}",
            crate::config::describe_storage(&data_dir, &cfg.storage)
        )
    })?;
    let access = crate::access::open(&cfg, &data_dir)?;
    let deid_secret = crate::deid_secret::load_or_create(
        &cfg.deid
            .secret_file
            .clone()
            .unwrap_or_else(|| data_dir.join("deid.secret")),
    )?;
    let insecure = crate::access::insecure_reasons(&cfg, &access.point);
    if !insecure.is_empty() {
        for why in &insecure {
            tracing::warn!("insecure configuration: {why}");
        }
        if !args.insecure {
            anyhow::bail!(
                "refusing to start with an insecure configuration on a non-loopback address:\n  - {}\n\
                 Configure [access] rules, bind to 127.0.0.1, or start with --insecure if this network is trusted.",
                insecure.join("\n  - ")
            );
        }
        tracing::warn!("starting anyway: --insecure was given");
    }

    let (dicom_listeners, dicom_addr, dicom_tls_addr) = dicom_listeners(&cfg).await?;
    let http_addr = format!("{}:{}", cfg.http.bind, cfg.http.port);
    let http_listener = tokio::net::TcpListener::bind(&http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_addr}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let grid = match &cfg.grid {
        Some(g) => Some(
            pacsgrid_grid::Grid::start(
                g.clone(),
                Arc::clone(&archive),
                Arc::clone(&access.point),
                stop_rx.clone(),
            )
            .await
            .context("starting the grid service")?,
        ),
        None => None,
    };

    let server = DimseServer::new(
        dimse_config(&cfg)?,
        Arc::clone(&archive),
        Arc::clone(&access.point),
    );
    let metrics = server.metrics();
    let dimse_task = tokio::spawn(server.run_listeners(dicom_listeners, stopped(stop_rx.clone())));
    let http_state = pacsgrid_web::HttpState {
        archive: Arc::clone(&archive),
        extra_metrics: vec![Arc::new(crate::metrics::DimseMetricsSource(metrics))],
        options: Arc::new(pacsgrid_web::HttpOptions {
            cors_allow_origins: cfg.http.cors_allow_origins.clone(),
            max_upload_bytes: cfg.http.max_upload_bytes,
        }),
        access: Arc::clone(&access.point),
        deid: Arc::new(pacsgrid_dicom::deid::Deidentifier::new(&deid_secret)),
    };
    let http_task = tokio::spawn(pacsgrid_web::serve(
        http_listener,
        http_state,
        stopped(stop_rx.clone()),
    ));

    tracing::info!(
        ae_title = %cfg.dicom.ae_title,
        dicom = %dicom_addr,
        dicom_tls = %dicom_tls_addr,
        http = %http_addr,
        data = %data_dir.display(),
        site = %cfg.node.site,
        remote_aes = cfg.remote_ae.len(),
        grid = cfg.grid.as_ref().map(|g| g.listen.as_str()).unwrap_or("none"),
        "pacsgrid node ready"
    );

    access.started(args.config.as_deref(), &data_dir).await?;

    shutdown_signal().await;
    tracing::info!("stopping: no new associations; running ones may finish");
    let _ = stop_tx.send(true);
    match dimse_task.await {
        Ok(Err(e)) => tracing::error!(error = %e, "DICOM service ended with an error"),
        Err(e) => tracing::error!(error = %e, "DICOM service task failed"),
        Ok(Ok(())) => {}
    }
    if let Ok(Err(e)) = http_task.await {
        tracing::error!(error = %e, "HTTP service ended with an error");
    }
    drop(grid);
    access.stopped().await;
    archive.close();
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
