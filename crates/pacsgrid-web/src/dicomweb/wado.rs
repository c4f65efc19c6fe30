//! WADO-RS (PS3.18 10.4): instances as multipart/related, metadata as DICOM JSON, frames and
//! bulk data. Instances stream from the archive one after another; only decoding a
//! compressed object (or cutting frames out of one) holds that one instance in memory.
//! Researchers are served the de-identified view of [`deid`].

mod accept;
mod deid;
mod metadata;
mod multipart;
mod pixels;

use crate::access::{study_rows, tally_instances, Audit};
use crate::problem::Problem;
use crate::{HttpState, LocalAddr};
use accept::TsChoice;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use multipart::{Closed, PartWriter};
use pacsgrid_access::{StudyTally, View};
use pacsgrid_archive::{transcode, Archive, ArchiveError, StoredInstance};
use pacsgrid_audit::Action;
use pacsgrid_dicom::deid::Deidentifier;
use pacsgrid_dicom::{uid, Level, Query, QueryModel, Tag};
use std::sync::Arc;
use std::time::Instant;

/// Content type of metadata answers.
const DICOM_JSON: &str = "application/dicom+json";
/// Size of the chunks read from the blob store.
const CHUNK: usize = 1 << 20;

/// What the URL names: a study, a series or an instance.
struct Target {
    study: String,
    series: Option<String>,
    instance: Option<String>,
}

impl Target {
    fn describe(&self) -> String {
        match (&self.series, &self.instance) {
            (None, _) => format!("study {}", self.study),
            (Some(se), None) => format!("series {se} of study {}", self.study),
            (Some(se), Some(i)) => format!("instance {i} of series {se} of study {}", self.study),
        }
    }
}

/// Every stored instance under the URL's UIDs; 400 for a malformed UID, 404 when nothing is
/// stored there (an instance stored under another study or series is not "there").
async fn locate(archive: &Archive, t: &Target) -> Result<Vec<StoredInstance>, Problem> {
    let mut pairs: Vec<(Tag, &str)> = vec![(tags::STUDY_INSTANCE_UID, &t.study)];
    let mut level = Level::Study;
    for (name, tag, v, l) in [
        (
            "SeriesInstanceUID",
            tags::SERIES_INSTANCE_UID,
            &t.series,
            Level::Series,
        ),
        (
            "SOPInstanceUID",
            tags::SOP_INSTANCE_UID,
            &t.instance,
            Level::Image,
        ),
    ] {
        if let Some(v) = v {
            if !uid::is_valid_uid(v) {
                return Err(Problem::bad_request(format!(
                    "{name} {v:?} in the URL is not a valid UID"
                )));
            }
            pairs.push((tag, v));
            level = l;
        }
    }
    if !uid::is_valid_uid(&t.study) {
        return Err(Problem::bad_request(format!(
            "StudyInstanceUID {:?} in the URL is not a valid UID",
            t.study
        )));
    }
    let query = Query::parse(QueryModel::StudyRoot, level, pairs)?;
    let found = archive.locate(&query).await?;
    if found.is_empty() {
        return Err(Problem::not_found(format!("no {} is stored", t.describe())));
    }
    Ok(found)
}

/// [`locate`], with the study's patient looked up in the index at the same time, for the
/// audit record of what is about to be served.
async fn locate_for_audit(
    archive: &Archive,
    t: &Target,
) -> Result<(Vec<StoredInstance>, StudyTally), Problem> {
    let (found, rows) = tokio::join!(
        locate(archive, t),
        study_rows(archive, std::slice::from_ref(&t.study))
    );
    let found = found?;
    let tally = tally_instances(&found, &rows?);
    Ok((found, tally))
}

fn accept_header(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    // several Accept headers are one list (RFC 9110 5.3)
    let mut all = Vec::new();
    for v in headers.get_all(header::ACCEPT) {
        all.push(
            v.to_str()
                .map_err(|_| Problem::bad_request("the Accept header is not ASCII text"))?
                .to_string(),
        );
    }
    Ok((!all.is_empty()).then(|| all.join(", ")))
}

