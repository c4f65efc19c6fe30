//! A stand-alone DIMSE SCP over an archive folder, for trying the service by hand with dcmtk.
//!
//! `cargo run -p pacsgrid-dimse --example scp -- DATA_DIR PORT [AE [DEST_AE=HOST:PORT ...]]`

use pacsgrid_archive::{Archive, ArchiveConfig};
use pacsgrid_dimse::{DimseConfig, DimseServer, RemoteAe};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let data_dir = args
        .next()
        .ok_or("usage: scp DATA_DIR PORT [AE [DEST=HOST:PORT ...]]")?;
    let port: u16 = args.next().ok_or("missing PORT")?.parse()?;
    let ae = args.next().unwrap_or_else(|| "PACSGRID".into());
    let mut remote_aes = Vec::new();
    for spec in args {
        let (title, addr) = spec.split_once('=').ok_or("DEST=HOST:PORT expected")?;
        let (host, port) = addr.rsplit_once(':').ok_or("HOST:PORT expected")?;
        remote_aes.push(RemoteAe {
            ae_title: title.into(),
            host: host.into(),
            port: port.parse()?,
            tls: None,
        });
    }
    let archive = Archive::open(ArchiveConfig {
        data_dir: data_dir.into(),
        site: "example".into(),
        default_issuer: "EXAMPLE".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await?;
    let cfg = DimseConfig {
        ae_title: ae,
        remote_aes,
        ..DimseConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let access = std::sync::Arc::new(pacsgrid_access::AccessPoint::open_door("example"));
    let server = DimseServer::new(cfg, archive.clone(), access);
    server
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    archive.close();
    Ok(())
}
