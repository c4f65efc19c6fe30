//! `PeerClient`: HTTPS requests to other sites over mutual TLS, one pooled client for all peers.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most time a peer may take to start answering a blob request (its headers): a site that
/// accepts connections but hangs holds up a retrieve this long, not a whole read timeout.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 flow-control window of one response: a whole typical instance fits.
const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of a connection (all responses from one peer together).
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a peer may send us.
const MAX_FRAME: u32 = 128 << 10;
/// Error bodies are for people and logs; a peer cannot make us hold more than this of one.
const MAX_ERROR_BODY: usize = 4096;
/// What rustls says when a handshake fails, as found in an error text.
const TLS_FAILURE_TEXTS: [&str; 3] = [
    "received fatal alert",
    "invalid peer certificate",
    "peer is incompatible",
];

/// Why a request to a peer (or loading the TLS material for one) failed.
#[derive(Debug, thiserror::Error)]
pub enum GridNetError {
    /// The peer could not be reached (refused, unreachable, connect timeout).
    #[error("cannot connect to peer: {0}")]
    Connect(String),
    /// The TLS handshake failed: untrusted certificate, wrong name, or the peer refused ours.
    #[error("TLS with peer failed: {0}")]
    Tls(String),
    /// The peer answered with a non-2xx status.
    #[error("peer answered {code}: {body}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The start of the response body (usually problem+json).
        body: String,
    },
    /// The peer's answer was not the JSON expected.
    #[error("cannot decode the peer's answer: {0}")]
    Decode(String),
    /// The request or a read took longer than allowed.
    #[error("request to peer timed out: {0}")]
    Timeout(String),
    /// Any other failure of the request or the response body.
    #[error("request to peer failed: {0}")]
    Request(String),
    /// A certificate or key file could not be read or used.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A local I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl GridNetError {
    /// Classifies a reqwest error, looking through its causes for a TLS failure so that an
    /// untrusted peer is reported as such and not as a mere connection problem.
    fn from_reqwest(e: reqwest::Error) -> GridNetError {
        let text = error_chain(&e);
        if let Some(tls) = tls_cause(&e) {
            return GridNetError::Tls(format!("{tls} ({text})"));
        }
        // An alert that arrives after our side finished the handshake (TLS 1.3: the server
        // refuses our certificate) reaches us only as the text of an io::Error.
        if TLS_FAILURE_TEXTS.iter().any(|t| text.contains(t)) {
            return GridNetError::Tls(text);
        }
        if e.is_timeout() {
            GridNetError::Timeout(text)
        } else if e.is_connect() {
            GridNetError::Connect(text)
        } else if e.is_decode() {
            GridNetError::Decode(text)
        } else {
            GridNetError::Request(text)
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// The rustls error somewhere in the cause chain. `io::Error::source` skips the error it
/// wraps and `h2::Error` has no source at all, so both are opened by hand.
fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let io = err
            .downcast_ref::<std::io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(|h| h.get_io()));
        if let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(found) = tls_cause(inner) {
                return Some(found);
            }
        }
        cur = err.source();
    }
    None
}

/// A stream of a peer's response body; dropping it closes the transfer.
pub type PeerByteStream = BoxStream<'static, Result<Bytes, GridNetError>>;

/// An HTTPS client for peer sites: presents this site's certificate, trusts only the grid CA,
/// keeps connections alive between requests (HTTP/2 where the peer offers it).
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    own_site: String,
}

