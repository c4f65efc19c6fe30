//! The query model shared by C-FIND, C-MOVE/C-GET identifiers and QIDO-RS.
//!
//! A protocol turns its request into (tag, text) pairs; [`Query::parse`] checks them against
//! the matching rules of PS3.4 C.2.2.2 and yields matchers the index can translate to SQL.

use crate::attrs::{self, AttrKind, IndexedAttr, Level, Origin};
use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// The Query/Retrieve information model a request was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryModel {
    /// Patient Root: PATIENT, STUDY, SERIES, IMAGE.
    PatientRoot,
    /// Study Root: STUDY, SERIES, IMAGE (patient attributes are study attributes).
    StudyRoot,
}

/// How one key restricts the answer (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Empty value: everything matches, the attribute is only returned.
    Universal,
    /// Exactly this value (case-insensitive for person names).
    Single(String),
    /// A pattern with `*` (any run) and `?` (any one character).
    Wildcard(String),
    /// A closed or open range of dates or times; bounds are inclusive and normalised
    /// (`YYYYMMDD`, `HHMMSS[.FFFFFF]`).
    Range {
        /// Lower bound, absent for `-upper`.
        lower: Option<String>,
        /// Upper bound, absent for `lower-`.
        upper: Option<String>,
    },
    /// Any one of these values (a UID list, or a value list such as `CT\\MR`).
    List(Vec<String>),
}

/// One matching key of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    /// The attribute matched.
    pub attr: &'static IndexedAttr,
    /// How it is matched.
    pub matcher: Matcher,
}

/// A parsed, validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The information model.
    pub model: QueryModel,
    /// The level asked for: one answer per entity at this level.
    pub level: Level,
    /// The keys that restrict the answer (universal keys are not listed here).
    pub keys: Vec<QueryKey>,
    /// Every tag the requester wants back, in request order, including tags the index does
    /// not know (they come back empty, as the standard asks).
    pub return_tags: Vec<Tag>,
}

/// Why a query was refused. Each message names the offending key so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// QueryRetrieveLevel is missing or not one of the model's levels.
    #[error("invalid QueryRetrieveLevel {0:?} for this information model")]
    BadLevel(String),
    /// A key belongs below the requested level.
    #[error("key {keyword} is below the requested level {level}")]
    KeyBelowLevel {
        /// The key's keyword.
        keyword: &'static str,
        /// The requested level's code.
        level: &'static str,
    },
    /// A value has a form its attribute does not allow.
    #[error("invalid value {value:?} for {keyword}: {why}")]
    BadValue {
        /// The key's keyword.
        keyword: &'static str,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Query {
    /// Parses a query from the (tag, value) pairs of an identifier or a QIDO-RS request.
    ///
    /// `level` is the requested level; keys of unknown attributes are kept as return tags,
    /// keys below the level are refused (a hierarchical or relational query never asks for a
    /// series attribute at study level).
    pub fn parse<I, S>(model: QueryModel, level: Level, pairs: I) -> Result<Query, QueryError>
    where
        I: IntoIterator<Item = (Tag, S)>,
        S: AsRef<str>,
    {
        if model == QueryModel::StudyRoot && level == Level::Patient {
            return Err(QueryError::BadLevel("PATIENT".into()));
        }
        let mut keys = Vec::new();
        let mut return_tags = Vec::new();
        for (tag, raw) in pairs {
            if tag.group() == 0x0002 || tag.group() == 0x0000 || tag == tags::QUERY_RETRIEVE_LEVEL {
                continue;
            }
            if !return_tags.contains(&tag) {
                return_tags.push(tag);
            }
            let Some(attr) = attrs::by_tag(tag) else {
                continue;
            };
            let value = trim_value(raw.as_ref());
            if attr.level > level {
                // SOPClassUID etc. below the level make no sense; but an empty (return) key
                // below the level is harmless and widely sent by viewers: ignore it.
                if value.is_empty() {
                    return_tags.retain(|t| *t != tag);
                    continue;
                }
                return Err(QueryError::KeyBelowLevel {
                    keyword: attr.keyword,
                    level: level.code(),
                });
            }
            let matcher = parse_matcher(attr, value)?;
            if matcher != Matcher::Universal {
                keys.push(QueryKey { attr, matcher });
            }
        }
        Ok(Query {
            model,
            level,
            keys,
            return_tags,
        })
    }

    /// The matcher for a tag, if the query restricts it.
    pub fn matcher(&self, tag: Tag) -> Option<&Matcher> {
        self.keys
            .iter()
            .find(|k| k.attr.tag == tag)
            .map(|k| &k.matcher)
    }
}

/// Strips the padding DICOM puts on values (trailing spaces and NULs, leading spaces).
pub fn trim_value(raw: &str) -> &str {
    raw.trim_matches(|c: char| c == ' ' || c == '\0')
}

fn bad(attr: &IndexedAttr, value: &str, why: &'static str) -> QueryError {
    QueryError::BadValue {
        keyword: attr.keyword,
        value: value.to_string(),
        why,
    }
}

