//! `GET /openapi.json`: the OpenAPI 3.0 document of the REST API, kept beside the code in
//! `openapi.json` and served as written. A unit test holds it to the router's paths.

use super::params::{Params, RawParams};
use crate::problem::Problem;
use axum::http::header;
use axum::response::IntoResponse;

/// The document.
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /openapi.json`.
pub(crate) async fn document(raw: RawParams) -> Result<impl IntoResponse, Problem> {
    Params::new(raw, &[])?;
    Ok(([(header::CONTENT_TYPE, "application/json")], DOCUMENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn describes_exactly_the_routed_paths() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        assert_eq!(doc["servers"][0]["url"], crate::REST_BASE);
        let documented: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let routed: BTreeSet<&str> = super::super::PATHS.iter().copied().collect();
        assert_eq!(documented, routed);
        // Every operation documents its errors as problem+json.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(op["responses"]["400"].is_object(), "{method} {path}");
                assert!(op["responses"]["200"].is_object(), "{method} {path}");
            }
        }
    }

    #[test]
    fn documented_limits_are_the_enforced_ones() {
        use super::super::{feed, resources};
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let limit = &doc["components"]["parameters"]["limit"]["schema"];
        assert_eq!(limit["maximum"], resources::MAX_LIMIT);
        assert_eq!(limit["default"], resources::DEFAULT_LIMIT);
        let changes = &doc["paths"]["/changes"]["get"]["parameters"][1]["schema"];
        assert_eq!(changes["maximum"], feed::CHANGES_MAX_LIMIT);
        assert_eq!(changes["default"], feed::CHANGES_DEFAULT_LIMIT);
        let q = &doc["paths"]["/quarantine"]["get"]["parameters"][0]["schema"];
        assert_eq!(q["maximum"], feed::QUARANTINE_MAX_LIMIT);
        assert_eq!(q["default"], feed::QUARANTINE_DEFAULT_LIMIT);
    }
}
