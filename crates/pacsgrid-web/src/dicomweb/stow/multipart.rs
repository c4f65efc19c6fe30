//! A streaming reader of multipart bodies (RFC 2046 5.1) for `multipart/related`.
//!
//! multer was not used: it needs at least one header line per part (an empty header
//! section, which RFC 2046 allows, breaks it) and buffers a header section of any size.
//! Here part headers are bounded and part data is handed out as it arrives, holding back
//! only what could be the start of the next delimiter.

use super::limit::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::pin::Pin;

/// Largest header section of one part.
const MAX_HEADERS: usize = 16 * 1024;

/// Why a multipart body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MultipartError {
    /// The body stream failed (connection dropped, or the size budget was exceeded).
    #[error("reading the body failed: {0}")]
    Body(BoxError),
    /// The framing is not valid multipart.
    #[error("{0}")]
    Malformed(String),
}

/// The headers of one part that matter here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PartHeaders {
    /// Content-Type, as sent.
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first delimiter (the preamble).
    Preamble,
    /// Inside a part's data.
    InPart,
    /// Just past a delimiter: a part's headers or the closing `--` follow.
    AfterDelimiter,
    /// After the closing delimiter.
    Done,
}

/// Reads parts one after another from a body stream.
pub(crate) struct MultipartReader<S> {
    stream: Pin<Box<S>>,
    /// `\r\n--boundary`.
    delimiter: Vec<u8>,
    buf: BytesMut,
    eof: bool,
    stage: Stage,
}

impl<S> MultipartReader<S>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send,
{
    /// A reader for a body with this boundary.
    pub fn new(stream: S, boundary: &str) -> MultipartReader<S> {
        let mut buf = BytesMut::new();
        // The first delimiter may open the body without a preceding CRLF: pretend one.
        buf.extend_from_slice(b"\r\n");
        MultipartReader {
            stream: Box::pin(stream),
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            buf,
            eof: false,
            stage: Stage::Preamble,
        }
    }