fn parse_matcher(attr: &'static IndexedAttr, value: &str) -> Result<Matcher, QueryError> {
    if value.is_empty() || value == "*" {
        return Ok(Matcher::Universal);
    }
    if attr.origin == Origin::Computed && attr.tag != tags::MODALITIES_IN_STUDY {
        return Err(bad(
            attr,
            value,
            "this attribute can be returned but not matched",
        ));
    }
    match attr.kind {
        AttrKind::Uid => {
            let uids: Vec<String> = value
                .split('\\')
                .map(|u| trim_value(u).to_string())
                .collect();
            for u in &uids {
                if !crate::uid::is_valid_uid(u) {
                    return Err(bad(
                        attr,
                        value,
                        "not a valid UID (digits and dots, at most 64)",
                    ));
                }
            }
            if uids.len() == 1 {
                Ok(Matcher::Single(uids.into_iter().next().unwrap_or_default()))
            } else {
                Ok(Matcher::List(uids))
            }
        }
        AttrKind::Date => parse_range(attr, value, normalise_date),
        AttrKind::Time => parse_range(attr, value, normalise_time),
        AttrKind::Integer => {
            if value.trim().parse::<i64>().is_ok() {
                Ok(Matcher::Single(value.trim().to_string()))
            } else {
                Err(bad(attr, value, "expected an integer"))
            }
        }
        AttrKind::Text | AttrKind::PersonName => {
            if value.contains('\\') {
                // value lists are allowed for some keys (e.g. ModalitiesInStudy "CT\MR");
                // we treat them as "any of", which the standard allows for CS lists.
                return Ok(Matcher::List(
                    value
                        .split('\\')
                        .map(|v| trim_value(v).to_string())
                        .collect(),
                ));
            }
            if value.contains('*') || value.contains('?') {
                Ok(Matcher::Wildcard(value.to_string()))
            } else {
                Ok(Matcher::Single(value.to_string()))
            }
        }
    }
}

fn parse_range(
    attr: &'static IndexedAttr,
    value: &str,
    normalise: fn(&str) -> Option<String>,
) -> Result<Matcher, QueryError> {
    let why = if attr.kind == AttrKind::Date {
        "expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD"
    } else {
        "expected HHMMSS[.FFFFFF] or a range"
    };
    match value.split_once('-') {
        None => normalise(value)
            .map(Matcher::Single)
            .ok_or_else(|| bad(attr, value, why)),
        Some((lo, hi)) => {
            let lo = trim_value(lo);
            let hi = trim_value(hi);
            if lo.is_empty() && hi.is_empty() {
                return Err(bad(attr, value, why));
            }
            let lower = if lo.is_empty() {
                None
            } else {
                Some(normalise(lo).ok_or_else(|| bad(attr, value, why))?)
            };
            let upper = if hi.is_empty() {
                None
            } else {
                Some(normalise(hi).ok_or_else(|| bad(attr, value, why))?)
            };
            if let (Some(l), Some(u)) = (&lower, &upper) {
                if l > u {
                    return Err(bad(
                        attr,
                        value,
                        "range lower bound is after its upper bound",
                    ));
                }
            }
            Ok(Matcher::Range { lower, upper })
        }
    }
}

/// Normalises a DA value to `YYYYMMDD`; accepts the ACR-NEMA form `YYYY.MM.DD`.
pub fn normalise_date(v: &str) -> Option<String> {
    let digits: String = v.chars().filter(|c| *c != '.').collect();
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month: u32 = digits[4..6].parse().ok()?;
    let day: u32 = digits[6..8].parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(digits)
}

/// Normalises a TM value to `HHMMSS[.FFFFFF]`, padding a partial `HH` or `HHMM` with zeros
/// (so that a range bound compares correctly as text); accepts `HH:MM:SS`.
pub fn normalise_time(v: &str) -> Option<String> {
    let v: String = v.chars().filter(|c| *c != ':').collect();
    let (main, frac) = match v.split_once('.') {
        Some((m, f)) => (m.to_string(), Some(f.to_string())),
        None => (v.clone(), None),
    };
    if !main.bytes().all(|b| b.is_ascii_digit()) || ![2, 4, 6].contains(&main.len()) {
        return None;
    }
    let hh: u32 = main[0..2].parse().ok()?;
    if hh > 23 {
        return None;
    }
    let mut out = format!("{main:0<6}");
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) || main.len() != 6
        {
            return None;
        }
        out.push('.');
        out.push_str(&f);
    }
    Some(out)
}

