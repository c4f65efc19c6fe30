//! The grid port: an axum router served over mutual TLS. Only peers whose certificate chains
//! to the grid CA get past the handshake, and only configured sites get past the router's door;
//! handlers learn which site is calling from the [`PeerSite`] request extension.

use crate::pki::site_name_of;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake must complete within this time, so a silent client cannot hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is asked for, running requests get this long before connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The site a request on the grid port comes from, as its certificate names it. Handlers take
/// it with `Extension<PeerSite>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSite(pub String);

/// Serves `router` on `listener` over mutual TLS (`tls` must require client certificates, see
/// [`crate::tls::server_config`]) until `shutdown` completes, then lets running requests finish
/// for a bounded time. A peer whose certificate names a site outside `allowed_sites` gets 403.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    allowed_sites: Arc<HashSet<String>>,
    access: Arc<pacsgrid_access::AccessPoint>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "grid port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = Conn {
            acceptor: acceptor.clone(),
            allowed: Arc::clone(&allowed_sites),
            access: Arc::clone(&access),
            router: router.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            conn.run(tcp, remote).await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("grid port: connections still open after the shutdown grace period");
        }
    }
}

struct Conn {
    acceptor: TlsAcceptor,
    allowed: Arc<HashSet<String>>,
    access: Arc<pacsgrid_access::AccessPoint>,
    router: Router,
    watcher: Watcher,
}

impl Conn {
    async fn run(self, tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%remote, reason = %e, "grid TLS handshake failed");
                let why = format!("grid TLS handshake failed: {e}");
                crate::audit::refused(&self.access, None, remote.ip().to_string(), &why).await;
                return;
            }
            Err(_) => {
                tracing::warn!(%remote, reason = "timed out", "grid TLS handshake failed");
                return;
            }
        };
        let site = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| site_name_of(cert));
        let peer = match site {
            Some(name) if self.allowed.contains(&name) => Some(PeerSite(name)),
            Some(name) => {
                tracing::warn!(%remote, "peer certificate names unknown site {name}");
                let why = format!("certificate names {name}, which is not a site of this grid");
                let host = remote.ip().to_string();
                crate::audit::refused(&self.access, Some(&name), host, &why).await;
                None
            }
            None => {
                tracing::warn!(%remote, "peer certificate names no valid site");
                None
            }
        };
        let router = self.router;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            let peer = peer.clone();
            async move {
                match peer {
                    Some(peer) => {
                        req.extensions_mut().insert(peer);
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(remote));
                        router.oneshot(req).await
                    }
                    None => Ok::<_, Infallible>(forbidden()),
                }
            }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(%remote, error = %e, "grid connection ended with an error");
        }
    }
}

