//! Rendered resources (PS3.18 10.4.1.1.3 and 10.4.1.1.4): instances and frames as JPEG or
//! PNG, windowed from the object or the request, scaled to a viewport.
//!
//! Each answer is one image. An instance renders its first frame; `frames/{n}` one frame.
//! A study or series renders one representative instance (the middle instance of its first
//! image series, by SeriesNumber and InstanceNumber) as a single image rather than a
//! multipart of every instance: that is what viewers ask these URLs for (a preview), and
//! it needs no multipart decoding. Thumbnails are the same images fitted in 128×128 unless
//! the request gives a viewport.

mod params;
mod render;
mod ybr422;

#[cfg(test)]
pub(crate) mod fixtures;

use crate::access::{study_rows, tally_instances, Audit};
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use dicom_dictionary_std::tags;
use pacsgrid_access::StudyTally;
use pacsgrid_archive::StoredInstance;
use pacsgrid_dicom::{uid, Level, QueryModel};
use params::RenderParams;
pub(crate) use params::MAX_VIEWPORT;

/// The query string as ordered pairs (parameters may repeat).
type Params = Query<Vec<(String, String)>>;

/// `GET /studies/{study}/rendered`: a representative image of the study.
pub(crate) async fn study_rendered(
    State(s): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(representative(s, audit, &study, None, &q, &headers, false).await)
}

/// `GET /studies/{study}/series/{series}/rendered`: a representative image of the series.
pub(crate) async fn series_rendered(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(representative(s, audit, &study, Some(&series), &q, &headers, false).await)
}

/// `GET …/instances/{instance}/rendered`: the first frame of the instance.
pub(crate) async fn instance_rendered(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series, inst)): Path<(String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(instance(s, audit, [&study, &series, &inst], "1", &q, &headers, false).await)
}

/// `GET …/instances/{instance}/frames/{frame}/rendered`: one frame.
pub(crate) async fn frames_rendered(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series, inst, frames)): Path<(String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(
        instance(
            s,
            audit,
            [&study, &series, &inst],
            &frames,
            &q,
            &headers,
            false,
        )
        .await,
    )
}

/// `GET /studies/{study}/thumbnail`: a small representative image of the study.
pub(crate) async fn study_thumbnail(
    State(s): State<HttpState>,
    audit: Audit,
    Path(study): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(representative(s, audit, &study, None, &q, &headers, true).await)
}

/// `GET /studies/{study}/series/{series}/thumbnail`: a small representative image.
pub(crate) async fn series_thumbnail(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(representative(s, audit, &study, Some(&series), &q, &headers, true).await)
}

/// `GET …/instances/{instance}/thumbnail`: the first frame, small.
pub(crate) async fn instance_thumbnail(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series, inst)): Path<(String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(instance(s, audit, [&study, &series, &inst], "1", &q, &headers, true).await)
}

/// `GET …/frames/{frame}/thumbnail`: one frame, small.
pub(crate) async fn frames_thumbnail(
    State(s): State<HttpState>,
    audit: Audit,
    Path((study, series, inst, frames)): Path<(String, String, String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    answer(
        instance(
            s,
            audit,
            [&study, &series, &inst],
            &frames,
            &q,
            &headers,
            true,
        )
        .await,
    )
}

fn answer(r: Result<Response, Problem>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Checks that every path UID is a valid UID (400 otherwise, naming it).
fn check_uids(uids: &[(&str, &str)]) -> Result<(), Problem> {
    for (what, u) in uids {
        if !uid::is_valid_uid(u) {
            return Err(Problem::bad_request(format!(
                "{what} {u:?} in the URL is not a valid UID"
            )));
        }
    }
    Ok(())
}

/// Parses the `frames/{list}` segment: exactly one frame number ≥ 1.
fn single_frame(list: &str) -> Result<u32, Problem> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    if items.len() != 1 {
        return Err(Problem::bad_request(format!(
            "frames {list:?}: a rendered resource is one frame; ask for each frame separately"
        )));
    }
    items[0]
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "frames {list:?}: a frame number is a whole number from 1"
            ))
        })
}

fn accept(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Renders one instance named by the URL.
pub(crate) async fn instance(
    state: HttpState,
    audit: Audit,
    [study, series, inst]: [&str; 3],
    frames: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    thumbnail: bool,
) -> Result<Response, Problem> {
    check_uids(&[("study", study), ("series", series), ("instance", inst)])?;
    let frame = single_frame(frames)?;
    let params = params::parse(query, accept(headers).as_deref(), thumbnail)?;
    let study_uid = [study.to_string()];
    let (found, rows) = tokio::join!(
        state.archive.instance(inst),
        study_rows(&state.archive, &study_uid)
    );
    let found = found?
        .filter(|i| i.study_uid == study && i.series_uid == series)
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no instance {inst} in series {series} of study {study}"
            ))
        })?;
    let tally = tally_instances(std::slice::from_ref(&found), &rows?);
    render_instance(&state, &audit, tally, found, frame, params).await
}

