//! The JSON shapes of patients, studies, series and instances, built from index answers.
//! Field names are snake_case and stable; the OpenAPI document describes each one.

use super::time::rfc3339_ms;
use crate::REST_BASE;
use dicom_dictionary_std::tags;
use pacsgrid_archive::{AttrValues, Provenance, StoredInstance};
use pacsgrid_dicom::attrs;
use pacsgrid_dicom::Tag;
use serde::Serialize;
use std::collections::BTreeMap;

fn text(row: &AttrValues, tag: Tag) -> String {
    row.get(&tag).cloned().unwrap_or_default()
}

fn int(row: &AttrValues, tag: Tag) -> Option<i64> {
    row.get(&tag).and_then(|v| v.trim().parse().ok())
}

fn count(row: &AttrValues, tag: Tag) -> u64 {
    row.get(&tag)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn list(row: &AttrValues, tag: Tag) -> Vec<String> {
    row.get(&tag)
        .map(|v| {
            v.split('\\')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of a patient: issuer first, because an ID means something only within its
/// issuer (the same ID under two issuers is two people).
pub(crate) fn patient_url(issuer: &str, patient_id: &str) -> String {
    format!(
        "{REST_BASE}/patients/{}/{}",
        encode_segment(issuer),
        encode_segment(patient_id)
    )
}

/// Who a study belongs to (patient attributes, without counts).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct PatientRef {
    /// PatientID (0010,0020).
    pub patient_id: String,
    /// IssuerOfPatientID (0010,0021), or the site's default issuer.
    pub issuer: String,
    /// PatientName (0010,0010) in DICOM PN form.
    pub name: String,
    /// PatientBirthDate (0010,0030), `YYYYMMDD` or empty.
    pub birth_date: String,
    /// PatientSex (0010,0040).
    pub sex: String,
    /// The patient's URL, absent when the PatientID or issuer is empty (no such URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl PatientRef {
    /// From any index answer (patient attributes are in answers of every level).
    pub(crate) fn from_row(row: &AttrValues) -> PatientRef {
        let patient_id = text(row, tags::PATIENT_ID);
        let issuer = text(row, tags::ISSUER_OF_PATIENT_ID);
        let url = (!patient_id.is_empty() && !issuer.is_empty())
            .then(|| patient_url(&issuer, &patient_id));
        PatientRef {
            name: text(row, tags::PATIENT_NAME),
            birth_date: text(row, tags::PATIENT_BIRTH_DATE),
            sex: text(row, tags::PATIENT_SEX),
            patient_id,
            issuer,
            url,
        }
    }
}

/// A patient in a list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Patient {
    /// Identity and demographics.
    #[serde(flatten)]
    pub patient: PatientRef,
    /// NumberOfPatientRelatedStudies.
    pub number_of_studies: u64,
    /// NumberOfPatientRelatedSeries.
    pub number_of_series: u64,
    /// NumberOfPatientRelatedInstances.
    pub number_of_instances: u64,
}

impl Patient {
    /// From a patient-level index answer.
    pub(crate) fn from_row(row: &AttrValues) -> Patient {
        Patient {
            patient: PatientRef::from_row(row),
            number_of_studies: count(row, tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
            number_of_series: count(row, tags::NUMBER_OF_PATIENT_RELATED_SERIES),
            number_of_instances: count(row, tags::NUMBER_OF_PATIENT_RELATED_INSTANCES),
        }
    }
}

/// A study in a list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Study {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// StudyDate, `YYYYMMDD` or empty.
    pub date: String,
    /// StudyTime, `HHMMSS[.F]` or empty.
    pub time: String,
    /// AccessionNumber.
    pub accession_number: String,
    /// StudyID.
    pub study_id: String,
    /// StudyDescription.
    pub description: String,
    /// ReferringPhysicianName.
    pub referring_physician_name: String,
    /// ModalitiesInStudy, sorted.
    pub modalities: Vec<String>,
    /// SOPClassesInStudy, sorted.
    pub sop_classes: Vec<String>,
    /// NumberOfStudyRelatedSeries.
    pub number_of_series: u64,
    /// NumberOfStudyRelatedInstances.
    pub number_of_instances: u64,
    /// The patient.
    pub patient: PatientRef,
    /// This study's URL.
    pub url: String,
}

impl Study {
    /// From a study-level (or deeper) index answer.
    pub(crate) fn from_row(row: &AttrValues) -> Study {
        let study_uid = text(row, tags::STUDY_INSTANCE_UID);
        Study {
            url: format!("{REST_BASE}/studies/{study_uid}"),
            study_uid,
            date: text(row, tags::STUDY_DATE),
            time: text(row, tags::STUDY_TIME),
            accession_number: text(row, tags::ACCESSION_NUMBER),
            study_id: text(row, tags::STUDY_ID),
            description: text(row, tags::STUDY_DESCRIPTION),
            referring_physician_name: text(row, tags::REFERRING_PHYSICIAN_NAME),
            modalities: list(row, tags::MODALITIES_IN_STUDY),
            sop_classes: list(row, tags::SOP_CLASSES_IN_STUDY),
            number_of_series: count(row, tags::NUMBER_OF_STUDY_RELATED_SERIES),
            number_of_instances: count(row, tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
            patient: PatientRef::from_row(row),
        }
    }
}

/// A series in a list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Series {
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// The study it belongs to.
    pub study_uid: String,
    /// Modality.
    pub modality: String,
    /// SeriesNumber, null when absent.
    pub number: Option<i64>,
    /// SeriesDescription.
    pub description: String,
    /// BodyPartExamined.
    pub body_part: String,
    /// SeriesDate.
    pub date: String,
    /// SeriesTime.
    pub time: String,
    /// NumberOfSeriesRelatedInstances.
    pub number_of_instances: u64,
    /// This series' URL.
    pub url: String,
}

impl Series {
    /// From a series-level (or deeper) index answer.
    pub(crate) fn from_row(row: &AttrValues) -> Series {
        let series_uid = text(row, tags::SERIES_INSTANCE_UID);
        Series {
            url: format!("{REST_BASE}/series/{series_uid}"),
            series_uid,
            study_uid: text(row, tags::STUDY_INSTANCE_UID),
            modality: text(row, tags::MODALITY),
            number: int(row, tags::SERIES_NUMBER),
            description: text(row, tags::SERIES_DESCRIPTION),
            body_part: text(row, tags::BODY_PART_EXAMINED),
            date: text(row, tags::SERIES_DATE),
            time: text(row, tags::SERIES_TIME),
            number_of_instances: count(row, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
        }
    }

    /// Sorts series as viewers show them: by SeriesNumber (absent last), then UID.
    pub(crate) fn sort(list: &mut [Series]) {
        list.sort_by(|a, b| {
            (a.number.is_none(), a.number, &a.series_uid).cmp(&(
                b.number.is_none(),
                b.number,
                &b.series_uid,
            ))
        });
    }
}

/// An instance in a list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Instance {
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// SOPClassUID.
    pub sop_class_uid: String,
    /// InstanceNumber, null when absent.
    pub number: Option<i64>,
    /// Transfer syntax UID of the stored bytes.
    pub transfer_syntax: String,
    /// Size of the stored Part 10 bytes.
    pub size: u64,
    /// Content hash (lowercase hex BLAKE3) of the stored Part 10 bytes.
    pub hash: String,
    /// This instance's URL.
    pub url: String,
}

impl Instance {
    /// From where the bytes are and, when known, the instance-level index answer.
    pub(crate) fn new(stored: &StoredInstance, row: Option<&AttrValues>) -> Instance {
        Instance {
            url: format!("{REST_BASE}/instances/{}", stored.sop_instance_uid),
            sop_instance_uid: stored.sop_instance_uid.clone(),
            sop_class_uid: stored.sop_class_uid.clone(),
            number: row.and_then(|r| int(r, tags::INSTANCE_NUMBER)),
            transfer_syntax: stored.transfer_syntax.clone(),
            size: stored.size,
            hash: stored.hash.clone(),
        }
    }
}

/// One instance with everything the node knows about it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InstanceDetail {
    /// The list fields.
    #[serde(flatten)]
    pub instance: Instance,
    /// Its series.
    pub series_uid: String,
    /// Its study.
    pub study_uid: String,
    /// Its patient.
    pub patient: PatientRef,
    /// Offset of the data set within the stored bytes (after the file meta group).
    pub dataset_offset: u64,
    /// The site where it first entered the grid.
    pub origin_site: String,
    /// Who sent it (calling AE title, `STOW-RS`, `import`...).
    pub source: String,
    /// When this node received it (RFC 3339, UTC).
    pub received_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Sites known to hold its bytes.
    pub holders: Vec<String>,
    /// Every indexed attribute of the instance and the levels above, by DICOM keyword, as
    /// DICOM text (multiple values joined by `\`).
    pub attributes: BTreeMap<String, String>,
}

impl InstanceDetail {
    /// From the instance-level index answer, where its bytes are, and its provenance.
    pub(crate) fn new(row: &AttrValues, stored: &StoredInstance, prov: Provenance) -> Self {
        let attributes = row
            .iter()
            .filter_map(|(tag, v)| attrs::by_tag(*tag).map(|a| (a.keyword.to_string(), v.clone())))
            .collect();
        InstanceDetail {
            instance: Instance::new(stored, Some(row)),
            series_uid: stored.series_uid.clone(),
            study_uid: stored.study_uid.clone(),
            patient: PatientRef::from_row(row),
            dataset_offset: stored.dataset_offset,
            origin_site: prov.origin_site,
            source: prov.source,
            received_at: rfc3339_ms(prov.received_at_ms),
            received_at_ms: prov.received_at_ms,
            holders: prov.holders,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_urls_escape_each_segment() {
        assert_eq!(
            patient_url("HOSP A/B", "12%3"),
            "/api/v1/patients/HOSP%20A%2FB/12%253"
        );
        assert_eq!(patient_url("Ü", "x"), "/api/v1/patients/%C3%9C/x");
    }

    #[test]
    fn rows_become_json_with_counts_and_lists() {
        let mut row = AttrValues::new();
        row.insert(tags::STUDY_INSTANCE_UID, "1.2.3".into());
        row.insert(tags::MODALITIES_IN_STUDY, "CT\\MR".into());
        row.insert(tags::NUMBER_OF_STUDY_RELATED_SERIES, "2".into());
        row.insert(tags::PATIENT_ID, "P1".into());
        row.insert(tags::ISSUER_OF_PATIENT_ID, "H".into());
        let s = Study::from_row(&row);
        assert_eq!(s.modalities, ["CT", "MR"]);
        assert_eq!(s.number_of_series, 2);
        assert_eq!(s.number_of_instances, 0);
        assert_eq!(s.url, "/api/v1/studies/1.2.3");
        assert_eq!(s.patient.url.as_deref(), Some("/api/v1/patients/H/P1"));
        let js = serde_json::to_value(&s).unwrap();
        assert_eq!(js["description"], "");
        let mut series = vec![
            Series::from_row(&AttrValues::new()),
            Series {
                number: Some(2),
                ..Series::from_row(&AttrValues::new())
            },
            Series {
                number: Some(1),
                ..Series::from_row(&AttrValues::new())
            },
        ];
        Series::sort(&mut series);
        let numbers: Vec<_> = series.iter().map(|s| s.number).collect();
        assert_eq!(numbers, [Some(1), Some(2), None]);
    }
}
