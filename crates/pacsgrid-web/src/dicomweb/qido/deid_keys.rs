//! Which matching keys a de-identified search may use. Matching on a name, an ID, a birth
//! date or any date (the answers show them shifted, the index holds them real) would let a
//! researcher confirm who is in the archive by asking, so only keys that identify nobody are
//! matched; the rest are refused with 400 naming the key. Return keys (empty values) stay
//! allowed: their answers are de-identified like every other attribute.

use super::params::SearchParams;
use crate::problem::Problem;
use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// The keys a de-identified search may match on.
const ALLOWED: &[Tag] = &[
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::SOP_CLASS_UID,
    tags::SOP_CLASSES_IN_STUDY,
    tags::MODALITY,
    tags::MODALITIES_IN_STUDY,
    tags::BODY_PART_EXAMINED,
    tags::SERIES_NUMBER,
    tags::INSTANCE_NUMBER,
];

/// Refuses a de-identified search that matches on anything but [`ALLOWED`], or asks for
/// fuzzy (name) matching.
pub(crate) fn check(params: &SearchParams) -> Result<(), Problem> {
    if params.fuzzy {
        return Err(Problem::bad_request(
            "query parameter fuzzymatching: de-identified searches do not match on names",
        ));
    }
    // keys the index cannot match on (sequences, attributes it does not hold): their values
    // are dropped already, but refusing says plainly what a researcher may ask
    if let Some(name) = params.unsupported.first() {
        return Err(refusal(name));
    }
    match params
        .keys
        .iter()
        .find(|k| !k.value.is_empty() && !ALLOWED.contains(&k.tag))
    {
        Some(k) => Err(refusal(&k.name)),
        None => Ok(()),
    }
}

fn refusal(name: &str) -> Problem {
    Problem::bad_request(format!(
        "query parameter {name}: de-identified searches match only on UIDs, Modality, ModalitiesInStudy, SOPClassUID, SOPClassesInStudy, BodyPartExamined, SeriesNumber and InstanceNumber; it may be asked as a return key (empty value)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicomweb::qido::params;

    fn checked(q: &str) -> Result<(), Problem> {
        check(&params::parse(params::pairs(Some(q)).unwrap()).unwrap())
    }

    #[test]
    fn identifying_keys_are_refused_by_name() {
        for (q, name) in [
            ("PatientName=DOE*", "PatientName"),
            ("00100020=P1", "00100020"),
            ("PatientBirthDate=19700101", "PatientBirthDate"),
            ("AccessionNumber=A1", "AccessionNumber"),
            ("ReferringPhysicianName=X", "ReferringPhysicianName"),
            ("StudyID=1", "StudyID"),
            ("StudyDate=20200101-", "StudyDate"),
            ("StudyDescription=*head*", "StudyDescription"),
            ("InstitutionName=X", "InstitutionName"),
            ("Modality=CT&PatientSex=F", "PatientSex"),
        ] {
            let e = checked(q).unwrap_err();
            assert!(e.detail.contains(name), "{q}: {}", e.detail);
        }
        assert!(checked("fuzzymatching=true").is_err());
    }

    #[test]
    fn uid_modality_and_return_keys_are_fine() {
        for q in [
            "",
            "StudyInstanceUID=1.2.3",
            "ModalitiesInStudy=CT,MR&limit=5&offset=2",
            "Modality=CT&BodyPartExamined=HEAD&SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
            "PatientName=&PatientID=&includefield=all",
        ] {
            assert!(checked(q).is_ok(), "{q}");
        }
    }
}
