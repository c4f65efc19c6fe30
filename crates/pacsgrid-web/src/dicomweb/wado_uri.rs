//! WADO-URI (PS3.18 chapter 9): `GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`,
//! the one-object URL that older viewers, PACS and RIS links still use (Weasis, Horos,
//! report links). It is a front for the WADO-RS paths, not a second implementation:
//! `contentType=application/dicom` is the instance retrieve (`transferSyntax` picks the
//! syntax), an image type is the rendered instance (`frameNumber`, `windowCenter` and
//! `windowWidth`, `rows` and `columns`, `imageQuality`). Access rules, audit and errors are
//! those of the paths it maps onto.

use super::rendered::MAX_VIEWPORT;
use super::{rendered, wado};
use crate::access::Audit;
use crate::problem::Problem;
use crate::HttpState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use pacsgrid_dicom::uid;

/// What one WADO-URI request asks for.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    uids: [String; 3],
    kind: Kind,
}

/// The representation asked for.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// The DICOM object, in this transfer syntax (absent: the default).
    Object { transfer_syntax: Option<String> },
    /// A rendered frame: the media type, and the rendered resource's query parameters.
    Image {
        media_type: &'static str,
        frame: String,
        query: Vec<(String, String)>,
    },
}

/// `GET /wado`: one object, as DICOM or as an image.
pub(crate) async fn retrieve(
    State(st): State<HttpState>,
    audit: Audit,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let answer = match parse(&q) {
        Err(p) => Err(p),
        Ok(Request {
            uids,
            kind: Kind::Object { transfer_syntax },
        }) => wado::retrieve_object(st, audit, transfer_syntax.as_deref(), uids).await,
        Ok(Request {
            uids,
            kind:
                Kind::Image {
                    media_type,
                    frame,
                    query,
                },
        }) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(media_type));
            let [study, series, inst] = &uids;
            rendered::instance(
                st,
                audit,
                [study, series, inst],
                &frame,
                &query,
                &headers,
                false,
            )
            .await
        }
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Reads the query string (PS3.18 table 9.1-1 names; case matters, as in the standard).
fn parse(q: &[(String, String)]) -> Result<Request, Problem> {
    let get = |name: &str| {
        q.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
    };
    match get("requestType").as_deref() {
        Some("WADO") => {}
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "requestType {other:?}: this node answers requestType=WADO only"
            )))
        }
        None => return Err(Problem::bad_request("requestType=WADO is required")),
    }
    let mut uids: [String; 3] = Default::default();
    for (slot, name) in uids.iter_mut().zip(["studyUID", "seriesUID", "objectUID"]) {
        let v = get(name).ok_or_else(|| Problem::bad_request(format!("{name} is required")))?;
        if !uid::is_valid_uid(&v) {
            return Err(Problem::bad_request(format!(
                "{name} {v:?} is not a valid UID"
            )));
        }
        *slot = v;
    }
    if get("anonymize").is_some_and(|v| v.eq_ignore_ascii_case("yes")) {
        return Err(Problem::bad_request(
            "anonymize=yes is not offered here: researchers are served de-identified data by their role",
        ));
    }
    let media_type = content_type(get("contentType").as_deref())?;
    if media_type == "application/dicom" {
        return Ok(Request {
            uids,
            kind: Kind::Object {
                transfer_syntax: get("transferSyntax"),
            },
        });
    }
    let mut query = Vec::new();
    match (get("windowCenter"), get("windowWidth")) {
        (Some(c), Some(w)) => query.push(("window".to_string(), format!("{c},{w}"))),
        (None, None) => {}
        _ => {
            return Err(Problem::bad_request(
                "windowCenter and windowWidth go together: give both or neither",
            ))
        }
    }
    let size = |name: &str| -> Result<Option<u32>, Problem> {
        get(name)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_VIEWPORT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "{name} {v:?}: expected a whole number from 1 to {MAX_VIEWPORT}"
                        ))
                    })
            })
            .transpose()
    };
    // One of rows and columns keeps the aspect ratio: the other side of the box is unbounded.
    match (size("columns")?, size("rows")?) {
        (None, None) => {}
        (w, h) => query.push((
            "viewport".to_string(),
            format!(
                "{},{}",
                w.unwrap_or(MAX_VIEWPORT),
                h.unwrap_or(MAX_VIEWPORT)
            ),
        )),
    }
    if let Some(quality) = get("imageQuality") {
        query.push(("quality".to_string(), quality));
    }
    Ok(Request {
        uids,
        kind: Kind::Image {
            media_type,
            frame: get("frameNumber").unwrap_or_else(|| "1".to_string()),
            query,
        },
    })
}

