//! Finds audit records by patient, study, user, time and event, streaming through the log.

use crate::error::AuditError;
use crate::record::{self, LineFault, Record};
use chrono::{DateTime, Utc};
use std::io::BufRead;
use std::path::Path;

/// What to match; every set field must match (AND). Unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// PatientID, under any issuer (two patients with one ID at two hospitals both match).
    pub patient: Option<String>,
    /// A StudyInstanceUID the event touched.
    pub study: Option<String>,
    /// The user the event is attributed to (user id or AE title), exactly.
    pub user: Option<String>,
    /// Events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// The stable event name, e.g. "query".
    pub event: Option<String>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &Record) -> bool {
        if let Some(p) = &self.patient {
            if r.patient_id.as_deref() != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.study {
            if !r.study_uids.iter().any(|u| u == s) {
                return false;
            }
        }
        if let Some(u) = &self.user {
            if r.user.as_deref() != Some(u.as_str()) {
                return false;
            }
        }
        if let Some(e) = &self.event {
            if &r.event != e {
                return false;
            }
        }
        if let Some(since) = &self.since {
            match DateTime::parse_from_rfc3339(&r.time) {
                Ok(t) if t.with_timezone(&Utc) >= *since => {}
                _ => return false,
            }
        }
        true
    }
}

/// Parses a `since` bound: RFC 3339 (`2025-03-01T08:00:00Z`) or a date (`2025-03-01`, from
/// midnight UTC). Shared by the CLI and the HTTP API so both accept the same forms.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, AuditError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            AuditError::Config(format!(
                "{s:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"
            ))
        })
}

/// An iterator over the matching records of one log, in log order. A line that is not a
/// record yields an error and the search goes on; an incomplete last line (a write in
/// progress) ends it quietly. Records are not chain-checked here: that is `verify`'s job.
pub struct Search {
    reader: std::io::BufReader<std::fs::File>,
    filter: Filter,
    line: Vec<u8>,
    n: u64,
    path: std::path::PathBuf,
}

impl Search {
    /// Opens `path` for searching with `filter`.
    pub fn open(path: &Path, filter: Filter) -> Result<Search, AuditError> {
        let file = std::fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
        Ok(Search {
            reader: std::io::BufReader::with_capacity(256 * 1024, file),
            filter,
            line: Vec::new(),
            n: 0,
            path: path.to_path_buf(),
        })
    }
}

impl Iterator for Search {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(AuditError::io(&self.path, e))),
            }
            self.n += 1;
            let body = self.line.strip_suffix(b"\n")?;
            let rec = match record::decode(body) {
                Ok(r) => r,
                Err(LineFault::HashMismatch(r)) => *r,
                Err(LineFault::Malformed(reason)) => {
                    return Some(Err(AuditError::Malformed {
                        line: self.n,
                        reason,
                    }))
                }
            };
            if self.filter.matches(&rec) {
                return Some(Ok(rec));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditEvent, Participant, StudyRef};
    use crate::log::tests::src;
    use crate::log::AuditLog;
    use chrono::TimeZone;

    async fn sample() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let day = |d: u32| Utc.with_ymd_and_hms(2025, 3, d, 12, 0, 0).unwrap();
        let evs = [
            AuditEvent::instances_stored(&src(), Participant::ae("MOD", None))
                .patient("P1", Some("HOSP-A"))
                .study(StudyRef::new("1.1"))
                .at(day(1)),
            AuditEvent::instances_stored(&src(), Participant::ae("MOD", None))
                .patient("P1", Some("HOSP-B"))
                .study(StudyRef::new("2.1"))
                .at(day(2)),
            AuditEvent::instances_transferred(&src(), Participant::user("alice", None), None)
                .patient("P1", Some("HOSP-A"))
                .study(StudyRef::new("1.1"))
                .study(StudyRef::new("1.2"))
                .at(day(3)),
            AuditEvent::query(&src(), Participant::user("bob", None), "1.2", b"x").at(day(4)),
        ];
        for ev in evs {
            log.append(ev).await.unwrap();
        }
        let p = log.path().to_path_buf();
        (dir, p)
    }

    fn seqs(path: &Path, f: Filter) -> Vec<u64> {
        Search::open(path, f)
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect()
    }

    #[tokio::test]
    async fn filters_combine() {
        let (_d, p) = sample().await;
        assert_eq!(seqs(&p, Filter::default()), vec![1, 2, 3, 4]);
        let patient = Filter {
            patient: Some("P1".into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&p, patient.clone()), vec![1, 2, 3]);
        let study = Filter {
            study: Some("1.2".into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&p, study), vec![3]);
        let user = Filter {
            user: Some("MOD".into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&p, user), vec![1, 2]);
        let event = Filter {
            event: Some("query".into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&p, event), vec![4]);
        let since = Filter {
            since: Some(Utc.with_ymd_and_hms(2025, 3, 2, 0, 0, 0).unwrap()),
            ..patient
        };
        assert_eq!(seqs(&p, since), vec![2, 3]);
    }

    #[test]
    fn since_accepts_rfc3339_and_dates() {
        let midnight = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(parse_since("2025-03-01").unwrap(), midnight);
        assert_eq!(parse_since("2025-03-01T01:00:00+01:00").unwrap(), midnight);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2025-02-30").is_err());
    }

    #[tokio::test]
    async fn bad_lines_are_reported_and_skipped_and_a_partial_tail_ends_quietly() {
        let (_d, p) = sample().await;
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.insert_str(0, "garbage\n");
        text.push_str("{\"seq\":5,\"ti");
        std::fs::write(&p, text).unwrap();
        let got: Vec<_> = Search::open(&p, Filter::default()).unwrap().collect();
        assert!(matches!(got[0], Err(AuditError::Malformed { line: 1, .. })));
        assert_eq!(got.len(), 5);
    }
}