    /// Reads more of the body into the buffer; false at its end.
    async fn fill(&mut self) -> Result<bool, MultipartError> {
        if self.eof {
            return Ok(false);
        }
        match self.stream.next().await {
            Some(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(e)) => Err(MultipartError::Body(e)),
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    fn find_delimiter(&self) -> Option<usize> {
        let d = &self.delimiter;
        self.buf.windows(d.len()).position(|w| w == d.as_slice())
    }

    /// Moves to the next part and returns its headers; None after the closing delimiter.
    /// Unread data of the current part is skipped.
    pub async fn next_part(&mut self) -> Result<Option<PartHeaders>, MultipartError> {
        loop {
            match self.stage {
                Stage::Done => return Ok(None),
                Stage::Preamble | Stage::InPart => while self.skip_data().await? {},
                Stage::AfterDelimiter => break,
            }
        }
        // `--` closes the body; otherwise optional padding, CRLF, headers.
        while self.buf.len() < 2 {
            if !self.fill().await? {
                return Err(MultipartError::Malformed(
                    "body ends right after a boundary".into(),
                ));
            }
        }
        if &self.buf[..2] == b"--" {
            self.stage = Stage::Done;
            return Ok(None);
        }
        let too_long =
            || MultipartError::Malformed(format!("part headers longer than {MAX_HEADERS} bytes"));
        let headers_end = loop {
            if let Some(end) = header_section_end(&self.buf) {
                if end > MAX_HEADERS {
                    return Err(too_long());
                }
                break end;
            }
            if self.buf.len() > MAX_HEADERS {
                return Err(too_long());
            }
            if !self.fill().await? {
                return Err(MultipartError::Malformed(
                    "body ends inside part headers".into(),
                ));
            }
        };
        let section = self.buf.split_to(headers_end);
        let headers = parse_headers(&section)?;
        self.stage = Stage::InPart;
        Ok(Some(headers))
    }

    /// Reads and drops part (or preamble) data; false once the delimiter was consumed.
    async fn skip_data(&mut self) -> Result<bool, MultipartError> {
        Ok(self.data().await?.is_some())
    }

    /// The next piece of the current part's data, None at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MultipartError> {
        if self.stage != Stage::InPart {
            return Ok(None);
        }
        self.data().await
    }

    async fn data(&mut self) -> Result<Option<Bytes>, MultipartError> {
        loop {
            if let Some(at) = self.find_delimiter() {
                if at > 0 {
                    return Ok(Some(self.buf.split_to(at).freeze()));
                }
                self.buf.advance(self.delimiter.len());
                self.stage = Stage::AfterDelimiter;
                return Ok(None);
            }
            // Everything but a possible delimiter prefix at the end is data.
            let keep = self.delimiter.len() - 1;
            if self.buf.len() > keep {
                let n = self.buf.len() - keep;
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            if !self.fill().await? {
                return Err(MultipartError::Malformed(match self.stage {
                    Stage::Preamble => "no boundary delimiter found in the body".into(),
                    _ => "body ends inside a part (no closing boundary)".into(),
                }));
            }
        }
    }
}

/// Where the header section after a delimiter ends (just past its blank line): transport
/// padding, CRLF, header lines, CRLF. None if not all of it is buffered yet.
fn header_section_end(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let mut pos = line_end + 2;
    loop {
        let rest = &buf[pos..];
        let next = rest.windows(2).position(|w| w == b"\r\n")?;
        pos += next + 2;
        if next == 0 {
            return Some(pos);
        }
    }
}

/// Parses a header section (padding line, header lines, blank line).
fn parse_headers(section: &[u8]) -> Result<PartHeaders, MultipartError> {
    let text = std::str::from_utf8(section)
        .map_err(|_| MultipartError::Malformed("part headers are not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let padding = lines.next().unwrap_or("");
    if !padding.bytes().all(|b| b == b' ' || b == b'\t') {
        return Err(MultipartError::Malformed(format!(
            "unexpected text {padding:?} after a boundary"
        )));
    }
    let mut headers = PartHeaders::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| {
            MultipartError::Malformed(format!("part header line {line:?} has no colon"))
        })?;
        if name.trim().eq_ignore_ascii_case("content-type") {
            headers.content_type = Some(value.trim().to_string());
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(
        body: &[u8],
        boundary: &str,
        chunk: usize,
    ) -> Result<Vec<(PartHeaders, Vec<u8>)>, MultipartError> {
        let chunks: Vec<Result<Bytes, BoxError>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut r = MultipartReader::new(futures::stream::iter(chunks), boundary);
        let mut out = Vec::new();
        while let Some(h) = r.next_part().await? {
            let mut data = Vec::new();
            while let Some(c) = r.chunk().await? {
                data.extend_from_slice(&c);
            }
            out.push((h, data));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn parts_with_and_without_headers_any_chunking() {
        let body = b"preamble\r\n--b0\r\nContent-Type: application/dicom\r\nX-Other: 1\r\n\r\nfirst\r\n--b\r\n--b0  \r\n\r\n\r\nsecond\r\n--b0--\r\nepilogue";
        for chunk in [1, 2, 3, 7, 1000] {
            let parts = read_all(body, "b0", chunk).await.unwrap();
            assert_eq!(parts.len(), 2, "chunk {chunk}");
            assert_eq!(
                parts[0].0.content_type.as_deref(),
                Some("application/dicom")
            );
            assert_eq!(parts[0].1, b"first\r\n--b");
            assert_eq!(parts[1].0, PartHeaders::default());
            assert_eq!(parts[1].1, b"\r\nsecond");
        }
    }

    #[tokio::test]
    async fn body_starting_with_the_delimiter_and_no_final_crlf() {
        let parts = read_all(b"--x\r\nContent-Type: a/b\r\n\r\nDATA\r\n--x--", "x", 4)
            .await
            .unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1, b"DATA");
    }

    #[tokio::test]
    async fn broken_framing_is_an_error() {
        assert!(read_all(b"no delimiter here", "x", 5).await.is_err());
        assert!(read_all(b"--x\r\n\r\nDATA without end", "x", 5)
            .await
            .is_err());
        assert!(
            read_all(b"--x\r\nContent-Type a/b\r\n\r\nD\r\n--x--", "x", 5)
                .await
                .is_err()
        );
        let huge = format!(
            "--x\r\nA: {}\r\n\r\nD\r\n--x--",
            "v".repeat(MAX_HEADERS + 10)
        );
        assert!(read_all(huge.as_bytes(), "x", 512).await.is_err());
        assert!(read_all(b"--x--", "x", 5).await.unwrap().is_empty());
    }
}
