//! `GET /audit`: the audit trail over HTTP, with the filters of `pacsgrid audit search`.
//! Reading it is itself audited (Audit Log Used) by the access point, which reads the log.

use super::params::{Params, RawParams};
use crate::access::Audit;
use crate::problem::Problem;
use axum::http::StatusCode;
use axum::Json;
use pacsgrid_access::AccessError;
use pacsgrid_audit::{parse_since, EventKind, Filter, Record};
use serde::Serialize;

/// Records returned when `limit` is not given.
pub(crate) const AUDIT_DEFAULT_LIMIT: u32 = 1000;
/// The largest `limit`.
pub(crate) const AUDIT_MAX_LIMIT: u32 = 10_000;

/// One record as answered: the fields `pacsgrid audit search --json` prints, the XML only
/// when asked for.
#[derive(Debug, Serialize)]
pub(crate) struct RecordView {
    seq: u64,
    time: String,
    event: String,
    outcome: u8,
    user: Option<String>,
    patient_id: Option<String>,
    patient_issuer: Option<String>,
    study_uids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xml: Option<String>,
    prev: String,
    hash: Option<String>,
}

impl RecordView {
    fn new(r: Record, with_xml: bool) -> RecordView {
        RecordView {
            seq: r.seq,
            time: r.time,
            event: r.event,
            outcome: r.outcome,
            user: r.user,
            patient_id: r.patient_id,
            patient_issuer: r.patient_issuer,
            study_uids: r.study_uids,
            xml: with_xml.then_some(r.xml),
            prev: r.prev,
            hash: r.hash,
        }
    }
}

/// `GET /audit?patient=&study=&user=&since=&event=&after=&limit=&xml=`: matching records,
/// oldest first, as a JSON array. `after` (a `seq`) pages on from the last record seen.
pub(crate) async fn search(audit: Audit, raw: RawParams) -> Result<Json<Vec<RecordView>>, Problem> {
    let p = Params::new(
        raw,
        &[
            "patient", "study", "user", "since", "event", "after", "limit", "xml",
        ],
    )?;
    let text = |name: &str| {
        p.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let since = match p.get("since") {
        Some(s) => {
            Some(parse_since(s.trim()).map_err(|e| Problem::bad_request(format!("since: {e}")))?)
        }
        None => None,
    };
    let event = text("event");
    if let Some(e) = &event {
        if !EventKind::NAMES.contains(&e.as_str()) {
            return Err(Problem::bad_request(format!(
                "event {e:?} is not one of: {}",
                EventKind::NAMES.join(", ")
            )));
        }
    }
    let with_xml = match p.get("xml") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "xml must be true or false, got {other:?}"
            )))
        }
    };
    let after = p.int("after", 0, 0, i64::MAX)?;
    let limit = p.int(
        "limit",
        i64::from(AUDIT_DEFAULT_LIMIT),
        1,
        i64::from(AUDIT_MAX_LIMIT),
    )?;
    let filter = Filter {
        patient: text("patient"),
        study: text("study"),
        user: text("user"),
        since,
        event,
    };
    let records = audit
        .access()
        .read_audit(
            audit.who(),
            filter,
            u64::try_from(after).unwrap_or(0),
            usize::try_from(limit).unwrap_or(AUDIT_MAX_LIMIT as usize),
            audit.query_string(),
        )
        .await
        .map_err(|e| match e {
            AccessError::NotAuditing => Problem::not_found(e.to_string()),
            other => Problem::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| RecordView::new(r, with_xml))
            .collect(),
    ))
}
