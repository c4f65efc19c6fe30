//! Reading a QIDO-RS query string (PS3.18 8.3.4): attribute keys by keyword or tag,
//! `includefield`, `limit`, `offset`, `fuzzymatching`, and the content negotiation parameters
//! `accept` and `charset` (8.3.3). Anything else is refused with the parameter named.

use crate::problem::Problem;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use pacsgrid_dicom::attrs::{self, AttrKind};

/// One attribute key of the request, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MatchKey {
    /// The parameter name as the client wrote it (keyword or tag), for error messages.
    pub name: String,
    /// The attribute.
    pub tag: Tag,
    /// The value in C-FIND form: QIDO's comma-separated lists already turned into `\`.
    pub value: String,
}

/// A parsed QIDO-RS query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SearchParams {
    /// Attribute keys the index can match on, or return (empty value).
    pub keys: Vec<MatchKey>,
    /// Keys with a value that the index cannot match on, by the name given; they are ignored
    /// for matching, returned empty, and reported in a Warning header.
    pub unsupported: Vec<String>,
    /// Tags named by `includefield`.
    pub include: Vec<Tag>,
    /// `includefield=all`.
    pub include_all: bool,
    /// `limit`: at most this many answers.
    pub limit: Option<u32>,
    /// `offset`: answers skipped first.
    pub offset: u32,
    /// `fuzzymatching=true`.
    pub fuzzy: bool,
    /// The `accept` query parameter, which replaces the Accept header when present.
    pub accept: Option<String>,
}

/// Splits a raw query string into decoded (name, value) pairs, in order, keeping repeats.
/// `+` is a space (HTML form encoding, which clients such as dicomweb-client use).
pub(crate) fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, Problem> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = decode(name).ok_or_else(|| {
            Problem::bad_request(format!(
                "query parameter {name:?} is not valid percent-encoded UTF-8"
            ))
        })?;
        let value = decode(value).ok_or_else(|| {
            Problem::bad_request(format!(
                "query parameter {name}: value {value:?} is not valid percent-encoded UTF-8"
            ))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// Percent-decodes one query string component; `None` for a bad escape or bad UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Resolves an attribute ID (PS3.18 8.3.4.1): a DICOM keyword or eight hex digits.
pub(crate) fn attribute_id(name: &str) -> Option<Tag> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let group = u16::from_str_radix(&name[..4], 16).ok()?;
        let element = u16::from_str_radix(&name[4..], 16).ok()?;
        return Some(Tag(group, element));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    StandardDataDictionary.by_name(name).map(|e| e.tag())
}

/// Parses the decoded pairs of a QIDO-RS query string.
pub(crate) fn parse(pairs: Vec<(String, String)>) -> Result<SearchParams, Problem> {
    let mut p = SearchParams::default();
    let mut seen_limit = false;
    let mut seen_offset = false;
    let mut seen_fuzzy = false;
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                once(&mut seen_limit, &name)?;
                p.limit = Some(count(&name, &value)?);
            }
            "offset" => {
                once(&mut seen_offset, &name)?;
                p.offset = count(&name, &value)?;
            }
            "fuzzymatching" => {
                once(&mut seen_fuzzy, &name)?;
                p.fuzzy = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Problem::bad_request(format!(
                            "query parameter fuzzymatching: expected true or false, got {value:?}"
                        )))
                    }
                };
            }
            "includefield" => include(&mut p, &value)?,
            "accept" => {
                if p.accept.is_some() {
                    return Err(twice(&name));
                }
                p.accept = Some(value);
            }
            "charset" => {
                // Answers are always UTF-8 (PS3.18 F.2): any other charset cannot be served.
                let ok = value
                    .split(',')
                    .map(|c| c.split(';').next().unwrap_or("").trim())
                    .any(|c| c.eq_ignore_ascii_case("utf-8") || c == "*");
                if !ok {
                    return Err(Problem::not_acceptable(format!(
                        "query parameter charset: answers are UTF-8 only, not {value:?}"
                    )));
                }
            }
            _ => key(&mut p, name, value)?,
        }
    }
    Ok(p)
}

fn once(seen: &mut bool, name: &str) -> Result<(), Problem> {
    if std::mem::replace(seen, true) {
        return Err(twice(name));
    }
    Ok(())
}

fn twice(name: &str) -> Problem {
    Problem::bad_request(format!("query parameter {name} is given more than once"))
}

/// A non-negative integer that fits the index's paging (u32).
fn count(name: &str, value: &str) -> Result<u32, Problem> {
    value.parse::<u32>().map_err(|_| {
        Problem::bad_request(format!(
            "query parameter {name}: expected a non-negative integer, got {value:?}"
        ))
    })
}

/// `includefield`: repeatable, comma-separated, keyword, tag or `all`. A sequence path
/// (`00400275.00401001`) names its top-level sequence, which is answered empty.
fn include(p: &mut SearchParams, value: &str) -> Result<(), Problem> {
    for field in value.split(',').map(str::trim) {
        if field == "all" {
            p.include_all = true;
            continue;
        }
        let first = field.split('.').next().unwrap_or("");
        let Some(tag) = field
            .split('.')
            .all(|f| attribute_id(f).is_some())
            .then(|| attribute_id(first))
            .flatten()
        else {
            return Err(Problem::bad_request(format!(
                "query parameter includefield: {field:?} is not a DICOM keyword, a tag of eight hex digits, or all"
            )));
        };
        if !p.include.contains(&tag) {
            p.include.push(tag);
        }
    }
    Ok(())
}