fn forbidden() -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "this site's certificate does not name a site configured as a peer here",
    });
    let mut resp = (StatusCode::FORBIDDEN, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{GridNetError, PeerClient};
    use crate::pki::GridCa;
    use crate::tls::{client_config, server_config};
    use axum::routing::{get, post};
    use axum::{Extension, Json};
    use futures::StreamExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// Log lines written while a test runs, to check what the server warned about.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let me = self.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || me.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::set_default(sub)
        }
    }

    struct Site {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    fn site(dir: &Path, ca: &GridCa, name: &str) -> Site {
        let (cert, key) = ca.issue_site(name, &[]).unwrap().write(dir, name).unwrap();
        Site {
            ca: dir.join(crate::pki::CA_CERT_FILE),
            cert,
            key,
        }
    }

    fn client_of(s: &Site, trust: &Path) -> PeerClient {
        PeerClient::new(client_config(trust, &s.cert, &s.key).unwrap(), "x").unwrap()
    }

    /// Starts site `a` on port 0 with only `b` allowed; answers with the caller's site name.
    async fn start_a(
        dir: &Path,
        ca: &GridCa,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let a = site(dir, ca, "a");
        let tls = server_config(&a.ca, &a.cert, &a.key).unwrap();
        let router = Router::new()
            .route(
                "/whoami",
                get(|Extension(p): Extension<PeerSite>| async move {
                    Json(serde_json::json!({ "site": p.0 }))
                }),
            )
            .route(
                "/echo",
                post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
            )
            .route("/blob", get(|| async { vec![7u8; 1 << 20] }))
            .route(
                "/version",
                get(|req: axum::extract::Request| async move { format!("{:?}", req.version()) }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let allowed = Arc::new(HashSet::from(["b".to_string()]));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let open = Arc::new(pacsgrid_access::AccessPoint::open_door("a"));
        let task = tokio::spawn(serve(listener, tls, allowed, open, router, async {
            let _ = rx.await;
        }));
        (base, tx, task)
    }

    #[tokio::test]
    async fn two_sites_of_one_ca_talk() {
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        let (base, stop, task) = start_a(dir.path(), &ca).await;
        let b = site(dir.path(), &ca, "b");
        let client = client_of(&b, &b.ca);
        let who: serde_json::Value = client.get_json(&base, "/whoami").await.unwrap();
        assert_eq!(who["site"], "b");
        let echo: serde_json::Value = client
            .post_json(&base, "/echo", &serde_json::json!({"n": 1}))
            .await
            .unwrap();
        assert_eq!(echo["n"], 1);
        let (len, mut body) = client.get_stream(&base, "/blob").await.unwrap();
        assert_eq!(len, Some(1 << 20));
        let mut total = 0;
        while let Some(chunk) = body.next().await {
            total += chunk.unwrap().len();
        }
        assert_eq!(total, 1 << 20);
        // The server's name is checked too: these certificates do not name "localhost".
        let by_name = base.replace("127.0.0.1", "localhost");
        match client
            .get_json::<serde_json::Value>(&by_name, "/whoami")
            .await
        {
            Err(GridNetError::Tls(m)) => assert!(m.contains("not valid for name"), "{m}"),
            other => panic!("expected a TLS name error, got {other:?}"),
        }
        // ALPN must have picked HTTP/2: one connection carries all of a peer's requests.
        let (_, mut version) = client.get_stream(&base, "/version").await.unwrap();
        assert_eq!(&version.next().await.unwrap().unwrap()[..], b"HTTP/2.0");
        match client.get_json::<serde_json::Value>(&base, "/nope").await {
            Err(GridNetError::Status { code: 404, .. }) => {}
            other => panic!("expected 404, got {other:?}"),
        }
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_client_of_another_ca_is_refused_and_logged() {
        let logs = Captured::default();
        let _guard = logs.install();
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        let (base, _stop, _task) = start_a(dir.path(), &ca).await;
        let other_dir = tempfile::tempdir().unwrap();
        let other = GridCa::create(other_dir.path()).unwrap();
        // Named "b" like an allowed site, and trusting the right CA: only the issuer is wrong.
        let intruder = site(other_dir.path(), &other, "b");
        let client = client_of(&intruder, &dir.path().join(crate::pki::CA_CERT_FILE));
        match client.get_json::<serde_json::Value>(&base, "/whoami").await {
            Err(GridNetError::Tls(_)) => {}
            other => panic!("expected a TLS error, got {other:?}"),
        }
        wait_for_log(&logs, "grid TLS handshake failed").await;
        let text = logs.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");

        // And a client that trusts only its own CA does not trust site a either.
        let own_trust = client_of(&intruder, &other_dir.path().join(crate::pki::CA_CERT_FILE));
        match own_trust
            .get_json::<serde_json::Value>(&base, "/whoami")
            .await
        {
            Err(GridNetError::Tls(m)) => assert!(m.to_lowercase().contains("issuer"), "{m}"),
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_without_certificate_is_refused() {
        let logs = Captured::default();
        let _guard = logs.install();
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        let (base, _stop, _task) = start_a(dir.path(), &ca).await;
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::load_certs(&dir.path().join(crate::pki::CA_CERT_FILE)).unwrap() {
            roots.add(c).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = PeerClient::new(Arc::new(cfg), "anon").unwrap();
        match client.get_json::<serde_json::Value>(&base, "/whoami").await {
            Err(GridNetError::Tls(_)) => {}
            other => panic!("expected a TLS error, got {other:?}"),
        }
        wait_for_log(&logs, "grid TLS handshake failed").await;
    }

    #[tokio::test]
    async fn a_site_not_configured_gets_403() {
        let logs = Captured::default();
        let _guard = logs.install();
        let dir = tempfile::tempdir().unwrap();
        let ca = GridCa::create(dir.path()).unwrap();
        let (base, _stop, _task) = start_a(dir.path(), &ca).await;
        let c = site(dir.path(), &ca, "c");
        let client = client_of(&c, &c.ca);
        match client.get_json::<serde_json::Value>(&base, "/whoami").await {
            Err(GridNetError::Status { code: 403, body }) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], 403);
            }
            other => panic!("expected 403, got {other:?}"),
        }
        wait_for_log(&logs, "peer certificate names unknown site c").await;
    }

    async fn wait_for_log(logs: &Captured, needle: &str) {
        for _ in 0..100 {
            if logs.text().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("log never said {needle:?}:\n{}", logs.text());
    }
}
