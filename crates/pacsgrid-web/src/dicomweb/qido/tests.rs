//! QIDO-RS through the router against a real archive in a temporary folder.

use crate::{router, HttpOptions, HttpState};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use pacsgrid_archive::{Archive, ArchiveConfig};
use std::sync::Arc;
use tower::ServiceExt;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";

/// A small Part 10 object of study `st`, series `se`, instance `n`.
pub(crate) fn part10(pid: &str, name: &str, st: u32, se: u32, n: u32) -> Vec<u8> {
    let sop = format!("1.2.826.0.1.3680043.8.498.9.{st}.{se}.{n}");
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    put(tags::SOP_CLASS_UID, VR::UI, MR);
    put(tags::SOP_INSTANCE_UID, VR::UI, &sop);
    put(tags::PATIENT_ID, VR::LO, pid);
    put(tags::PATIENT_NAME, VR::PN, name);
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &format!("1.2.826.0.1.3680043.8.498.9.{st}"),
    );
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &format!("1.2.826.0.1.3680043.8.498.9.{st}.{se}"),
    );
    put(tags::MODALITY, VR::CS, "MR");
    put(tags::STUDY_DATE, VR::DA, "20240102");
    put(tags::INSTANCE_NUMBER, VR::IS, &n.to_string());
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(MR)
                .media_storage_sop_instance_uid(sop.as_str())
                .transfer_syntax(EXPLICIT),
        )
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

/// An archive holding two patients: DOE^JOHN (study 1: 2 series of 2) and ROE^JANE
/// (study 2: 1 series of 1).
pub(crate) async fn loaded(dir: &std::path::Path) -> HttpState {
    let archive = Archive::open(ArchiveConfig {
        data_dir: dir.to_path_buf(),
        site: "test".into(),
        default_issuer: "ISS".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await
    .unwrap();
    let objects = [
        part10("P1", "DOE^JOHN", 1, 1, 1),
        part10("P1", "DOE^JOHN", 1, 1, 2),
        part10("P1", "DOE^JOHN", 1, 2, 1),
        part10("P1", "DOE^JOHN", 1, 2, 2),
        part10("P2", "ROE^JANE", 2, 1, 1),
    ];
    for bytes in objects {
        let mut incoming = archive.begin_file("test", None).await.unwrap();
        incoming.write(&bytes).await.unwrap();
        incoming.finish().await.unwrap();
    }
    HttpState {
        archive,
        extra_metrics: Vec::new(),
        access: Arc::new(pacsgrid_access::AccessPoint::open_door("test")),
        deid: Arc::new(pacsgrid_dicom::deid::Deidentifier::new(b"test secret")),
        options: Arc::new(HttpOptions::default()),
    }
}

async fn get(
    state: &HttpState,
    uri: &str,
    accept: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri).header(header::HOST, "node:8042");
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let rsp = router(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let body = axum::body::to_bytes(rsp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn studies_with_counts_urls_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let state = loaded(dir.path()).await;
    let (status, headers, body) = get(&state, "/dicom-web/studies", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/dicom+json");
    let answers = json(&body);
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["00201206"]["Value"][0], 2);
    assert_eq!(answers[0]["00201208"]["Value"][0], 4);
    assert_eq!(
        answers[0]["00081190"]["Value"][0],
        "http://node:8042/dicom-web/studies/1.2.826.0.1.3680043.8.498.9.1"
    );
    assert_eq!(answers[0]["00100021"]["Value"][0], "ISS");

    let (status, headers, body) = get(&state, "/dicom-web/studies?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    let warning = headers[header::WARNING].to_str().unwrap();
    assert!(warning.starts_with("299 node:8042 \""), "{warning}");
    let (_, headers, body) = get(&state, "/dicom-web/studies?limit=1&offset=1", None).await;
    assert_eq!(json(&body)[0]["00100020"]["Value"][0], "P2");
    assert!(headers.get(header::WARNING).is_none());
    let (status, _, body) = get(&state, "/dicom-web/studies?offset=2", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
}

#[tokio::test]
async fn scoped_instances_and_fuzzy_names() {
    let dir = tempfile::tempdir().unwrap();
    let state = loaded(dir.path()).await;
    let uri = "/dicom-web/studies/1.2.826.0.1.3680043.8.498.9.1/series/1.2.826.0.1.3680043.8.498.9.1.2/instances";
    let (status, _, body) = get(&state, uri, Some("application/json")).await;
    assert_eq!(status, StatusCode::OK);
    let answers = json(&body);
    let sops: Vec<&str> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["00080018"]["Value"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        sops,
        [
            "1.2.826.0.1.3680043.8.498.9.1.2.1",
            "1.2.826.0.1.3680043.8.498.9.1.2.2"
        ]
    );
    let (status, _, _) = get(&state, "/dicom-web/instances?PatientName=jo", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, headers, body) = get(
        &state,
        "/dicom-web/instances?PatientName=jo&fuzzymatching=true&limit=3&offset=1",
        None,
    )
    .await;
    let answers = json(&body);
    assert_eq!(answers.as_array().unwrap().len(), 3);
    assert!(answers
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["00100020"]["Value"][0] == "P1"));
    assert!(headers.get(header::WARNING).is_none());
}

#[tokio::test]
async fn refusals_are_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = loaded(dir.path()).await;
    for (uri, accept, status, needle) in [
        ("/dicom-web/studies?bogus=1", None, 400, "bogus"),
        ("/dicom-web/series?limit=-2", None, 400, "limit"),
        ("/dicom-web/studies?00080020=x", None, 400, "00080020"),
        ("/dicom-web/studies/1.2.x/series", None, 400, "1.2.x"),
        (
            "/dicom-web/studies",
            Some("application/xml"),
            406,
            "application/dicom+json",
        ),
    ] {
        let (got, headers, body) = get(&state, uri, accept).await;
        assert_eq!(got.as_u16(), status, "{uri}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let detail = json(&body)["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(needle), "{uri}: {detail}");
    }
}
