//! The catalogue of attributes the index keeps and queries match on.
//!
//! One table serves C-FIND, QIDO-RS and the index schema, so that a key is matchable
//! everywhere or nowhere.

use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// A level of the DICOM Query/Retrieve information model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The patient level (Patient Root only).
    Patient,
    /// The study level.
    Study,
    /// The series level.
    Series,
    /// The instance level, called IMAGE in QueryRetrieveLevel.
    Image,
}

impl Level {
    /// Parses a QueryRetrieveLevel (0008,0052) value such as `STUDY`.
    pub fn from_code(code: &str) -> Option<Level> {
        match code.trim_matches(|c: char| c == ' ' || c == '\0') {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    /// The QueryRetrieveLevel code of this level.
    pub fn code(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }

    /// The unique key of the level (PatientID for patients, the UID otherwise).
    pub fn unique_key(self) -> Tag {
        match self {
            Level::Patient => tags::PATIENT_ID,
            Level::Study => tags::STUDY_INSTANCE_UID,
            Level::Series => tags::SERIES_INSTANCE_UID,
            Level::Image => tags::SOP_INSTANCE_UID,
        }
    }
}

/// How values of an attribute are compared and which matching kinds apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// Free text (LO, SH, ST, CS...): single value and wildcard matching.
    Text,
    /// A person name (PN): single value and wildcard, case-insensitive.
    PersonName,
    /// A date (DA, `YYYYMMDD`): single value and range.
    Date,
    /// A time (TM, `HHMMSS.FFFFFF`): single value and range.
    Time,
    /// A UID: single value and list of UIDs, never wildcards.
    Uid,
    /// An integer string (IS): single value only.
    Integer,
}

/// Whether the index stores an attribute or derives it from the rows below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Copied from the instance header into the index.
    Stored,
    /// Computed from the index (counts, ModalitiesInStudy, ...); returnable, and matchable
    /// where the standard allows it (ModalitiesInStudy).
    Computed,
}

/// One attribute the index knows: where it lives and how it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedAttr {
    /// The DICOM tag.
    pub tag: Tag,
    /// The DICOM keyword, also the column name stem and the QIDO-RS parameter name.
    pub keyword: &'static str,
    /// The information-model level the attribute belongs to.
    pub level: Level,
    /// How values compare.
    pub kind: AttrKind,
    /// Stored or computed.
    pub origin: Origin,
}

const fn attr(
    tag: Tag,
    keyword: &'static str,
    level: Level,
    kind: AttrKind,
    origin: Origin,
) -> IndexedAttr {
    IndexedAttr {
        tag,
        keyword,
        level,
        kind,
        origin,
    }
}

use AttrKind as K;
use Level as L;
use Origin as O;

