//! QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered from the index
//! as an `application/dicom+json` array streamed page by page, so a search over the whole
//! archive never holds its whole answer in memory.
//!
//! Matching follows C-FIND (the same [`Query::parse`]); see [`params`] for the query string,
//! [`fields`] for what each answer holds and [`fuzzy`] for `fuzzymatching=true`. Researchers
//! get de-identified answers and may match only on keys that identify nobody
//! ([`deid_keys`]). A search
//! without matches answers 204 No Content, as PS3.18 8.3.4.4.1 requires today (CP-2473 would
//! move it to 200; dicomweb-client takes both).

mod deid_keys;
mod fields;
mod fuzzy;
mod params;

use crate::access::Audit;
use crate::problem::Problem;
use crate::{HttpState, DICOMWEB_BASE};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dicom_dictionary_std::tags;
use fields::{Fields, Scope};
use fuzzy::NameFilter;
use pacsgrid_access::View;
use pacsgrid_archive::{Archive, ArchiveError, AttrValues};
use pacsgrid_dicom::{attrs, uid, Level, Query, QueryError, QueryModel, Tag};
use std::sync::Arc;
use std::time::Instant;

/// The media type of every QIDO-RS answer.
pub(crate) const DICOM_JSON: &str = "application/dicom+json";

/// Matches fetched from the index at a time: bounds memory while keeping index queries few.
const PAGE: u32 = 500;

