//! Fuzzy matching of person names (`fuzzymatching=true`, PS3.18 8.3.4.2).
//!
//! What it does, exactly: the key value is split into words at `^`, `=`, spaces and commas;
//! a stored name matches when every word is, ignoring case, the beginning of some component of
//! the name (its components being the parts between `^`, `=` and spaces, in any component
//! group, in any order). `*` and `?` inside a word keep their wildcard meaning. So `joh`,
//! `JOHN doe` and `do^jo` all match `Doe^John`, and `ohn` does not.
//!
//! The index narrows the candidates (names containing the longest word, a superset of the
//! fuzzy matches) and the words are then checked here, row by row.

use pacsgrid_archive::AttrValues;
use pacsgrid_dicom::query::wildcard_match;
use pacsgrid_dicom::{AttrKind, Matcher, Query, Tag};

/// The fuzzy person-name keys of one search, checked against each candidate row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameFilter {
    keys: Vec<(Tag, Vec<String>)>,
}

/// Turns the person-name keys of `query` into fuzzy keys: each such key's matcher becomes a
/// superset pattern for the index, and the exact rule is returned as a filter. `None` when the
/// query has no person-name key with a value.
pub(crate) fn take(query: &mut Query) -> Option<NameFilter> {
    let mut keys = Vec::new();
    query.keys.retain_mut(|key| {
        if key.attr.kind != AttrKind::PersonName {
            return true;
        }
        let words = match &key.matcher {
            Matcher::Single(v) | Matcher::Wildcard(v) => words(v),
            _ => return true,
        };
        let Some(longest) = words
            .iter()
            .max_by_key(|w| w.chars().filter(|c| *c != '*').count())
        else {
            // Only separators: every name matches, so the key restricts nothing.
            return false;
        };
        key.matcher = Matcher::Wildcard(format!("*{longest}*"));
        keys.push((key.attr.tag, words));
        true
    });
    if keys.is_empty() {
        None
    } else {
        Some(NameFilter { keys })
    }
}

/// The lower-case words of a name or a key value.
fn words(value: &str) -> Vec<String> {
    value
        .split(['^', '=', ' ', ','])
        .filter(|w| !w.is_empty() && w.chars().any(|c| c != '*'))
        .map(str::to_lowercase)
        .collect()
}

impl NameFilter {
    /// Whether a candidate row passes every fuzzy key.
    pub(crate) fn matches(&self, row: &AttrValues) -> bool {
        self.keys.iter().all(|(tag, key_words)| {
            let name = row.get(tag).map(String::as_str).unwrap_or("");
            name_matches(key_words, name)
        })
    }
}

/// Every key word begins some component of some value of the name.
fn name_matches(key_words: &[String], name: &str) -> bool {
    name.split('\\').any(|value| {
        let components = words(value);
        key_words.iter().all(|w| {
            let prefix = format!("{w}*");
            components.iter().any(|c| wildcard_match(&prefix, c))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;
    use pacsgrid_dicom::{Level, QueryModel};

    fn filter(value: &str) -> (Query, Option<NameFilter>) {
        let mut q = Query::parse(
            QueryModel::StudyRoot,
            Level::Study,
            [(tags::PATIENT_NAME, value), (tags::PATIENT_ID, "P1")],
        )
        .unwrap();
        let f = take(&mut q);
        (q, f)
    }

    fn row(name: &str) -> AttrValues {
        let mut r = AttrValues::new();
        r.insert(tags::PATIENT_NAME, name.into());
        r
    }

    #[test]
    fn prefix_of_any_component_ignoring_case() {
        let (q, f) = filter("joh");
        let f = f.unwrap();
        assert_eq!(
            q.matcher(tags::PATIENT_NAME),
            Some(&Matcher::Wildcard("*joh*".into()))
        );
        assert_eq!(
            q.matcher(tags::PATIENT_ID),
            Some(&Matcher::Single("P1".into()))
        );
        assert!(f.matches(&row("Doe^John")));
        assert!(f.matches(&row("JOHANSSON^Eva")));
        assert!(!f.matches(&row("Smith^Ohjohn")));
        assert!(!f.matches(&row("")));
    }

    #[test]
    fn every_word_must_match_in_any_order() {
        let (_, f) = filter("do^jo");
        let f = f.unwrap();
        assert!(f.matches(&row("DOE^JOHN")));
        assert!(f.matches(&row("Jones^Dorothy")));
        assert!(!f.matches(&row("Doe^Anna")));
        let (_, f) = filter("JOHN doe");
        assert!(f.unwrap().matches(&row("Doe^John^^Dr")));
    }

    #[test]
    fn groups_and_wildcards() {
        let (_, f) = filter("やま");
        assert!(f
            .unwrap()
            .matches(&row("Yamada^Tarou=山田^太郎=やまだ^たろう")));
        let (_, f) = filter("m?ll*");
        assert!(f.unwrap().matches(&row("Müller^Anna")));
        let (_, f) = filter("müll");
        assert!(f.unwrap().matches(&row("MÜLLER^Anna")));
    }

    #[test]
    fn no_person_name_key_no_filter() {
        let (q, f) = filter("");
        assert!(f.is_none());
        assert!(q.matcher(tags::PATIENT_NAME).is_none());
        let (q, f) = filter("^");
        assert!(f.is_none());
        assert!(q.matcher(tags::PATIENT_NAME).is_none());
    }
}
