//! De-identification after PS3.15 Annex E: the Basic Application Level Confidentiality
//! Profile with the Retain UIDs and Retain Longitudinal Temporal Information with Modified
//! Dates options, for the views researchers are given.
//!
//! One [`Deidentifier`] (holding the node's secret) turns a patient into a [`PatientKey`]: a
//! pseudonym (`ANON-` and 16 hex digits of HMAC-SHA256 over issuer and patient ID, the same
//! for every study of the patient) and a date shift of 1 to 365 days. With it, a data set
//! ([`Deidentifier::dataset`]) or a single indexed value ([`Deidentifier::text`]) is
//! de-identified by the same rules: private elements, curves and overlays, group lengths and
//! the attributes of [`table`] go, every person name goes, dates move back by the shift, UIDs
//! stay (so search answers still lead to retrievable objects).

pub mod dates;
pub mod split;
pub mod table;

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;
use ring::hmac;
pub use split::{is_pixel_data, tag_at, ElementEnd, HeaderSplitter, SplitError};
pub use table::Action;

/// The pseudonym prefix, so a de-identified name is recognisable as one.
pub const PSEUDONYM_PREFIX: &str = "ANON-";

/// What DeidentificationMethod (0012,0063) says of every de-identified object: one value
/// per profile and option (LO holds at most 64 characters a value).
pub const METHOD: &str = "PS3.15 E.1 Basic Application Confidentiality Profile\\Retain UIDs Option\\Retain Longitudinal Temporal Information Modified Dates";

/// The codes of DeidentificationMethodCodeSequence (0012,0064), CID 7050: Basic Application
/// Confidentiality Profile, Retain UIDs Option, Retain Longitudinal Temporal Information
/// Modified Dates Option.
pub const METHOD_CODES: [(&str, &str); 3] = [
    ("113100", "Basic Application Confidentiality Profile"),
    ("113110", "Retain UIDs Option"),
    (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
];

/// What stands in for one patient in de-identified data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientKey {
    /// PatientName and PatientID of the de-identified data.
    pub pseudonym: String,
    /// Days every date of the patient moves back (1..=365).
    pub shift_days: u32,
}

/// De-identifies data with the node's secret; cheap to share behind an `Arc`.
pub struct Deidentifier {
    key: hmac::Key,
}

impl std::fmt::Debug for Deidentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deidentifier { .. }")
    }
}

impl Deidentifier {
    /// A de-identifier keyed with `secret` (at least 16 bytes of randomness, kept by the
    /// node: whoever has it can link pseudonyms back to patient IDs by trying them).
    pub fn new(secret: &[u8]) -> Deidentifier {
        Deidentifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The key of the patient `patient_id` under `issuer`: one patient, one pseudonym and one
    /// shift, whichever study or site the data comes from (with the same secret).
    pub fn patient(&self, issuer: &str, patient_id: &str) -> PatientKey {
        let subject = format!("{}\\{}", issuer.trim(), patient_id.trim());
        let name = hmac::sign(&self.key, subject.as_bytes());
        // a second, separate derivation: knowing the shift says nothing of the pseudonym
        let shift = hmac::sign(&self.key, format!("date-shift\\{subject}").as_bytes());
        let s = shift.as_ref();
        let n = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        let hex: String = name.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        PatientKey {
            pseudonym: format!("{PSEUDONYM_PREFIX}{hex}"),
            shift_days: 1 + n % 365,
        }
    }

    /// De-identifies a data set (header or whole), sequences included, and marks it as
    /// de-identified (PatientIdentityRemoved, DeidentificationMethod and its codes,
    /// LongitudinalTemporalInformationModified).
    pub fn dataset(&self, ds: InMemDicomObject, key: &PatientKey) -> InMemDicomObject {
        let mut out = self.items(ds, key);
        for e in marks() {
            out.put(e);
        }
        out
    }

    fn items(&self, ds: InMemDicomObject, key: &PatientKey) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(ds.into_iter().filter_map(|e| self.element(e, key)))
    }

