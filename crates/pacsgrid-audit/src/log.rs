//! The local audit log: DIR/audit.log, JSON lines chained by hash, appended by one writer
//! thread that commits concurrent appends in groups (one write and one fsync per batch).
//!
//! An append returns only when its record is on disk. On open, the tail is read to continue
//! the chain. A torn last line (the process died in the middle of a write) was never
//! acknowledged to anyone, so it is cut off and kept aside in DIR/audit.torn for inspection,
//! with a warning; a complete but invalid last record is refused (that is tampering or
//! corruption, and chaining over it would hide it).

use crate::error::AuditError;
use crate::event::AuditEvent;
use crate::record::{self, LineFault, Pending, GENESIS};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// The log's file name inside the audit directory.
pub const LOG_FILE: &str = "audit.log";
/// Where a torn tail cut off at open is kept.
pub const TORN_FILE: &str = "audit.torn";

/// Appends waiting for the writer; more wait in the caller (backpressure, bounded memory).
const QUEUE: usize = 4096;
/// Records per write+fsync at most.
const MAX_BATCH: usize = 1024;

/// The torn tail found and cut off when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Byte offset where it started (the log's length now).
    pub offset: u64,
    /// How many bytes were cut off.
    pub bytes: u64,
}

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// A handle to the open log; clone it freely, all clones share one writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    dir: PathBuf,
    path: PathBuf,
    durable: watch::Receiver<u64>,
    torn: Option<TornTail>,
    commits: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (creating if needed) DIR/audit.log for appending, continuing its chain. Fails if
    /// another process has it open, or if its last complete record is invalid.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| AuditError::io(&path, e))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(AuditError::Locked(path));
        }
        if !existed {
            // The new directory entry must survive a crash too.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let tail = read_tail(&mut file).map_err(|e| AuditError::io(&path, e))?;
        let torn = if tail.torn > 0 {
            let t = TornTail {
                offset: tail.keep,
                bytes: tail.torn,
            };
            set_aside_torn(dir, &mut file, &t).map_err(|e| AuditError::io(&path, e))?;
            tracing::warn!(
                log = %path.display(),
                offset = t.offset,
                bytes = t.bytes,
                "audit log ended in a torn write (never acknowledged); cut it off and kept it in {TORN_FILE}"
            );
            Some(t)
        } else {
            None
        };
        let (next_seq, prev) = match tail.last_line {
            None => (1, GENESIS.to_string()),
            Some((offset, line)) => match record::decode(&line) {
                Ok(rec) => (rec.seq + 1, rec.hash.unwrap_or_default()),
                Err(fault) => {
                    let reason = match fault {
                        LineFault::Malformed(r) => r,
                        LineFault::HashMismatch(_) => "its hash does not match its bytes".into(),
                    };
                    return Err(AuditError::BadTail {
                        path,
                        offset,
                        reason,
                    });
                }
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (durable_tx, durable) = watch::channel(next_seq - 1);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            commits: commits.clone(),
            file,
            len: tail.keep,
            path: path.clone(),
            next_seq,
            prev,
            durable: durable_tx,
            poisoned: None,
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::io(&path, e))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                dir: dir.to_path_buf(),
                path,
                durable,
                torn,
                commits,
            }),
        })
    }

    /// Appends `ev` and returns its sequence number once it is on disk (fsync).
    pub async fn append(&self, ev: AuditEvent) -> Result<u64, AuditError> {
        let pending = Pending::from_event(&ev);
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Job { pending, reply })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The torn tail cut off at open, if there was one.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.inner.torn.as_ref()
    }

    /// How many group commits (write + fsync) the writer has made; with `subscribe` it tells
    /// how well appends are batched.
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The highest sequence number on disk; changes after every group commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.durable.clone()
    }
}

struct Writer {
    file: File,
    len: u64,
    path: PathBuf,
    next_seq: u64,
    prev: String,
    durable: watch::Sender<u64>,
    poisoned: Option<String>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Job>) {
        if let Some(why) = &self.poisoned {
            for job in batch {
                let _ = job.reply.send(Err(AuditError::Poisoned(why.clone())));
            }
            return;
        }
        let (seq0, prev0) = (self.next_seq, self.prev.clone());
        let mut buf = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let (line, hash) = job.pending.encode(self.next_seq, &self.prev);
            buf.extend_from_slice(&line);
            replies.push((self.next_seq, job.reply));
            self.prev = hash;
            self.next_seq += 1;
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.durable.send_replace(self.next_seq - 1);
                for (seq, reply) in replies {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                // After a failed fsync the page cache no longer tells what is on disk, so
                // roll the file back to the last good length and stop accepting records.
                self.next_seq = seq0;
                self.prev = prev0;
                let _ = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all());
                let why = format!("{}: {e}", self.path.display());
                tracing::error!(error = %why, "audit log write failed; auditing stops");
                self.poisoned = Some(why);
                for (_, reply) in replies {
                    let _ = reply.send(Err(AuditError::io(
                        &self.path,
                        std::io::Error::new(e.kind(), e.to_string()),
                    )));
                }
            }
        }
    }
}

struct Tail {
    /// Bytes up to and including the last `\n`.
    keep: u64,
    /// Bytes after it.
    torn: u64,
    /// The last complete line (without `\n`) and its offset.
    last_line: Option<(u64, Vec<u8>)>,
}