/// The absolute URL of the DICOMweb base, from the request's Host header.
///
/// dicomweb-client (0.61) sends `Host` without the port on its GET requests; a URL built
/// from that would point at port 80. When the request did not come through a proxy (no
/// forwarding headers) and the Host has no port, the listener's own port is added.
fn base_url(headers: &HeaderMap, local: Option<LocalAddr>) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']));
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    let proxied = [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    match host {
        Some(h) => {
            let has_port = h.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
            match local {
                Some(LocalAddr(addr)) if !has_port && !proxied && addr.port() != 80 => {
                    format!("{proto}://{h}:{}{}", addr.port(), crate::DICOMWEB_BASE)
                }
                _ => format!("{proto}://{h}{}", crate::DICOMWEB_BASE),
            }
        }
        None => crate::DICOMWEB_BASE.to_string(),
    }
}

/// How one instance goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The stored bytes.
    AsStored,
    /// Uncompressed to another uncompressed syntax (the archive converts the data set).
    Convert(&'static str),
    /// Compressed stored, decoded to this uncompressed syntax here.
    Decode(&'static str),
}

/// The uncompressed syntaxes instances are converted to on request.
fn is_target_native(ts: &str) -> bool {
    ts == uid::EXPLICIT_VR_LE || ts == uid::IMPLICIT_VR_LE
}

/// Picks the first acceptable delivery for an instance, or says why none is.
fn plan(choices: &[TsChoice], inst: &StoredInstance) -> Result<Delivery, String> {
    let stored = inst.transfer_syntax.as_str();
    let info = uid::transfer_syntax(stored);
    let encapsulated = info.is_some_and(|i| i.encapsulated);
    let name = info.map(|i| i.name).unwrap_or("an unknown syntax");
    let mut why = Vec::new();
    for c in choices {
        match *c {
            TsChoice::AsStored => return Ok(Delivery::AsStored),
            TsChoice::Syntax(ts) if ts == stored => return Ok(Delivery::AsStored),
            TsChoice::Syntax(ts) if is_target_native(ts) => {
                if !encapsulated {
                    return Ok(Delivery::Convert(ts));
                }
                match transcode::cannot_decode(stored) {
                    None => return Ok(Delivery::Decode(ts)),
                    Some(w) => why.push(w),
                }
            }
            TsChoice::Syntax(ts) => {
                let to = uid::transfer_syntax(ts).map(|i| i.name).unwrap_or(ts);
                why.push(format!("this node does not convert {name} to {to} ({ts})"));
            }
        }
    }
    Err(format!(
        "instance {} is stored as {name} ({stored}) and cannot be sent in any accepted transfer syntax: {}; ask with transfer-syntax=* for the stored bytes",
        inst.sop_instance_uid,
        why.join("; ")
    ))
}

/// The preamble and file meta group for a data set converted to `ts`.
fn meta_header(inst: &StoredInstance, ts: &str) -> Result<Vec<u8>, Problem> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(inst.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(inst.sop_instance_uid.as_str())
        .transfer_syntax(ts)
        .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| Problem::internal(format!("file meta group: {e}")))?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| Problem::internal(format!("file meta group: {e}")))?;
    Ok(out)
}

/// Reads a whole stored object ([`Archive::read_file`]), naming the instance when reading
/// fails midway.
pub(crate) async fn read_whole(
    archive: &Archive,
    inst: &StoredInstance,
) -> Result<Vec<u8>, Problem> {
    archive.read_file(inst).await.map_err(|e| match e {
        ArchiveError::Io(e) => {
            Problem::internal(format!("reading instance {}: {e}", inst.sop_instance_uid))
        }
        e => Problem::from(e),
    })
}

/// Why a streamed response stopped early.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Closed(#[from] Closed),
    #[error("{0}")]
    Failed(String),
}

impl From<Problem> for StreamError {
    fn from(p: Problem) -> Self {
        StreamError::Failed(p.detail)
    }
}

/// The Content-Type of the part that carries an instance.
fn part_type(inst: &StoredInstance, how: Delivery) -> String {
    let ts = match how {
        Delivery::AsStored => inst.transfer_syntax.as_str(),
        Delivery::Convert(ts) | Delivery::Decode(ts) => ts,
    };
    format!("application/dicom; transfer-syntax={ts}")
}

