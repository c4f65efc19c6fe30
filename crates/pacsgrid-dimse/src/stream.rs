//! The byte stream an association runs on: plain TCP or TCP under rustls TLS (PS3.15 Annex
//! B.1, the BCP 195 secure transport connection profile).
//!
//! An enum rather than a boxed trait object: the plain variant, which legacy modalities on a
//! trusted network use for bulk ingest, then costs one branch per poll and nothing else.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A connection carrying DICOM PDUs, with or without TLS.
pub enum DicomStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side; boxed because a TLS session is large and moves seldom.
    Tls {
        /// The TLS stream.
        stream: Box<TlsStream<TcpStream>>,
        /// The subject (common name, or the whole subject when there is no CN) of the peer's
        /// verified certificate, when it presented one.
        peer_name: Option<String>,
    },
}

impl std::fmt::Debug for DicomStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DicomStream::Plain(_) => f.write_str("DicomStream::Plain"),
            DicomStream::Tls { peer_name, .. } => f
                .debug_struct("DicomStream::Tls")
                .field("peer_name", peer_name)
                .finish(),
        }
    }
}

impl From<TcpStream> for DicomStream {
    fn from(s: TcpStream) -> Self {
        DicomStream::Plain(s)
    }
}

/// Why a TLS handshake failed: the rustls reason (an untrusted or missing client
/// certificate, no common cipher suite, plain DICOM spoken to the TLS port, ...).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {0}")]
pub struct HandshakeError(pub io::Error);

impl HandshakeError {
    /// The reason as rustls gave it, for logs and the audit hook.
    pub fn reason(&self) -> String {
        self.0.to_string()
    }
}

impl DicomStream {
    /// Runs the server side of a TLS handshake on `tcp` (which gets TCP_NODELAY first, so
    /// the handshake flights are not held back by Nagle's algorithm). The caller bounds it
    /// in time.
    pub async fn accept_tls(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<DicomStream, HandshakeError> {
        tcp.set_nodelay(true).map_err(HandshakeError)?;
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(HandshakeError)?;
        let peer_name = peer_name(tls.get_ref().1);
        Ok(DicomStream::Tls {
            stream: Box::new(TlsStream::Server(tls)),
            peer_name,
        })
    }

    /// Runs the client side of a TLS handshake on `tcp`, verifying the server against
    /// `server_name`. The caller bounds it in time.
    pub async fn connect_tls(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls_pki_types::ServerName<'static>,
    ) -> Result<DicomStream, HandshakeError> {
        tcp.set_nodelay(true).map_err(HandshakeError)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(HandshakeError)?;
        let peer_name = peer_name(tls.get_ref().1);
        Ok(DicomStream::Tls {
            stream: Box::new(TlsStream::Client(tls)),
            peer_name,
        })
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            DicomStream::Plain(s) => s,
            DicomStream::Tls { stream, .. } => stream.get_ref().0,
        }
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether the connection runs under TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, DicomStream::Tls { .. })
    }

    /// The subject of the peer's verified certificate, if it presented one.
    pub fn peer_certificate_name(&self) -> Option<&str> {
        match self {
            DicomStream::Plain(_) => None,
            DicomStream::Tls { peer_name, .. } => peer_name.as_deref(),
        }
    }

    /// The negotiated protocol version and cipher suite, e.g. "TLSv1_3
    /// TLS13_AES_256_GCM_SHA384"; `None` on plain TCP.
    pub fn tls_parameters(&self) -> Option<String> {
        let DicomStream::Tls { stream, .. } = self else {
            return None;
        };
        let conn = stream.get_ref().1;
        Some(format!(
            "{:?} {:?}",
            conn.protocol_version()?,
            conn.negotiated_cipher_suite()?.suite()
        ))
    }

    /// Writes `head` then `body` as one stream of bytes, in as few system calls (and, under
    /// TLS, as few records) as the socket allows, and flushes: a PDU header written on its
    /// own would go out as a tiny segment (and a tiny TLS record) of its own.
    pub async fn write_all_pair(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() {
            let n = self
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if n < head.len() {
                head = &head[n..];
            } else {
                body = &body[n - head.len()..];
                head = &[];
            }
        }
        self.write_all(body).await?;
        self.flush().await
    }

    /// Whether the socket holds bytes from the peer (or its end of stream) that nobody has
    /// read yet. Asks the kernel with a non-blocking peek: the runtime's readiness flag is
    /// refreshed only when its I/O driver runs, which a task busy sending answers on a
    /// loaded machine may keep from happening until the last answer is out.
    pub fn bytes_waiting(&self) -> bool {
        let tcp = match self {
            DicomStream::Plain(s) => s,
            DicomStream::Tls { stream, .. } => stream.get_ref().0,
        };
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // Tokio's sockets are non-blocking, so this returns WouldBlock at once when empty.
        socket2::SockRef::from(tcp).peek(&mut one).is_ok()
    }
}

