//! The pacsgrid binary: command line, configuration and wiring; no logic of its own.

mod access;
mod access_cli;
mod audit_cli;
mod check;
mod config;
mod deid_secret;
mod grid_admin;
mod grid_setup;
mod import;
mod import_remote;
mod logging;
mod metrics;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// pacsgrid: a DICOM data grid node. Each site runs one; together they act as one
/// fault-tolerant archive. `pacsgrid serve` starts a node with embedded defaults.
#[derive(Parser, Debug)]
#[command(name = "pacsgrid", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "PACSGRID_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a node: DICOM (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) and HTTP (DICOMweb under
    /// /dicom-web, WADO-URI at /wado, REST under /api/v1, /healthz, /metrics).
    Serve(serve::ServeArgs),
    /// Stores DICOM files and folders (recursively) into a data directory or to a remote AE.
    Import(import::ImportArgs),
    /// Searches and verifies the audit trail (DATA/audit/audit.log).
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
    /// Makes credentials for HTTP clients (`access new-key`).
    Access {
        #[command(subcommand)]
        command: access_cli::AccessCommand,
    },
    /// Checks that a data directory's index and blob store agree (stop the node first); with
    /// --config, first validates the configuration and checks its blob store (S3 bucket) and
    /// index database (PostgreSQL).
    Check {
        /// Data directory. Default: the config's node.data_dir, else ./pacsgrid-data.
        #[arg(long, env = "PACSGRID_DATA")]
        data: Option<PathBuf>,
        /// TOML configuration file to validate; its storage settings choose the blob store and
        /// the index.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Skip re-reading every blob to verify its hash.
        #[arg(long)]
        quick: bool,
        /// First index every blob the index does not know, from its own bytes, as crash
        /// recovery does: after moving to another index engine (SQLite to PostgreSQL) or
        /// restoring blobs from a backup. The node must be stopped.
        #[arg(long)]
        reindex: bool,
    },
    /// Asks a running node of a grid to pull a patient's studies to its site now.
    Prefetch(grid_admin::PrefetchArgs),
    /// Sets up a data grid (CA, site certificates, one config per site) and shows its status.
    Grid {
        #[command(subcommand)]
        command: grid_setup::GridCommand,
    },
}

fn main() -> std::process::ExitCode {
    // dicom-rs builds snafu errors on ordinary paths (the end of a data set, an absent
    // attribute) and then recovers; with RUST_BACKTRACE=1 in the environment each one would
    // capture a stack trace, measured at 12 % of a C-FIND's CPU. RUST_LIB_BACKTRACE=0 turns
    // that off for library errors while panics keep their backtraces. Set before any thread
    // exists, so nothing reads the environment concurrently.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    logging::init(&cli.log_format);
    // One TLS crypto provider for every client and server in the process (grid transport,
    // HTTP clients of the CLI); installing it twice is harmless, so the result is ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pacsgrid: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Check {
                data,
                config,
                quick,
                reindex,
            } => check::run(config.as_deref(), data.as_deref(), !quick, reindex).await,
            Command::Grid {
                command: grid_setup::GridCommand::Status(args),
            } => grid_admin::status(args).await,
            Command::Grid { command } => grid_setup::run(command),
            Command::Prefetch(args) => grid_admin::prefetch(args).await,
            Command::Audit { command } => audit_cli::run(command),
            Command::Access { command } => access_cli::run(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pacsgrid: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
