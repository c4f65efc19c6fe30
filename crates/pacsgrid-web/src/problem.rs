//! Errors as `application/problem+json` (RFC 9457): one type every handler returns, so a
//! client always gets a status it can act on and a sentence that says what was wrong.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pacsgrid_archive::ArchiveError;

/// Content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An HTTP error answer: status, a short title and a detail naming the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, in a sentence a person can act on.
    pub detail: String,
}

impl Problem {
    /// A problem with any status.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
        }
    }

    /// 400: the request itself is wrong (bad query key, bad value, bad UID).
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: nothing stored under what was asked for.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    /// 406: none of the accepted media types or transfer syntaxes can be produced.
    pub fn not_acceptable(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_ACCEPTABLE, detail)
    }

    /// 409: the request conflicts with what is stored.
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, detail)
    }

    /// 413: the request body is larger than the node accepts.
    pub fn too_large(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail)
    }

    /// 415: the request body's media type is not one this endpoint takes.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail)
    }

    /// 500: the node failed; the detail is logged and returned.
    pub fn internal(detail: impl Into<String>) -> Problem {
        let detail = detail.into();
        tracing::error!(%detail, "HTTP request failed inside the node");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::info!(status = self.status.as_u16(), detail = %self.detail, "HTTP request refused");
        }
        let mut rsp = (self.status, self.body().to_string()).into_response();
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        rsp
    }
}

impl From<ArchiveError> for Problem {
    fn from(e: ArchiveError) -> Problem {
        match e {
            // The bytes are held at sites that cannot be reached now, or the index's database
            // is down: the request may well succeed later, so it is not a server fault.
            ArchiveError::Unavailable { .. }
            | ArchiveError::Index(pacsgrid_archive::IndexError::Unreachable(_)) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e => Problem::internal(e.to_string()),
        }
    }
}

impl From<pacsgrid_dicom::query::QueryError> for Problem {
    fn from(e: pacsgrid_dicom::query::QueryError) -> Problem {
        Problem::bad_request(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_problem_json_with_status_and_detail() {
        let rsp = Problem::bad_request("PatientBirthDate: not a date").into_response();
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = Problem::bad_request("x").body();
        assert_eq!(body["status"], 400);
        assert_eq!(body["title"], "Bad Request");
        assert_eq!(body["detail"], "x");
    }

    #[test]
    fn bytes_or_an_index_out_of_reach_are_503_other_archive_faults_500() {
        let gone = ArchiveError::Unavailable {
            hash: "ab".into(),
            why: "held only at a, unreachable now".into(),
        };
        let p = Problem::from(gone);
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(p.detail.contains("held only at a"), "{}", p.detail);
        let db = ArchiveError::Index(pacsgrid_archive::IndexError::Unreachable("pg".into()));
        assert_eq!(Problem::from(db).status, StatusCode::SERVICE_UNAVAILABLE);
        let io = ArchiveError::Io(std::io::Error::other("disk"));
        assert_eq!(Problem::from(io).status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