/// Every attribute the index holds or computes.
pub static INDEXED: &[IndexedAttr] = &[
    // patient
    attr(
        tags::PATIENT_ID,
        "PatientID",
        L::Patient,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::ISSUER_OF_PATIENT_ID,
        "IssuerOfPatientID",
        L::Patient,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::PATIENT_NAME,
        "PatientName",
        L::Patient,
        K::PersonName,
        O::Stored,
    ),
    attr(
        tags::PATIENT_BIRTH_DATE,
        "PatientBirthDate",
        L::Patient,
        K::Date,
        O::Stored,
    ),
    attr(
        tags::PATIENT_SEX,
        "PatientSex",
        L::Patient,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
        "NumberOfPatientRelatedStudies",
        L::Patient,
        K::Integer,
        O::Computed,
    ),
    attr(
        tags::NUMBER_OF_PATIENT_RELATED_SERIES,
        "NumberOfPatientRelatedSeries",
        L::Patient,
        K::Integer,
        O::Computed,
    ),
    attr(
        tags::NUMBER_OF_PATIENT_RELATED_INSTANCES,
        "NumberOfPatientRelatedInstances",
        L::Patient,
        K::Integer,
        O::Computed,
    ),
    // study
    attr(
        tags::STUDY_INSTANCE_UID,
        "StudyInstanceUID",
        L::Study,
        K::Uid,
        O::Stored,
    ),
    attr(tags::STUDY_DATE, "StudyDate", L::Study, K::Date, O::Stored),
    attr(tags::STUDY_TIME, "StudyTime", L::Study, K::Time, O::Stored),
    attr(
        tags::ACCESSION_NUMBER,
        "AccessionNumber",
        L::Study,
        K::Text,
        O::Stored,
    ),
    attr(tags::STUDY_ID, "StudyID", L::Study, K::Text, O::Stored),
    attr(
        tags::STUDY_DESCRIPTION,
        "StudyDescription",
        L::Study,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::REFERRING_PHYSICIAN_NAME,
        "ReferringPhysicianName",
        L::Study,
        K::PersonName,
        O::Stored,
    ),
    attr(
        tags::MODALITIES_IN_STUDY,
        "ModalitiesInStudy",
        L::Study,
        K::Text,
        O::Computed,
    ),
    attr(
        tags::SOP_CLASSES_IN_STUDY,
        "SOPClassesInStudy",
        L::Study,
        K::Uid,
        O::Computed,
    ),
    attr(
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        "NumberOfStudyRelatedSeries",
        L::Study,
        K::Integer,
        O::Computed,
    ),
    attr(
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        "NumberOfStudyRelatedInstances",
        L::Study,
        K::Integer,
        O::Computed,
    ),
    // series
    attr(
        tags::SERIES_INSTANCE_UID,
        "SeriesInstanceUID",
        L::Series,
        K::Uid,
        O::Stored,
    ),
    attr(tags::MODALITY, "Modality", L::Series, K::Text, O::Stored),
    attr(
        tags::SERIES_NUMBER,
        "SeriesNumber",
        L::Series,
        K::Integer,
        O::Stored,
    ),
    attr(
        tags::SERIES_DESCRIPTION,
        "SeriesDescription",
        L::Series,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::BODY_PART_EXAMINED,
        "BodyPartExamined",
        L::Series,
        K::Text,
        O::Stored,
    ),
    attr(
        tags::SERIES_DATE,
        "SeriesDate",
        L::Series,
        K::Date,
        O::Stored,
    ),
    attr(
        tags::SERIES_TIME,
        "SeriesTime",
        L::Series,
        K::Time,
        O::Stored,
    ),
    attr(
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        "NumberOfSeriesRelatedInstances",
        L::Series,
        K::Integer,
        O::Computed,
    ),
    // instance
    attr(
        tags::SOP_INSTANCE_UID,
        "SOPInstanceUID",
        L::Image,
        K::Uid,
        O::Stored,
    ),
    attr(
        tags::SOP_CLASS_UID,
        "SOPClassUID",
        L::Image,
        K::Uid,
        O::Stored,
    ),
    attr(
        tags::INSTANCE_NUMBER,
        "InstanceNumber",
        L::Image,
        K::Integer,
        O::Stored,
    ),
];

/// Attributes that are answered in every response but are not matched (they describe the
/// answer, not the data): SpecificCharacterSet, QueryRetrieveLevel, RetrieveAETitle,
/// InstanceAvailability, TimezoneOffsetFromUTC.
pub static ANSWER_ONLY: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::QUERY_RETRIEVE_LEVEL,
    tags::RETRIEVE_AE_TITLE,
    tags::INSTANCE_AVAILABILITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
];

/// Looks up an indexed attribute by tag.
pub fn by_tag(tag: Tag) -> Option<&'static IndexedAttr> {
    INDEXED.iter().find(|a| a.tag == tag)
}

/// Looks up an indexed attribute by keyword (exact, as in the DICOM dictionary).
pub fn by_keyword(keyword: &str) -> Option<&'static IndexedAttr> {
    INDEXED.iter().find(|a| a.keyword == keyword)
}

/// The attributes returned by default at a level (used by QIDO-RS without `includefield`
/// and to fill C-FIND answers): every indexed attribute of that level and the levels above.
pub fn at_or_above(level: Level) -> impl Iterator<Item = &'static IndexedAttr> {
    INDEXED.iter().filter(move |a| a.level <= level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_from_patient_down() {
        assert!(Level::Patient < Level::Study);
        assert!(Level::Series < Level::Image);
        assert_eq!(Level::from_code("SERIES "), Some(Level::Series));
        assert_eq!(Level::from_code("FRAME"), None);
    }

    #[test]
    fn every_tag_is_listed_once() {
        for (i, a) in INDEXED.iter().enumerate() {
            assert!(
                INDEXED[i + 1..].iter().all(|b| b.tag != a.tag),
                "{} listed twice",
                a.keyword
            );
        }
        assert_eq!(
            by_keyword("ModalitiesInStudy").map(|a| a.level),
            Some(Level::Study)
        );
    }
}
