//! Forwards audit records to a syslog collector: RFC 5424 messages (the audit XML as MSG,
//! APP-NAME `pacsgrid`, MSGID the event name) over TLS with RFC 5425 octet-counting framing.
//!
//! The forwarder reads the local log file behind the writer, so the local log never waits
//! for or depends on the collector. Its position (byte offset and last sequence number sent)
//! lives in DIR/audit.syslog-cursor and is saved after each batch is written and flushed; a
//! restart resumes there. While the collector is down it retries with back-off and, once it
//! is back, catches up in log order. Delivery is at least once: syslog over TLS has no
//! application acknowledgement, so a batch written just before the collector vanished may be
//! lost or, after a restart, sent twice; the local log stays the record of truth.

use crate::config::SyslogConfig;
use crate::error::AuditError;
use crate::log::AuditLog;
use crate::record::{self, LineFault, Record};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The forwarder's position file inside the audit directory.
pub const CURSOR_FILE: &str = "audit.syslog-cursor";

/// Records per write to the collector at most.
const MAX_BATCH: usize = 256;
/// facility 10 (security/authorization) × 8 + severity 5 (notice), as ATNA senders use.
const PRI: u8 = 85;

/// How long to wait between attempts while the collector is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait.
    pub initial: Duration,
    /// Longest wait; each failure doubles the wait up to this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// Byte offset of the next record to send.
    offset: u64,
    /// Sequence number of the last record sent.
    seq: u64,
}

