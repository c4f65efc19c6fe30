//! STOW-RS (PS3.18 10.5): `multipart/related; type="application/dicom"` uploads, stored with
//! the same durability, duplicate and quarantine rules as C-STORE.
//!
//! The body is parsed as a stream: each part's chunks go straight into the archive's staging
//! file, so memory stays bounded whatever the size of the upload.

mod limit;
mod media_type;
mod multipart;
mod response;

use crate::access::{study_rows, tally_row, Audit};
use crate::problem::Problem;
use crate::{HttpState, DICOMWEB_BASE};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use limit::{limited, BodyMeter, BoxError};
use media_type::MediaType;
use multipart::MultipartReader;
use pacsgrid_access::StudyTally;
use pacsgrid_archive::{Archive, StoreError, StoreOutcome};
use pacsgrid_audit::Outcome;
use pacsgrid_dicom::part10::{parse_part10_header, Part10Header, MAX_META_GROUP};
use pacsgrid_dicom::{status, uid};
use response::{Failed, Referenced, StoreReport, WARNING_DUPLICATE, WARNING_QUARANTINED};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// The media type of the response body.
const DICOM_JSON: &str = "application/dicom+json";
/// What this endpoint accepts, for 415 details.
const ACCEPTED: &str = "STOW-RS here takes multipart/related; type=\"application/dicom\" \
                        (DICOM Part 10 instances, one per part) or a single application/dicom body";

/// `POST /studies`: stores every instance of the request.
pub(crate) async fn store(State(state): State<HttpState>, audit: Audit, req: Request) -> Response {
    into_response(receive(state, audit, None, req).await)
}

/// `POST /studies/{study}`: stores the instances of that study; an instance of another study
/// fails (FailedSOPSequence) while the others are stored.
pub(crate) async fn store_in_study(
    State(state): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    req: Request,
) -> Response {
    if !uid::is_valid_uid(&study) {
        return Problem::bad_request(format!("study {study:?} in the URL is not a valid UID"))
            .into_response();
    }
    into_response(receive(state, audit, Some(study), req).await)
}

fn into_response(r: Result<Response, Problem>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// How the request body carries instances.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    /// multipart/related with this boundary.
    Multipart(String),
    /// One application/dicom object.
    Single,
}

/// Checks the request's Content-Type: 415 for anything but DICOM instances, 400 for a
/// multipart type without a usable boundary.
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, Problem> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| Problem::unsupported_media_type(format!("no Content-Type; {ACCEPTED}")))?;
    let raw = raw.to_str().map_err(|_| {
        Problem::unsupported_media_type(format!("Content-Type is not ASCII; {ACCEPTED}"))
    })?;
    let media = MediaType::parse(raw).ok_or_else(|| {
        Problem::unsupported_media_type(format!(
            "Content-Type {raw:?} is not a media type; {ACCEPTED}"
        ))
    })?;
    match media.essence.as_str() {
        "multipart/related" => {
            if let Some(ty) = media.param("type") {
                if !ty.eq_ignore_ascii_case("application/dicom") {
                    return Err(Problem::unsupported_media_type(format!(
                        "multipart/related type={ty:?} is not supported (metadata with bulk data \
                         is not accepted yet); {ACCEPTED}"
                    )));
                }
            }
            match media.param("boundary") {
                Some(b) if !b.is_empty() && b.len() <= 70 => Ok(BodyKind::Multipart(b.into())),
                Some(b) if !b.is_empty() => Err(Problem::bad_request(format!(
                    "multipart boundary is {} characters long; RFC 2046 allows at most 70",
                    b.len()
                ))),
                _ => Err(Problem::bad_request(
                    "multipart/related Content-Type without a boundary parameter",
                )),
            }
        }
        "application/dicom" => Ok(BodyKind::Single),
        other => Err(Problem::unsupported_media_type(format!(
            "Content-Type {other} is not accepted; {ACCEPTED}"
        ))),
    }
}

/// Refuses (406) a request whose Accept excludes the one response type, DICOM JSON, before
/// anything is stored.
fn check_accept(headers: &HeaderMap) -> Result<(), Problem> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    let ok = values.iter().flat_map(|v| v.split(',')).any(|range| {
        let mut items = range.split(';');
        let essence = items.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = items.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().ok() == Some(0.0)
            })
        });
        !refused
            && matches!(
                essence.as_str(),
                "application/dicom+json" | "application/json" | "application/*" | "*/*" | "*"
            )
    });
    if ok {
        Ok(())
    } else {
        Err(Problem::not_acceptable(format!(
            "the STOW-RS response is {DICOM_JSON}; Accept allows only {:?}",
            values.join(", ")
        )))
    }
}

