//! Rendered resources through the router, on a real archive in a temp dir.

use super::fixtures::{self, Image, SERIES, STUDY};
use crate::HttpState;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use dicom_pixeldata::image::{self, DynamicImage, GenericImageView};
use serde_json::Value;
use tower::ServiceExt;

async fn put(state: &HttpState, img: &Image) {
    let mut inc = state.archive.begin_file("test", None).await.unwrap();
    inc.write(&img.part10()).await.unwrap();
    inc.finish().await.unwrap();
}

async fn get(state: &HttpState, path: &str, accept: Option<&str>) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::get(path);
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let rsp = crate::router(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = rsp.status();
    let ct = rsp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(rsp.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, ct, body.to_vec())
}

fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("an image")
}

fn inst_url(sop: &str) -> String {
    format!("/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{sop}")
}

async fn setup() -> (tempfile::TempDir, HttpState) {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures::state(dir.path(), 1 << 30).await;
    let mut big = Image::new("1.2.826.0.1.3680043.2.1.1.20");
    big.rows = 200;
    big.cols = 300;
    big.window = Some((2000.0, 4000.0));
    put(&state, &big).await;
    let mut multi = Image::new("1.2.826.0.1.3680043.2.1.1.21");
    multi.frames = 3;
    put(&state, &multi).await;
    (dir, state)
}

#[tokio::test]
async fn renders_jpeg_by_default_and_png_on_request() {
    let (_d, state) = setup().await;
    let url = format!("{}/rendered", inst_url("1.2.826.0.1.3680043.2.1.1.20"));
    let (status, ct, body) = get(&state, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "image/jpeg");
    assert_eq!(decode(&body).dimensions(), (300, 200));
    let (status, ct, body) = get(&state, &url, Some("image/png")).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/png"));
    let default = decode(&body).to_luma8();
    let (_, _, body) = get(&state, &format!("{url}?window=500,200"), Some("image/png")).await;
    let narrow = decode(&body).to_luma8();
    assert_eq!(narrow.dimensions(), (300, 200));
    assert_ne!(default, narrow, "another window must change the pixels");
    let (_, _, body) = get(&state, &format!("{url}?viewport=60,60"), Some("image/png")).await;
    assert_eq!(decode(&body).dimensions(), (60, 40));
}

#[tokio::test]
async fn thumbnails_fit_128() {
    let (_d, state) = setup().await;
    let url = format!("{}/thumbnail", inst_url("1.2.826.0.1.3680043.2.1.1.20"));
    let (status, _, body) = get(&state, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decode(&body).dimensions(), (128, 85));
    let (_, _, body) = get(
        &state,
        &format!("/dicom-web/studies/{STUDY}/thumbnail"),
        None,
    )
    .await;
    let d = decode(&body).dimensions();
    assert!(d.0 <= 128 && d.1 <= 128, "{d:?}");
    let (status, _, _) = get(
        &state,
        &format!("/dicom-web/studies/{STUDY}/series/{SERIES}/rendered"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn frames_render_one_at_a_time() {
    let (_d, state) = setup().await;
    let base = inst_url("1.2.826.0.1.3680043.2.1.1.21");
    let (s1, _, f1) = get(
        &state,
        &format!("{base}/frames/1/rendered?window=100,50"),
        Some("image/png"),
    )
    .await;
    let (s2, _, f2) = get(
        &state,
        &format!("{base}/frames/2/rendered?window=100,50"),
        Some("image/png"),
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_ne!(decode(&f1).to_luma8(), decode(&f2).to_luma8());
    let (s, _, _) = get(&state, &format!("{base}/frames/4/rendered"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = get(&state, &format!("{base}/frames/1,2/rendered"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = get(&state, &format!("{base}/frames/0/rendered"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn errors_are_problems() {
    let (_d, state) = setup().await;
    let url = format!("{}/rendered", inst_url("1.2.826.0.1.3680043.2.1.1.20"));
    let (s, ct, body) = get(&state, &format!("{url}?window=abc"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(ct, crate::problem::PROBLEM_JSON);
    let j: Value = serde_json::from_slice(&body).unwrap();
    assert!(j["detail"].as_str().unwrap().starts_with("window"), "{j}");
    let (s, _, _) = get(&state, &url, Some("image/gif")).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
    let (s, _, _) = get(&state, &format!("{}/rendered", inst_url("1.2.3.4")), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = get(&state, &format!("{}/rendered", inst_url("1.2.x")), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let other_series = format!(
        "/dicom-web/studies/{STUDY}/series/1.2.3/instances/1.2.826.0.1.3680043.2.1.1.20/rendered"
    );
    let (s, _, _) = get(&state, &other_series, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = get(&state, "/dicom-web/studies/1.2.3/rendered", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
