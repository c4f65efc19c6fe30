//! Which attributes a QIDO-RS answer holds (PS3.18 10.6.3.3): the default set of the level
//! (and of the levels above when the URL does not fix them), the matching keys, `includefield`
//! and `all`, and how each is valued from an index row.

use super::params::SearchParams;
use crate::dicomweb::json;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use pacsgrid_archive::AttrValues;
use pacsgrid_dicom::deid::{self, Deidentifier};
use pacsgrid_dicom::{attrs, Level};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the URL already fixes above the searched level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `/studies`, `/series`, `/instances`: nothing fixed.
    All,
    /// `/studies/{study}/...`: the study is fixed.
    Study,
    /// `/studies/{study}/series/{series}/instances`: study and series are fixed.
    Series,
}

/// Study result attributes (PS3.18 Table 10.6.3-3), plus IssuerOfPatientID: patients are
/// per issuer here, and two answers with one PatientID must say whose each is.
const STUDY: &[Tag] = &[
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::INSTANCE_AVAILABILITY,
    tags::MODALITIES_IN_STUDY,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::RETRIEVE_URL,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
    tags::NUMBER_OF_STUDY_RELATED_SERIES,
    tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
];

/// Series result attributes (PS3.18 Table 10.6.3-4).
const SERIES: &[Tag] = &[
    tags::MODALITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::SERIES_DESCRIPTION,
    tags::RETRIEVE_URL,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::REQUEST_ATTRIBUTES_SEQUENCE,
];

/// Instance result attributes (PS3.18 Table 10.6.3-5).
const INSTANCE: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::INSTANCE_AVAILABILITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::RETRIEVE_URL,
    tags::INSTANCE_NUMBER,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::NUMBER_OF_FRAMES,
];

/// The default attributes of a search at `level` under `scope`: the level's own table, the
/// tables of the levels the URL leaves open, and the UIDs of the levels above (so every answer
/// says where it belongs).
pub(crate) fn defaults(level: Level, scope: Scope) -> Vec<Tag> {
    let mut out: Vec<Tag> = Vec::new();
    let mut add = |ts: &[Tag]| {
        for t in ts {
            if !out.contains(t) {
                out.push(*t);
            }
        }
    };
    match level {
        Level::Patient | Level::Study => add(STUDY),
        Level::Series => {
            if scope == Scope::All {
                add(STUDY);
            }
            add(&[tags::STUDY_INSTANCE_UID]);
            add(SERIES);
        }
        Level::Image => {
            if scope == Scope::All {
                add(STUDY);
            }
            if scope != Scope::Series {
                add(SERIES);
            }
            add(&[tags::STUDY_INSTANCE_UID, tags::SERIES_INSTANCE_UID]);
            add(INSTANCE);
        }
    }
    out
}

/// The attributes of every answer of one search, and how to value them.
#[derive(Debug, Clone)]
pub(crate) struct Fields {
    /// Each tag and whether it was asked for explicitly (a matching key or `includefield`):
    /// explicit tags the index does not hold are answered empty, default ones left out.
    tags: BTreeMap<Tag, bool>,
    level: Level,
    /// `{scheme}://{host}/dicom-web`, for RetrieveURL.
    base_url: String,
    /// Set for researchers: every answer is de-identified with it.
    deid: Option<Arc<Deidentifier>>,
}

impl Fields {
    /// The attributes of a search at `level` under `scope`, with the request's keys and
    /// `includefield`, and the service base URL for RetrieveURL.
    pub(crate) fn new(level: Level, scope: Scope, params: &SearchParams, base_url: String) -> Self {
        let mut tags: BTreeMap<Tag, bool> = BTreeMap::new();
        for t in defaults(level, scope) {
            tags.insert(t, false);
        }
        if params.include_all {
            for a in attrs::at_or_above(level) {
                tags.entry(a.tag).or_insert(false);
            }
        }
        for t in params
            .include
            .iter()
            .chain(params.keys.iter().map(|k| &k.tag))
        {
            tags.insert(*t, true);
        }
        Fields {
            tags,
            level,
            base_url,
            deid: None,
        }
    }

