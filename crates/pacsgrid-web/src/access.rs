//! The one place where HTTP requests are authenticated, authorized and audited.
//!
//! [`guard`] runs before every DICOMweb and REST handler: it names the requester through the
//! node's [`AccessPoint`] (401 when the credentials do not check out), maps the route to an
//! [`Operation`] with the single table [`ROUTES`] (a route missing from it is refused, not
//! waved through), asks the access point (403 when the role does not allow it) and leaves the
//! [`Principal`] in the request, with the [`View`] it is served: the de-identified view is
//! offered on DICOMweb searches and reads only, so a researcher gets 403 on every REST path
//! and never an identified answer anywhere. Handlers take an [`Audit`] argument and hand it the events of
//! what they served; the event is durable before the answer (or its body) starts, and an
//! answer whose record cannot be written becomes a 503.

use crate::problem::Problem;
use crate::{HttpState, REST_BASE};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dicom_dictionary_std::tags;
use pacsgrid_access::{AccessPoint, Channel, Denied, Operation, Principal, StudyTally, View};
use pacsgrid_archive::{Archive, AttrValues, StoredInstance};
use pacsgrid_audit::{Action, AuditEvent};
use pacsgrid_dicom::{Level, Query, QueryModel};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Every protected route, as the router names it (base path included), with the operation
/// it needs. `HEAD` is checked as `GET`. Searches and listings are queries; anything that
/// hands out one resource's data (instances, renderings, metadata, a REST resource) is a
/// retrieve. The change feed lists what was stored and deleted (UIDs of studies), so it is a
/// query; the quarantine is an administrator's work list.
pub(crate) static ROUTES: &[(&str, &str, Operation)] = &[
    // QIDO-RS
    ("GET", "/dicom-web/studies", Operation::Query),
    ("GET", "/dicom-web/series", Operation::Query),
    ("GET", "/dicom-web/instances", Operation::Query),
    ("GET", "/dicom-web/studies/{study}/series", Operation::Query),
    (
        "GET",
        "/dicom-web/studies/{study}/instances",
        Operation::Query,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances",
        Operation::Query,
    ),
    // WADO-URI: one object, as DICOM or rendered
    ("GET", "/wado", Operation::Retrieve),
    // STOW-RS
    ("POST", "/dicom-web/studies", Operation::Store),
    ("POST", "/dicom-web/studies/{study}", Operation::Store),
    // WADO-RS
    ("GET", "/dicom-web/studies/{study}", Operation::Retrieve),
    (
        "GET",
        "/dicom-web/studies/{study}/metadata",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/metadata",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{*path}",
        Operation::Retrieve,
    ),
    // Rendered resources
    (
        "GET",
        "/dicom-web/studies/{study}/rendered",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/rendered",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/thumbnail",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/thumbnail",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/thumbnail",
        Operation::Retrieve,
    ),
    (
        "GET",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
        Operation::Retrieve,
    ),
    // REST
    ("GET", "/api/v1/status", Operation::ReadStatus),
    ("GET", "/api/v1/openapi.json", Operation::ReadStatus),
    ("GET", "/api/v1/patients", Operation::Query),
    ("GET", "/api/v1/studies", Operation::Query),
    ("GET", "/api/v1/changes", Operation::Query),
    (
        "GET",
        "/api/v1/patients/{issuer}/{patient_id}",
        Operation::Retrieve,
    ),
    ("GET", "/api/v1/studies/{study_uid}", Operation::Retrieve),
    ("GET", "/api/v1/series/{series_uid}", Operation::Retrieve),
    (
        "GET",
        "/api/v1/instances/{sop_instance_uid}",
        Operation::Retrieve,
    ),
    (
        "DELETE",
        "/api/v1/patients/{issuer}/{patient_id}",
        Operation::Delete,
    ),
    ("DELETE", "/api/v1/studies/{study_uid}", Operation::Delete),
    ("DELETE", "/api/v1/series/{series_uid}", Operation::Delete),
    (
        "DELETE",
        "/api/v1/instances/{sop_instance_uid}",
        Operation::Delete,
    ),
    ("GET", "/api/v1/quarantine", Operation::Maintain),
    ("GET", "/api/v1/grid", Operation::ReadStatus),
    ("POST", "/api/v1/grid/scrub", Operation::Maintain),
    ("POST", "/api/v1/prefetch", Operation::Prefetch),
    ("GET", "/api/v1/audit", Operation::ReadAudit),
];

