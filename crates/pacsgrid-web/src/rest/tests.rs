//! The REST router end to end in process: a real archive in a temporary directory, requests
//! through the whole axum stack.

use crate::{router, HttpOptions, HttpState};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pacsgrid_archive::{Archive, ArchiveConfig};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn write(dir: &Path, study: &str, series: &str, sop: &str, number: &str) -> std::path::PathBuf {
    let mut o = InMemDicomObject::new_empty();
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, CT));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, sop));
    o.put(s(tags::MODALITY, VR::CS, "CT"));
    o.put(s(tags::PATIENT_ID, VR::LO, "P/1"));
    o.put(s(tags::PATIENT_NAME, VR::PN, "DOE^JANE"));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, study));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, series));
    o.put(s(tags::INSTANCE_NUMBER, VR::IS, number));
    let obj = o
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(CT)
                .media_storage_sop_instance_uid(sop)
                .transfer_syntax("1.2.840.10008.1.2.1"),
        )
        .unwrap();
    let path = dir.join(format!("{sop}.dcm"));
    obj.write_to_file(&path).unwrap();
    path
}

struct Fixture {
    state: HttpState,
    _data: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let archive = Archive::open(ArchiveConfig {
        data_dir: data.path().to_path_buf(),
        site: "site-x".into(),
        default_issuer: "HOSP".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    for (study, series, sop, n) in [
        ("1.2.5.1", "1.2.5.1.1", "1.2.5.1.1.1", "2"),
        ("1.2.5.1", "1.2.5.1.1", "1.2.5.1.1.2", "1"),
        ("1.2.5.1", "1.2.5.1.2", "1.2.5.1.2.1", "1"),
        ("1.2.5.2", "1.2.5.2.1", "1.2.5.2.1.1", "1"),
    ] {
        let p = write(files.path(), study, series, sop, n);
        archive.store_file(&p, "TEST").await.unwrap();
    }
    let state = HttpState {
        archive: Arc::clone(&archive),
        extra_metrics: Vec::new(),
        access: Arc::new(pacsgrid_access::AccessPoint::open_door("test")),
        deid: Arc::new(pacsgrid_dicom::deid::Deidentifier::new(b"test secret")),
        options: Arc::new(HttpOptions::default()),
    };
    Fixture { state, _data: data }
}

async fn call(f: &Fixture, method: Method, uri: &str) -> (StatusCode, String, Value) {
    let rsp = router(f.state.clone())
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status();
    let ctype = rsp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(rsp.into_body(), 1 << 24)
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, ctype, json)
}

async fn get(f: &Fixture, uri: &str) -> (StatusCode, String, Value) {
    call(f, Method::GET, uri).await
}

fn assert_problem(r: &(StatusCode, String, Value), status: u16, detail_has: &str) {
    assert_eq!(r.0.as_u16(), status, "{:?}", r.2);
    assert_eq!(r.1, "application/problem+json");
    assert_eq!(r.2["status"], status);
    let detail = r.2["detail"].as_str().unwrap();
    assert!(
        detail.contains(detail_has),
        "{detail:?} lacks {detail_has:?}"
    );
}

#[tokio::test]
async fn resources_status_and_paging() {
    let f = fixture().await;
    let (s, ctype, st) = get(&f, "/api/v1/status").await;
    assert_eq!((s, ctype.as_str()), (StatusCode::OK, "application/json"));
    assert_eq!(st["site"], "site-x");
    assert_eq!(
        st["counts"],
        serde_json::json!({"patients": 1, "studies": 2, "series": 3, "instances": 4, "quarantined": 0})
    );
    assert_eq!(st["change_feed"]["head"], 4);

    let (_, _, page) = get(&f, "/api/v1/studies?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);
    let (_, _, page) = get(&f, "/api/v1/studies?limit=1&offset=1").await;
    assert_eq!(page["items"][0]["study_uid"], "1.2.5.2");
    assert_eq!(page["next_offset"], Value::Null);

    let (_, _, pats) = get(&f, "/api/v1/patients").await;
    let url = pats["items"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(url, "/api/v1/patients/HOSP/P%2F1");
    let (s, _, p) = get(&f, &url).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["number_of_instances"], 4);
    assert_eq!(p["studies"].as_array().unwrap().len(), 2);

    let (_, _, study) = get(&f, "/api/v1/studies/1.2.5.1").await;
    assert_eq!(study["number_of_series"], 2);
    assert_eq!(study["modalities"], serde_json::json!(["CT"]));
    assert_eq!(study["series"].as_array().unwrap().len(), 2);
    let (_, _, series) = get(&f, "/api/v1/series/1.2.5.1.1").await;
    let order: Vec<&str> = series["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sop_instance_uid"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["1.2.5.1.1.2", "1.2.5.1.1.1"], "by InstanceNumber");
    let (_, _, inst) = get(&f, "/api/v1/instances/1.2.5.1.1.1").await;
    assert_eq!(inst["origin_site"], "site-x");
    assert_eq!(inst["source"], "TEST");
    assert_eq!(inst["holders"], serde_json::json!(["site-x"]));
    assert_eq!(inst["number"], 2);
    assert_eq!(inst["attributes"]["PatientID"], "P/1");
    assert_eq!(inst["transfer_syntax"], "1.2.840.10008.1.2.1");
}

#[tokio::test]
async fn errors_are_problem_json() {
    let f = fixture().await;
    assert_problem(
        &get(&f, "/api/v1/studies/1.2.404").await,
        404,
        "no study 1.2.404",
    );
    assert_problem(
        &get(&f, "/api/v1/studies/1.02.3").await,
        400,
        "not a valid UID",
    );
    assert_problem(&get(&f, "/api/v1/series/x").await, 400, "not a valid UID");
    assert_problem(
        &get(&f, "/api/v1/instances/1.2.404").await,
        404,
        "no instance",
    );
    assert_problem(
        &get(&f, "/api/v1/patients/HOSP/nobody").await,
        404,
        "no patient",
    );
    assert_problem(
        &get(&f, "/api/v1/studies?limit=0").await,
        400,
        "limit must be",
    );
    assert_problem(
        &get(&f, "/api/v1/studies?limit=abc").await,
        400,
        "limit must be",
    );
    assert_problem(
        &get(&f, "/api/v1/studies?bogus=1").await,
        400,
        "unknown query parameter",
    );
    assert_problem(
        &get(&f, "/api/v1/studies?patient_id=P*").await,
        400,
        "exactly",
    );
    assert_problem(
        &get(&f, "/api/v1/changes?since=-1").await,
        400,
        "since must be",
    );
    assert_problem(
        &get(&f, "/api/v1/nothing").await,
        404,
        "no REST resource at /api/v1/nothing",
    );
    assert_problem(
        &call(&f, Method::POST, "/api/v1/studies").await,
        405,
        "POST is not allowed on /api/v1/studies",
    );
}

#[tokio::test]
async fn delete_writes_tombstones_and_second_delete_is_404() {
    let f = fixture().await;
    let (s, _, d) = call(&f, Method::DELETE, "/api/v1/studies/1.2.5.1").await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        (
            &d["patients"],
            &d["studies"],
            &d["series"],
            &d["instances"],
            &d["blobs_removed"]
        ),
        (&0.into(), &1.into(), &2.into(), &3.into(), &3.into())
    );
    assert_eq!(d["tombstones"]["count"], 3);
    assert_eq!(d["tombstones"]["first_seq"], 5);
    assert_eq!(d["tombstones"]["last_seq"], 7);
    assert_problem(
        &call(&f, Method::DELETE, "/api/v1/studies/1.2.5.1").await,
        404,
        "no study 1.2.5.1",
    );
    assert_problem(&get(&f, "/api/v1/studies/1.2.5.1").await, 404, "no study");
    let (_, _, feed) = get(&f, "/api/v1/changes?since=4&limit=2").await;
    assert_eq!(feed["items"].as_array().unwrap().len(), 2);
    assert_eq!(feed["items"][0]["kind"], "deleted");
    assert_eq!(
        (&feed["next_since"], &feed["more"]),
        (&6.into(), &true.into())
    );
    let (_, _, feed) = get(&f, "/api/v1/changes?since=6").await;
    assert_eq!(
        (&feed["next_since"], &feed["more"]),
        (&7.into(), &false.into())
    );
    // The last instance of the patient takes the patient with it.
    let (_, _, d) = call(&f, Method::DELETE, "/api/v1/patients/HOSP/P%2F1").await;
    assert_eq!((&d["patients"], &d["instances"]), (&1.into(), &1.into()));
    let (_, _, st) = get(&f, "/api/v1/status").await;
    assert_eq!(st["counts"]["instances"], 0);
    assert_eq!(st["storage"]["stored_bytes"], 0);
}