/// A running forwarder; dropping it leaves the task running, [`SyslogForwarder::shutdown`]
/// stops it.
pub struct SyslogForwarder {
    stop: watch::Sender<bool>,
    sent: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SyslogForwarder {
    /// Starts forwarding `log` to the collector in `cfg`, with `hostname` as the syslog
    /// HOSTNAME. TLS material is loaded now, so a bad file fails here, not later.
    pub fn spawn(
        log: &AuditLog,
        cfg: &SyslogConfig,
        hostname: &str,
    ) -> Result<SyslogForwarder, AuditError> {
        SyslogForwarder::spawn_with(log, cfg, hostname, Backoff::default())
    }

    /// [`SyslogForwarder::spawn`] with a chosen retry back-off.
    pub fn spawn_with(
        log: &AuditLog,
        cfg: &SyslogConfig,
        hostname: &str,
        backoff: Backoff,
    ) -> Result<SyslogForwarder, AuditError> {
        cfg.validate()?;
        let connector = TlsConnector::from(Arc::new(client_config(cfg)?));
        let server_name = ServerName::try_from(cfg.server_name().to_string())
            .map_err(|e| AuditError::Tls(format!("server name {:?}: {e}", cfg.server_name())))?;
        let cursor_path = log.dir().join(CURSOR_FILE);
        let cursor = load_cursor(&cursor_path)?;
        let (stop, stop_rx) = watch::channel(false);
        let (sent_tx, sent) = watch::channel(cursor.seq);
        let f = Forwarder {
            log_path: log.path().to_path_buf(),
            cursor_path,
            cursor,
            address: cfg.address.clone(),
            server_name,
            connector,
            header: header_fields(hostname),
            backoff,
            durable: log.subscribe(),
            stop: stop_rx,
            sent: sent_tx,
        };
        let task = tokio::spawn(f.run());
        Ok(SyslogForwarder { stop, sent, task })
    }

    /// The sequence number of the last record written and flushed to the collector.
    pub fn sent(&self) -> watch::Receiver<u64> {
        self.sent.clone()
    }

    /// Stops the forwarder and waits for it; its cursor is already saved.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn client_config(cfg: &SyslogConfig) -> Result<rustls::ClientConfig, AuditError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| AuditError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::pem_file_iter(&cfg.ca_cert)
        .map_err(|e| tls(&cfg.ca_cert.display().to_string(), &e))?;
    for cert in ca {
        let cert = cert.map_err(|e| tls(&cfg.ca_cert.display().to_string(), &e))?;
        roots
            .add(cert)
            .map_err(|e| tls(&cfg.ca_cert.display().to_string(), &e))?;
    }
    if roots.is_empty() {
        return Err(AuditError::Tls(format!(
            "{} holds no certificate",
            cfg.ca_cert.display()
        )));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls("protocol versions", &e))?
    .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls(&cert.display().to_string(), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls(&key.display().to_string(), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls("client certificate", &e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn load_cursor(path: &Path) -> Result<Cursor, AuditError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuditError::Malformed {
            line: 1,
            reason: format!("{}: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(AuditError::io(path, e)),
    }
}

fn save_cursor(path: &Path, c: Cursor) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&c).map_err(std::io::Error::other)?)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// HOSTNAME, APP-NAME and PROCID as RFC 5424 wants them (printable ASCII, no spaces).
fn header_fields(hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let host = if host.is_empty() { "-".into() } else { host };
    format!("{host} pacsgrid {}", std::process::id())
}

/// One record as an RFC 5425 frame: `LEN SP <PRI>1 TIMESTAMP HOST APP PROCID MSGID - BOM XML`.
fn frame(header: &str, r: &Record) -> Vec<u8> {
    let msgid: String = r
        .event
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let mut msg = format!("<{PRI}>1 {} {header} {msgid} - ", r.time).into_bytes();
    msg.extend_from_slice("\u{FEFF}".as_bytes());
    msg.extend_from_slice(r.xml.as_bytes());
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

struct Forwarder {
    log_path: PathBuf,
    cursor_path: PathBuf,
    cursor: Cursor,
    address: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    header: String,
    backoff: Backoff,
    durable: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    sent: watch::Sender<u64>,
}

type Conn = TlsStream<TcpStream>;

impl Forwarder {
    async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut wait = self.backoff.initial;
        while !*self.stop.borrow() {
            let batch = match self.read_batch().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "audit syslog: cannot read the local log");
                    self.pause(wait).await;
                    continue;
                }
            };
            let Some((records, next_offset)) = batch else {
                self.idle(&mut conn).await;
                continue;
            };
            if conn.as_mut().is_some_and(peer_gone) {
                conn = None;
            }
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => {
                        tracing::info!(collector = %self.address, "audit syslog: connected");
                        conn = Some(c);
                    }
                    Err(e) => {
                        tracing::warn!(collector = %self.address, error = %e, retry_in = ?wait, "audit syslog: collector unreachable");
                        self.pause(wait).await;
                        wait = (wait * 2).min(self.backoff.max);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let mut bytes = Vec::new();
            for r in &records {
                bytes.extend_from_slice(&frame(&self.header, r));
            }
            let written = tokio::time::timeout(Duration::from_secs(30), async {
                c.write_all(&bytes).await?;
                c.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    wait = self.backoff.initial;
                    let last = records.last().map_or(self.cursor.seq, |r| r.seq);
                    self.cursor = Cursor {
                        offset: next_offset,
                        seq: last,
                    };
                    if let Err(e) = save_cursor(&self.cursor_path, self.cursor) {
                        tracing::warn!(error = %e, "audit syslog: cannot save the cursor");
                    }
                    self.sent.send_replace(last);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "audit syslog: write to collector failed");
                    conn = None;
                }
                Err(_) => {
                    tracing::warn!("audit syslog: write to collector timed out");
                    conn = None;
                }
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.address))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        tokio::time::timeout(
            Duration::from_secs(10),
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Waits for new records; meanwhile notices a collector that closed the connection, so
    /// the next batch is not written into a dead socket.
    async fn idle(&mut self, conn: &mut Option<Conn>) {
        let mut buf = [0u8; 512];
        let closed = tokio::select! {
            _ = self.durable.changed() => false,
            _ = self.stop.changed() => false,
            // The log may also grow through a writer in another handle; poll now and then.
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            r = async {
                match conn.as_mut() {
                    Some(c) => c.read(&mut buf).await,
                    None => std::future::pending().await,
                }
            } => matches!(r, Ok(0) | Err(_)),
        };
        if closed {
            tracing::info!(collector = %self.address, "audit syslog: collector closed the connection");
            *conn = None;
        }
    }

    /// Reads up to `MAX_BATCH` complete records after the cursor; `None` when there are none.
    async fn read_batch(&mut self) -> std::io::Result<Option<(Vec<Record>, u64)>> {
        let path = self.log_path.clone();
        let mut cursor = self.cursor;
        let len = std::fs::metadata(&path)?.len();
        if len < cursor.offset {
            tracing::warn!(log = %path.display(), "audit syslog: the log is shorter than the cursor; starting over");
            cursor = Cursor::default();
            self.cursor = cursor;
        }
        if len == cursor.offset {
            return Ok(None);
        }
        let read = tokio::task::spawn_blocking(move || read_records(&path, cursor))
            .await
            .map_err(std::io::Error::other)??;
        Ok(read)
    }
}

/// Whether the collector has closed the connection (it never sends, so readable = closed).
fn peer_gone(c: &mut Conn) -> bool {
    let mut buf = [0u8; 512];
    let poll = futures_poll_once(c.read(&mut buf));
    matches!(poll, Some(Ok(0)) | Some(Err(_)))
}

/// Polls a future once without blocking.
fn futures_poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn read_records(path: &Path, cursor: Cursor) -> std::io::Result<Option<(Vec<Record>, u64)>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(cursor.offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut offset = cursor.offset;
    let mut records = Vec::new();
    let mut line = Vec::new();
    while records.len() < MAX_BATCH {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        let Some(body) = line.strip_suffix(b"\n") else {
            break; // nothing more, or a write in progress
        };
        offset += n as u64;
        match record::decode(body) {
            // An edited record is still sent as it stands: the collector is a second
            // witness, and `verify` is where tampering is judged.
            Ok(r) => records.push(r),
            Err(LineFault::HashMismatch(r)) => records.push(*r),
            Err(LineFault::Malformed(why)) => {
                tracing::warn!(offset, reason = %why, "audit syslog: skipping a line that is not a record");
            }
        }
    }
    if offset == cursor.offset {
        return Ok(None);
    }
    Ok(Some((records, offset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::{reopen, stored};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    struct Pki {
        dir: tempfile::TempDir,
        server: Arc<rustls::ServerConfig>,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let srv_key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&srv_key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![srv.der().clone()],
            PrivateKeyDer::Pkcs8(srv_key.serialize_der().into()),
        )
        .unwrap();
        Pki {
            dir,
            server: Arc::new(server),
        }
    }

    /// A collector: accepts TLS connections and passes on every octet-counted frame.
    async fn collector(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        out: mpsc::UnboundedSender<Vec<u8>>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let out = out.clone();
            conns.spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut len = Vec::new();
                    loop {
                        let Ok(b) = s.read_u8().await else { return };
                        if b == b' ' {
                            break;
                        }
                        len.push(b);
                    }
                    let n: usize = String::from_utf8(len).unwrap().parse().unwrap();
                    let mut msg = vec![0; n];
                    if s.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let _ = out.send(msg);
                }
            });
        }
        // Dropping `conns` when this task is aborted closes every connection.
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> String {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("collector received nothing")
            .unwrap();
        String::from_utf8(m).unwrap()
    }

    fn seq_of(msg: &str) -> String {
        // Records are told apart by their AE title, AE<i> from `stored(i)`.
        let start = msg.find("UserID=\"AE").unwrap() + "UserID=\"".len();
        msg[start..].split('"').next().unwrap().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_framed_messages_and_catches_up_after_an_outage() {
        let pki = pki();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 1..=3 {
            log.append(stored(i)).await.unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(collector(listener, pki.server.clone(), tx.clone()));
        let cfg = SyslogConfig {
            address: addr.to_string(),
            ca_cert: pki.dir.path().join("ca.pem"),
            client_cert: None,
            client_key: None,
            server_name: Some("localhost".into()),
        };
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        };
        let fwd = SyslogForwarder::spawn_with(&log, &cfg, "node one", backoff).unwrap();

        let first = recv(&mut rx).await;
        assert!(
            first.starts_with("<85>1 20") && first.contains(" nodeone pacsgrid "),
            "{first}"
        );
        assert!(
            first.contains(" instances-stored - \u{FEFF}<AuditMessage>"),
            "{first}"
        );
        assert!(first.ends_with("</AuditMessage>"));
        assert_eq!(seq_of(&first), "AE1");
        assert_eq!(seq_of(&recv(&mut rx).await), "AE2");
        assert_eq!(seq_of(&recv(&mut rx).await), "AE3");
        let mut sent = fwd.sent();
        sent.wait_for(|&s| s == 3).await.unwrap();

        // The collector goes away; the local log goes on regardless.
        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 4..=6 {
            log.append(stored(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*sent.borrow(), 3);

        // It comes back on the same port: the backlog arrives in order.
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(collector(listener, pki.server.clone(), tx.clone()));
        for i in 4..=6 {
            assert_eq!(seq_of(&recv(&mut rx).await), format!("AE{i}"));
        }
        tokio::time::timeout(Duration::from_secs(10), sent.wait_for(|&s| s == 6))
            .await
            .unwrap()
            .unwrap();
        fwd.shutdown().await;

        // A new forwarder resumes from the saved cursor, not from the start.
        let c = load_cursor(&dir.path().join(CURSOR_FILE)).unwrap();
        assert_eq!(c.seq, 6);
        assert_eq!(c.offset, std::fs::metadata(log.path()).unwrap().len());
        drop(log);
        let log = reopen(dir.path()).await.unwrap();
        log.append(stored(7)).await.unwrap();
        let fwd = SyslogForwarder::spawn_with(&log, &cfg, "node", backoff).unwrap();
        assert_eq!(seq_of(&recv(&mut rx).await), "AE7");
        fwd.shutdown().await;
        server.abort();
        assert!(rx.try_recv().is_err(), "nothing was sent twice");
    }

    #[test]
    fn bad_tls_material_fails_at_spawn_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let cfg = SyslogConfig {
            address: "localhost:6514".into(),
            ca_cert: dir.path().join("ca.pem"),
            client_cert: None,
            client_key: None,
            server_name: None,
        };
        assert!(matches!(client_config(&cfg), Err(AuditError::Tls(_))));
    }

    #[test]
    fn frame_counts_octets() {
        let r = Record {
            seq: 1,
            time: "2025-01-01T00:00:00.000Z".into(),
            event: "login".into(),
            outcome: 0,
            user: None,
            patient_id: None,
            patient_issuer: None,
            study_uids: vec![],
            xml: "<AuditMessage>é</AuditMessage>".into(),
            prev: String::new(),
            hash: None,
        };
        let f = frame("h pacsgrid 1", &r);
        let s = String::from_utf8(f).unwrap();
        let (len, msg) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<85>1 2025-01-01T00:00:00.000Z h pacsgrid 1 login - \u{FEFF}<"));
    }
}
