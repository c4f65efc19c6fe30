//! The grid port's handlers (see `protocol` for the routes): what a site serves its peers.
//! Only peers with a certificate of the grid CA naming a configured site get here.

use crate::protocol::*;
use crate::service::{now_ms, Grid};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Routes of the grid port.
pub(crate) fn router(grid: Arc<Grid>) -> Router {
    Router::new()
        .route("/grid/v1/hello", get(hello))
        .route("/grid/v1/feed", get(feed))
        .route("/grid/v1/blobs/{hash}", get(blob))
        .route("/grid/v1/digests", get(digests))
        .route("/grid/v1/digests/{bucket}", get(bucket))
        .route("/grid/v1/records/{sop}", get(record))
        .with_state(grid)
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "grid request failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn hello(State(grid): State<Arc<Grid>>) -> Response {
    let (incarnation, head) = match (
        grid.archive.incarnation().await,
        grid.archive.feed_head().await,
    ) {
        (Ok(i), Ok(h)) => (i, h),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let cursors: BTreeMap<String, (String, i64)> = grid
        .peer_names()
        .iter()
        .filter_map(|n| grid.peer(n))
        .filter_map(|p| p.incarnation.map(|inc| (p.name, (inc, p.cursor))))
        .collect();
    Json(Hello {
        site: grid.site.clone(),
        incarnation,
        feed_head: head,
        cursors,
        preferred_backup: grid.cfg.preferred_backup.clone(),
        time_ms: now_ms(),
    })
    .into_response()
}

#[derive(serde::Deserialize)]
struct FeedParams {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    500
}

async fn feed(
    State(grid): State<Arc<Grid>>,
    Extension(peer): Extension<crate::transport::PeerSite>,
    Query(p): Query<FeedParams>,
) -> Response {
    let limit = p.limit.clamp(1, 2000);
    let result = async {
        let incarnation = grid.archive.incarnation().await?;
        let head = grid.archive.feed_head().await?;
        let entries = grid.archive.grid_feed(p.after, limit).await?;
        Ok::<_, pacsgrid_archive::ArchiveError>(FeedPage {
            incarnation,
            head,
            entries,
        })
    }
    .await;
    match result {
        Ok(page) => {
            grid.disclosures.feed_sent(&peer.0, &page.entries);
            Json(page).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn blob(
    State(grid): State<Arc<Grid>>,
    Path(hash): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if hash.len() != 64
        || !hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return problem(StatusCode::BAD_REQUEST, "not a content hash");
    }
    let from = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_resume_range)
        .unwrap_or(0);
    // No separate existence check: the size lookup says NotFound, one blocking hop fewer on
    // every copy and on-the-fly fetch a peer makes.
    match grid.archive.blob_chunks(&hash, from, 1 << 20).await {
        Err(pacsgrid_archive::ArchiveError::Blob(pacsgrid_archive::BlobError::NotFound(_))) => {
            problem(
                StatusCode::NOT_FOUND,
                format!("blob {hash} is not held here"),
            )
        }
        Ok((size, _)) if from > 0 && from >= size => {
            let mut resp = problem(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("blob {hash} has {size} bytes; asked from byte {from}"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp
        }
        Ok((size, chunks)) => {
            let mut resp = Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::ACCEPT_RANGES, "bytes")
                .header(header::CONTENT_LENGTH, size - from);
            resp = if from > 0 {
                resp.status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, content_range(from, size))
            } else {
                resp.status(StatusCode::OK)
            };
            resp.body(Body::from_stream(
                chunks.map(|r| r.map_err(std::io::Error::other)),
            ))
            .unwrap_or_else(internal)
        }
        Err(e) => internal(e),
    }
}

/// Every instance of the index by bucket, sorted by UID within a bucket.
pub(crate) async fn bucketed(
    grid: &Grid,
) -> Result<Vec<Vec<BucketItem>>, pacsgrid_archive::ArchiveError> {
    let mut buckets: Vec<Vec<BucketItem>> = vec![Vec::new(); BUCKETS];
    let mut pages = std::pin::pin!(grid.holding_pages(2000));
    while let Some(page) = futures::StreamExt::next(&mut pages).await {
        let page = page?;
        for h in page {
            buckets[bucket_of(&h.sop_instance_uid)].push(BucketItem {
                sop_instance_uid: h.sop_instance_uid,
                hash: h.hash,
            });
        }
    }
    for b in &mut buckets {
        b.sort_by(|x, y| x.sop_instance_uid.cmp(&y.sop_instance_uid));
    }
    Ok(buckets)
}

/// The digest of one bucket's sorted listing.
pub(crate) fn digest(items: &[BucketItem]) -> String {
    let mut h = blake3::Hasher::new();
    for i in items {
        h.update(i.sop_instance_uid.as_bytes());
        h.update(b" ");
        h.update(i.hash.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

async fn digests(State(grid): State<Arc<Grid>>) -> Response {
    match bucketed(&grid).await {
        Ok(b) => Json(Digests {
            buckets: b.iter().map(|i| digest(i)).collect(),
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn bucket(State(grid): State<Arc<Grid>>, Path(n): Path<usize>) -> Response {
    if n >= BUCKETS {
        return problem(StatusCode::NOT_FOUND, format!("buckets are 0..{BUCKETS}"));
    }
    match bucketed(&grid).await {
        Ok(mut b) => Json(BucketList {
            instances: std::mem::take(&mut b[n]),
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

async fn record(State(grid): State<Arc<Grid>>, Path(sop): Path<String>) -> Response {
    match grid.archive.grid_record(&sop).await {
        Ok(Some((record, holders))) => Json(RecordAnswer { record, holders }).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            format!("instance {sop} is not recorded"),
        ),
        Err(e) => internal(e),
    }
}