    /// The same fields, answered de-identified (PS3.15 Annex E, as WADO-RS serves the
    /// objects): pseudonym for name and ID, dates shifted, the rest of the profile's
    /// attributes emptied or left out, and the marks of a de-identified data set added.
    pub(crate) fn deidentified(mut self, deid: Arc<Deidentifier>) -> Self {
        self.deid = Some(deid);
        self
    }

    /// One answer as a DICOM JSON data set.
    pub(crate) fn answer(&self, row: &AttrValues) -> serde_json::Value {
        let retrieve_url = self.retrieve_url(row);
        let pairs = self.tags.iter().filter_map(|(tag, explicit)| {
            let value: Option<&str> = match *tag {
                t if t == tags::RETRIEVE_URL => retrieve_url.as_deref(),
                // Every answer comes from this node's index, whose bytes it holds.
                t if t == tags::INSTANCE_AVAILABILITY => Some("ONLINE"),
                // DICOM JSON is always UTF-8.
                t if t == tags::SPECIFIC_CHARACTER_SET => Some("ISO_IR 192"),
                t => match attrs::by_tag(t) {
                    Some(_) => Some(row.get(&t).map(String::as_str).unwrap_or("")),
                    None if *explicit => None,
                    None => return None,
                },
            };
            Some((*tag, value))
        });
        let Some(deid) = &self.deid else {
            return json::dataset(pairs);
        };
        let key = deid.patient(
            row.get(&tags::ISSUER_OF_PATIENT_ID)
                .map(String::as_str)
                .unwrap_or(""),
            row.get(&tags::PATIENT_ID).map(String::as_str).unwrap_or(""),
        );
        let mut owned: Vec<(Tag, Option<String>)> = pairs
            .filter_map(|(tag, value)| match value {
                _ if tag == tags::RETRIEVE_URL
                    || tag == tags::INSTANCE_AVAILABILITY
                    || tag == tags::SPECIFIC_CHARACTER_SET =>
                {
                    Some((tag, value.map(str::to_string)))
                }
                None => Some((tag, None)),
                Some(v) => deid
                    .text(tag, json::vr_of(tag), v, &key)
                    .map(|t| (tag, Some(t))),
            })
            .collect();
        owned.extend(
            deid::text_marks()
                .into_iter()
                .map(|(t, v)| (t, Some(v.to_string()))),
        );
        json::dataset(owned.iter().map(|(t, v)| (*t, v.as_deref())))
    }