    fn element(&self, e: InMemElement, key: &PatientKey) -> Option<InMemElement> {
        let tag = e.tag();
        let vr = e.vr();
        if removed_by_group(tag) {
            return None;
        }
        match table::action(tag) {
            Some(Action::Remove) => return None,
            Some(Action::Empty) => return Some(DataElement::empty(tag, vr)),
            Some(Action::PatientName) | Some(Action::PatientId) => {
                return Some(DataElement::new(
                    tag,
                    vr,
                    PrimitiveValue::from(key.pseudonym.as_str()),
                ))
            }
            None => {}
        }
        match vr {
            VR::PN => None,
            VR::DA | VR::DT => {
                let text = e
                    .value()
                    .to_str()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let shifted = if vr == VR::DA {
                    dates::shift_da(&text, key.shift_days)
                } else {
                    dates::shift_dt(&text, key.shift_days)
                };
                Some(text_element(tag, vr, &shifted))
            }
            VR::SQ => {
                let (header, value) = e.into_parts();
                match value {
                    Value::Sequence(seq) => {
                        let items: Vec<InMemDicomObject> = seq
                            .into_items()
                            .into_iter()
                            .map(|item| self.items(item, key))
                            .collect();
                        Some(DataElement::new(
                            header.tag,
                            VR::SQ,
                            DataSetSequence::from(items),
                        ))
                    }
                    // not a sequence after all: nothing of it is known to be safe
                    _ => None,
                }
            }
            // Some writers encode standard elements as UN (PS3.5 6.2.2 lets a reader take the
            // dictionary VR). Those that are not names, dates or sequences are kept as they
            // are (an image needs its Rows); the others, and elements the dictionary does not
            // know, go, since their bytes cannot be cleaned reliably.
            VR::UN => match dictionary_vr(tag) {
                Some(VR::PN | VR::DA | VR::DT | VR::SQ | VR::UN) | None => None,
                Some(_) => Some(e),
            },
            _ => Some(e),
        }
    }

    /// The de-identified text of one attribute of an index row (a search answer): `None`
    /// when the attribute is removed, `Some("")` when emptied. `vr` is the dictionary VR.
    pub fn text(&self, tag: Tag, vr: VR, value: &str, key: &PatientKey) -> Option<String> {
        if removed_by_group(tag) {
            return None;
        }
        match table::action(tag) {
            Some(Action::Remove) => return None,
            Some(Action::Empty) => return Some(String::new()),
            Some(Action::PatientName) | Some(Action::PatientId) => {
                return Some(key.pseudonym.clone())
            }
            None => {}
        }
        match vr {
            VR::PN | VR::UN | VR::SQ => None,
            VR::DA => Some(dates::shift_da(value, key.shift_days)),
            VR::DT => Some(dates::shift_dt(value, key.shift_days)),
            _ => Some(value.to_string()),
        }
    }
}

/// The VR the standard dictionary gives `tag`, if it knows the tag.
fn dictionary_vr(tag: Tag) -> Option<VR> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
}

/// Whether an attribute goes by where it lives: private groups, curves (50xx), overlays
/// (60xx), and group lengths (which the rewrite would make wrong).
fn removed_by_group(tag: Tag) -> bool {
    tag.group() % 2 == 1
        || (0x5000..=0x50FF).contains(&tag.group())
        || (0x6000..=0x60FF).contains(&tag.group())
        || (tag.element() == 0x0000 && tag.group() != 0x0002)
}

fn text_element(tag: Tag, vr: VR, text: &str) -> InMemElement {
    if text.is_empty() {
        DataElement::empty(tag, vr)
    } else {
        DataElement::new(tag, vr, PrimitiveValue::from(text))
    }
}

/// The attributes that say an object is de-identified, and how.
pub fn marks() -> Vec<InMemElement> {
    let codes: Vec<InMemDicomObject> = METHOD_CODES
        .iter()
        .map(|(value, meaning)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(*value)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(*meaning)),
            ])
        })
        .collect();
    vec![
        DataElement::new(
            tags::PATIENT_IDENTITY_REMOVED,
            VR::CS,
            PrimitiveValue::from("YES"),
        ),
        DataElement::new(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            PrimitiveValue::Strs(METHOD.split('\\').map(str::to_string).collect()),
        ),
        DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(codes),
        ),
        DataElement::new(
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            PrimitiveValue::from("MODIFIED"),
        ),
    ]
}

/// The marks as text attributes for a search answer (the code sequence left out).
pub fn text_marks() -> [(Tag, &'static str); 3] {
    [
        (tags::PATIENT_IDENTITY_REMOVED, "YES"),
        (tags::DEIDENTIFICATION_METHOD, METHOD),
        (tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "MODIFIED"),
    ]
}

/// Whether an object must not be given out de-identified at all: BurnedInAnnotation
/// (0028,0301) says its pixels show text, which may name the patient and cannot be cleaned
/// by rewriting attributes.
pub fn withheld(ds: &InMemDicomObject) -> bool {
    ds.get(tags::BURNED_IN_ANNOTATION)
        .and_then(|e| e.value().to_str().ok().map(|s| s.to_string()))
        .is_some_and(|v| v.trim_matches([' ', '\0']).eq_ignore_ascii_case("YES"))
}

#[cfg(test)]
mod tests;