impl PeerClient {
    /// Builds the client from the site's client TLS configuration (see [`crate::tls`]).
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        own_site: impl Into<String>,
    ) -> Result<PeerClient, GridNetError> {
        let own_site = own_site.into();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            // Fixed windows, not hyper's adaptive ones: those start at 64 KiB and, on a
            // short round trip, stay near it, so a 0.5 MB instance took eight window updates
            // (each a wake-up of both sites) and an on-the-fly fetch 10 ms instead of 3.
            // What a peer may send unread is bounded by the connection window.
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            // Peers send blobs in frames of up to this size instead of HTTP/2's 16 KiB: a
            // quarter less CPU at both ends for the same bytes (fewer frames to encode, wake
            // up for and decode), as much as HTTP/1.1 would save.
            .http2_max_frame_size(MAX_FRAME)
            .user_agent(format!(
                "pacsgrid/{} (site {own_site})",
                env!("CARGO_PKG_VERSION")
            ))
            // Peers are addressed directly; an environment proxy must not sit in the middle.
            .no_proxy()
            .build()
            .map_err(|e| GridNetError::Tls(error_chain(&e)))?;
        Ok(PeerClient { http, own_site })
    }

    /// This site's name, as it presents itself to peers.
    pub fn own_site(&self) -> &str {
        &self.own_site
    }

    fn url(base: &str, path: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), path)
    }

    /// GETs `base` + `path_and_query` and decodes the JSON answer (30 s in all).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        base: &str,
        path_and_query: &str,
    ) -> Result<T, GridNetError> {
        self.get_json_within(base, path_and_query, REQUEST_TIMEOUT)
            .await
    }

    /// GETs `base` + `path_and_query` and decodes the JSON answer, all within `limit`.
    pub async fn get_json_within<T: DeserializeOwned>(
        &self,
        base: &str,
        path_and_query: &str,
        limit: Duration,
    ) -> Result<T, GridNetError> {
        let resp = self
            .http
            .get(Self::url(base, path_and_query))
            .timeout(limit)
            .send()
            .await
            .map_err(GridNetError::from_reqwest)?;
        decode_json(check_status(resp).await?).await
    }

    /// POSTs `body` as JSON to `base` + `path` and decodes the JSON answer (30 s in all).
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &B,
    ) -> Result<T, GridNetError> {
        let resp = self
            .http
            .post(Self::url(base, path))
            .json(body)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(GridNetError::from_reqwest)?;
        decode_json(check_status(resp).await?).await
    }

    /// GETs `base` + `path` and streams the body, with its length when the peer gives one.
    /// No total time limit (a blob may be large), but each read must come within 30 s.
    pub async fn get_stream(
        &self,
        base: &str,
        path: &str,
    ) -> Result<(Option<u64>, PeerByteStream), GridNetError> {
        let (_, len, stream) = self.get_stream_from(base, path, 0).await?;
        Ok((len, stream))
    }

    /// GETs `path` from byte `offset` on (`Range: bytes=offset-`); returns the offset the
    /// body really starts at (0 when the peer sent everything, which it may), the body's
    /// length and the body.
    pub async fn get_stream_from(
        &self,
        base: &str,
        path: &str,
        offset: u64,
    ) -> Result<(u64, Option<u64>, PeerByteStream), GridNetError> {
        let mut req = self.http.get(Self::url(base, path));
        if offset > 0 {
            req = req.header(
                reqwest::header::RANGE,
                crate::protocol::resume_range(offset),
            );
        }
        let resp = tokio::time::timeout(HEADERS_TIMEOUT, req.send())
            .await
            .map_err(|_| {
                GridNetError::Timeout(format!(
                    "no answer to GET {path} within {} s",
                    HEADERS_TIMEOUT.as_secs()
                ))
            })?
            .map_err(GridNetError::from_reqwest)?;
        let resp = check_status(resp).await?;
        let start = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::protocol::parse_content_range);
            match range {
                Some((start, _)) if start == offset => start,
                _ => {
                    return Err(GridNetError::Decode(format!(
                    "asked for bytes from {offset}, got a partial answer with Content-Range {:?}",
                    resp.headers().get(reqwest::header::CONTENT_RANGE)
                )))
                }
            }
        } else {
            0
        };
        let len = resp.content_length();
        let stream = resp
            .bytes_stream()
            .map(|r| r.map_err(GridNetError::from_reqwest))
            .boxed();
        Ok((start, len, stream))
    }
}

async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, GridNetError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Err(GridNetError::Status {
        code: status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn decode_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, GridNetError> {
    let bytes = resp.bytes().await.map_err(GridNetError::from_reqwest)?;
    serde_json::from_slice(&bytes).map_err(|e| GridNetError::Decode(e.to_string()))
}
