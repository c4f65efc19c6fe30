//! One line of the audit log: its fields, its canonical bytes and its hash chain link.
//!
//! A line is the record's canonical JSON (fields in the fixed order of [`Record`], `hash`
//! left out) with `,"hash":"<hex>"` inserted before the closing brace, then `\n`. `hash` is
//! BLAKE3 over the `prev` hex followed by those canonical bytes, so a verifier recomputes it
//! from the line's own bytes: any edited byte shows, even one that would re-serialize the same.

use crate::event::AuditEvent;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record as stored (and as `pacsgrid audit search --json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number, 1 for the first record, no gaps.
    pub seq: u64,
    /// Event time, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Stable short event name, e.g. "instances-stored".
    pub event: String,
    /// EventOutcomeIndicator: 0, 4, 8 or 12.
    pub outcome: u8,
    /// Who the event is attributed to (the requester's user id or AE title).
    pub user: Option<String>,
    /// PatientID of the first patient the event touched.
    pub patient_id: Option<String>,
    /// IssuerOfPatientID of that patient.
    pub patient_issuer: Option<String>,
    /// Every study the event touched.
    pub study_uids: Vec<String>,
    /// The DICOM audit message (PS3.15 A.5.1).
    pub xml: String,
    /// Hash of the previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// BLAKE3 over `prev` and this record's canonical JSON; absent while being built.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<String>,
}

/// What the writer needs from an event, computed by the caller's task so that the single
/// writer only chains and writes.
#[derive(Debug, Clone)]
pub struct Pending {
    time: String,
    event: &'static str,
    outcome: u8,
    user: Option<String>,
    patient_id: Option<String>,
    patient_issuer: Option<String>,
    study_uids: Vec<String>,
    xml: String,
}

impl Pending {
    /// Extracts the searchable fields and renders the XML.
    pub fn from_event(ev: &AuditEvent) -> Pending {
        let patient = ev.patient_ref();
        Pending {
            time: ev.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            event: ev.kind.name(),
            outcome: ev.outcome.value(),
            user: ev.user().map(str::to_string),
            patient_id: patient.map(|p| p.id.clone()),
            patient_issuer: patient.and_then(|p| p.issuer.clone()),
            study_uids: ev.study_uids(),
            xml: crate::xml::render(ev),
        }
    }

    /// Chains this event after `prev` as record `seq`; returns the line (with `\n`) and its
    /// hash.
    pub fn encode(self, seq: u64, prev: &str) -> (Vec<u8>, String) {
        let rec = Record {
            seq,
            time: self.time,
            event: self.event.to_string(),
            outcome: self.outcome,
            user: self.user,
            patient_id: self.patient_id,
            patient_issuer: self.patient_issuer,
            study_uids: self.study_uids,
            xml: self.xml,
            prev: prev.to_string(),
            hash: None,
        };
        encode(&rec)
    }
}

fn encode(rec: &Record) -> (Vec<u8>, String) {
    let mut canonical = match serde_json::to_vec(&HashLess(rec)) {
        Ok(v) => v,
        // Serializing plain strings and numbers cannot fail.
        Err(_) => unreachable!("record serialization failed"),
    };
    let hash = chain_hash(&rec.prev, &canonical);
    canonical.pop(); // the closing brace
    canonical.extend_from_slice(b",\"hash\":\"");
    canonical.extend_from_slice(hash.as_bytes());
    canonical.extend_from_slice(b"\"}\n");
    (canonical, hash)
}

/// Serializes a record without its hash whatever `hash` holds.
struct HashLess<'a>(&'a Record);

impl Serialize for HashLess<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = self.0.clone();
        r.hash = None;
        r.serialize(s)
    }
}

fn chain_hash(prev: &str, canonical: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(prev.as_bytes());
    h.update(canonical);
    h.finalize().to_hex().to_string()
}

/// Why a line is not a valid record on its own (chain position aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFault {
    /// Not `{...,"hash":"<64 hex>"}` or not a record's JSON.
    Malformed(String),
    /// Well-formed, but the hash does not match its bytes: the record was edited.
    HashMismatch(Box<Record>),
}

/// Parses one line (without its `\n`) and checks its own hash.
pub fn decode(line: &[u8]) -> Result<Record, LineFault> {
    const SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();
    if line.len() < SUFFIX_LEN + 2 {
        return Err(LineFault::Malformed("too short".into()));
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let stored = suffix
        .strip_prefix(b",\"hash\":\"")
        .and_then(|s| s.strip_suffix(b"\"}"))
        .filter(|h| {
            h.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        })
        .ok_or_else(|| LineFault::Malformed("does not end with a hash field".into()))?;
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    let rec: Record = serde_json::from_slice(&canonical)
        .map_err(|e| LineFault::Malformed(format!("not a record: {e}")))?;
    if rec.hash.is_some() {
        return Err(LineFault::Malformed("hash field twice".into()));
    }
    let stored = String::from_utf8_lossy(stored).into_owned();
    let computed = chain_hash(&rec.prev, &canonical);
    let rec = Record {
        hash: Some(stored.clone()),
        ..rec
    };
    if computed != stored {
        return Err(LineFault::HashMismatch(Box::new(rec)));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AuditSource, Participant};

    fn pending() -> Pending {
        let src = AuditSource {
            site: "s".into(),
            source_id: "n".into(),
            ae_title: None,
            host: None,
        };
        Pending::from_event(&AuditEvent::login(&src, Participant::user("alice", None)))
    }

    #[test]
    fn round_trip_and_any_edit_shows() {
        let (line, hash) = pending().encode(1, GENESIS);
        assert_eq!(*line.last().unwrap(), b'\n');
        let body = &line[..line.len() - 1];
        let rec = decode(body).unwrap();
        assert_eq!(rec.hash.as_deref(), Some(hash.as_str()));
        assert_eq!(rec.user.as_deref(), Some("alice"));
        assert_eq!(rec.event, "login");
        // Every single-byte change is caught one way or the other.
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "edit at byte {i} went unnoticed");
        }
    }
}