/// Renders the representative instance of a study or series.
async fn representative(
    state: HttpState,
    audit: Audit,
    study: &str,
    series: Option<&str>,
    query: &[(String, String)],
    headers: &HeaderMap,
    thumbnail: bool,
) -> Result<Response, Problem> {
    check_uids(&[("study", study)])?;
    if let Some(s) = series {
        check_uids(&[("series", s)])?;
    }
    let params = params::parse(query, accept(headers).as_deref(), thumbnail)?;
    let q = pacsgrid_dicom::Query::parse(
        QueryModel::StudyRoot,
        Level::Image,
        [
            (tags::STUDY_INSTANCE_UID, study),
            (tags::SERIES_INSTANCE_UID, series.unwrap_or("")),
            (tags::SOP_INSTANCE_UID, ""),
            (tags::SOP_CLASS_UID, ""),
            (tags::SERIES_NUMBER, ""),
            (tags::INSTANCE_NUMBER, ""),
        ],
    )?;
    let rows = state.archive.find(&q, 0, 0).await?;
    let what = match series {
        Some(s) => format!("series {s} of study {study}"),
        None => format!("study {study}"),
    };
    if rows.is_empty() {
        return Err(Problem::not_found(format!("no instance stored in {what}")));
    }
    let pick = pick_representative(&rows).ok_or_else(|| {
        Problem::not_acceptable(format!("{what} holds no image that can be rendered"))
    })?;
    let found = state
        .archive
        .instance(&pick)
        .await?
        .ok_or_else(|| Problem::not_found(format!("instance {pick} is no longer stored")))?;
    // the image rows carry the study's patient
    let tally = tally_instances(std::slice::from_ref(&found), &rows[..1]);
    render_instance(&state, &audit, tally, found, 1, params).await
}

/// SOP classes that never hold pixel data to render (structured reports, presentation
/// states, key objects, waveforms, encapsulated documents, RT plans and structures, raw
/// data, spectroscopy).
fn is_non_image(class: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "1.2.840.10008.5.1.4.1.1.88.",
        "1.2.840.10008.5.1.4.1.1.11.",
        "1.2.840.10008.5.1.4.1.1.9.",
        "1.2.840.10008.5.1.4.1.1.104.",
        "1.2.840.10008.5.1.4.1.1.481.",
        "1.2.840.10008.5.1.4.1.1.66",
        "1.2.840.10008.5.1.4.1.1.4.2",
    ];
    PREFIXES.iter().any(|p| class.starts_with(p))
}

/// The middle instance (by InstanceNumber) of the first image series (by SeriesNumber).
fn pick_representative(rows: &[pacsgrid_archive::AttrValues]) -> Option<String> {
    let num = |r: &pacsgrid_archive::AttrValues, t| {
        r.get(&t)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    };
    let text = |r: &pacsgrid_archive::AttrValues, t| r.get(&t).cloned().unwrap_or_default();
    let mut images: Vec<&pacsgrid_archive::AttrValues> = rows
        .iter()
        .filter(|r| !is_non_image(&text(r, tags::SOP_CLASS_UID)))
        .collect();
    images.sort_by_key(|r| {
        (
            num(r, tags::SERIES_NUMBER),
            text(r, tags::SERIES_INSTANCE_UID),
            num(r, tags::INSTANCE_NUMBER),
            text(r, tags::SOP_INSTANCE_UID),
        )
    });
    let first_series = text(images.first()?, tags::SERIES_INSTANCE_UID);
    let series: Vec<_> = images
        .into_iter()
        .filter(|r| text(r, tags::SERIES_INSTANCE_UID) == first_series)
        .collect();
    series
        .get(series.len() / 2)
        .map(|r| text(r, tags::SOP_INSTANCE_UID))
}

/// Reads the instance (one object in memory at a time) and renders it off the async pool.
async fn render_instance(
    state: &HttpState,
    audit: &Audit,
    tally: StudyTally,
    inst: StoredInstance,
    frame: u32,
    params: RenderParams,
) -> Result<Response, Problem> {
    // Refuse what cannot be decoded before reading a possibly large object.
    render::check_decodable(&inst.transfer_syntax)?;
    let read = crate::dicomweb::wado::read_whole(&state.archive, &inst);
    let (recorded, file) = tokio::join!(audit.record_studies(audit.transferred(), tally), read);
    recorded?;
    let file = file?;
    let file = crate::dicomweb::wado::check_not_withheld(audit, &inst, file).await?;
    let format = params.format;
    let uid = inst.sop_instance_uid.clone();
    let image = tokio::task::spawn_blocking(move || render::render(file, frame, &params))
        .await
        .map_err(|e| Problem::internal(format!("rendering {uid} stopped: {e}")))??;
    tracing::debug!(sop_instance_uid = %inst.sop_instance_uid, frame, bytes = image.len(), "rendered");
    let mut rsp = image.into_response();
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.media_type()),
    );
    rsp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(rsp)
}

#[cfg(test)]
mod tests;