/// Writes one instance as a part, de-identified when `deid` is given. Returns false, having
/// sent nothing, for an instance withheld from the de-identified view.
async fn send_instance(
    archive: &Archive,
    w: &mut PartWriter,
    inst: &StoredInstance,
    how: Delivery,
    deid: Option<&Arc<Deidentifier>>,
) -> Result<bool, StreamError> {
    if let Some(deid) = deid {
        return send_deidentified(archive, w, inst, how, deid).await;
    }
    match how {
        Delivery::AsStored => {
            let mut chunks = archive
                .stream_file(inst, CHUNK)
                .await
                .map_err(Problem::from)?;
            let read_err =
                |e| StreamError::Failed(format!("reading {}: {e}", inst.sop_instance_uid));
            // The part's headers follow the first chunk into the queue at once, so the
            // socket writer finds both and sends them in one write.
            let mut next = futures::StreamExt::next(&mut chunks)
                .await
                .transpose()
                .map_err(read_err)?;
            w.begin_part(&part_type(inst, how)).await?;
            // The Content-Length announced counts the indexed size: a blob of another
            // length is damaged, and a part of the wrong length would corrupt the framing.
            let mut sent = 0u64;
            while let Some(chunk) = next.take() {
                sent += chunk.len() as u64;
                if sent > inst.size {
                    break;
                }
                w.send(chunk).await?;
                next = futures::StreamExt::next(&mut chunks)
                    .await
                    .transpose()
                    .map_err(read_err)?;
            }
            if sent != inst.size {
                return Err(StreamError::Failed(format!(
                    "instance {} is indexed with {} bytes but its blob has {}{}",
                    inst.sop_instance_uid,
                    inst.size,
                    if sent > inst.size { "more than " } else { "" },
                    sent
                )));
            }
        }
        Delivery::Convert(ts) | Delivery::Decode(ts) => {
            let converted = converted(archive, inst, ts).await?;
            return send_converted(w, inst, how, converted).await;
        }
    }
    Ok(true)
}

/// An instance converted to `ts` by the archive: its new file meta header and data set.
/// Pixel data the decoder refuses are a 406: the syntax asked for cannot be given.
async fn converted(
    archive: &Archive,
    inst: &StoredInstance,
    ts: &str,
) -> Result<(Vec<u8>, Vec<u8>), Problem> {
    let data = archive
        .transcode_dataset(inst, ts)
        .await
        .map_err(|e| match e {
            ArchiveError::Transcode { .. } => Problem::not_acceptable(e.to_string()),
            e => Problem::from(e),
        })?;
    Ok((meta_header(inst, ts)?, data))
}

/// Sends an instance [`converted`] gave as one part.
async fn send_converted(
    w: &mut PartWriter,
    inst: &StoredInstance,
    how: Delivery,
    (head, data): (Vec<u8>, Vec<u8>),
) -> Result<bool, StreamError> {
    w.begin_part(&part_type(inst, how)).await?;
    w.send(Bytes::from(head)).await?;
    w.send(Bytes::from(data)).await?;
    Ok(true)
}

/// [`send_instance`] for the de-identified view: stored bytes stream with their header
/// rewritten; deflated, converted and decoded instances are rewritten whole, one at a time.
async fn send_deidentified(
    archive: &Archive,
    w: &mut PartWriter,
    inst: &StoredInstance,
    how: Delivery,
    deid: &Arc<Deidentifier>,
) -> Result<bool, StreamError> {
    let deflated = uid::transfer_syntax(&inst.transfer_syntax)
        .is_some_and(|i| i.encoding == uid::DatasetEncoding::Deflated);
    let whole = match how {
        Delivery::AsStored if !deflated => {
            return deid::send_streamed(archive, deid, w, inst, &part_type(inst, how)).await;
        }
        Delivery::AsStored => read_whole(archive, inst).await?,
        Delivery::Convert(ts) | Delivery::Decode(ts) => {
            let (mut file, data) = converted(archive, inst, ts).await?;
            file.extend_from_slice(&data);
            file
        }
    };
    let (d, owned) = (Arc::clone(deid), inst.clone());
    let out = tokio::task::spawn_blocking(move || deid::whole(&d, &owned, &whole))
        .await
        .map_err(|e| StreamError::Failed(e.to_string()))??;
    let Some(out) = out else {
        tracing::info!(sop_instance_uid = %inst.sop_instance_uid, "withheld from a de-identified retrieve: burned-in annotation");
        return Ok(false);
    };
    w.begin_part(&part_type(inst, how)).await?;
    w.send(Bytes::from(out)).await?;
    Ok(true)
}

