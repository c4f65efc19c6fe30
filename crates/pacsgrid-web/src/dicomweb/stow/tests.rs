//! STOW-RS through the router, on a real archive in a temp dir.

use super::*;
use crate::dicomweb::rendered::fixtures::{self, Image, STUDY};
use axum::http::{Request as HttpRequest, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

const BOUNDARY: &str = "XyZ-boundary";

fn multipart(parts: &[(&[u8], Option<&str>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (bytes, ct) in parts {
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
        if let Some(ct) = ct {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--").as_bytes());
    body
}

fn dicom_parts(objs: &[&[u8]]) -> Vec<u8> {
    let parts: Vec<(&[u8], Option<&str>)> = objs
        .iter()
        .map(|b| (*b, Some("application/dicom")))
        .collect();
    multipart(&parts)
}

async fn post(
    state: &HttpState,
    path: &str,
    content_type: &str,
    body: Body,
) -> (StatusCode, HeaderMap, Value) {
    let req = HttpRequest::post(path)
        .header(header::HOST, "pacs.example:8042")
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap();
    let rsp = crate::router(state.clone()).oneshot(req).await.unwrap();
    let status = rsp.status();
    let headers = rsp.headers().clone();
    let bytes = axum::body::to_bytes(rsp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

fn related() -> String {
    format!("multipart/related; type=\"application/dicom\"; boundary=\"{BOUNDARY}\"")
}

fn items<'a>(j: &'a Value, tag: &str) -> Vec<&'a Value> {
    j[tag]["Value"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn uid_of(item: &Value) -> &str {
    item["00081155"]["Value"][0].as_str().unwrap_or("")
}

#[tokio::test]
async fn stores_parts_then_warns_on_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let a = Image::new("1.2.826.0.1.3680043.2.1.1.1").part10();
    let b = Image::new("1.2.826.0.1.3680043.2.1.1.2").part10();
    let (status, headers, j) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from(dicom_parts(&[&a, &b])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{j}");
    assert_eq!(headers[header::CONTENT_TYPE], DICOM_JSON);
    let refs = items(&j, "00081199");
    assert_eq!(
        refs.iter().map(|i| uid_of(i)).collect::<Vec<_>>(),
        ["1.2.826.0.1.3680043.2.1.1.1", "1.2.826.0.1.3680043.2.1.1.2"]
    );
    assert_eq!(refs[0]["00081150"]["Value"][0], fixtures::CT);
    assert_eq!(
        refs[0]["00081190"]["Value"][0],
        format!(
            "http://pacs.example:8042/dicom-web/studies/{STUDY}/series/{}/instances/1.2.826.0.1.3680043.2.1.1.1",
            fixtures::SERIES
        )
    );
    assert_eq!(
        j["00081190"]["Value"][0],
        format!("http://pacs.example:8042/dicom-web/studies/{STUDY}")
    );
    assert!(j.get("00081198").is_none());

    let (status, _, j) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from(dicom_parts(&[&a])),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{j}");
    assert_eq!(
        items(&j, "00081199")[0]["00081196"]["Value"][0],
        WARNING_DUPLICATE
    );
    assert_eq!(state.archive.stats().await.unwrap().instances, 2);
}

#[tokio::test]
async fn other_bytes_under_a_stored_uid_are_quarantined_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let mut img = Image::new("1.2.826.0.1.3680043.2.1.1.7");
    let first = img.part10();
    img.window = Some((100.0, 200.0));
    let second = img.part10();
    let (s1, _, _) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from(dicom_parts(&[&first])),
    )
    .await;
    assert_eq!(s1, StatusCode::OK);
    let (s2, _, j) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from(dicom_parts(&[&second])),
    )
    .await;
    assert_eq!(s2, StatusCode::ACCEPTED, "{j}");
    let item = items(&j, "00081199")[0];
    assert_eq!(item["00081196"]["Value"][0], WARNING_QUARANTINED);
    assert_eq!(state.archive.quarantined(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn broken_parts_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let good = Image::new("1.2.826.0.1.3680043.2.1.1.3").part10();
    let truncated_full = Image::new("1.2.826.0.1.3680043.2.1.1.4").part10();
    let truncated = &truncated_full[..truncated_full.len() - 100];
    let body = multipart(&[
        (truncated, Some("application/dicom")),
        (b"this is no DICOM at all", Some("application/dicom")),
        (&good, None),
        (b"{}", Some("application/json")),
    ]);
    let (status, _, j) = post(&state, "/dicom-web/studies", &related(), Body::from(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{j}");
    let failed = items(&j, "00081198");
    assert_eq!(failed.len(), 3, "{j}");
    assert_eq!(uid_of(failed[0]), "1.2.826.0.1.3680043.2.1.1.4");
    assert_eq!(
        failed[0]["00081197"]["Value"][0],
        status::ERROR_CANNOT_UNDERSTAND
    );
    assert_eq!(failed[1]["00081155"], serde_json::json!({"vr": "UI"}));
    assert_eq!(
        items(&j, "00081199")
            .iter()
            .map(|i| uid_of(i))
            .collect::<Vec<_>>(),
        ["1.2.826.0.1.3680043.2.1.1.3"]
    );
    assert_eq!(state.archive.stats().await.unwrap().instances, 1);
}

#[tokio::test]
async fn study_in_the_url_refuses_other_studies() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let mine = Image::new("1.2.826.0.1.3680043.2.1.1.5").part10();
    let mut other = Image::new("1.2.826.0.1.3680043.2.1.1.6");
    other.study = "1.2.826.0.1.3680043.2.9".into();
    let other = other.part10();
    let url = format!("/dicom-web/studies/{STUDY}");
    let (status, _, j) = post(
        &state,
        &url,
        &related(),
        Body::from(dicom_parts(&[&mine, &other])),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{j}");
    let failed = items(&j, "00081198");
    assert_eq!(uid_of(failed[0]), "1.2.826.0.1.3680043.2.1.1.6");
    assert_eq!(
        failed[0]["00081197"]["Value"][0],
        status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS
    );
    let (status, _, j) = post(&state, &url, &related(), Body::from(dicom_parts(&[&other]))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{j}");
    let (status, _, _) = post(
        &state,
        "/dicom-web/studies/1.2.x",
        &related(),
        Body::from(dicom_parts(&[&other])),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn single_application_dicom_body_is_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let one = Image::new("1.2.826.0.1.3680043.2.1.1.8").part10();
    let (status, _, j) = post(
        &state,
        "/dicom-web/studies",
        "application/dicom",
        Body::from(one),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{j}");
    assert_eq!(items(&j, "00081199").len(), 1);
}

#[tokio::test]
async fn media_types_and_framing_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let one = Image::new("1.2.826.0.1.3680043.2.1.1.9").part10();
    for ct in [
        "application/json",
        "multipart/related; type=\"application/dicom+json\"; boundary=x",
        "multipart/form-data; boundary=x",
        "nonsense",
    ] {
        let (status, headers, j) =
            post(&state, "/dicom-web/studies", ct, Body::from(one.clone())).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert_eq!(headers[header::CONTENT_TYPE], crate::problem::PROBLEM_JSON);
        assert!(
            j["detail"].as_str().unwrap().contains("application/dicom"),
            "{j}"
        );
    }
    let (status, _, _) = post(
        &state,
        "/dicom-web/studies",
        "multipart/related; type=\"application/dicom\"",
        Body::from(one.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, j) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from("no boundary here"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{j}");
    let (status, _, _) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from(format!("--{BOUNDARY}--")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 2000).await;
    let one = Image::new("1.2.826.0.1.3680043.2.1.1.10").part10();
    let body = dicom_parts(&[&one, &one]);
    assert!(body.len() > 2000);
    let req = HttpRequest::post("/dicom-web/studies")
        .header(header::CONTENT_TYPE, related())
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.clone()))
        .unwrap();
    let rsp = crate::router(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Without a Content-Length the limit is enforced while streaming.
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(300)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let (status, _, j) = post(
        &state,
        "/dicom-web/studies",
        &related(),
        Body::from_stream(futures::stream::iter(chunks)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{j}");
    assert!(j["detail"].as_str().unwrap().contains("2000"), "{j}");
}

#[test]
fn base_url_from_host_and_proxies() {
    let mut h = HeaderMap::new();
    assert_eq!(base_url(&h), "/dicom-web");
    h.insert(header::HOST, HeaderValue::from_static("node:8042"));
    assert_eq!(base_url(&h), "http://node:8042/dicom-web");
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    h.insert(
        "x-forwarded-host",
        HeaderValue::from_static("pacs.example.org"),
    );
    assert_eq!(base_url(&h), "https://pacs.example.org/dicom-web");
    h.insert("x-forwarded-host", HeaderValue::from_static("evil/\"host"));
    assert_eq!(base_url(&h), "https://node:8042/dicom-web");
}

#[test]
fn accept_must_allow_dicom_json() {
    let mut h = HeaderMap::new();
    assert!(check_accept(&h).is_ok());
    for ok in [
        "application/dicom+json",
        "*/*",
        "application/json",
        "text/html, application/*",
    ] {
        h.insert(header::ACCEPT, HeaderValue::from_static(ok));
        assert!(check_accept(&h).is_ok(), "{ok}");
    }
    for bad in [
        "application/dicom+xml",
        "application/dicom+json;q=0, application/xml",
    ] {
        h.insert(header::ACCEPT, HeaderValue::from_static(bad));
        assert_eq!(check_accept(&h).unwrap_err().status.as_u16(), 406, "{bad}");
    }
}