/// The first media type of a `contentType` list this node serves; `image/jpeg` when absent
/// (the default for images in PS3.18 9.1.2.1.4).
fn content_type(list: Option<&str>) -> Result<&'static str, Problem> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok("image/jpeg");
    };
    for item in list.split(',') {
        let media = item.split(';').next().unwrap_or("").trim();
        match media.to_ascii_lowercase().as_str() {
            "application/dicom" => return Ok("application/dicom"),
            "image/jpeg" | "image/*" | "*/*" => return Ok("image/jpeg"),
            "image/png" => return Ok("image/png"),
            _ => {}
        }
    }
    Err(Problem::not_acceptable(format!(
        "contentType {list:?}: this node serves application/dicom, image/jpeg and image/png"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const UIDS: [(&str, &str); 4] = [
        ("requestType", "WADO"),
        ("studyUID", "1.2.3"),
        ("seriesUID", "1.2.3.4"),
        ("objectUID", "1.2.3.4.5"),
    ];

    fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = q(&UIDS);
        v.extend(q(extra));
        v
    }

    #[test]
    fn object_requests_carry_their_transfer_syntax() {
        let r = parse(&with(&[
            ("contentType", "application/dicom"),
            ("transferSyntax", "1.2.840.10008.1.2"),
        ]))
        .unwrap();
        assert_eq!(r.uids, ["1.2.3", "1.2.3.4", "1.2.3.4.5"].map(String::from));
        assert_eq!(
            r.kind,
            Kind::Object {
                transfer_syntax: Some("1.2.840.10008.1.2".into())
            }
        );
    }

    #[test]
    fn image_requests_map_onto_rendered_parameters() {
        let r = parse(&with(&[
            ("windowCenter", "40"),
            ("windowWidth", "400"),
            ("rows", "128"),
            ("frameNumber", "2"),
            ("imageQuality", "80"),
        ]))
        .unwrap();
        let Kind::Image {
            media_type,
            frame,
            query,
        } = r.kind
        else {
            panic!("an image request");
        };
        assert_eq!(media_type, "image/jpeg", "the default");
        assert_eq!(frame, "2");
        assert_eq!(
            query,
            q(&[
                ("window", "40,400"),
                ("viewport", "8192,128"),
                ("quality", "80")
            ])
        );
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let e = parse(&q(&UIDS[1..])).unwrap_err();
        assert!(e.detail.contains("requestType"), "{}", e.detail);
        let mut v = q(&UIDS);
        v[3].1 = "1.2.x".into();
        assert!(parse(&v).unwrap_err().detail.contains("objectUID"));
        let e = parse(&with(&[("windowCenter", "40")])).unwrap_err();
        assert!(e.detail.contains("windowWidth"));
        let e = parse(&with(&[("contentType", "image/gif")])).unwrap_err();
        assert_eq!(e.status.as_u16(), 406);
        assert_eq!(
            content_type(Some("image/gif, image/png")).unwrap(),
            "image/png"
        );
        let e = parse(&with(&[("rows", "0")])).unwrap_err();
        assert!(e.detail.contains("rows"));
    }
}
