//! A `multipart/related` response body written part by part from a producer task, so a
//! study streams out of the blob store one chunk at a time (bounded memory: a few chunks in
//! flight, whatever the study's size).

use axum::body::Body;
use bytes::Bytes;
use std::hash::{BuildHasher, Hasher};
use tokio::sync::mpsc;

/// Chunks queued between the producer and the socket; with chunks of at most 1 MiB a
/// response holds at most about 4 MiB.
const QUEUE: usize = 4;

/// The client went away; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client closed the connection")]
pub(crate) struct Closed;

/// A fresh boundary: random enough that it never occurs inside DICOM or pixel bytes.
pub(crate) fn new_boundary() -> String {
    let mut s = String::from("pacsgrid-");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5741_444f);
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

/// The response's Content-Type for parts of `part_type`.
pub(crate) fn content_type(part_type: &str, boundary: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// The delimiter and headers that open part number `index` (counting from 0).
fn part_head(boundary: &str, index: usize, content_type: &str) -> String {
    let lead = if index == 0 { "" } else { "\r\n" };
    format!("{lead}--{boundary}\r\nContent-Type: {content_type}\r\n\r\n")
}

/// The closing delimiter.
fn tail(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// The exact length of a whole body whose parts have these Content-Types and content sizes,
/// so that a response of stored objects can announce its Content-Length before the first
/// byte: HTTP/1.1 then sends the bytes as they are instead of in chunked transfer coding.
pub(crate) fn body_len<'a>(boundary: &str, parts: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let mut n = tail(boundary).len() as u64;
    for (i, (content_type, size)) in parts.into_iter().enumerate() {
        n += part_head(boundary, i, content_type).len() as u64 + size;
    }
    n
}

/// The writing end of a multipart body.
pub(crate) struct PartWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// `None` for a bare body: one part, no delimiters (WADO-URI's single object).
    boundary: Option<String>,
    parts: usize,
    /// Payload bytes sent so far (part contents only), for the retrieve log line.
    pub bytes: u64,
}

impl PartWriter {
    /// Starts a new part with this Content-Type.
    pub async fn begin_part(&mut self, content_type: &str) -> Result<(), Closed> {
        let Some(boundary) = &self.boundary else {
            return Ok(());
        };
        let head = part_head(boundary, self.parts, content_type);
        self.parts += 1;
        self.raw(Bytes::from(head)).await
    }

    /// Sends part content.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Closed> {
        self.bytes += data.len() as u64;
        self.raw(data).await
    }

    async fn raw(&mut self, data: Bytes) -> Result<(), Closed> {
        if data.is_empty() {
            return Ok(());
        }
        self.tx.send(Ok(data)).await.map_err(|_| Closed)
    }

    /// Writes the closing delimiter.
    pub async fn finish(mut self) -> Result<(), Closed> {
        let Some(boundary) = &self.boundary else {
            return Ok(());
        };
        let tail = tail(boundary);
        self.raw(Bytes::from(tail)).await
    }

    /// Aborts the response: headers are gone already, so the only honest signal left is to
    /// cut the body short (the client sees a truncated transfer, never a complete-looking one).
    pub async fn fail(self, why: String) {
        let _ = self.tx.send(Err(std::io::Error::other(why))).await;
    }
}

/// A multipart body (`Some` boundary) or a bare one-part body (`None`), fed by the returned
/// writer.
pub(crate) fn channel(boundary: Option<&str>) -> (PartWriter, Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        PartWriter {
            tx,
            boundary: boundary.map(str::to_string),
            parts: 0,
            bytes: 0,
        },
        Body::from_stream(stream),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_delimited_parts() {
        let b = new_boundary();
        assert!(b.len() > 30);
        assert_ne!(b, new_boundary());
        let (mut w, body) = channel(Some(&b));
        let task = tokio::spawn(async move {
            w.begin_part("application/dicom").await.unwrap();
            w.send(Bytes::from_static(b"one")).await.unwrap();
            w.begin_part("application/dicom").await.unwrap();
            w.send(Bytes::from_static(b"two")).await.unwrap();
            assert_eq!(w.bytes, 6);
            w.finish().await.unwrap();
        });
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        task.await.unwrap();
        let want = format!(
            "--{b}\r\nContent-Type: application/dicom\r\n\r\none\r\n--{b}\r\nContent-Type: application/dicom\r\n\r\ntwo\r\n--{b}--\r\n"
        );
        assert_eq!(String::from_utf8(got.to_vec()).unwrap(), want);
        let parts = [("application/dicom", 3), ("application/dicom", 3)];
        assert_eq!(body_len(&b, parts), want.len() as u64);
        assert_eq!(body_len(&b, []), tail(&b).len() as u64);
    }
}