/// The operation `method` on `route` needs, if the route is in [`ROUTES`].
pub(crate) fn operation(method: &Method, route: &str) -> Option<&'static Operation> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, op)| op)
}

/// The URI as the client sent it (a nested router sees it without its base path).
fn original_uri<'a>(
    ext: &'a axum::http::Extensions,
    uri: &'a axum::http::Uri,
) -> &'a axum::http::Uri {
    ext.get::<OriginalUri>().map(|o| &o.0).unwrap_or(uri)
}

/// What the audit record of a de-identified answer says of it.
const DEIDENTIFIED_NOTE: &str =
    "served de-identified (PS3.15 E.1 Basic Profile, Retain UIDs, Retain Longitudinal Modified Dates)";

/// The principal of a request that passed [`guard`], and the view it is served.
#[derive(Debug, Clone)]
struct Requester(Arc<Principal>, View);

/// Whether a route serves a de-identified view for `op`: DICOMweb searches and reads do
/// (QIDO-RS, WADO-RS, rendered), REST does not (its answers are built for clinical use and
/// carry names, so researchers are refused there rather than half-cleaned).
fn offers_deidentified(channel: Channel, op: &Operation) -> bool {
    channel == Channel::DicomWeb && matches!(op, Operation::Query | Operation::Retrieve)
}

/// The credentials of a request: `Authorization`, or an `X-API-Key` header as a bearer
/// token for programs that cannot set `Authorization`.
fn credentials(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        // Not visible ASCII: not a credential this node can read.
        return Some(v.to_str().unwrap_or("").to_string());
    }
    headers
        .get("x-api-key")
        .map(|v| format!("Bearer {}", v.to_str().unwrap_or("")))
}

/// IPv4 peers show up as IPv4-mapped IPv6 addresses on a dual-stack socket.
fn peer_ip(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| match c.0.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        })
        .map(|ip| ip.to_string())
}

/// The refusal answer: 401 with a Bearer challenge, or 403.
fn refusal(denied: &Denied, had_credentials: bool) -> Response {
    match denied {
        Denied::Unauthenticated(_) => {
            let mut rsp =
                Problem::new(StatusCode::UNAUTHORIZED, denied.to_string()).into_response();
            // RFC 6750 3.1: no error code when no credentials were sent.
            let challenge = if had_credentials {
                "Bearer realm=\"pacsgrid\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"pacsgrid\""
            };
            rsp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            rsp
        }
        _ => Problem::new(StatusCode::FORBIDDEN, denied.to_string()).into_response(),
    }
}

/// The access check in front of every DICOMweb and REST route (installed as a route layer,
/// so unknown paths still answer 404 and `/healthz` and `/metrics` stay open).
pub(crate) async fn guard(
    State(state): State<HttpState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let Some(op) = operation(req.method(), &route) else {
        // Only methods listed in the table ever reach a handler: a route known under other
        // methods answers 405 here, anything else is refused as unruled.
        let (status, why) = if ROUTES.iter().any(|(_, r, _)| *r == route) {
            (StatusCode::METHOD_NOT_ALLOWED, "is not allowed on")
        } else {
            (StatusCode::FORBIDDEN, "is covered by no access rule:")
        };
        let path = original_uri(req.extensions(), req.uri()).path().to_string();
        return Problem::new(status, format!("{} {why} {path}", req.method())).into_response();
    };
    let channel = if route.starts_with(REST_BASE) {
        Channel::Rest
    } else {
        Channel::DicomWeb
    };
    let creds = credentials(req.headers());
    let who = match state
        .access
        .authenticate_http(creds.as_deref(), peer_ip(&req), channel)
        .await
    {
        Ok(p) => p,
        Err(denied) => return refusal(&denied, creds.is_some()),
    };
    let view = match state
        .access
        .authorize_view(&who, op, offers_deidentified(channel, op))
        .await
    {
        Ok(v) => v,
        Err(denied) => return refusal(&denied, true),
    };
    req.extensions_mut().insert(Requester(Arc::new(who), view));
    next.run(req).await
}

