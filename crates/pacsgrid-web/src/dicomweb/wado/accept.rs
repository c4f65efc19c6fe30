//! Accept header negotiation for WADO-RS (PS3.18 8.7): which media types and transfer
//! syntaxes a client takes, in its order of preference.

use crate::problem::Problem;
use pacsgrid_dicom::uid;

/// One media range of an Accept header, with its parameters (names lower-cased, values
/// unquoted) and quality.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaRange {
    /// `type/subtype`, lower-cased.
    pub media_type: String,
    /// Parameters other than `q`.
    pub params: Vec<(String, String)>,
    /// Quality, 0 to 1.
    pub q: f32,
}

impl MediaRange {
    /// A parameter's value by (lower-case) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_multipart(&self) -> bool {
        self.media_type == "multipart/related" || self.media_type == "multipart/*"
    }

    fn is_any(&self) -> bool {
        self.media_type == "*/*"
    }
}

/// Splits on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Parses an Accept header into media ranges, best first (by q, then header order); ranges
/// with q=0 are dropped. No header means `*/*`.
pub(crate) fn parse_accept(header: Option<&str>) -> Result<Vec<MediaRange>, Problem> {
    let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(vec![MediaRange {
            media_type: "*/*".into(),
            params: Vec::new(),
            q: 1.0,
        }]);
    };
    let mut ranges = Vec::new();
    for item in split_unquoted(header, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let mut parts = split_unquoted(item, ';').into_iter();
        let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if !media_type.contains('/') {
            return Err(Problem::bad_request(format!(
                "Accept header: {media_type:?} is not a media range (type/subtype)"
            )));
        }
        let mut params = Vec::new();
        let mut q = 1.0f32;
        for p in parts {
            let Some((name, value)) = p.split_once('=') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim().trim_matches('"').trim().to_string();
            if name == "q" {
                q = value.parse::<f32>().map_err(|_| {
                    Problem::bad_request(format!("Accept header: q={value:?} is not a number"))
                })?;
            } else {
                params.push((name, value));
            }
        }
        if q > 0.0 {
            ranges.push(MediaRange {
                media_type,
                params,
                q,
            });
        }
    }
    // stable: equal q keeps header order
    ranges.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(std::cmp::Ordering::Equal));
    Ok(ranges)
}

/// In which transfer syntax a client takes DICOM instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsChoice {
    /// `transfer-syntax=*`: as stored.
    AsStored,
    /// This transfer syntax (a UID pacsgrid knows).
    Syntax(&'static str),
}

/// The transfer syntaxes acceptable for `multipart/related; type="application/dicom"`, best
/// first. Without a transfer-syntax parameter the default is Explicit VR Little Endian
/// (PS3.18 8.7.3.5.2). Refuses with 406 when no range asks for multipart DICOM.
pub(crate) fn dicom_choices(ranges: &[MediaRange]) -> Result<Vec<TsChoice>, Problem> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for r in ranges {
        let dicom_type = if r.is_multipart() {
            let t = r.param("type").unwrap_or("application/dicom");
            matches!(t, "application/dicom" | "application/*" | "*/*")
        } else if r.is_any() {
            true
        } else {
            if r.media_type == "application/dicom" {
                refused.push(
                    "application/dicom as a single part (use multipart/related; type=\"application/dicom\")"
                        .to_string(),
                );
            } else {
                refused.push(r.media_type.clone());
            }
            continue;
        };
        if !dicom_type {
            refused.push(format!(
                "multipart/related; type={:?}",
                r.param("type").unwrap_or("")
            ));
            continue;
        }
        match r.param("transfer-syntax") {
            None => out.push(TsChoice::Syntax(uid::EXPLICIT_VR_LE)),
            Some("*") => out.push(TsChoice::AsStored),
            Some(ts) => match uid::transfer_syntax(ts) {
                Some(info) => out.push(TsChoice::Syntax(info.uid)),
                None => refused.push(format!("transfer-syntax={ts} (unknown)")),
            },
        }
    }
    if out.is_empty() {
        return Err(Problem::not_acceptable(format!(
            "instances are served as multipart/related; type=\"application/dicom\" \
             (optionally with transfer-syntax=*, or a transfer syntax UID); the request accepts \
             only: {}",
            refused.join(", ")
        )));
    }
    Ok(out)
}

/// How a client takes frames or bulk data (pixel data) of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PixelChoice {
    /// `application/octet-stream`, uncompressed little endian (decoded if stored compressed).
    Uncompressed,
    /// The stored bitstream, whatever its media type (`transfer-syntax=*`).
    AsStored,
    /// The stored bitstream when its media type matches this range (`image/jp2`,
    /// `image/*`...) and its syntax is `ts` (if given).
    Bitstream {
        /// The media range, possibly with a `*` subtype.
        media_type: String,
        /// The transfer syntax asked for, if any.
        ts: Option<String>,
    },
}

