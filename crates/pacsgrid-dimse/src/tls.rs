//! rustls configuration of the DICOM TLS port from PEM files (PS3.15 Annex B.1, BCP 195
//! profiles).
//!
//! Protocol versions: TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1). Cipher suites, on
//! the ring provider:
//! - TLS 1.3: `TLS13_AES_128_GCM_SHA256`, `TLS13_AES_256_GCM_SHA384`,
//!   `TLS13_CHACHA20_POLY1305_SHA256`;
//! - TLS 1.2: the four suites RFC 9325 section 4.2 recommends,
//!   `TLS_ECDHE_ECDSA_WITH_AES_{128,256}_GCM_SHA{256,384}` and
//!   `TLS_ECDHE_RSA_WITH_AES_{128,256}_GCM_SHA{256,384}`.
//!
//! rustls's defaults were already AEAD-only with ephemeral ECDH; what this removes is the
//! TLS 1.2 ChaCha20 suites, which BCP 195 does not list. Key exchange groups stay rustls's
//! (X25519, P-256, P-384). This matches dcmtk's default "Non-downgrading BCP 195" profile.
//!
//! With a client CA bundle, every client must present a certificate that chains to it
//! (webpki verification); without one, clients are not asked for a certificate.

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS configuration could not be built; each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file it is (certificate, key, client CA bundle).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind, or it does not parse.
    #[error("{what} {path}: {message}")]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key is not the key of the certificate.
    #[error("private key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration for another reason.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the TLS port's certificate, key and (optional) client CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerFiles {
    /// PEM certificate chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; when set, a client
    /// certificate is required.
    pub client_ca: Option<PathBuf>,
}

/// The cipher suites we offer: TLS 1.3's three and the four TLS 1.2 suites of RFC 9325, in
/// our order of preference. AES-128-GCM comes first: every listed suite meets BCP 195, and its
/// 10 AES rounds (against 14 for AES-256) cost less CPU per byte, which bulk ingest feels.
pub fn bcp195_cipher_suites() -> Vec<SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ]
}

/// The ring provider restricted to [`bcp195_cipher_suites`]. Explicit, so no process-wide
/// default provider needs installing.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: bcp195_cipher_suites(),
        ..ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(what: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads every certificate of a PEM file (end-entity first for a chain).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| pem_err("private key", path, e))
}

/// A root store of the CA certificates in a PEM file.
pub fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots
            .add(cert)
            .map_err(|e| pem_err(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server configuration of the DICOM TLS port.
pub fn server_config(files: &TlsServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = load_certs("certificate", &files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = load_roots("client CA bundle", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| pem_err("client CA bundle", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        other => pem_err("private key", &files.key, other),
    })?;
    // our order, not the client's: OpenSSL clients (dcmtk) put AES-256 first
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// A client configuration for TLS associations we request (C-MOVE destinations): servers
/// must chain to the CAs in `ca` and carry the name we connect to; when `identity` (a
/// certificate chain and its key) is given, we present it to servers that ask for one.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = load_roots("CA bundle", ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = load_certs("certificate", cert)?;
            let k = load_key(key)?;
            builder
                .with_client_auth_cert(certs, k)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                        cert: cert.to_path_buf(),
                        key: key.to_path_buf(),
                    },
                    other => pem_err("private key", key, other),
                })?
        }
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let other_key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("node.key"), key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("other.key"), other_key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("junk.pem"), "not pem at all\n").unwrap();
            Pki { dir }
        }

        fn p(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn files(&self, cert: &str, key: &str, ca: Option<&str>) -> TlsServerFiles {
            TlsServerFiles {
                cert: self.p(cert),
                key: self.p(key),
                client_ca: ca.map(|c| self.p(c)),
            }
        }
    }

    #[test]
    fn good_files_give_a_config_with_and_without_client_certificates() {
        let pki = Pki::new();
        server_config(&pki.files("node.pem", "node.key", None)).unwrap();
        server_config(&pki.files("node.pem", "node.key", Some("ca.pem"))).unwrap();
        client_config(&pki.p("ca.pem"), None).unwrap();
        client_config(
            &pki.p("ca.pem"),
            Some((&pki.p("node.pem"), &pki.p("node.key"))),
        )
        .unwrap();
        assert!(matches!(
            client_config(
                &pki.p("ca.pem"),
                Some((&pki.p("node.pem"), &pki.p("other.key")))
            ),
            Err(TlsError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let pki = Pki::new();
        let err = server_config(&pki.files("missing.pem", "node.key", None)).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = server_config(&pki.files("node.pem", "nokey.key", None)).unwrap_err();
        assert!(err.to_string().contains("private key") && err.to_string().contains("nokey.key"));

        let err = server_config(&pki.files("junk.pem", "node.key", None)).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );

        let err = server_config(&pki.files("node.pem", "junk.pem", None)).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );

        let err = server_config(&pki.files("node.pem", "other.key", None)).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("other.key") && err.to_string().contains("node.pem"));

        let err = server_config(&pki.files("node.pem", "node.key", Some("junk.pem"))).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Pem {
                    what: "client CA bundle",
                    ..
                }
            ),
            "{err}"
        );
        let err = server_config(&pki.files("node.pem", "node.key", Some("nope.pem"))).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Read {
                    what: "client CA bundle",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn only_tls12_and_13_with_bcp195_suites() {
        let p = provider();
        assert_eq!(p.cipher_suites.len(), 7);
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(name.contains("GCM") || name.starts_with("TLS13_"), "{name}");
            if let SupportedCipherSuite::Tls12(_) = s {
                assert!(name.starts_with("TLS_ECDHE_"), "{name}");
            }
        }
    }
}