/// Who asked, and where the record of what they were served goes. Handlers take it as an
/// argument and call [`Audit::record`] before their answer starts.
pub(crate) struct Audit {
    access: Arc<AccessPoint>,
    who: Arc<Principal>,
    view: View,
    path: String,
    query: String,
}

impl FromRequestParts<HttpState> for Audit {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Audit, Problem> {
        let (who, view) = parts
            .extensions
            .get::<Requester>()
            .map(|r| (Arc::clone(&r.0), r.1))
            .ok_or_else(|| {
                Problem::internal("a request reached a handler without an access check")
            })?;
        let uri = original_uri(&parts.extensions, &parts.uri);
        Ok(Audit {
            access: Arc::clone(&state.access),
            who,
            view,
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
        })
    }
}

impl Audit {
    /// The requester.
    pub(crate) fn who(&self) -> &Principal {
        &self.who
    }

    /// The view the requester is served: handlers that answer with patient data
    /// de-identify it when this says so.
    pub(crate) fn view(&self) -> View {
        self.view
    }

    /// The node's access point.
    pub(crate) fn access(&self) -> &AccessPoint {
        &self.access
    }

    /// The request's query string, as received.
    pub(crate) fn query_string(&self) -> &str {
        &self.query
    }

    /// A search of this request: the service is the URL path, the query its query string.
    pub(crate) fn query(&self) -> AuditEvent {
        self.marked(AuditEvent::query(
            self.access.source(),
            self.who.participant(),
            &self.path,
            self.query.as_bytes(),
        ))
    }

    /// Says in the record (EventOutcomeDescription) that the answer was de-identified; the
    /// record still names the real patient and studies, since the trail is for whoever
    /// audits the site, not for the researcher.
    fn marked(&self, mut ev: AuditEvent) -> AuditEvent {
        if self.view == View::DeIdentified {
            ev.outcome_description = Some(DEIDENTIFIED_NOTE.to_string());
        }
        ev
    }

    /// A request of this URL path with `query` as its body (a POST that asks for something).
    pub(crate) fn query_of(&self, query: &[u8]) -> AuditEvent {
        AuditEvent::query(
            self.access.source(),
            self.who.participant(),
            &self.path,
            query,
        )
    }

    /// Instances sent to the requester (WADO-RS, rendered images, bulk data).
    pub(crate) fn transferred(&self) -> AuditEvent {
        self.marked(AuditEvent::instances_transferred(
            self.access.source(),
            self.who.participant(),
            None,
        ))
    }

    /// Data read in place (metadata, a REST resource), or removed (`Action::Delete`).
    pub(crate) fn accessed(&self, action: Action) -> AuditEvent {
        self.marked(AuditEvent::instances_accessed(
            self.access.source(),
            self.who.participant(),
            action,
        ))
    }

    /// Instances stored by the requester.
    pub(crate) fn stored(&self) -> AuditEvent {
        AuditEvent::instances_stored(self.access.source(), self.who.participant())
    }

    /// Studies deleted by the requester.
    pub(crate) fn study_deleted(&self) -> AuditEvent {
        AuditEvent::study_deleted(self.access.source(), self.who.participant())
    }