/// Tests a value against a matcher in memory; the index translates matchers to SQL, this is
/// the reference semantics its tests compare against, and the fallback for computed values.
pub fn matches(attr: &IndexedAttr, matcher: &Matcher, value: &str) -> bool {
    let ci = attr.kind == AttrKind::PersonName;
    let eq = |a: &str, b: &str| {
        if ci {
            a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
        } else {
            a == b
        }
    };
    let multi: Vec<&str> = if attr.tag == tags::MODALITIES_IN_STUDY {
        value.split('\\').collect()
    } else {
        vec![value]
    };
    multi.iter().any(|v| match matcher {
        Matcher::Universal => true,
        Matcher::Single(s) => eq(v, s),
        Matcher::List(list) => list.iter().any(|s| eq(v, s)),
        Matcher::Wildcard(p) => {
            if ci {
                wildcard_match(&p.to_lowercase(), &v.to_lowercase())
            } else {
                wildcard_match(p, v)
            }
        }
        Matcher::Range { lower, upper } => {
            !v.is_empty()
                && lower.as_deref().is_none_or(|l| *v >= l)
                && upper.as_deref().is_none_or(|u| {
                    // an upper bound `20201231` includes every time within that day
                    *v <= u || v.starts_with(u)
                })
        }
    })
}

/// Matches `*` and `?` wildcards (no escapes: DICOM has none).
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(level: Level, pairs: &[(Tag, &str)]) -> Result<Query, QueryError> {
        Query::parse(
            QueryModel::StudyRoot,
            level,
            pairs.iter().map(|(t, v)| (*t, *v)),
        )
    }

    #[test]
    fn parses_each_matching_kind() {
        let query = q(
            Level::Study,
            &[
                (tags::PATIENT_NAME, "DOE^*"),
                (tags::STUDY_DATE, "20200101-"),
                (tags::STUDY_INSTANCE_UID, "1.2.3\\1.2.4"),
                (tags::ACCESSION_NUMBER, "A1 "),
                (tags::STUDY_DESCRIPTION, ""),
            ],
        )
        .unwrap();
        assert_eq!(query.keys.len(), 4);
        assert_eq!(
            query.matcher(tags::PATIENT_NAME),
            Some(&Matcher::Wildcard("DOE^*".into()))
        );
        assert_eq!(
            query.matcher(tags::STUDY_DATE),
            Some(&Matcher::Range {
                lower: Some("20200101".into()),
                upper: None
            })
        );
        assert_eq!(
            query.matcher(tags::STUDY_INSTANCE_UID),
            Some(&Matcher::List(vec!["1.2.3".into(), "1.2.4".into()]))
        );
        assert_eq!(
            query.matcher(tags::ACCESSION_NUMBER),
            Some(&Matcher::Single("A1".into()))
        );
        assert_eq!(query.return_tags.len(), 5);
    }

    #[test]
    fn refuses_bad_values_with_the_key_named() {
        let e = q(Level::Study, &[(tags::STUDY_DATE, "2020-13-01")]).unwrap_err();
        assert!(e.to_string().contains("StudyDate"), "{e}");
        assert!(q(Level::Study, &[(tags::STUDY_DATE, "20201301")]).is_err());
        assert!(q(Level::Study, &[(tags::STUDY_INSTANCE_UID, "1.2.*")]).is_err());
        assert!(q(Level::Study, &[(tags::STUDY_DATE, "20201231-20200101")]).is_err());
        assert!(q(Level::Study, &[(tags::SOP_INSTANCE_UID, "1.2.3")]).is_err());
        assert!(Query::parse(
            QueryModel::StudyRoot,
            Level::Patient,
            Vec::<(Tag, &str)>::new()
        )
        .is_err());
    }

    #[test]
    fn empty_keys_below_level_are_dropped_not_refused() {
        let query = q(Level::Study, &[(tags::SOP_INSTANCE_UID, "")]).unwrap();
        assert!(query.return_tags.is_empty());
    }

    #[test]
    fn in_memory_matching_follows_the_standard() {
        let pn = attrs::by_tag(tags::PATIENT_NAME).unwrap();
        assert!(matches(
            pn,
            &Matcher::Wildcard("doe^j?hn".into()),
            "DOE^JOHN"
        ));
        assert!(!matches(pn, &Matcher::Wildcard("DOE^J".into()), "DOE^JOHN"));
        let date = attrs::by_tag(tags::STUDY_DATE).unwrap();
        let range = Matcher::Range {
            lower: Some("20200101".into()),
            upper: Some("20200131".into()),
        };
        assert!(matches(date, &range, "20200131"));
        assert!(!matches(date, &range, "20200201"));
        assert!(!matches(date, &range, ""));
        let mods = attrs::by_tag(tags::MODALITIES_IN_STUDY).unwrap();
        assert!(matches(mods, &Matcher::Single("MR".into()), "CT\\MR"));
    }

    #[test]
    fn times_are_padded_for_range_comparison() {
        assert_eq!(normalise_time("10").as_deref(), Some("100000"));
        assert_eq!(normalise_time("1030").as_deref(), Some("103000"));
        assert_eq!(normalise_time("10:30:15.5").as_deref(), Some("103015.5"));
        assert_eq!(normalise_time("25"), None);
        assert_eq!(normalise_date("2020.01.02").as_deref(), Some("20200102"));
    }
}