/// A retrieve of one instance that has to be decoded is decoded before the answer starts:
/// pixel data the decoder refuses then get a 406 problem instead of a body cut off after
/// its 200. Several instances stream as they are decoded, and a failure ends the body early.
async fn decode_lone_instance(
    archive: &Archive,
    planned: &[(StoredInstance, Delivery)],
    deidentified: bool,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, Problem> {
    let [(inst, Delivery::Decode(ts))] = planned else {
        return Ok(None);
    };
    if deidentified {
        return Ok(None);
    }
    let out = converted(archive, inst, ts).await.inspect_err(|p| {
        tracing::warn!(sop_instance_uid = %inst.sop_instance_uid, detail = %p.detail, "WADO-RS retrieve refused: the instance does not decode")
    })?;
    Ok(Some(out))
}

/// How a retrieve's answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `multipart/related; type="application/dicom"`, one part an instance (WADO-RS).
    Multipart,
    /// The one instance's Part 10 bytes as the whole body, `application/dicom` (WADO-URI).
    Bare,
}

/// Answers a retrieve of instances: negotiates, then streams them.
async fn retrieve(
    st: HttpState,
    audit: Audit,
    headers: HeaderMap,
    t: Target,
) -> Result<Response, Problem> {
    let accept = accept_header(&headers)?;
    let choices = accept::dicom_choices(&accept::parse_accept(accept.as_deref())?)?;
    retrieve_as(st, audit, &choices, t, Framing::Multipart).await
}

/// WADO-URI's object retrieve: one instance as a bare `application/dicom` body, in
/// `transfer_syntax` (`*` for the stored one; Explicit VR Little Endian when absent, as for
/// WADO-RS); the same negotiation, audit and streaming as WADO-RS.
pub(crate) async fn retrieve_object(
    st: HttpState,
    audit: Audit,
    transfer_syntax: Option<&str>,
    [study, series, instance]: [String; 3],
) -> Result<Response, Problem> {
    let choice = match transfer_syntax.map(str::trim) {
        None | Some("") => TsChoice::Syntax(uid::EXPLICIT_VR_LE),
        Some("*") => TsChoice::AsStored,
        Some(ts) => match uid::transfer_syntax(ts) {
            Some(info) => TsChoice::Syntax(info.uid),
            None => {
                return Err(Problem::bad_request(format!(
                    "transferSyntax {ts:?} is not a transfer syntax this node knows"
                )))
            }
        },
    };
    let t = Target {
        study,
        series: Some(series),
        instance: Some(instance),
    };
    retrieve_as(st, audit, &[choice], t, Framing::Bare).await
}

