//! `GET` of patients, studies, series and instances: lists with paging, and one resource
//! with what lies directly under it. Everything comes from the archive's index.

use super::params::{patient_param, uid_param, Page, Params, PathPair, PathSegment, RawParams};
use super::views::{Instance, InstanceDetail, Patient, Series, Study};
use crate::access::{tally_row, Audit};
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::State;
use axum::Json;
use dicom_dictionary_std::tags;
use pacsgrid_access::StudyTally;
use pacsgrid_archive::{Archive, AttrValues};
use pacsgrid_audit::Action;
use pacsgrid_dicom::{Level, Query, QueryModel, Tag};
use serde::Serialize;
use std::collections::HashMap;

/// Items in a list page when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` of a list page.
pub(crate) const MAX_LIMIT: u32 = 1000;

/// One page of a list, and where the next one starts.
#[derive(Debug, Serialize)]
pub(crate) struct ListPage<T> {
    /// The items.
    pub items: Vec<T>,
    /// The `limit` applied.
    pub limit: u32,
    /// The `offset` applied.
    pub offset: u32,
    /// The `offset` of the next page, or null when this is the last one.
    pub next_offset: Option<u32>,
}

/// A patient and their studies.
#[derive(Debug, Serialize)]
pub(crate) struct PatientDetail {
    /// The patient.
    #[serde(flatten)]
    pub patient: Patient,
    /// Their studies, oldest first by arrival.
    pub studies: Vec<Study>,
}

/// A study and its series.
#[derive(Debug, Serialize)]
pub(crate) struct StudyDetail {
    /// The study.
    #[serde(flatten)]
    pub study: Study,
    /// Its series, by SeriesNumber.
    pub series: Vec<Series>,
}

/// A series and its instances.
#[derive(Debug, Serialize)]
pub(crate) struct SeriesDetail {
    /// The series.
    #[serde(flatten)]
    pub series: Series,
    /// Its patient.
    pub patient: super::views::PatientRef,
    /// Its instances, by InstanceNumber.
    pub instances: Vec<Instance>,
}

fn query(model: QueryModel, level: Level, keys: &[(Tag, &str)]) -> Result<Query, Problem> {
    // The keys come from checked UIDs and exact filters; a refusal here is the node's fault.
    Query::parse(model, level, keys.iter().map(|(t, v)| (*t, *v)))
        .map_err(|e| Problem::internal(format!("building an index query: {e}")))
}

/// Runs a paged query, asking one row more than the page to know whether another follows.
async fn paged<T>(
    archive: &Archive,
    q: &Query,
    page: Page,
    make: impl Fn(&AttrValues) -> T,
) -> Result<ListPage<T>, Problem> {
    let mut rows = archive.find(q, page.limit + 1, page.offset).await?;
    let more = rows.len() > page.limit as usize;
    rows.truncate(page.limit as usize);
    Ok(ListPage {
        items: rows.iter().map(make).collect(),
        limit: page.limit,
        offset: page.offset,
        next_offset: more.then(|| page.offset.saturating_add(page.limit)),
    })
}

/// The exact patient filters of a list request as query keys.
fn patient_keys<'a>(id: &'a Option<String>, issuer: &'a Option<String>) -> Vec<(Tag, &'a str)> {
    let mut keys = Vec::new();
    if let Some(id) = id {
        keys.push((tags::PATIENT_ID, id.as_str()));
    }
    if let Some(issuer) = issuer {
        keys.push((tags::ISSUER_OF_PATIENT_ID, issuer.as_str()));
    }
    keys
}

/// Records that the requester read the resource of an index `row` (its study and patient).
async fn read_record(audit: &Audit, row: &AttrValues) -> Result<(), Problem> {
    let mut tally = StudyTally::new();
    tally_row(&mut tally, row);
    audit
        .record_studies(audit.accessed(Action::Read), tally)
        .await
}

/// `GET /patients`: patients with `limit`, `offset` and exact `patient_id` / `issuer` filters.
pub(crate) async fn list_patients(
    State(state): State<HttpState>,
    audit: Audit,
    raw: RawParams,
) -> Result<Json<ListPage<Patient>>, Problem> {
    let p = Params::new(raw, &["limit", "offset", "patient_id", "issuer"])?;
    let page = p.page(DEFAULT_LIMIT, MAX_LIMIT)?;
    let (id, issuer) = (p.exact("patient_id")?, p.exact("issuer")?);
    let q = query(
        QueryModel::PatientRoot,
        Level::Patient,
        &patient_keys(&id, &issuer),
    )?;
    let (recorded, page) = tokio::join!(
        audit.record(vec![audit.query()]),
        paged(&state.archive, &q, page, Patient::from_row)
    );
    recorded?;
    Ok(Json(page?))
}

/// `GET /studies`: studies with `limit`, `offset` and exact `patient_id` / `issuer` filters.
pub(crate) async fn list_studies(
    State(state): State<HttpState>,
    audit: Audit,
    raw: RawParams,
) -> Result<Json<ListPage<Study>>, Problem> {
    let p = Params::new(raw, &["limit", "offset", "patient_id", "issuer"])?;
    let page = p.page(DEFAULT_LIMIT, MAX_LIMIT)?;
    let (id, issuer) = (p.exact("patient_id")?, p.exact("issuer")?);
    let q = query(
        QueryModel::StudyRoot,
        Level::Study,
        &patient_keys(&id, &issuer),
    )?;
    let (recorded, page) = tokio::join!(
        audit.record(vec![audit.query()]),
        paged(&state.archive, &q, page, Study::from_row)
    );
    recorded?;
    Ok(Json(page?))
}

