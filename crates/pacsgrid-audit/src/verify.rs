//! Verifies the hash chain of an audit log and names the first record that breaks it.

use crate::error::AuditError;
use crate::record::{self, LineFault, GENESIS};
use serde::Serialize;
use std::io::BufRead;
use std::path::Path;

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRecord {
    /// 1-based line number in the file.
    pub line: u64,
    /// The record's sequence number, when the line could still be read as a record.
    pub seq: Option<u64>,
    /// What is wrong, in words.
    pub reason: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records found intact before the first bad one (all of them if none is bad).
    pub records: u64,
    /// Sequence number of the last intact record.
    pub last_seq: Option<u64>,
    /// Hash of the last intact record, worth writing down elsewhere: it pins everything
    /// before it, including against deletion of the log's last lines.
    pub last_hash: Option<String>,
    /// The first bad record, if any.
    pub first_bad: Option<BadRecord>,
}

impl VerifyReport {
    /// Whether the whole chain is intact.
    pub fn is_intact(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Reads the log at `path` from the start and checks every record: its own hash (an edited
/// byte), its sequence number (a deleted, inserted or reordered line) and its link to the
/// record before. Stops at the first bad record. Errors only when the file cannot be read.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = std::fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut report = VerifyReport {
        records: 0,
        last_seq: None,
        last_hash: None,
        first_bad: None,
    };
    let mut prev = GENESIS.to_string();
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io(path, e))?;
        if read == 0 {
            return Ok(report);
        }
        n += 1;
        let expected = report.last_seq.map_or(1, |s| s + 1);
        let bad = |seq: Option<u64>, reason: String| BadRecord {
            line: n,
            seq,
            reason,
        };
        let Some(body) = line.strip_suffix(b"\n") else {
            report.first_bad = Some(bad(
                None,
                "incomplete last line (a torn write, cut off when the node next opens the log)"
                    .into(),
            ));
            return Ok(report);
        };
        let rec = match record::decode(body) {
            Ok(rec) => rec,
            Err(LineFault::Malformed(why)) => {
                report.first_bad = Some(bad(None, format!("not a valid record: {why}")));
                return Ok(report);
            }
            Err(LineFault::HashMismatch(rec)) => {
                report.first_bad = Some(bad(
                    Some(rec.seq),
                    "hash does not match the record's bytes (the record was edited)".into(),
                ));
                return Ok(report);
            }
        };
        if rec.seq != expected {
            report.first_bad = Some(bad(
                Some(rec.seq),
                format!(
                    "sequence number {} where {expected} was expected (a record was deleted, inserted or moved)",
                    rec.seq
                ),
            ));
            return Ok(report);
        }
        if rec.prev != prev {
            report.first_bad = Some(bad(
                Some(rec.seq),
                "does not link to the record before it (prev hash differs)".into(),
            ));
            return Ok(report);
        }
        prev = rec.hash.clone().unwrap_or_default();
        report.records += 1;
        report.last_seq = Some(rec.seq);
        report.last_hash = rec.hash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::stored;
    use crate::log::{AuditLog, LOG_FILE};

    async fn log_of(n: usize) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 1..=n {
            log.append(stored(i)).await.unwrap();
        }
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        (dir, bytes)
    }

    fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn check(dir: &tempfile::TempDir, bytes: &[u8]) -> VerifyReport {
        let p = dir.path().join("edited.log");
        std::fs::write(&p, bytes).unwrap();
        verify(&p).unwrap()
    }

    #[tokio::test]
    async fn intact_log_verifies() {
        let (dir, _) = log_of(5).await;
        let r = verify(&dir.path().join(LOG_FILE)).unwrap();
        assert!(r.is_intact(), "{r:?}");
        assert_eq!((r.records, r.last_seq), (5, Some(5)));
        let empty = dir.path().join("empty.log");
        std::fs::write(&empty, b"").unwrap();
        assert!(verify(&empty).unwrap().is_intact());
    }

    #[tokio::test]
    async fn an_edited_byte_names_its_record() {
        let (dir, bytes) = log_of(5).await;
        let ls = lines(&bytes);
        let offset: usize = ls[..2].iter().map(Vec::len).sum();
        // Every byte of record 3 (except its newline, which joins lines) is caught at line 3.
        for i in 0..ls[2].len() - 1 {
            let mut edited = bytes.clone();
            edited[offset + i] ^= 0x04;
            let r = check(&dir, &edited);
            let bad = r.first_bad.unwrap_or_else(|| panic!("byte {i} unnoticed"));
            assert_eq!(bad.line, 3, "byte {i}: {bad:?}");
            assert_eq!(r.records, 2);
        }
        // A plausible edit: another patient ID.
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"patient_id\":\"P4\"", "\"patient_id\":\"P7\"");
        let bad = check(&dir, edited.as_bytes()).first_bad.unwrap();
        assert_eq!((bad.line, bad.seq), (4, Some(4)), "{bad:?}");
    }

    #[tokio::test]
    async fn a_deleted_line_is_found() {
        let (dir, bytes) = log_of(5).await;
        let mut ls = lines(&bytes);
        ls.remove(1);
        let bad = check(&dir, &ls.concat()).first_bad.unwrap();
        assert_eq!((bad.line, bad.seq), (2, Some(3)), "{bad:?}");
        let mut ls = lines(&bytes);
        ls.remove(0);
        let bad = check(&dir, &ls.concat()).first_bad.unwrap();
        assert_eq!((bad.line, bad.seq), (1, Some(2)), "{bad:?}");
    }

    #[tokio::test]
    async fn reordered_lines_are_found() {
        let (dir, bytes) = log_of(5).await;
        let mut ls = lines(&bytes);
        ls.swap(2, 3);
        let bad = check(&dir, &ls.concat()).first_bad.unwrap();
        assert_eq!((bad.line, bad.seq), (3, Some(4)), "{bad:?}");
    }

    #[tokio::test]
    async fn a_renumbered_chain_still_breaks_at_the_link() {
        // Deleting a line and renumbering the rest by hand leaves the prev link broken.
        let (dir, bytes) = log_of(3).await;
        let mut ls = lines(&bytes);
        ls.remove(1);
        let text = String::from_utf8(ls.concat())
            .unwrap()
            .replace("{\"seq\":3,", "{\"seq\":2,");
        let bad = check(&dir, text.as_bytes()).first_bad.unwrap();
        assert_eq!(bad.line, 2, "{bad:?}");
    }
}
