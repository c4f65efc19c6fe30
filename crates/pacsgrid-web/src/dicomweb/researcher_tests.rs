//! The researcher's de-identified view through the router: an API key with the researcher
//! role gets pseudonymised searches and objects from DICOMweb, and 403 from REST.

use crate::dicomweb::qido::tests::loaded;
use crate::router;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use dicom_dictionary_std::tags;
use pacsgrid_access::{AccessConfig, AccessPoint};
use pacsgrid_audit::AuditSource;
use std::sync::Arc;
use tower::ServiceExt;

const STUDY: &str = "1.2.826.0.1.3680043.8.498.9.1";

async fn get(
    state: &crate::HttpState,
    uri: &str,
    key: &str,
    accept: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::get(uri)
        .header(header::HOST, "node:8042")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .unwrap();
    let rsp = router(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (rsp.status(), rsp.headers().clone());
    let body = axum::body::to_bytes(rsp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

/// The archive of the QIDO tests (DOE^JOHN, ROE^JANE) behind keys for a researcher and a
/// clinician.
async fn state(dir: &std::path::Path) -> (crate::HttpState, String, String) {
    let mut state = loaded(dir).await;
    let researcher = pacsgrid_access::new_api_key().unwrap();
    let clinician = pacsgrid_access::new_api_key().unwrap();
    let cfg: AccessConfig = serde_json::from_value(serde_json::json!({"http": {"api_key": [
        {"name": "trial", "sha256": researcher.sha256, "roles": ["researcher"]},
        {"name": "ward", "sha256": clinician.sha256, "roles": ["clinician"]},
    ]}}))
    .unwrap();
    let source = AuditSource {
        site: "test".into(),
        source_id: "test".into(),
        ae_title: None,
        host: None,
    };
    state.access = Arc::new(AccessPoint::new(&cfg, source, None).unwrap());
    (state, researcher.key, clinician.key)
}

#[tokio::test]
async fn searches_and_objects_are_de_identified_and_rest_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (state, researcher, clinician) = state(dir.path()).await;
    let key = state.deid.patient("ISS", "P1");

    let (status, _, body) = get(&state, "/dicom-web/studies", &researcher, "*/*").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains("DOE") && !text.contains("\"P1\"") && !text.contains("20240102"));
    assert!(text.contains(&key.pseudonym), "{text}");

    let (status, _, body) = get(
        &state,
        "/dicom-web/studies?PatientName=DOE*",
        &researcher,
        "*/*",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("PatientName"));

    let accept = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
    let uri = format!("/dicom-web/studies/{STUDY}");
    let (status, headers, body) = get(&state, &uri, &researcher, accept).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_LENGTH).is_none());
    let (_, _, full) = get(&state, &uri, &clinician, accept).await;
    // the parts of a multipart body: what follows each part's header block, up to the next
    // delimiter (Part 10 objects start with their preamble)
    let parts = |body: &[u8]| -> Vec<dicom_object::DefaultDicomObject> {
        split(body, b"\r\n--")
            .into_iter()
            .filter_map(|chunk| {
                let at = find(chunk, b"\r\n\r\n")? + 4;
                let part = &chunk[at..];
                (part.get(128..132) == Some(b"DICM")).then(|| {
                    dicom_object::OpenFileOptions::new()
                        .from_reader(part)
                        .unwrap()
                })
            })
            .collect()
    };
    let (served, stored) = (parts(&body), parts(&full));
    assert_eq!(served.len(), 4);
    assert_eq!(served.len(), stored.len());
    for (d, f) in served.iter().zip(&stored) {
        let text = |o: &dicom_object::DefaultDicomObject, t| {
            o.get(t)
                .map(|e| e.to_str().unwrap().trim().to_string())
                .unwrap_or_default()
        };
        assert_eq!(text(d, tags::PATIENT_NAME), key.pseudonym);
        assert_eq!(text(f, tags::PATIENT_NAME), "DOE^JOHN");
        assert_eq!(text(d, tags::PATIENT_IDENTITY_REMOVED), "YES");
        assert_eq!(
            text(d, tags::SOP_INSTANCE_UID),
            text(f, tags::SOP_INSTANCE_UID)
        );
        assert_ne!(text(d, tags::STUDY_DATE), "20240102");
    }

    for uri in [
        "/api/v1/patients",
        "/api/v1/studies",
        "/api/v1/changes",
        &format!("/api/v1/studies/{STUDY}"),
    ] {
        let (status, _, _) = get(&state, uri, &researcher, "*/*").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        let (status, _, _) = get(&state, uri, &clinician, "*/*").await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(at) = find(hay, sep) {
        out.push(&hay[..at]);
        hay = &hay[at + sep.len()..];
    }
    out.push(hay);
    out
}