/// The rows of `level` for one patient, matched exactly (the index matches `*` and `?` in
/// a stored PatientID as wildcards, so the answer is filtered again).
async fn patient_rows(
    archive: &Archive,
    model: QueryModel,
    level: Level,
    issuer: &str,
    id: &str,
) -> Result<Vec<AttrValues>, Problem> {
    let q = query(
        model,
        level,
        &[(tags::PATIENT_ID, id), (tags::ISSUER_OF_PATIENT_ID, issuer)],
    )?;
    let mut rows = archive.find(&q, 0, 0).await?;
    rows.retain(|r| {
        r.get(&tags::PATIENT_ID).map(String::as_str) == Some(id)
            && r.get(&tags::ISSUER_OF_PATIENT_ID).map(String::as_str) == Some(issuer)
    });
    Ok(rows)
}

fn no_patient(issuer: &str, id: &str) -> Problem {
    Problem::not_found(format!(
        "no patient with PatientID {id:?} under issuer {issuer:?}"
    ))
}

/// `GET /patients/{issuer}/{patient_id}`: one patient and their studies.
pub(crate) async fn get_patient(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathPair,
    raw: RawParams,
) -> Result<Json<PatientDetail>, Problem> {
    Params::new(raw, &[])?;
    let (issuer, id) = patient_param(path)?;
    let a = &state.archive;
    let rows = patient_rows(a, QueryModel::PatientRoot, Level::Patient, &issuer, &id).await?;
    let row = rows.first().ok_or_else(|| no_patient(&issuer, &id))?;
    let studies = patient_rows(a, QueryModel::StudyRoot, Level::Study, &issuer, &id).await?;
    // One patient, so one record naming every study of theirs that the answer lists.
    let mut ev = audit.accessed(Action::Read).patient(&id, Some(&issuer));
    for s in &studies {
        if let Some(uid) = s.get(&tags::STUDY_INSTANCE_UID) {
            ev = ev.study(pacsgrid_audit::StudyRef::new(uid));
        }
    }
    audit.record(vec![ev]).await?;
    Ok(Json(PatientDetail {
        patient: Patient::from_row(row),
        studies: studies.iter().map(Study::from_row).collect(),
    }))
}

/// `GET /studies/{uid}`: one study and its series.
pub(crate) async fn get_study(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<StudyDetail>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "study UID")?;
    let key = [(tags::STUDY_INSTANCE_UID, uid.as_str())];
    let q = query(QueryModel::StudyRoot, Level::Study, &key)?;
    let rows = state.archive.find(&q, 1, 0).await?;
    let row = rows
        .first()
        .ok_or_else(|| Problem::not_found(format!("no study {uid}")))?;
    let q = query(QueryModel::StudyRoot, Level::Series, &key)?;
    let (recorded, found) = tokio::join!(read_record(&audit, row), state.archive.find(&q, 0, 0));
    recorded?;
    let mut series: Vec<Series> = found?.iter().map(Series::from_row).collect();
    Series::sort(&mut series);
    Ok(Json(StudyDetail {
        study: Study::from_row(row),
        series,
    }))
}

/// `GET /series/{uid}`: one series and its instances.
pub(crate) async fn get_series(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<SeriesDetail>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "series UID")?;
    let key = [(tags::SERIES_INSTANCE_UID, uid.as_str())];
    let q = query(QueryModel::StudyRoot, Level::Series, &key)?;
    let rows = state.archive.find(&q, 1, 0).await?;
    let row = rows
        .first()
        .ok_or_else(|| Problem::not_found(format!("no series {uid}")))?;
    // locate gives the bytes' whereabouts in InstanceNumber order; find adds the numbers.
    let iq = query(QueryModel::StudyRoot, Level::Image, &key)?;
    let (recorded, located, numbers) = tokio::join!(
        read_record(&audit, row),
        state.archive.locate(&q),
        state.archive.find(&iq, 0, 0)
    );
    recorded?;
    let located = located?;
    let numbers: HashMap<String, AttrValues> = numbers?
        .into_iter()
        .filter_map(|r| r.get(&tags::SOP_INSTANCE_UID).cloned().map(|u| (u, r)))
        .collect();
    Ok(Json(SeriesDetail {
        series: Series::from_row(row),
        patient: super::views::PatientRef::from_row(row),
        instances: located
            .iter()
            .map(|s| Instance::new(s, numbers.get(&s.sop_instance_uid)))
            .collect(),
    }))
}

/// `GET /instances/{uid}`: one instance with its attributes, bytes and provenance.
pub(crate) async fn get_instance(
    State(state): State<HttpState>,
    audit: Audit,
    path: PathSegment,
    raw: RawParams,
) -> Result<Json<InstanceDetail>, Problem> {
    Params::new(raw, &[])?;
    let uid = uid_param(path, "SOP instance UID")?;
    let missing = || Problem::not_found(format!("no instance {uid}"));
    let a = &state.archive;
    let stored = a.instance(&uid).await?.ok_or_else(missing)?;
    let q = query(
        QueryModel::StudyRoot,
        Level::Image,
        &[(tags::SOP_INSTANCE_UID, uid.as_str())],
    )?;
    // Each read is its own snapshot: a deletion in between is answered as not found.
    let rows = a.find(&q, 1, 0).await?;
    let row = rows.first().ok_or_else(missing)?;
    let (recorded, prov) = tokio::join!(read_record(&audit, row), a.provenance(&uid));
    recorded?;
    let prov = prov?.ok_or_else(missing)?;
    Ok(Json(InstanceDetail::new(row, &stored, prov)))
}