/// The name of the certificate the other side presented in a finished handshake, if any.
fn peer_name(conn: &rustls::CommonState) -> Option<String> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| certificate_name(c.as_ref()))
}

/// A printable name for a certificate's subject: its common name, or the whole subject when
/// it has none, or a note when the certificate does not parse (rustls verified it, so that
/// is unexpected, and the connection need not fail for a log field).
pub fn certificate_name(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            match subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                Some(cn) => cn.to_string(),
                None => subject.to_string(),
            }
        }
        Err(_) => "(unparsable certificate)".to_string(),
    }
}

impl AsyncRead for DicomStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DicomStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            DicomStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DicomStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DicomStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            DicomStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DicomStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DicomStream::Tls { stream, .. } => {
                Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DicomStream::Plain(s) => Pin::new(s).poll_flush(cx),
            DicomStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DicomStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            DicomStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::association::{AcceptPolicy, Association, ProposedContext, Received, RequestParams};
    use crate::tls::{provider, server_config, TlsServerFiles};
    use pacsgrid_dicom::uid;
    use rustls_pki_types::pem::PemObject;
    use std::time::Duration;

    struct Pki {
        dir: tempfile::TempDir,
        client: rustls::ClientConfig,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |cn: &str, sans: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (node, node_key) = leaf("localhost", vec!["localhost".into()]);
        let (client, client_key) = leaf("modality-1", vec![]);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("node.pem"), node.pem()).unwrap();
        std::fs::write(dir.path().join("node.key"), node_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client.der().clone()],
                rustls_pki_types::PrivateKeyDer::from_pem_slice(
                    client_key.serialize_pem().as_bytes(),
                )
                .unwrap(),
            )
            .unwrap();
        Pki { dir, client }
    }

    #[tokio::test]
    async fn association_over_mutual_tls_carries_large_pdvs_and_the_client_name() {
        let pki = pki();
        let p = |n: &str| pki.dir.path().join(n);
        let server_cfg = server_config(&TlsServerFiles {
            cert: p("node.pem"),
            key: p("node.key"),
            client_ca: Some(p("ca.pem")),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let stream = DicomStream::accept_tls(tcp, server_cfg).await.unwrap();
            assert!(stream.tls_parameters().unwrap().contains("TLS"));
            let policy = AcceptPolicy {
                ae_title: "PACSGRID".into(),
                accept_any_called_ae: false,
                allowed_calling_aes: None,
                max_pdu_length: 262_144,
                access: None,
            };
            let secs = Duration::from_secs(5);
            let mut a = Association::accept(stream, &policy, false, secs, secs)
                .await
                .unwrap();
            let name = a.peer_certificate_name().map(str::to_string);
            let Ok(Received::Data(pdvs)) = a.read_pdu().await else {
                panic!("expected P-DATA");
            };
            (a.is_tls(), name, pdvs[0].data.to_vec())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = DicomStream::connect_tls(tcp, Arc::new(pki.client), name)
            .await
            .unwrap();
        assert_eq!(stream.peer_certificate_name(), Some("localhost"));
        let params = RequestParams {
            calling_ae: "MODALITY".into(),
            called_ae: "PACSGRID".into(),
            contexts: vec![ProposedContext {
                abstract_syntax: uid::VERIFICATION.into(),
                transfer_syntaxes: vec![uid::IMPLICIT_VR_LE.into()],
            }],
            roles: vec![],
            max_pdu_length: 65536,
            timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let mut a = Association::request_on(stream, &params).await.unwrap();
        assert!(a.is_tls());
        // larger than the small-PDV path: header and data go through write_all_pair
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        a.send_pdv(1, false, true, &data).await.unwrap();
        let (tls, client_name, got) = server.await.unwrap();
        assert!(tls);
        assert_eq!(client_name.as_deref(), Some("modality-1"));
        assert_eq!(got, data);
    }
}
