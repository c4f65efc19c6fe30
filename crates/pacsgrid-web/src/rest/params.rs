//! Query-string and path parameters of the REST API, checked up front so that every bad
//! value gets a 400 problem naming the parameter (axum's own rejections are plain text).

use crate::problem::Problem;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use pacsgrid_dicom::uid;

/// The query string as (name, value) pairs; a malformed one is a 400.
pub(crate) type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// One path segment; a malformed one (bad percent-encoding) is a 400.
pub(crate) type PathSegment = Result<Path<String>, PathRejection>;

/// Two path segments (a patient: issuer, then PatientID).
pub(crate) type PathPair = Result<Path<(String, String)>, PathRejection>;

/// The query parameters of one request, with the names an endpoint accepts.
#[derive(Debug)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Takes the query string and refuses any parameter not in `allowed`, or given twice.
    pub(crate) fn new(raw: RawParams, allowed: &[&str]) -> Result<Params, Problem> {
        let Query(pairs) =
            raw.map_err(|e| Problem::bad_request(format!("malformed query string: {e}")))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() {
                    "this endpoint takes none".to_string()
                } else {
                    format!("known: {}", allowed.join(", "))
                };
                return Err(Problem::bad_request(format!(
                    "unknown query parameter {name:?} ({known})"
                )));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(Problem::bad_request(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(Params { pairs })
    }

    /// The raw value of a parameter.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub(crate) fn int(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, Problem> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        let n: i64 = raw
            .trim()
            .parse()
            .map_err(|_| Problem::bad_request(format!("{name} must be an integer, got {raw:?}")))?;
        if n < min || n > max {
            return Err(Problem::bad_request(format!(
                "{name} must be between {min} and {max}, got {n}"
            )));
        }
        Ok(n)
    }

    /// `limit` (1..=`max`, default `default`) and `offset` (0..=u32::MAX, default 0).
    pub(crate) fn page(&self, default: u32, max: u32) -> Result<Page, Problem> {
        let limit = self.int("limit", i64::from(default), 1, i64::from(max))?;
        let offset = self.int("offset", 0, 0, i64::from(u32::MAX))?;
        Ok(Page {
            limit: u32::try_from(limit).unwrap_or(max),
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
        })
    }

    /// A filter that must match a value exactly: wildcard and list characters, which the
    /// index would interpret, are refused (QIDO-RS is the place for pattern matching).
    pub(crate) fn exact(&self, name: &str) -> Result<Option<String>, Problem> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        if v.contains(['*', '?', '\\']) {
            return Err(Problem::bad_request(format!(
                "{name} is matched exactly and cannot hold '*', '?' or '\\' (use QIDO-RS under \
                 /dicom-web for wildcard matching)"
            )));
        }
        if v.trim().is_empty() {
            return Err(Problem::bad_request(format!("{name} must not be empty")));
        }
        Ok(Some(v.to_string()))
    }
}

/// A page of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// Most items returned.
    pub limit: u32,
    /// Items skipped.
    pub offset: u32,
}

/// A UID from the path, checked (PS3.5 9.1) before it reaches the index.
pub(crate) fn uid_param(raw: PathSegment, what: &str) -> Result<String, Problem> {
    let Path(v) = raw.map_err(|e| Problem::bad_request(format!("malformed {what}: {e}")))?;
    if !uid::is_valid_uid(&v) {
        return Err(Problem::bad_request(format!(
            "{what} {v:?} is not a valid UID (1 to 64 characters, digit components separated \
             by dots, no leading zeros)"
        )));
    }
    Ok(v)
}

/// A patient's (issuer, PatientID) from the path.
pub(crate) fn patient_param(raw: PathPair) -> Result<(String, String), Problem> {
    let Path((issuer, id)) =
        raw.map_err(|e| Problem::bad_request(format!("malformed patient path: {e}")))?;
    for (name, v) in [("issuer", &issuer), ("patient ID", &id)] {
        if v.is_empty()
            || v.chars().count() > 64
            || v.chars().any(char::is_control)
            || v.contains('\\')
        {
            return Err(Problem::bad_request(format!(
                "{name} {v:?} is not a valid value (1 to 64 characters, no control characters \
                 or backslash)"
            )));
        }
    }
    Ok((issuer, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, Problem> {
        let pairs = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Params::new(Ok(Query(pairs)), allowed)
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let e = params(&[("limt", "1")], &["limit"]).unwrap_err();
        assert!(
            e.detail.contains("\"limt\"") && e.detail.contains("limit"),
            "{e}"
        );
        let e = params(&[("limit", "1"), ("limit", "2")], &["limit"]).unwrap_err();
        assert!(e.detail.contains("more than once"), "{e}");
    }

    #[test]
    fn pages_are_bounded() {
        let p = params(&[], &["limit", "offset"]).unwrap();
        assert_eq!(
            p.page(100, 1000).unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        for bad in ["0", "1001", "-1", "x", ""] {
            let p = params(&[("limit", bad)], &["limit"]).unwrap();
            let e = p.page(100, 1000).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.detail.starts_with("limit must be"), "{e}");
        }
        let p = params(&[("offset", "5"), ("limit", "1000")], &["limit", "offset"]).unwrap();
        assert_eq!(
            p.page(100, 1000).unwrap(),
            Page {
                limit: 1000,
                offset: 5
            }
        );
    }

    #[test]
    fn exact_filters_refuse_patterns() {
        let p = params(&[("patient_id", "A*")], &["patient_id"]).unwrap();
        assert!(p.exact("patient_id").is_err());
        let p = params(&[("patient_id", "A1")], &["patient_id"]).unwrap();
        assert_eq!(p.exact("patient_id").unwrap().as_deref(), Some("A1"));
        assert_eq!(p.exact("issuer").unwrap(), None);
    }

    #[test]
    fn uids_are_checked() {
        assert_eq!(
            uid_param(Ok(Path("1.2.3".into())), "study UID").unwrap(),
            "1.2.3"
        );
        for bad in ["1..2", "01.2", "abc", "", &"1".repeat(65)] {
            let e = uid_param(Ok(Path(bad.to_string())), "study UID").unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
    }
}