/// `scheme://host/dicom-web` as the client addressed the node (proxies may say otherwise in
/// X-Forwarded-*), for RetrieveURLs. Without a usable Host the URLs are relative.
fn base_url(headers: &HeaderMap) -> String {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let valid = |h: &String| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    };
    let host = get("x-forwarded-host")
        .filter(valid)
        .or_else(|| get("host").filter(valid));
    let scheme = match get("x-forwarded-proto").as_deref() {
        Some("https") => "https",
        _ => "http",
    };
    match host {
        Some(h) => format!("{scheme}://{h}{DICOMWEB_BASE}"),
        None => DICOMWEB_BASE.to_string(),
    }
}

/// Why reading the body stopped before its end.
#[derive(Debug)]
enum BodyError {
    /// More than `max_upload_bytes`.
    TooLarge,
    /// The multipart framing is broken (or the connection dropped).
    Malformed(String),
}

/// A part whose body stopped mid-way: what its header said, if it got that far.
#[derive(Debug)]
struct Interrupted {
    header: Option<Part10Header>,
    error: BodyError,
}

/// Something that yields one part's bytes.
trait PartSource {
    /// The next chunk, None at the end of the part.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError>;
}

/// Maps a body stream failure to a body error, telling an exceeded budget from a broken
/// body (the stream error itself may arrive wrapped).
fn body_error(meter: &BodyMeter, e: impl std::fmt::Display) -> BodyError {
    if meter.exceeded() {
        BodyError::TooLarge
    } else {
        BodyError::Malformed(e.to_string())
    }
}

/// One part of a multipart body.
struct FieldSource<'a, S> {
    reader: &'a mut MultipartReader<S>,
    meter: &'a BodyMeter,
}

impl<S: Stream<Item = Result<Bytes, BoxError>> + Send> PartSource for FieldSource<'_, S> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        self.reader
            .chunk()
            .await
            .map_err(|e| body_error(self.meter, e))
    }
}

/// A whole single-part body.
struct StreamSource<'a, S> {
    stream: Pin<&'a mut S>,
    meter: &'a BodyMeter,
}

impl<S: Stream<Item = Result<Bytes, BoxError>>> PartSource for StreamSource<'_, S> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(body_error(self.meter, e)),
        }
    }
}

/// What became of one part.
#[derive(Debug)]
enum PartOutcome {
    /// The archive holds it (stored now, duplicate or quarantined).
    Held(StoreOutcome, Option<Part10Header>),
    /// Not stored.
    Failed(Option<Part10Header>, StoreError),
}

/// Streams one part into the archive. The first bytes are also kept (up to the size of a
/// meta group) so that a failure can name the instance.
async fn store_part(
    archive: &Arc<Archive>,
    src: &mut impl PartSource,
    source: &str,
    expect_study: Option<String>,
) -> Result<PartOutcome, Interrupted> {
    let head_max = 132 + MAX_META_GROUP;
    let mut head: Vec<u8> = Vec::new();
    let mut header: Option<Part10Header> = None;
    let (mut incoming, mut failure) = match archive.begin_file(source, expect_study).await {
        Ok(i) => (Some(i), None),
        Err(e) => (None, Some(e)),
    };
    loop {
        let chunk = match src.next_chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            // Dropping `incoming` removes its staged file: nothing of this part is kept.
            Err(error) => return Err(Interrupted { header, error }),
        };
        if header.is_none() && head.len() < head_max {
            let take = chunk.len().min(head_max - head.len());
            head.extend_from_slice(&chunk[..take]);
            header = parse_part10_header(&head).ok();
            if header.is_some() {
                head = Vec::new();
            }
        }
        if let Some(inc) = incoming.as_mut() {
            if let Err(e) = inc.write(&chunk).await {
                // Keep reading to the end of the part so the next one can be found.
                failure = Some(e);
                incoming = None;
            }
        }
    }
    if let Some(e) = failure {
        return Ok(PartOutcome::Failed(header, e));
    }
    let Some(incoming) = incoming else {
        return Ok(PartOutcome::Failed(
            header,
            StoreError::Internal("no staging file".into()),
        ));
    };
    Ok(match incoming.finish().await {
        Ok(outcome) => PartOutcome::Held(outcome, header),
        Err(e) => PartOutcome::Failed(header, e),
    })
}