/// `GET /studies`.
pub(crate) async fn search_studies(
    State(state): State<HttpState>,
    audit: Audit,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Study,
        scope: Scope::All,
        study: None,
        series: None,
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

/// `GET /series`.
pub(crate) async fn search_series(
    State(state): State<HttpState>,
    audit: Audit,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Series,
        scope: Scope::All,
        study: None,
        series: None,
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

/// `GET /instances`.
pub(crate) async fn search_instances(
    State(state): State<HttpState>,
    audit: Audit,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Image,
        scope: Scope::All,
        study: None,
        series: None,
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

/// `GET /studies/{study}/series`.
pub(crate) async fn search_study_series(
    State(state): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Series,
        scope: Scope::Study,
        study: Some(study),
        series: None,
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

/// `GET /studies/{study}/instances`.
pub(crate) async fn search_study_instances(
    State(state): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Image,
        scope: Scope::Study,
        study: Some(study),
        series: None,
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

/// `GET /studies/{study}/series/{series}/instances`.
pub(crate) async fn search_series_instances(
    State(state): State<HttpState>,
    audit: Audit,
    Path((study, series)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = Request {
        level: Level::Image,
        scope: Scope::Series,
        study: Some(study),
        series: Some(series),
    };
    respond(search(&state, &audit, req, &uri, &headers, query.as_deref()).await)
}

fn respond(r: Result<Response, Problem>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// What the URL asks: the level, and the UIDs its path fixes.
struct Request {
    level: Level,
    scope: Scope,
    study: Option<String>,
    series: Option<String>,
}

/// Runs one search and starts the answer.
async fn search(
    state: &HttpState,
    audit: &Audit,
    req: Request,
    uri: &Uri,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let params = params::parse(params::pairs(raw_query)?)?;
    let accept = match &params.accept {
        Some(a) => Some(a.as_str()),
        None => header_text(headers, header::ACCEPT)?,
    };
    negotiate(accept)?;
    let deidentified = audit.view() == View::DeIdentified;
    if deidentified {
        deid_keys::check(&params)?;
    }

    let mut pairs: Vec<(Tag, &str)> = Vec::new();
    for (tag, what, value) in [
        (tags::STUDY_INSTANCE_UID, "Study", &req.study),
        (tags::SERIES_INSTANCE_UID, "Series", &req.series),
    ] {
        if let Some(v) = value {
            if !uid::is_valid_uid(v) {
                return Err(Problem::bad_request(format!(
                    "{what} Instance UID {v:?} in the URL path is not a valid UID (digits and dots, at most 64)"
                )));
            }
            pairs.push((tag, v.as_str()));
        }
    }
    pairs.extend(params.keys.iter().map(|k| (k.tag, k.value.as_str())));
    let mut query = Query::parse(QueryModel::StudyRoot, req.level, pairs)
        .map_err(|e| query_problem(&params, &e))?;
    let filter = if params.fuzzy {
        fuzzy::take(&mut query).map(Arc::new)
    } else {
        None
    };

    let host = host(uri, headers)?;
    let scheme = match header_text(
        headers,
        header::HeaderName::from_static("x-forwarded-proto"),
    )? {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let mut fields = Fields::new(
        req.level,
        req.scope,
        &params,
        format!("{scheme}://{host}{DICOMWEB_BASE}"),
    );
    if deidentified {
        fields = fields.deidentified(Arc::clone(&state.deid));
    }

    let mut warnings = Vec::new();
    if !params.unsupported.is_empty() {
        warnings.push(format!(
            "The following attributes are not supported for matching and were ignored: {}",
            params.unsupported.join(", ")
        ));
    }
    let log = SearchLog {
        level: req.level,
        keys: query.keys.len(),
        answers: 0,
        started,
    };
    let query = Arc::new(query);
    let archive = state.archive.clone();
    if let Some(limit) = params.limit {
        // One answer past the page says whether the limit cut the answer.
        if let Some(next) = params.offset.checked_add(limit) {
            let mut probe = Cursor::new(
                archive.clone(),
                query.clone(),
                filter.clone(),
                next,
                Some(1),
            );
            if !probe.next_page().await?.is_empty() {
                warnings.push("There are additional results that can be requested".to_string());
            }
        }
    }
    let mut cursor = Cursor::new(archive, query, filter, params.offset, params.limit);
    // The search is recorded while its first page is read: no answer without its record.
    let (recorded, first) = tokio::join!(audit.record(vec![audit.query()]), cursor.next_page());
    recorded?;
    let first = first?;

    let mut rsp = if first.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let answer = Answer {
            cursor,
            fields,
            log,
            pending: Some(first),
            started: false,
            finished: false,
        };
        let stream = futures::stream::unfold(answer, Answer::next_chunk);
        let mut rsp = Body::from_stream(stream).into_response();
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(DICOM_JSON));
        rsp
    };
    for w in warnings {
        let value = format!("299 {host} \"{w}\"");
        if let Ok(v) = HeaderValue::from_str(&value) {
            rsp.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(rsp)
}

/// A header's text, `None` when absent; 400 when it is not visible ASCII.
fn header_text(
    headers: &HeaderMap,
    name: impl Into<Option<header::HeaderName>>,
) -> Result<Option<&str>, Problem> {
    let Some(name) = name.into() else {
        return Ok(None);
    };
    match headers.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Problem::bad_request(format!("header {name} is not visible ASCII"))),
    }
}

/// The authority the client addressed (Host, or the HTTP/2 `:authority`), for RetrieveURL and
/// the Warning agent; 400 when it holds anything but a host name or address and a port.
fn host(uri: &Uri, headers: &HeaderMap) -> Result<String, Problem> {
    let host = match header_text(headers, header::HOST)? {
        Some(h) => h.to_string(),
        None => uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| "localhost".to_string()),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if ok {
        Ok(host)
    } else {
        Err(Problem::bad_request(format!(
            "Host {host:?} is not a host name or address with an optional port"
        )))
    }
}

/// Checks that the client takes DICOM JSON (PS3.18 8.7.3 content negotiation). A missing or
/// empty Accept takes the default, `application/dicom+json`. XML answers are not offered.
fn negotiate(accept: Option<&str>) -> Result<(), Problem> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        !refused
            && matches!(
                media.as_str(),
                "application/dicom+json" | "application/json" | "application/*" | "*/*"
            )
    });
    if acceptable {
        Ok(())
    } else {
        Err(Problem::not_acceptable(format!(
            "QIDO-RS answers {DICOM_JSON} (or application/json); Accept {accept:?} allows neither"
        )))
    }
}

/// A query refusal as 400, naming the query parameter as the client wrote it.
fn query_problem(params: &params::SearchParams, e: &QueryError) -> Problem {
    let keyword = match e {
        QueryError::BadValue { keyword, .. } | QueryError::KeyBelowLevel { keyword, .. } => {
            Some(*keyword)
        }
        QueryError::BadLevel(_) => None,
    };
    let tag = keyword.and_then(attrs::by_keyword).map(|a| a.tag);
    match tag.and_then(|t| params.keys.iter().find(|k| k.tag == t)) {
        Some(k) => Problem::bad_request(format!("query parameter {}: {e}", k.name)),
        None => Problem::bad_request(format!("URL path: {e}")),
    }
}

/// Reads the matches of one search from the index, page by page, applying offset and limit
/// (after the fuzzy filter, when there is one).
struct Cursor {
    archive: Arc<Archive>,
    query: Arc<Query>,
    filter: Option<Arc<NameFilter>>,
    /// The index offset of the next page.
    index_offset: u32,
    /// Filtered matches still to skip (`offset` when a filter runs in memory).
    skip: u64,
    /// Answers still to give, when limited.
    remaining: Option<u64>,
    exhausted: bool,
}

impl Cursor {
    fn new(
        archive: Arc<Archive>,
        query: Arc<Query>,
        filter: Option<Arc<NameFilter>>,
        offset: u32,
        limit: Option<u32>,
    ) -> Cursor {
        let (index_offset, skip) = if filter.is_some() {
            (0, u64::from(offset))
        } else {
            (offset, 0)
        };
        Cursor {
            archive,
            query,
            filter,
            index_offset,
            skip,
            remaining: limit.map(u64::from),
            exhausted: false,
        }
    }

    /// The next answers; empty once there are no more.
    async fn next_page(&mut self) -> Result<Vec<AttrValues>, ArchiveError> {
        loop {
            if self.exhausted || self.remaining == Some(0) {
                return Ok(Vec::new());
            }
            let want = match (&self.filter, self.remaining) {
                (None, Some(r)) => r.min(u64::from(PAGE)) as u32,
                _ => PAGE,
            };
            // `want` is never 0 here: 0 would mean "no limit" to the index.
            let mut rows = self
                .archive
                .find(&self.query, want, self.index_offset)
                .await?;
            let fetched = rows.len();
            match u32::try_from(fetched)
                .ok()
                .and_then(|n| self.index_offset.checked_add(n))
            {
                Some(next) => self.index_offset = next,
                None => self.exhausted = true,
            }
            if fetched < want as usize {
                self.exhausted = true;
            }
            if let Some(f) = &self.filter {
                rows.retain(|r| f.matches(r));
                let skipped = rows
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                rows.drain(..skipped);
                self.skip -= skipped as u64;
            }
            if let Some(r) = self.remaining {
                rows.truncate(usize::try_from(r).unwrap_or(usize::MAX));
                self.remaining = Some(r - rows.len() as u64);
            }
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
    }
}

/// The body of a search answer: a JSON array written one page at a time.
struct Answer {
    cursor: Cursor,
    fields: Fields,
    log: SearchLog,
    /// A page read before the body started (the first one, read to choose 200 or 204).
    pending: Option<Vec<AttrValues>>,
    started: bool,
    finished: bool,
}

impl Answer {
    async fn next_chunk(mut self) -> Option<(Result<Bytes, std::io::Error>, Answer)> {
        if self.finished {
            return None;
        }
        let page = match self.pending.take() {
            Some(p) => p,
            None => match self.cursor.next_page().await {
                Ok(p) => p,
                Err(e) => {
                    // The status is sent already: all that is left is to cut the body short,
                    // which the client sees as a broken answer rather than a short one.
                    tracing::warn!(error = %e, "QIDO-RS search failed while answering");
                    self.finished = true;
                    return Some((Err(std::io::Error::other(e.to_string())), self));
                }
            },
        };
        if page.is_empty() {
            self.finished = true;
            let end: &'static [u8] = if self.started { b"]" } else { b"[]" };
            return Some((Ok(Bytes::from_static(end)), self));
        }
        let mut buf = Vec::with_capacity(page.len() * 1024);
        for row in &page {
            buf.push(if self.started { b',' } else { b'[' });
            self.started = true;
            if let Err(e) = serde_json::to_writer(&mut buf, &self.fields.answer(row)) {
                self.finished = true;
                return Some((Err(std::io::Error::other(e)), self));
            }
            self.log.answers += 1;
        }
        Some((Ok(Bytes::from(buf)), self))
    }
}

/// Logs one line per search when its answer is done (or dropped by a client that left).
struct SearchLog {
    level: Level,
    keys: usize,
    answers: u64,
    started: Instant,
}

impl Drop for SearchLog {
    fn drop(&mut self) {
        tracing::info!(
            level = self.level.code(),
            keys = self.keys,
            answers = self.answers,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "QIDO-RS search"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests;
