//! rustls configurations for the grid port, from PEM files: both sides trust only the grid CA
//! and both present the site certificate, so every connection is mutually authenticated.

use crate::client::GridNetError;
use crate::config::GridConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// ALPN protocols offered and accepted on the grid port, HTTP/2 first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    // Explicit ring provider: no process-wide default needs to be installed, and no other
    // provider (aws-lc with its C build) is ever pulled in.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> GridNetError {
    GridNetError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads every certificate in a PEM file (the first is the end-entity certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, GridNetError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, GridNetError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

fn ca_roots(ca_cert: &Path) -> Result<Arc<RootCertStore>, GridNetError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_cert)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(ca_cert, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The grid port's server configuration: a client certificate chaining to the CA in
/// `ca_cert` is required; the site presents `cert`/`key`.
pub fn server_config(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, GridNetError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ca_roots(ca_cert)?, Arc::clone(&provider))
            .build()
            .map_err(|e| GridNetError::Tls(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GridNetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| pem_error(key, format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The configuration for connections to peers: only servers whose certificate chains to the
/// CA in `ca_cert` (and names the URL's host) are trusted; the site presents `cert`/`key`.
pub fn client_config(
    ca_cert: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, GridNetError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GridNetError::Tls(e.to_string()))?
        .with_root_certificates(ca_roots(ca_cert)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| pem_error(key, format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Both configurations of a site from its `[grid]` section: (server, client).
pub fn load_tls(cfg: &GridConfig) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), GridNetError> {
    Ok((
        server_config(&cfg.ca_cert, &cfg.cert, &cfg.key)?,
        client_config(&cfg.ca_cert, &cfg.cert, &cfg.key)?,
    ))
}