    /// The WADO-RS URL of the answer's entity, when the row holds its UIDs.
    fn retrieve_url(&self, row: &AttrValues) -> Option<String> {
        let uid = |t: Tag| row.get(&t).filter(|u| pacsgrid_dicom::uid::is_valid_uid(u));
        let study = uid(tags::STUDY_INSTANCE_UID)?;
        let mut url = format!("{}/studies/{study}", self.base_url);
        if self.level >= Level::Series {
            url.push_str(&format!("/series/{}", uid(tags::SERIES_INSTANCE_UID)?));
        }
        if self.level >= Level::Image {
            url.push_str(&format!("/instances/{}", uid(tags::SOP_INSTANCE_UID)?));
        }
        Some(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicomweb::qido::params;
    use serde_json::json;

    fn row() -> AttrValues {
        let mut r = AttrValues::new();
        r.insert(tags::STUDY_INSTANCE_UID, "1.2.3".into());
        r.insert(tags::SERIES_INSTANCE_UID, "1.2.3.4".into());
        r.insert(tags::SOP_INSTANCE_UID, "1.2.3.4.5".into());
        r.insert(tags::PATIENT_ID, "P1".into());
        r.insert(tags::MODALITY, "CT".into());
        r.insert(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, "3".into());
        r
    }

    fn fields(level: Level, scope: Scope, q: &str) -> Fields {
        let p = params::parse(params::pairs(Some(q)).unwrap()).unwrap();
        Fields::new(level, scope, &p, "http://h:8042/dicom-web".into())
    }

    #[test]
    fn scoped_searches_leave_out_the_fixed_levels() {
        let unscoped = defaults(Level::Series, Scope::All);
        assert!(unscoped.contains(&tags::PATIENT_NAME));
        let scoped = defaults(Level::Series, Scope::Study);
        assert!(!scoped.contains(&tags::PATIENT_NAME));
        assert!(scoped.contains(&tags::STUDY_INSTANCE_UID));
        let inst = defaults(Level::Image, Scope::Series);
        assert!(!inst.contains(&tags::MODALITY));
        assert!(inst.contains(&tags::SERIES_INSTANCE_UID));
        assert!(defaults(Level::Image, Scope::Study).contains(&tags::MODALITY));
    }

    #[test]
    fn answers_value_defaults_and_leave_out_what_the_index_lacks() {
        let f = fields(Level::Series, Scope::Study, "");
        let a = f.answer(&row());
        assert_eq!(
            a["00081190"],
            json!({"vr": "UR", "Value": ["http://h:8042/dicom-web/studies/1.2.3/series/1.2.3.4"]})
        );
        assert_eq!(a["00201209"], json!({"vr": "IS", "Value": [3]}));
        // indexed but empty in this row: present, without Value
        assert_eq!(a["0008103E"], json!({"vr": "LO"}));
        // default but not indexed: left out
        assert!(a.get("00400244").is_none());
        assert!(a.get("00100020").is_none());
    }

    #[test]
    fn explicit_fields_come_back_even_when_empty() {
        let f = fields(
            Level::Image,
            Scope::Series,
            "includefield=00400244,PatientID&Rows=",
        );
        let a = f.answer(&row());
        assert_eq!(a["00400244"], json!({"vr": "DA"}));
        assert_eq!(a["00280010"], json!({"vr": "US"}));
        assert_eq!(a["00100020"], json!({"vr": "LO", "Value": ["P1"]}));
        assert_eq!(a["00080056"], json!({"vr": "CS", "Value": ["ONLINE"]}));
        assert_eq!(
            a["00081190"]["Value"][0],
            "http://h:8042/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
        );
    }

    #[test]
    fn de_identified_answers_hold_no_names_and_shifted_dates() {
        let mut r = row();
        r.insert(tags::PATIENT_NAME, "DOE^JOHN".into());
        r.insert(tags::ISSUER_OF_PATIENT_ID, "ISS".into());
        r.insert(tags::PATIENT_BIRTH_DATE, "19700101".into());
        r.insert(tags::STUDY_DATE, "20200315".into());
        r.insert(tags::ACCESSION_NUMBER, "ACC1".into());
        r.insert(tags::REFERRING_PHYSICIAN_NAME, "HOUSE^G".into());
        r.insert(tags::STUDY_DESCRIPTION, "head of John Doe".into());
        let deid = Arc::new(Deidentifier::new(b"test secret"));
        let key = deid.patient("ISS", "P1");
        let f = fields(Level::Study, Scope::All, "includefield=all").deidentified(deid);
        let a = f.answer(&r);
        let text = a.to_string();
        for real in [
            "DOE", "P1\"", "19700101", "20200315", "ACC1", "HOUSE", "head",
        ] {
            assert!(!text.contains(real), "{real} in {text}");
        }
        assert_eq!(
            a["00100010"]["Value"][0]["Alphabetic"],
            key.pseudonym.as_str()
        );
        assert_eq!(a["00100020"]["Value"][0], key.pseudonym.as_str());
        assert_eq!(
            a["00080020"]["Value"][0],
            deid::dates::shift_da("20200315", key.shift_days).as_str()
        );
        assert_eq!(a["00120062"]["Value"][0], "YES");
        assert_eq!(a["0020000D"]["Value"][0], "1.2.3");
        assert!(a.get("00100021").is_none());
        assert!(a.get("00081030").is_none());
        assert_eq!(a["00080050"], json!({"vr": "SH"}));
    }

    #[test]
    fn all_adds_every_indexed_attribute_at_or_above_the_level() {
        let f = fields(Level::Study, Scope::All, "includefield=all");
        let a = f.answer(&row());
        for attr in attrs::at_or_above(Level::Study) {
            assert!(a.get(json::tag_key(attr.tag)).is_some(), "{}", attr.keyword);
        }
        assert!(a.get("0020000E").is_none());
    }
}