/// [`retrieve`] with the choices made and the framing given.
async fn retrieve_as(
    st: HttpState,
    audit: Audit,
    choices: &[TsChoice],
    t: Target,
    framing: Framing,
) -> Result<Response, Problem> {
    let (found, tally) = locate_for_audit(&st.archive, &t).await?;
    let (found, unreachable) = leave_out_unreachable(&st.archive, found).await?;
    let deid = (audit.view() == View::DeIdentified).then(|| Arc::clone(&st.deid));
    if deid.is_some() {
        refuse_withheld_instance(&st.archive, &t, &found).await?;
    }
    // decide every instance before the first byte: a 406 after a 200 is impossible
    let mut planned = Vec::with_capacity(found.len());
    for inst in found {
        let how = plan(choices, &inst).map_err(Problem::not_acceptable)?;
        planned.push((inst, how));
    }
    let boundary = multipart::new_boundary();
    // Stored bytes have known sizes, so the length is known before the first byte; a
    // converted, decoded or de-identified instance's is not, and then the body goes out
    // chunked.
    let length = (deid.is_none() && planned.iter().all(|(_, how)| *how == Delivery::AsStored))
        .then(|| match framing {
            Framing::Bare => planned.iter().map(|(inst, _)| inst.size).sum(),
            Framing::Multipart => {
                let types: Vec<(String, u64)> = planned
                    .iter()
                    .map(|(inst, how)| (part_type(inst, *how), inst.size))
                    .collect();
                multipart::body_len(&boundary, types.iter().map(|(t, n)| (t.as_str(), *n)))
            }
        });
    let mut decoded = decode_lone_instance(&st.archive, &planned, deid.is_some()).await?;
    let content_type = match framing {
        Framing::Multipart => multipart::content_type("application/dicom", &boundary),
        Framing::Bare => "application/dicom".to_string(),
    };
    let (mut w, body) = multipart::channel((framing == Framing::Multipart).then_some(&*boundary));
    let archive = Arc::clone(&st.archive);
    let what = t.describe();
    tokio::spawn(async move {
        let started = Instant::now();
        let n = planned.len();
        let mut result = Ok(());
        let mut withheld = 0usize;
        let upcoming: Vec<StoredInstance> = planned.iter().map(|(i, _)| i.clone()).collect();
        for (n, (inst, how)) in planned.iter().enumerate() {
            archive.read_ahead(&upcoming[n + 1..]);
            let sent = match decoded.take() {
                Some(out) => send_converted(&mut w, inst, *how, out).await,
                None => send_instance(&archive, &mut w, inst, *how, deid.as_ref()).await,
            };
            match sent {
                Ok(true) => {}
                Ok(false) => withheld += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let bytes = w.bytes;
        let result = match result {
            Ok(()) => w.finish().await.map_err(StreamError::from),
            Err(StreamError::Failed(why)) => {
                w.fail(why.clone()).await;
                Err(StreamError::Failed(why))
            }
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::info!(what = %what, instances = n, withheld, bytes, elapsed_ms, "WADO-RS retrieve")
            }
            Err(e) => {
                tracing::warn!(what = %what, instances = n, bytes, elapsed_ms, error = %e, "WADO-RS retrieve ended early")
            }
        }
    });
    // The sender reads ahead into the body while the record is written; nothing reaches the
    // client before the record is durable, and a failed record drops the body unsent.
    audit.record_studies(audit.transferred(), tally).await?;
    let mut rsp = multipart_response(&content_type, body);
    if let Some(n) = length {
        rsp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(warning) = unreachable {
        // PS3.18: only some of the target resources; the Warning says which are missing
        *rsp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&warning) {
            rsp.headers_mut().insert(header::WARNING, v);
        }
    }
    Ok(rsp)
}

/// Splits off the instances whose bytes are held only at sites that cannot be reached now,
/// so that a retrieve says so before its first byte rather than breaking off in the middle
/// of a 200. None can be had: 503. Some: the rest, and the `Warning` header value that
/// names what was left out (the response is then a 206).
async fn leave_out_unreachable(
    archive: &Archive,
    found: Vec<StoredInstance>,
) -> Result<(Vec<StoredInstance>, Option<String>), Problem> {
    let total = found.len();
    let mut kept = Vec::with_capacity(total);
    let mut missing: Vec<(String, String)> = Vec::new();
    for inst in found {
        match archive.unavailable(&inst).await {
            None => kept.push(inst),
            Some(why) => missing.push((inst.sop_instance_uid, why)),
        }
    }
    let Some((first_uid, first_why)) = missing.first() else {
        return Ok((kept, None));
    };
    let what = if missing.len() == 1 {
        format!("instance {first_uid}: {first_why}")
    } else {
        format!(
            "{} of {total} instances (the first, {first_uid}: {first_why})",
            missing.len()
        )
    };
    tracing::warn!(left_out = missing.len(), of = total, first = %first_uid, why = %first_why, "WADO-RS retrieve: bytes held only at unreachable sites");
    if kept.is_empty() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the bytes cannot be had now: {what}"),
        ));
    }
    // RFC 7234 warn-code 299 (persistent warning), with the DICOM status (B000, some
    // sub-operations failed) at the start of the text, as PS3.18 recommends
    let text = format!("B000: left out {what}").replace(['"', '\\'], "'");
    Ok((kept, Some(format!("299 pacsgrid \"{text}\""))))
}

fn multipart_response(content_type: &str, body: axum::body::Body) -> Response {
    let mut rsp = (StatusCode::OK, body).into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        rsp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    rsp
}

/// GET /studies/{study}: every instance of a study.
pub(crate) async fn retrieve_study(
    State(st): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: None,
        instance: None,
    };
    retrieve(st, audit, headers, t).await
}

/// GET /studies/{study}/series/{series}: every instance of a series.
pub(crate) async fn retrieve_series(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: Some(series),
        instance: None,
    };
    retrieve(st, audit, headers, t).await
}

/// GET /studies/{study}/series/{series}/instances/{instance}: one instance.
pub(crate) async fn retrieve_instance(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: Some(series),
        instance: Some(instance),
    };
    retrieve(st, audit, headers, t).await
}