/// The ways acceptable for frames and pixel bulk data, best first. The default (no type, or
/// `*/*`, no transfer syntax) is uncompressed `application/octet-stream`.
pub(crate) fn pixel_choices(ranges: &[MediaRange]) -> Result<Vec<PixelChoice>, Problem> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for r in ranges {
        let (ty, ts) = if r.is_multipart() {
            (
                r.param("type").unwrap_or("*/*").to_ascii_lowercase(),
                r.param("transfer-syntax"),
            )
        } else if r.is_any() {
            ("*/*".to_string(), r.param("transfer-syntax"))
        } else {
            refused.push(format!("{} as a single part", r.media_type));
            continue;
        };
        let choice = match (ty.as_str(), ts) {
            ("application/octet-stream", None | Some("*")) => PixelChoice::Uncompressed,
            ("application/octet-stream" | "*/*" | "application/*", Some(t))
                if t == uid::EXPLICIT_VR_LE =>
            {
                PixelChoice::Uncompressed
            }
            ("*/*" | "application/*", None) => PixelChoice::Uncompressed,
            ("*/*", Some("*")) => PixelChoice::AsStored,
            ("*/*", Some(t)) => PixelChoice::Bitstream {
                media_type: "*/*".into(),
                ts: Some(t.to_string()),
            },
            (t, ts) if t.starts_with("image/") || t.starts_with("video/") => {
                PixelChoice::Bitstream {
                    media_type: t.to_string(),
                    ts: ts.filter(|s| *s != "*").map(str::to_string),
                }
            }
            _ => {
                refused.push(format!(
                    "multipart/related; type={ty:?}{}",
                    ts.map(|t| format!("; transfer-syntax={t}"))
                        .unwrap_or_default()
                ));
                continue;
            }
        };
        out.push(choice);
    }
    if out.is_empty() {
        return Err(Problem::not_acceptable(format!(
            "pixel data is served as multipart/related with type application/octet-stream \
             (uncompressed) or the stored bitstream's image/ or video/ type; the request accepts \
             only: {}",
            refused.join(", ")
        )));
    }
    Ok(out)
}

/// The media type of a compressed frame bitstream in a transfer syntax (PS3.18 Table 8.7.3-4).
pub(crate) fn bitstream_media_type(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            "image/jxl"
        }
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "video/mpeg2",
        t if t.starts_with("1.2.840.10008.1.2.4.10") => "video/mp4",
        _ => return None,
    })
}

/// Whether a media range (`image/jp2`, `image/*`, `*/*`) covers a media type.
pub(crate) fn range_covers(range: &str, media_type: &str) -> bool {
    if range == "*/*" || range == media_type {
        return true;
    }
    match (range.split_once('/'), media_type.split_once('/')) {
        (Some((rt, "*")), Some((mt, _))) => rt == mt,
        // the x- spellings clients still send
        (Some((rt, rs)), Some((mt, ms))) => rt == mt && rs.strip_prefix("x-") == Some(ms),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_params_and_q_in_preference_order() {
        let r = parse_accept(Some(
            "multipart/related; type=\"application/dicom\"; transfer-syntax=*; q=0.5, \
             multipart/related; type=\"application/dicom\", text/html;q=0",
        ))
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].param("transfer-syntax"), None);
        assert_eq!(r[1].param("transfer-syntax"), Some("*"));
        assert_eq!(r[1].param("type"), Some("application/dicom"));
    }

    #[test]
    fn dicom_default_is_explicit_little_endian() {
        let r = parse_accept(Some("multipart/related; type=\"application/dicom\"")).unwrap();
        assert_eq!(
            dicom_choices(&r).unwrap(),
            vec![TsChoice::Syntax(uid::EXPLICIT_VR_LE)]
        );
        let r = parse_accept(None).unwrap();
        assert_eq!(
            dicom_choices(&r).unwrap(),
            vec![TsChoice::Syntax(uid::EXPLICIT_VR_LE)]
        );
        let r = parse_accept(Some(
            "multipart/related; type=application/dicom; transfer-syntax=*",
        ))
        .unwrap();
        assert_eq!(dicom_choices(&r).unwrap(), vec![TsChoice::AsStored]);
    }

    #[test]
    fn single_part_dicom_and_other_types_are_not_acceptable() {
        let r = parse_accept(Some("application/dicom")).unwrap();
        let p = dicom_choices(&r).unwrap_err();
        assert_eq!(p.status.as_u16(), 406);
        assert!(p.detail.contains("single part"), "{}", p.detail);
        let r = parse_accept(Some("multipart/related; type=\"image/jpeg\"")).unwrap();
        assert_eq!(dicom_choices(&r).unwrap_err().status.as_u16(), 406);
        let r = parse_accept(Some(
            "multipart/related; type=application/dicom; transfer-syntax=1.2.3",
        ))
        .unwrap();
        assert!(dicom_choices(&r).unwrap_err().detail.contains("1.2.3"));
    }

    #[test]
    fn pixel_choices_default_and_bitstreams() {
        let r = parse_accept(Some("multipart/related; type=\"*/*\"")).unwrap();
        assert_eq!(pixel_choices(&r).unwrap(), vec![PixelChoice::Uncompressed]);
        let r = parse_accept(Some("multipart/related; type=\"*/*\"; transfer-syntax=*")).unwrap();
        assert_eq!(pixel_choices(&r).unwrap(), vec![PixelChoice::AsStored]);
        let r = parse_accept(Some("multipart/related; type=\"image/jp2\"")).unwrap();
        assert_eq!(
            pixel_choices(&r).unwrap(),
            vec![PixelChoice::Bitstream {
                media_type: "image/jp2".into(),
                ts: None
            }]
        );
        let r = parse_accept(Some("application/dicom+json")).unwrap();
        assert_eq!(pixel_choices(&r).unwrap_err().status.as_u16(), 406);
    }

    #[test]
    fn media_ranges_cover_types() {
        assert!(range_covers("image/*", "image/jp2"));
        assert!(range_covers("image/x-jls", "image/jls"));
        assert!(!range_covers("image/jpeg", "image/jp2"));
        assert!(!range_covers("video/*", "image/jp2"));
        assert_eq!(
            bitstream_media_type("1.2.840.10008.1.2.4.70"),
            Some("image/jpeg")
        );
        assert_eq!(bitstream_media_type(uid::EXPLICIT_VR_LE), None);
    }
}