/// Reads backwards from the end just far enough to find the last complete line.
fn read_tail(file: &mut File) -> std::io::Result<Tail> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() < 2 {
        let n = CHUNK.min(start);
        start -= n;
        let mut chunk = vec![0u8; n as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok(Tail {
            keep: 0,
            torn: len,
            last_line: None,
        });
    };
    let keep = start + last_nl as u64 + 1;
    let line_start = buf[..last_nl]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    Ok(Tail {
        keep,
        torn: len - keep,
        last_line: Some((start + line_start as u64, buf[line_start..last_nl].to_vec())),
    })
}

fn set_aside_torn(dir: &Path, file: &mut File, t: &TornTail) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(t.bytes as usize);
    file.seek(SeekFrom::Start(t.offset))?;
    file.take(t.bytes).read_to_end(&mut bytes)?;
    let mut aside = OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(TORN_FILE))?;
    aside.write_all(&bytes)?;
    aside.write_all(b"\n")?;
    aside.sync_all()?;
    file.set_len(t.offset)?;
    file.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{AuditSource, Participant, StudyRef};
    use crate::verify::verify;

    pub(crate) fn src() -> AuditSource {
        AuditSource {
            site: "site-a".into(),
            source_id: "node-1".into(),
            ae_title: Some("PACSGRID".into()),
            host: None,
        }
    }

    /// Opens again once the previous handle's writer thread has let go of the lock.
    pub(crate) async fn reopen(dir: &Path) -> Result<AuditLog, AuditError> {
        loop {
            match AuditLog::open(dir) {
                Err(AuditError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                other => return other,
            }
        }
    }

    pub(crate) fn stored(i: usize) -> AuditEvent {
        AuditEvent::instances_stored(&src(), Participant::ae(&format!("AE{i}"), None))
            .patient(&format!("P{i}"), Some("H"))
            .study(StudyRef::new(&format!("1.2.{i}")))
    }

    #[tokio::test]
    async fn chain_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            assert_eq!(log.append(stored(1)).await.unwrap(), 1);
            assert_eq!(log.append(stored(2)).await.unwrap(), 2);
        }
        // The writer thread lets go of the lock once every handle is gone.
        let log = reopen(dir.path()).await.unwrap();
        assert_eq!(log.append(stored(3)).await.unwrap(), 3);
        let report = verify(&dir.path().join(LOG_FILE)).unwrap();
        assert!(report.first_bad.is_none(), "{report:?}");
        assert_eq!(report.records, 3);
    }

    #[tokio::test]
    async fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _log = AuditLog::open(dir.path()).unwrap();
        assert!(matches!(
            AuditLog::open(dir.path()),
            Err(AuditError::Locked(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_group_committed_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..500 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move { log.append(stored(i)).await }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
        assert_eq!(*log.subscribe().borrow(), 500);
        let report = verify(log.path()).unwrap();
        assert!(report.first_bad.is_none(), "{report:?}");
        assert_eq!(report.records, 500);
        // Appends that arrive during an fsync share the next one.
        assert!(log.commit_count() < 250, "{} commits", log.commit_count());
    }

    /// Throughput with many concurrent callers, as a node under load has; run with
    /// `cargo test -p pacsgrid-audit --release -- --ignored --nocapture append_throughput`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn append_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for callers in [1usize, 16, 64] {
            let per = 2000 / callers;
            let t0 = std::time::Instant::now();
            let c0 = log.commit_count();
            let mut tasks = Vec::new();
            for c in 0..callers {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..per {
                        log.append(stored(c * per + i)).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let n = callers * per;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{callers:>3} callers: {n} records in {secs:.2} s = {:.0}/s, {} fsyncs",
                n as f64 / secs,
                log.commit_count() - c0
            );
        }
    }

    #[tokio::test]
    async fn torn_tail_is_cut_off_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let log = AuditLog::open(dir.path()).unwrap();
            log.append(stored(1)).await.unwrap();
            log.append(stored(2)).await.unwrap();
        }
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of writing record 3.
        let full = std::fs::read(&path).unwrap();
        let first_line_len = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full[..first_line_len / 2]).unwrap();
        drop(f);
        assert!(verify(&path).unwrap().first_bad.is_some());

        let log = reopen(dir.path()).await.unwrap();
        assert_eq!(
            log.torn_tail(),
            Some(&TornTail {
                offset: good_len,
                bytes: (first_line_len / 2) as u64
            })
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        let aside = std::fs::read(dir.path().join(TORN_FILE)).unwrap();
        assert_eq!(&aside[..first_line_len / 2], &full[..first_line_len / 2]);
        assert_eq!(log.append(stored(3)).await.unwrap(), 3);
        let report = verify(&path).unwrap();
        assert!(report.first_bad.is_none(), "{report:?}");
        assert_eq!(report.records, 3);
    }

    #[tokio::test]
    async fn an_edited_last_record_is_refused_not_chained_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let log = AuditLog::open(dir.path()).unwrap();
            log.append(stored(1)).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("AE1", "AE9")).unwrap();
        let err = reopen(dir.path()).await;
        assert!(
            matches!(err, Err(AuditError::BadTail { offset: 0, .. })),
            "{:?}",
            err.map(|_| ())
        );
    }

    #[tokio::test]
    async fn a_log_with_only_a_torn_line_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"{\"seq\":1,\"ti").unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.torn_tail().map(|t| t.bytes), Some(12));
        assert_eq!(log.append(stored(1)).await.unwrap(), 1);
    }
}