/// Refuses metadata requests that accept no JSON.
fn check_json_accept(headers: &HeaderMap) -> Result<(), Problem> {
    let accept = accept_header(headers)?;
    let ranges = accept::parse_accept(accept.as_deref())?;
    let ok = ranges.iter().any(|r| {
        matches!(
            r.media_type.as_str(),
            "application/dicom+json" | "application/json" | "application/*" | "*/*"
        )
    });
    if ok {
        Ok(())
    } else {
        Err(Problem::not_acceptable(format!(
            "metadata is served as application/dicom+json; the request accepts only: {}",
            ranges
                .iter()
                .map(|r| r.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// In the de-identified view, a URL that names one instance withheld from it gets 403
/// rather than an empty answer; a study or series simply leaves such instances out.
async fn refuse_withheld_instance(
    archive: &Archive,
    t: &Target,
    found: &[StoredInstance],
) -> Result<(), Problem> {
    let [only] = found else {
        return Ok(());
    };
    if t.instance.is_none() {
        return Ok(());
    }
    let reader = metadata::BlockingRead::new(archive.open_file(only).await?);
    let held = tokio::task::spawn_blocking(move || {
        metadata::read_header(reader).map(|o| pacsgrid_dicom::deid::withheld(&o))
    })
    .await
    .map_err(|e| Problem::internal(e.to_string()))??;
    if held {
        return Err(deid::withheld_problem(only));
    }
    Ok(())
}

/// Answers a metadata request: a JSON array streamed instance by instance.
async fn metadata(
    st: HttpState,
    audit: Audit,
    headers: HeaderMap,
    local: Option<LocalAddr>,
    t: Target,
) -> Result<Response, Problem> {
    check_json_accept(&headers)?;
    let (found, tally) = locate_for_audit(&st.archive, &t).await?;
    let deid = (audit.view() == View::DeIdentified).then(|| Arc::clone(&st.deid));
    if deid.is_some() {
        refuse_withheld_instance(&st.archive, &t, &found).await?;
    }
    let base = base_url(&headers, local);
    let (mut w, body) = multipart::channel(None);
    let archive = Arc::clone(&st.archive);
    let what = t.describe();
    tokio::spawn(async move {
        let started = Instant::now();
        let n = found.len();
        let mut result: Result<(), StreamError> =
            w.send(Bytes::from_static(b"[")).await.map_err(Into::into);
        let mut sent = 0usize;
        for inst in found.iter() {
            if result.is_err() {
                break;
            }
            result = async {
                let url = format!(
                    "{base}/studies/{}/series/{}/instances/{}",
                    inst.study_uid, inst.series_uid, inst.sop_instance_uid
                );
                let reader = metadata::BlockingRead::new(
                    archive.open_file(inst).await.map_err(Problem::from)?,
                );
                let ts = inst.transfer_syntax.clone();
                let (deid, owned) = (deid.clone(), inst.clone());
                let json = tokio::task::spawn_blocking(move || {
                    let mut obj = metadata::read_header(reader)?;
                    if let Some(deid) = deid {
                        if pacsgrid_dicom::deid::withheld(&obj) {
                            return Ok(None);
                        }
                        let key = deid.patient(&owned.issuer, &owned.patient_id);
                        let ds = std::mem::replace(
                            &mut *obj,
                            dicom_object::InMemDicomObject::new_empty(),
                        );
                        *obj = deid.dataset(ds, &key);
                    }
                    let v = metadata::instance_json(&obj, &url, &ts)?;
                    serde_json::to_vec(&v)
                        .map(Some)
                        .map_err(|e| Problem::internal(e.to_string()))
                })
                .await
                .map_err(|e| StreamError::Failed(e.to_string()))??;
                let Some(json) = json else {
                    return Ok(());
                };
                if sent > 0 {
                    w.send(Bytes::from_static(b",")).await?;
                }
                sent += 1;
                w.send(Bytes::from(json)).await?;
                Ok(())
            }
            .await;
        }
        if result.is_ok() {
            result = w.send(Bytes::from_static(b"]")).await.map_err(Into::into);
        }
        let bytes = w.bytes;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::info!(what = %what, instances = n, bytes, elapsed_ms, "WADO-RS metadata")
            }
            Err(e) => {
                if let StreamError::Failed(why) = &e {
                    w.fail(why.clone()).await;
                }
                tracing::warn!(what = %what, instances = n, bytes, elapsed_ms, error = %e, "WADO-RS metadata ended early")
            }
        }
    });
    audit
        .record_studies(audit.accessed(Action::Read), tally)
        .await?;
    let mut rsp = (StatusCode::OK, body).into_response();
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
    Ok(rsp)
}

/// GET /studies/{study}/metadata.
pub(crate) async fn study_metadata(
    State(st): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    headers: HeaderMap,
    local: Option<Extension<LocalAddr>>,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: None,
        instance: None,
    };
    metadata(st, audit, headers, local.map(|Extension(l)| l), t).await
}

/// GET /studies/{study}/series/{series}/metadata.
pub(crate) async fn series_metadata(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
    local: Option<Extension<LocalAddr>>,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: Some(series),
        instance: None,
    };
    metadata(st, audit, headers, local.map(|Extension(l)| l), t).await
}

/// GET /studies/{study}/series/{series}/instances/{instance}/metadata.
pub(crate) async fn instance_metadata(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
    local: Option<Extension<LocalAddr>>,
) -> Result<Response, Problem> {
    let t = Target {
        study,
        series: Some(series),
        instance: Some(instance),
    };
    metadata(st, audit, headers, local.map(|Extension(l)| l), t).await
}

/// Sends parts built in memory (frames, bulk data of one instance) as a multipart answer.
async fn parts_response(
    parts: Vec<pixels::Part>,
    what: String,
    started: Instant,
) -> Result<Response, Problem> {
    let top = parts
        .first()
        .map(|p| {
            p.content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| pixels::OCTET_STREAM.to_string());
    let boundary = multipart::new_boundary();
    let (mut w, body) = multipart::channel(Some(&boundary));
    tokio::spawn(async move {
        let n = parts.len();
        let mut result = Ok(());
        for p in parts {
            result = async {
                w.begin_part(&p.content_type).await?;
                w.send(Bytes::from(p.data)).await
            }
            .await;
            if result.is_err() {
                break;
            }
        }
        let bytes = w.bytes;
        if result.is_ok() {
            result = w.finish().await;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::info!(what = %what, parts = n, bytes, elapsed_ms, "WADO-RS retrieve")
            }
            Err(e) => {
                tracing::warn!(what = %what, parts = n, bytes, elapsed_ms, error = %e, "WADO-RS retrieve ended early")
            }
        }
    });
    Ok(multipart_response(
        &multipart::content_type(&top, &boundary),
        body,
    ))
}

/// GET …/instances/{instance}/frames/{frames}: frames as uncompressed bytes or as their
/// stored bitstreams.
pub(crate) async fn retrieve_frames(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series, instance, frames)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let list = pixels::parse_frame_list(&frames)?;
    let accept = accept_header(&headers)?;
    let choices = accept::pixel_choices(&accept::parse_accept(accept.as_deref())?)?;
    let t = Target {
        study,
        series: Some(series),
        instance: Some(instance),
    };
    let (inst, bytes) = audited_whole(&st.archive, &audit, &t).await?;
    let bytes = check_not_withheld(&audit, &inst, bytes).await?;
    let ts = inst.transfer_syntax.clone();
    let parts = tokio::task::spawn_blocking(move || pixels::frames(&bytes, &ts, &list, &choices))
        .await
        .map_err(|e| Problem::internal(e.to_string()))??;
    parts_response(
        parts,
        format!("frames {frames} of {}", t.describe()),
        started,
    )
    .await
}

/// The one instance `t` names, read whole; its audit record is written while it is read, and
/// nothing is returned unless the record was.
async fn audited_whole(
    archive: &Archive,
    audit: &Audit,
    t: &Target,
) -> Result<(StoredInstance, Vec<u8>), Problem> {
    let (found, tally) = locate_for_audit(archive, t).await?;
    let inst = found
        .into_iter()
        .next()
        .ok_or_else(|| Problem::not_found("no such instance is stored"))?;
    let (recorded, bytes) = tokio::join!(
        audit.record_studies(audit.transferred(), tally),
        read_whole(archive, &inst)
    );
    recorded?;
    Ok((inst, bytes?))
}

/// In the de-identified view, refuses (403) an instance whose pixels may show text; hands
/// the bytes back otherwise.
pub(crate) async fn check_not_withheld(
    audit: &Audit,
    inst: &StoredInstance,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, Problem> {
    if audit.view() != View::DeIdentified {
        return Ok(bytes);
    }
    let (held, bytes) = tokio::task::spawn_blocking(move || (deid::is_withheld(&bytes), bytes))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?;
    if held? {
        return Err(deid::withheld_problem(inst));
    }
    Ok(bytes)
}

/// GET …/instances/{instance}/bulkdata/{path}: the value a metadata BulkDataURI points at.
pub(crate) async fn bulkdata(
    State(st): State<HttpState>,
    audit: Audit,
    Path((study, series, instance, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let (seqs, tag) = pixels::parse_tag_path(&path)?;
    let accept = accept_header(&headers)?;
    let choices = accept::pixel_choices(&accept::parse_accept(accept.as_deref())?)?;
    let t = Target {
        study,
        series: Some(series),
        instance: Some(instance),
    };
    let pixel_data = seqs.is_empty() && tag == tags::PIXEL_DATA;
    if audit.view() == View::DeIdentified && !pixel_data {
        // other bulk values may be private or identifying (the profile removes many); the
        // de-identified view serves pixel data only
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!("bulk data {path}: the de-identified view serves pixel data (7FE00010) only"),
        ));
    }
    let (inst, bytes) = audited_whole(&st.archive, &audit, &t).await?;
    let bytes = check_not_withheld(&audit, &inst, bytes).await?;
    let ts = inst.transfer_syntax.clone();
    let parts = tokio::task::spawn_blocking(move || {
        if pixel_data {
            pixels::pixel_bulk(&bytes, &ts, &choices)
        } else {
            if !choices.contains(&accept::PixelChoice::Uncompressed)
                && !choices.contains(&accept::PixelChoice::AsStored)
            {
                return Err(Problem::not_acceptable(
                    "bulk data values other than pixel data are served as application/octet-stream",
                ));
            }
            Ok(vec![pixels::Part {
                content_type: pixels::OCTET_STREAM.to_string(),
                data: pixels::bulk_value(&bytes, &seqs, tag)?,
            }])
        }
    })
    .await
    .map_err(|e| Problem::internal(e.to_string()))??;
    parts_response(
        parts,
        format!("bulk data {path} of {}", t.describe()),
        started,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(ts: &str) -> StoredInstance {
        StoredInstance {
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            transfer_syntax: ts.into(),
            hash: String::new(),
            size: 0,
            dataset_offset: 0,
            patient_id: String::new(),
            issuer: String::new(),
        }
    }

    #[test]
    fn plans_follow_preference_and_capability() {
        let evrle = [TsChoice::Syntax(uid::EXPLICIT_VR_LE)];
        assert_eq!(
            plan(&evrle, &inst(uid::EXPLICIT_VR_LE)),
            Ok(Delivery::AsStored)
        );
        assert_eq!(
            plan(&evrle, &inst(uid::IMPLICIT_VR_LE)),
            Ok(Delivery::Convert(uid::EXPLICIT_VR_LE))
        );
        assert_eq!(
            plan(&evrle, &inst("1.2.840.10008.1.2.5")),
            Ok(Delivery::Decode(uid::EXPLICIT_VR_LE))
        );
        let why = plan(&evrle, &inst("1.2.840.10008.1.2.4.80")).unwrap_err();
        assert!(
            why.contains("JPEG-LS") && why.contains("1.2.840.10008.1.2.4.80"),
            "{why}"
        );
        let both = [TsChoice::Syntax(uid::EXPLICIT_VR_LE), TsChoice::AsStored];
        assert_eq!(
            plan(&both, &inst("1.2.840.10008.1.2.4.80")),
            Ok(Delivery::AsStored)
        );
        let jpeg = [TsChoice::Syntax("1.2.840.10008.1.2.4.50")];
        assert!(plan(&jpeg, &inst(uid::EXPLICIT_VR_LE)).is_err());
    }

    #[test]
    fn meta_header_is_part10() {
        let h = meta_header(&inst(uid::EXPLICIT_VR_LE), uid::EXPLICIT_VR_LE).unwrap();
        assert_eq!(&h[128..132], b"DICM");
        let parsed = pacsgrid_dicom::part10::parse_part10_header(&h).unwrap();
        assert_eq!(parsed.dataset_offset, h.len() as u64);
    }

    #[test]
    fn base_url_from_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.org:8042"));
        let local = Some(LocalAddr(([127, 0, 0, 1], 9000).into()));
        assert_eq!(base_url(&h, local), "http://example.org:8042/dicom-web");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1"));
        assert_eq!(base_url(&h, local), "http://127.0.0.1:9000/dicom-web");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&h, local), "https://127.0.0.1/dicom-web");
        assert_eq!(base_url(&HeaderMap::new(), local), "/dicom-web");
    }
}