/// An attribute key `{attributeID}={value}`.
fn key(p: &mut SearchParams, name: String, value: String) -> Result<(), Problem> {
    if name.contains('.') {
        // Sequence matching is not in the index: ignored, with a warning, like any other
        // attribute the index cannot match on (PS3.18 8.3.4.1).
        if !name.split('.').all(|f| attribute_id(f).is_some()) {
            return Err(unknown(&name));
        }
        if !value.is_empty() {
            p.unsupported.push(name);
        }
        return Ok(());
    }
    let tag = attribute_id(&name).ok_or_else(|| unknown(&name))?;
    if p.keys.iter().any(|k| k.tag == tag) {
        return Err(Problem::bad_request(format!(
            "query parameter {name}: the attribute is given more than once"
        )));
    }
    let indexed = attrs::by_tag(tag);
    if indexed.is_none() && !value.is_empty() {
        p.unsupported.push(name.clone());
    }
    let value = if indexed.is_none() {
        String::new()
    } else if lists_with_commas(tag) {
        value.replace(',', "\\")
    } else {
        value
    };
    p.keys.push(MatchKey { name, tag, value });
    Ok(())
}

fn unknown(name: &str) -> Problem {
    Problem::bad_request(format!(
        "unknown query parameter {name:?}: not a QIDO-RS parameter, a DICOM keyword or a tag of eight hex digits"
    ))
}

/// Whether a comma in a value separates list items: UIDs (PS3.18 8.3.4.1 UID list matching)
/// and code strings (`ModalitiesInStudy=CT,MR`), which never hold a comma themselves.
fn lists_with_commas(tag: Tag) -> bool {
    attrs::by_tag(tag).is_some_and(|a| a.kind == AttrKind::Uid)
        || crate::dicomweb::json::vr_of(tag) == VR::CS
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use dicom_dictionary_std::tags;

    fn parsed(q: &str) -> Result<SearchParams, Problem> {
        parse(pairs(Some(q))?)
    }

    #[test]
    fn decodes_form_encoding() {
        let p = pairs(Some("PatientName=DOE%5EJ*&StudyDescription=a+b&&x")).unwrap();
        assert_eq!(
            p,
            [
                ("PatientName".to_string(), "DOE^J*".to_string()),
                ("StudyDescription".into(), "a b".into()),
                ("x".into(), "".into())
            ]
        );
        assert!(pairs(Some("a=%zz")).is_err());
        assert!(pairs(Some("a=%ff")).is_err());
        assert!(pairs(None).unwrap().is_empty());
    }

    #[test]
    fn keys_by_keyword_or_tag() {
        assert_eq!(attribute_id("PatientID"), Some(tags::PATIENT_ID));
        assert_eq!(attribute_id("00100020"), Some(tags::PATIENT_ID));
        assert_eq!(attribute_id("0020000d"), Some(tags::STUDY_INSTANCE_UID));
        assert_eq!(attribute_id("NoSuchKeyword"), None);
        assert_eq!(attribute_id("0010002"), None);
        let p = parsed("PatientID=P1&00080020=20200101-&SeriesDescription=").unwrap();
        assert_eq!(p.keys.len(), 3);
        assert_eq!(p.keys[1].tag, tags::STUDY_DATE);
        assert_eq!(p.keys[1].name, "00080020");
    }

    #[test]
    fn uid_and_code_lists_accept_commas() {
        let p =
            parsed("StudyInstanceUID=1.2.3,1.2.4&ModalitiesInStudy=CT,MR&PatientName=A,B").unwrap();
        assert_eq!(p.keys[0].value, "1.2.3\\1.2.4");
        assert_eq!(p.keys[1].value, "CT\\MR");
        assert_eq!(p.keys[2].value, "A,B");
    }

    #[test]
    fn controls() {
        let p = parsed(
            "limit=10&offset=5&fuzzymatching=true&includefield=StudyDescription,00081030&includefield=all&includefield=00400275.00401001",
        )
        .unwrap();
        assert_eq!(p.limit, Some(10));
        assert_eq!(p.offset, 5);
        assert!(p.fuzzy);
        assert!(p.include_all);
        assert_eq!(
            p.include,
            [tags::STUDY_DESCRIPTION, tags::REQUEST_ATTRIBUTES_SEQUENCE]
        );
    }

    #[test]
    fn attributes_not_indexed_are_reported_not_matched() {
        let p = parsed("Rows=512&Columns=&00400275.00401001=X").unwrap();
        assert_eq!(p.unsupported, ["Rows", "00400275.00401001"]);
        assert_eq!(p.keys.len(), 2);
        assert!(p.keys.iter().all(|k| k.value.is_empty()));
    }

    #[test]
    fn errors_name_the_parameter() {
        for (q, needle) in [
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("offset=-5", "offset"),
            ("fuzzymatching=yes", "fuzzymatching"),
            ("includefield=Nope", "includefield"),
            ("foo=bar", "foo"),
            ("limit=1&limit=2", "limit"),
            ("PatientID=a&00100020=b", "00100020"),
            ("Foo.Bar=x", "Foo.Bar"),
        ] {
            let e = parsed(q).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q}");
            assert!(e.detail.contains(needle), "{q}: {}", e.detail);
        }
        let e = parsed("charset=iso-8859-1").unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        assert!(parsed("charset=utf-8").is_ok());
    }
}