/// The state of one request while parts are received.
struct Receiver {
    archive: Arc<Archive>,
    source: String,
    expect_study: Option<String>,
    base: String,
    report: StoreReport,
    studies: Vec<String>,
    /// What the archive holds now, for the audit records.
    tally: StudyTally,
    parts: usize,
}

impl Receiver {
    /// Adds a part's outcome to the report and logs it.
    async fn record(&mut self, outcome: PartOutcome) {
        self.parts += 1;
        let part = self.parts;
        match outcome {
            PartOutcome::Held(outcome, header) => {
                let (uid, warning, what) = match &outcome {
                    StoreOutcome::Stored {
                        sop_instance_uid, ..
                    } => (sop_instance_uid.clone(), None, "stored"),
                    StoreOutcome::Duplicate {
                        sop_instance_uid, ..
                    } => (
                        sop_instance_uid.clone(),
                        Some(WARNING_DUPLICATE),
                        "duplicate: already stored with the same bytes",
                    ),
                    StoreOutcome::Quarantined {
                        sop_instance_uid, ..
                    } => (
                        sop_instance_uid.clone(),
                        Some(WARNING_QUARANTINED),
                        "quarantined: already stored with other bytes, the stored one is kept",
                    ),
                };
                tracing::info!(part, sop_instance_uid = %uid, source = %self.source, "STOW-RS part {what}");
                let held = match self.archive.instance(&uid).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!(error = %e, sop_instance_uid = %uid, "looking up a stored instance failed");
                        None
                    }
                };
                let (class, url) = match held {
                    Some(i) => {
                        if !self.studies.contains(&i.study_uid) {
                            self.studies.push(i.study_uid.clone());
                        }
                        self.tally.add(&i.study_uid, None, None, &i.sop_class_uid);
                        let url = format!(
                            "{}/studies/{}/series/{}/instances/{}",
                            self.base, i.study_uid, i.series_uid, i.sop_instance_uid
                        );
                        (i.sop_class_uid, url)
                    }
                    // Not expected (the archive just recorded it); keep the item anyway.
                    None => (
                        header.map(|h| h.sop_class_uid).unwrap_or_default(),
                        String::new(),
                    ),
                };
                self.report.referenced.push(Referenced {
                    sop_class_uid: class,
                    sop_instance_uid: uid,
                    retrieve_url: url,
                    warning,
                });
            }
            PartOutcome::Failed(header, e) => {
                let reason = e.dimse_status();
                tracing::warn!(
                    part,
                    sop_instance_uid = header.as_ref().map(|h| h.sop_instance_uid.as_str()).unwrap_or("?"),
                    reason = format!("{reason:04X}"),
                    source = %self.source,
                    "STOW-RS part failed: {e}"
                );
                self.fail(header, reason);
            }
        }
    }

    /// Adds a failed item.
    fn fail(&mut self, header: Option<Part10Header>, reason: u16) {
        let (class, inst) = match header {
            Some(h) => (Some(h.sop_class_uid), Some(h.sop_instance_uid)),
            None => (None, None),
        };
        self.report.failed.push(Failed {
            sop_class_uid: class,
            sop_instance_uid: inst,
            reason,
        });
    }
}