    /// Writes `events` durably; 503 when the trail cannot take them, since an access that
    /// cannot be audited must not be served.
    pub(crate) async fn record(&self, events: Vec<AuditEvent>) -> Result<(), Problem> {
        if events.is_empty() {
            return Ok(());
        }
        self.access.record_all(events).await.map_err(|e| {
            tracing::error!(error = %e, "refusing an HTTP answer that cannot be audited");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the audit trail cannot be written, so nothing is served: {e}"),
            )
        })
    }

    /// Writes one event per study of `tally`, each `template` with its study and patient.
    pub(crate) async fn record_studies(
        &self,
        template: AuditEvent,
        tally: StudyTally,
    ) -> Result<(), Problem> {
        self.record(tally.into_events(&template)).await
    }
}

/// Adds the study of an index row (study level or below) to `tally`, with its patient and
/// accession number.
pub(crate) fn tally_row(tally: &mut StudyTally, row: &AttrValues) {
    let Some(study) = row.get(&tags::STUDY_INSTANCE_UID) else {
        return;
    };
    tally.touch(
        study,
        row.get(&tags::PATIENT_ID).map(String::as_str),
        row.get(&tags::ISSUER_OF_PATIENT_ID).map(String::as_str),
    );
    if let Some(a) = row.get(&tags::ACCESSION_NUMBER) {
        tally.accession(study, a);
    }
}

/// The instances about to be served, counted by study with each study's patient from `rows`
/// (index rows of those studies, see [`study_rows`]).
pub(crate) fn tally_instances(found: &[StoredInstance], rows: &[AttrValues]) -> StudyTally {
    let mut tally = StudyTally::new();
    for row in rows {
        tally_row(&mut tally, row);
    }
    for inst in found {
        tally.add(&inst.study_uid, None, None, &inst.sop_class_uid);
    }
    tally
}

/// The index row of each study in `studies` (one study-level query per study, run
/// together), for the patient and accession number of audit records.
pub(crate) async fn study_rows(
    archive: &Archive,
    studies: &[String],
) -> Result<Vec<AttrValues>, Problem> {
    let lookups = studies.iter().map(|uid| async move {
        let q = Query::parse(
            QueryModel::StudyRoot,
            Level::Study,
            [(tags::STUDY_INSTANCE_UID, uid.as_str())],
        )?;
        Ok::<_, Problem>(archive.find(&q, 1, 0).await?)
    });
    let mut rows = Vec::with_capacity(studies.len());
    for r in futures::future::join_all(lookups).await {
        rows.extend(r?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_rule() {
        let mut seen = std::collections::BTreeSet::new();
        for (m, r, _) in ROUTES {
            assert!(seen.insert((*m, *r)), "{m} {r} listed twice");
            assert!(
                r.starts_with("/dicom-web/") || r.starts_with("/api/v1/") || *r == crate::WADO_URI,
                "{r}"
            );
        }
        for p in crate::rest::PATHS {
            let full = format!("{REST_BASE}{p}");
            assert!(
                ROUTES.iter().any(|(_, r, _)| *r == full),
                "REST path {p} has no access rule"
            );
        }
        assert_eq!(
            operation(&Method::HEAD, "/dicom-web/studies"),
            Some(&Operation::Query)
        );
        assert_eq!(operation(&Method::PUT, "/dicom-web/studies"), None);
    }

    #[test]
    fn only_dicomweb_reads_offer_the_de_identified_view() {
        for (m, r, op) in ROUTES {
            let channel = if r.starts_with(REST_BASE) {
                Channel::Rest
            } else {
                Channel::DicomWeb
            };
            // WADO-URI is DICOMweb's older URL for the same reads
            let dicomweb = r.starts_with("/dicom-web/") || *r == crate::WADO_URI;
            let expected = dicomweb && *m == "GET";
            assert_eq!(offers_deidentified(channel, op), expected, "{m} {r}");
        }
    }
}
