//! Moving blob bytes between sites: streamed, hashed on the way, verified before they
//! count, and paced by an optional bandwidth cap shared by every pull of the site.

use crate::client::PeerByteStream;
use crate::service::{Grid, PeerState};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use pacsgrid_archive::{RemoteFetch, Replica};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

/// A bandwidth cap shared by concurrent transfers (a token bucket in time units).
pub struct Throttle {
    bytes_per_sec: f64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// A cap of `mbps` megabytes per second.
    pub fn new(mbps: u64) -> Throttle {
        Throttle {
            bytes_per_sec: (mbps as f64) * 1_000_000.0,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes fit under the cap.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // a short burst is allowed so an idle link does not start slowly
            let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Why bytes could not be had from one source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    #[error("{0}")]
    Net(#[from] crate::client::GridNetError),
    #[error("{0}")]
    Archive(#[from] pacsgrid_archive::ArchiveError),
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    #[error("received {got} bytes, expected {want}")]
    Length { got: u64, want: u64 },
    #[error("received bytes hash to {got}, expected {want}")]
    Hash { got: String, want: String },
}

impl Grid {
    /// Opens the blob `hash` at `source` from byte `offset` for reading with
    /// [`Grid::next_chunk`]; returns the byte the body really starts at (0 when the source
    /// sent the whole blob, which it may).
    async fn open_blob(
        &self,
        source: &PeerState,
        hash: &str,
        offset: u64,
    ) -> Result<(u64, PeerByteStream), PullError> {
        let (start, _, body) = self
            .client
            .get_stream_from(&source.url, &format!("/grid/v1/blobs/{hash}"), offset)
            .await?;
        Ok((start, body))
    }

    /// The next chunk of a blob being received, paced by the site's bandwidth cap.
    async fn next_chunk(&self, body: &mut PeerByteStream) -> Result<Option<Bytes>, PullError> {
        let Some(chunk) = body.next().await.transpose()? else {
            return Ok(None);
        };
        if let Some(t) = &self.throttle {
            t.take(chunk.len()).await;
        }
        Ok(Some(chunk))
    }

    /// Receives the blob from one source into a staging file, hashed on the way; it becomes
    /// this site's copy only through [`Replica::finish`]. A copy cut off before (this node
    /// killed, the peer gone) goes on from the bytes already received, whichever site sent
    /// them: the bytes are the same by their hash, and the whole is verified at the end.
    async fn copy_from(
        &self,
        src: &PeerState,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
    ) -> Result<Replica, PullError> {
        let t0 = Instant::now();
        let mut replica = self.archive.begin_replica(hash, size).await?;
        let mut from = replica.offset();
        if from > size {
            // more bytes than the blob has cannot be a prefix of it
            replica.restart().await?;
            from = 0;
        }
        let mut got = from;
        let mut chunks = 0u32;
        let mut received = 0u64;
        let mut t_open = t0.elapsed();
        if from < size || size == 0 {
            let (start, mut body) = self.open_blob(src, hash, from).await?;
            if start != from {
                // the peer sent the whole blob: what was kept is not needed
                replica.restart().await?;
                got = 0;
            } else if from > 0 {
                tracing::info!(
                    sop_instance_uid,
                    from = %src.name,
                    offset = from,
                    size,
                    "resuming a copy cut off before"
                );
            }
            t_open = t0.elapsed();
            while let Some(chunk) = self.next_chunk(&mut body).await? {
                got += chunk.len() as u64;
                if got > size {
                    return Err(PullError::Length { got, want: size });
                }
                chunks += 1;
                received += chunk.len() as u64;
                replica.write(chunk).await?;
            }
        }
        if got != size {
            return Err(PullError::Length { got, want: size });
        }
        tracing::debug!(
            sop_instance_uid,
            from = %src.name,
            bytes = received,
            resumed_from = got - received,
            chunks,
            open_ms = t_open.as_secs_f64() * 1e3,
            body_ms = (t0.elapsed() - t_open).as_secs_f64() * 1e3,
            "copy received"
        );
        Ok(replica)
    }

    /// Pulls an instance's bytes into this site's blob store as a verified copy and
    /// announces it, trying each source in turn. `slot` is a transfer slot: it is given
    /// back once the bytes are in, while they are verified, made durable and announced.
    pub(crate) async fn pull_copy(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
        sources: &[PeerState],
        slot: OwnedSemaphorePermit,
    ) -> Result<String, String> {
        if self.archive.has_blob(hash).await.unwrap_or(false)
            && self.archive.verify_blob(hash).await.unwrap_or(false)
        {
            // already here (a cached or quarantined copy): it only needs announcing
            let me = self.archive.holder().await.map_err(|e| e.to_string())?;
            self.archive
                .set_holder(sop_instance_uid, hash, &me, true)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(self.site.clone());
        }
        let mut slot = Some(slot);
        let mut errors = Vec::new();
        for src in sources {
            let transfer = match slot.take() {
                Some(s) => s,
                // the previous source's bytes were received but failed their check
                None => Arc::clone(&self.transfers)
                    .acquire_owned()
                    .await
                    .map_err(|_| "stopping".to_string())?,
            };
            let replica = match self.copy_from(src, sop_instance_uid, hash, size).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{}: {e}", src.name));
                    slot = Some(transfer);
                    continue;
                }
            };
            // Taken before the transfer slot is given back, so that copies waiting for the
            // disk hold up new transfers once there are enough of them.
            let finishing = Arc::clone(&self.finishing)
                .acquire_owned()
                .await
                .map_err(|_| "stopping".to_string())?;
            drop(transfer);
            let t0 = Instant::now();
            let done = replica.finish(sop_instance_uid).await;
            drop(finishing);
            match done {
                Ok(()) => {
                    tracing::debug!(
                        sop_instance_uid,
                        from = %src.name,
                        finish_ms = t0.elapsed().as_secs_f64() * 1e3,
                        "copy finished"
                    );
                    return Ok(src.name.clone());
                }
                Err(e) => errors.push(format!("{}: {e}", src.name)),
            }
        }
        if errors.is_empty() {
            errors.push("no reachable site holds it".into());
        }
        Err(errors.join("; "))
    }

    /// Fetches bytes for a retrieve, verifying them (on-the-fly access): into `dest`, or
    /// into memory when `dest` is `None` (then returned as the pieces received).
    async fn fetch_one(
        &self,
        src: &PeerState,
        hash: &str,
        size: u64,
        dest: Option<&Path>,
    ) -> Result<Option<Vec<Bytes>>, PullError> {
        let mut out = match dest {
            Some(dest) => {
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dest)
                    .await?;
                FetchSink::File(tokio::io::BufWriter::with_capacity(1 << 20, file))
            }
            // The size is known from the index; more bytes than that are an error below, so
            // memory stays bounded by it. The received pieces are kept as they are (slices of
            // the connection's read buffers): copying them into one buffer cost a copy of
            // every byte and the page faults of a fresh allocation per instance.
            None => FetchSink::Memory(Vec::new()),
        };
        let mut hasher = blake3::Hasher::new();
        let (_, mut body) = self.open_blob(src, hash, 0).await?;
        let mut got = 0u64;
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            got += chunk.len() as u64;
            if got > size {
                return Err(PullError::Length { got, want: size });
            }
            hasher.update(&chunk);
            match &mut out {
                FetchSink::File(f) => f.write_all(&chunk).await?,
                FetchSink::Memory(m) => m.push(chunk),
            }
        }
        if got != size {
            return Err(PullError::Length { got, want: size });
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != hash {
            return Err(PullError::Hash {
                got: actual,
                want: hash.to_string(),
            });
        }
        match out {
            FetchSink::File(mut f) => {
                f.flush().await?;
                Ok(None)
            }
            FetchSink::Memory(m) => Ok(Some(m)),
        }
    }

    /// Fetches an instance's bytes for a retrieve from the first holder that gives them.
    async fn fetch_any(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
        dest: Option<&Path>,
    ) -> Result<Option<Vec<Bytes>>, String> {
        let holders = match self.archive.grid_record(sop_instance_uid).await {
            Ok(Some((_, holders))) => holders,
            Ok(None) => return Err("the instance is no longer recorded".into()),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(why) = self.unreachable_holders(&holders) {
            return Err(why);
        }
        let sources = self.sources(&holders);
        let mut errors = Vec::new();
        for src in &sources {
            if let Some(dest) = dest {
                let _ = tokio::fs::remove_file(dest).await;
            }
            let t0 = Instant::now();
            match self.fetch_one(src, hash, size, dest).await {
                Ok(got) => {
                    tracing::debug!(
                        sop_instance_uid,
                        from = %src.name,
                        bytes = size,
                        in_memory = dest.is_none(),
                        ms = t0.elapsed().as_secs_f64() * 1e3,
                        "fetched on the fly"
                    );
                    return Ok(got);
                }
                Err(e) => {
                    tracing::warn!(sop_instance_uid, from = %src.name, error = %e, "on-the-fly fetch failed; trying the next holder");
                    errors.push(format!("{}: {e}", src.name));
                }
            }
        }
        // not empty: unreachable_holders found a source to try
        Err(errors.join("; "))
    }
}

/// Where the bytes of an on-the-fly fetch go.
enum FetchSink {
    File(tokio::io::BufWriter<tokio::fs::File>),
    Memory(Vec<Bytes>),
}

#[async_trait]
impl RemoteFetch for Grid {
    async fn fetch(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), String> {
        self.fetch_any(sop_instance_uid, hash, size, Some(dest))
            .await
            .map(|_| ())
    }

    async fn fetch_to_memory(
        &self,
        sop_instance_uid: &str,
        hash: &str,
        size: u64,
    ) -> Option<Result<Vec<Bytes>, String>> {
        Some(
            self.fetch_any(sop_instance_uid, hash, size, None)
                .await
                .and_then(|got| got.ok_or_else(|| "fetched into no buffer".to_string())),
        )
    }

    fn keep_fetched(&self) -> bool {
        self.cfg.cache_retrieved
    }

    async fn unreachable(&self, sop_instance_uid: &str) -> Option<String> {
        match self.archive.grid_record(sop_instance_uid).await {
            Ok(Some((_, holders))) => self.unreachable_holders(&holders),
            Ok(None) => Some("the instance is no longer recorded".into()),
            // the index will say more when the fetch itself is tried
            Err(_) => None,
        }
    }
}

impl Grid {
    /// Why no other site can give the bytes these `holders` hold, as far as this site knows
    /// now: every one is lost, or its last contact failed (a peer not yet contacted since
    /// the start may well answer). Retrieves fail at once then, rather than waiting out a
    /// connect timeout per instance on a site whose link is down.
    fn unreachable_holders(&self, holders: &[pacsgrid_archive::Holder]) -> Option<String> {
        let sources = self.sources(holders);
        if sources
            .iter()
            .any(|p| p.reachable || p.last_error.is_none())
        {
            return None;
        }
        let names: Vec<&str> = holders
            .iter()
            .filter(|h| self.holder_valid(h) && h.site != self.site)
            .map(|h| h.site.as_str())
            .collect();
        Some(if names.is_empty() {
            "no site holds its bytes".into()
        } else {
            format!("held only at {}, unreachable now", names.join(", "))
        })
    }
}