/// Receives a whole request and answers with the Store Instances Response.
async fn receive(
    state: HttpState,
    audit: Audit,
    expect_study: Option<String>,
    req: Request,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown peer".into());
    check_accept(&parts.headers)?;
    let kind = body_kind(&parts.headers)?;
    let max = state.options.max_upload_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared {
        if len > max {
            return Err(too_large(max, len, 0));
        }
    }
    let mut rx = Receiver {
        archive: Arc::clone(&state.archive),
        source: format!("STOW-RS {peer}"),
        base: base_url(&parts.headers),
        expect_study: expect_study.clone(),
        report: StoreReport::default(),
        studies: Vec::new(),
        tally: StudyTally::new(),
        parts: 0,
    };
    let meter = Arc::new(BodyMeter::default());
    let stream = limited(body.into_data_stream(), max, Arc::clone(&meter));
    let stopped = match kind {
        BodyKind::Multipart(boundary) => receive_multipart(&mut rx, stream, boundary, &meter).await,
        BodyKind::Single => {
            let mut stream = std::pin::pin!(stream);
            let mut src = StreamSource {
                stream: stream.as_mut(),
                meter: &meter,
            };
            let archive = Arc::clone(&rx.archive);
            match store_part(&archive, &mut src, &rx.source, rx.expect_study.clone()).await {
                Ok(outcome) => {
                    rx.record(outcome).await;
                    None
                }
                Err(i) => Some(i),
            }
        }
    };
    let received = meter.seen();
    let answer = 'answer: {
        if let Some(Interrupted { header, error }) = stopped {
            match error {
                BodyError::TooLarge => {
                    break 'answer Err(too_large(max, received, rx.report.referenced.len()));
                }
                BodyError::Malformed(why) => {
                    if rx.parts == 0 && header.is_none() {
                        break 'answer Err(Problem::bad_request(format!(
                            "the multipart body cannot be read: {why}"
                        )));
                    }
                    // Parts before the break are stored; the broken one is reported.
                    tracing::warn!(peer = %peer, "STOW-RS body broken after {} parts: {why}", rx.parts);
                    rx.parts += 1;
                    rx.fail(header, status::ERROR_CANNOT_UNDERSTAND);
                }
            }
        }
        if rx.parts == 0 {
            break 'answer Err(Problem::bad_request(
                "the request holds no part: nothing to store",
            ));
        }
        rx.report.study_url = match (&expect_study, rx.studies.as_slice()) {
            (Some(s), _) => Some(format!("{}/studies/{s}", rx.base)),
            (None, [one]) => Some(format!("{}/studies/{one}", rx.base)),
            _ => None,
        };
        let code = rx.report.status();
        let held = &rx.report.referenced;
        tracing::info!(
            peer = %peer,
            status = code.as_u16(),
            parts = rx.parts,
            stored = held.iter().filter(|r| r.warning.is_none()).count(),
            warnings = held.iter().filter(|r| r.warning.is_some()).count(),
            failed = rx.report.failed.len(),
            bytes = received,
            ms = started.elapsed().as_millis() as u64,
            "STOW-RS request done"
        );
        let mut rsp = (code, Body::from(rx.report.to_json().to_string())).into_response();
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
        Ok(rsp)
    };
    // Whatever the answer, what was stored is recorded before it goes out.
    let studies = std::mem::take(&mut rx.studies);
    let rows = study_rows(&rx.archive, &studies).await?;
    let mut tally = std::mem::take(&mut rx.tally);
    for row in &rows {
        tally_row(&mut tally, row);
    }
    let mut template = audit.stored();
    if answer.is_err() || !rx.report.failed.is_empty() {
        template = template.outcome(
            Outcome::MinorFailure,
            Some("some instances of the request were not stored"),
        );
    }
    audit.record_studies(template, tally).await?;
    answer
}

/// Walks the parts of a multipart body. Returns where it broke, if it did.
async fn receive_multipart(
    rx: &mut Receiver,
    stream: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    boundary: String,
    meter: &BodyMeter,
) -> Option<Interrupted> {
    let mut reader = MultipartReader::new(stream, &boundary);
    let archive = Arc::clone(&rx.archive);
    loop {
        let headers = match reader.next_part().await {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => {
                let error = body_error(meter, e);
                if rx.parts > 0 && matches!(error, BodyError::Malformed(_)) {
                    // The parts so far were complete; only what follows them is amiss.
                    tracing::warn!("STOW-RS body broken after {} complete parts", rx.parts);
                    return None;
                }
                return Some(Interrupted {
                    header: None,
                    error,
                });
            }
        };
        let part_type = headers
            .content_type
            .as_deref()
            .and_then(MediaType::parse)
            .map(|m| m.essence);
        let mut src = FieldSource {
            reader: &mut reader,
            meter,
        };
        if let Some(t) = part_type.filter(|t| t != "application/dicom") {
            // Skip its bytes and report it; the other parts are still stored.
            loop {
                match src.next_chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(error) => {
                        return Some(Interrupted {
                            header: None,
                            error,
                        })
                    }
                }
            }
            rx.parts += 1;
            tracing::warn!(
                part = rx.parts,
                "STOW-RS part of type {t} refused: only application/dicom parts are stored"
            );
            rx.fail(None, status::ERROR_CANNOT_UNDERSTAND);
            continue;
        }
        match store_part(&archive, &mut src, &rx.source, rx.expect_study.clone()).await {
            Ok(outcome) => rx.record(outcome).await,
            Err(i) => return Some(i),
        }
    }
}

/// 413 with what was received and kept.
fn too_large(max: u64, seen: u64, kept: usize) -> Problem {
    let kept = if kept > 0 {
        format!("; the {kept} instances that came complete before the limit were stored")
    } else {
        String::new()
    };
    Problem::too_large(format!(
        "request body of at least {seen} bytes exceeds this node's limit of {max} bytes \
         (http.max_upload_bytes){kept}"
    ))
}

#[cfg(test)]
mod tests;
