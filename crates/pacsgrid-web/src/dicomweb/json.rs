//! DICOM JSON (PS3.18 F.2) for index answers: one tag per key, VR from the dictionary.
//!
//! The index answers in DICOM text (`\` between values, PN groups joined by `=`); this module
//! turns such text into the JSON model, so every service that answers from the index (QIDO-RS,
//! the REST API) encodes values the same way.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::{Map, Value};

/// The VR of a tag in the standard dictionary (the first choice for tags with several, as
/// US/SS); `UN` for private and unknown tags.
pub(crate) fn vr_of(tag: Tag) -> VR {
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// The JSON object key of a tag: eight upper-case hex digits (F.2.1.1).
pub(crate) fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// One attribute as a DICOM JSON object `{"vr": .., "Value": [..]}` with its VR from the
/// dictionary. `None` or an empty text gives the object without "Value".
pub(crate) fn attribute(tag: Tag, text: Option<&str>) -> Value {
    attribute_with_vr(vr_of(tag), text)
}

/// One attribute as a DICOM JSON object, with the VR given.
pub(crate) fn attribute_with_vr(vr: VR, text: Option<&str>) -> Value {
    let mut obj = Map::new();
    obj.insert("vr".into(), Value::String(vr.to_string().into()));
    if let Some(values) = text.and_then(|t| values(vr, t)) {
        obj.insert("Value".into(), Value::Array(values));
    }
    Value::Object(obj)
}

/// The "Value" array for a DICOM text of `vr`, or `None` when there is nothing to put in it
/// (empty text, or a VR whose values cannot come from text: sequences and binary).
pub(crate) fn values(vr: VR, text: &str) -> Option<Vec<Value>> {
    let text = trim_padding(text);
    if text.is_empty() {
        return None;
    }
    let single = matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR);
    if single {
        // These VRs are single-valued and may hold a backslash as a character.
        return Some(vec![Value::String(text.to_string())]);
    }
    if matches!(
        vr,
        VR::SQ | VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    ) {
        return None;
    }
    Some(text.split('\\').map(|v| one_value(vr, v)).collect())
}

/// One value of a multi-valued text: a number for numeric VRs, a PN object for names, a string
/// otherwise; an empty value is `null` (F.2.5).
fn one_value(vr: VR, raw: &str) -> Value {
    let v = raw.trim_matches(|c: char| c == ' ' || c == '\0');
    if v.is_empty() {
        return Value::Null;
    }
    match vr {
        VR::PN => person_name(v),
        VR::IS | VR::SS | VR::SL | VR::US | VR::UL | VR::SV | VR::UV => integer(v),
        VR::DS | VR::FL | VR::FD => decimal(v),
        _ => Value::String(v.to_string()),
    }
}

/// A PN value as its component groups (F.2.2): alphabetic, ideographic and phonetic, split
/// on `=`; absent groups are left out.
fn person_name(v: &str) -> Value {
    let mut obj = Map::new();
    for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"]
        .iter()
        .zip(v.splitn(3, '='))
    {
        let group = group.trim_end_matches(' ');
        if !group.is_empty() {
            obj.insert((*name).into(), Value::String(group.to_string()));
        }
    }
    if obj.is_empty() {
        Value::Null
    } else {
        Value::Object(obj)
    }
}

/// An integer as a JSON number; text that is no integer stays a string rather than being
/// invented (F.2.3.1 allows IS as a string when it is not a valid number).
fn integer(v: &str) -> Value {
    let digits = v.strip_prefix('+').unwrap_or(v);
    if let Ok(n) = digits.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = digits.parse::<u64>() {
        return Value::from(n);
    }
    Value::String(v.to_string())
}

/// A decimal as a JSON number (integral values without a fraction); values JSON cannot hold
/// (NaN, infinity) or that do not parse stay strings.
fn decimal(v: &str) -> Value {
    let digits = v.strip_prefix('+').unwrap_or(v);
    if let Ok(n) = digits.parse::<i64>() {
        return Value::from(n);
    }
    match digits.parse::<f64>() {
        Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(v.to_string())),
        _ => Value::String(v.to_string()),
    }
}

/// Strips DICOM padding: trailing spaces and NULs, and leading spaces.
fn trim_padding(text: &str) -> &str {
    text.trim_end_matches([' ', '\0']).trim_start_matches(' ')
}

/// A DICOM JSON data set from (tag, text) pairs, keys in ascending tag order.
pub(crate) fn dataset<'a>(pairs: impl IntoIterator<Item = (Tag, Option<&'a str>)>) -> Value {
    let mut sorted: Vec<(Tag, Option<&str>)> = pairs.into_iter().collect();
    sorted.sort_by_key(|(t, _)| *t);
    sorted.dedup_by_key(|(t, _)| *t);
    let mut obj = Map::new();
    for (tag, text) in sorted {
        obj.insert(tag_key(tag), attribute(tag, text));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;
    use serde_json::json;

    #[test]
    fn keys_are_eight_upper_case_hex_digits() {
        assert_eq!(tag_key(tags::STUDY_INSTANCE_UID), "0020000D");
        assert_eq!(tag_key(Tag(0x0009, 0x10ab)), "000910AB");
    }

    #[test]
    fn vrs_come_from_the_dictionary() {
        assert_eq!(vr_of(tags::PATIENT_NAME), VR::PN);
        assert_eq!(vr_of(tags::NUMBER_OF_STUDY_RELATED_INSTANCES), VR::IS);
        assert_eq!(vr_of(tags::MODALITIES_IN_STUDY), VR::CS);
        assert_eq!(vr_of(tags::RETRIEVE_URL), VR::UR);
        assert_eq!(vr_of(tags::ROWS), VR::US);
        assert_eq!(vr_of(Tag(0x0009, 0x1010)), VR::UN);
    }

    #[test]
    fn person_names_split_into_groups() {
        assert_eq!(
            attribute(
                tags::PATIENT_NAME,
                Some("Yamada^Tarou=山田^太郎=やまだ^たろう")
            ),
            json!({"vr": "PN", "Value": [{
                "Alphabetic": "Yamada^Tarou",
                "Ideographic": "山田^太郎",
                "Phonetic": "やまだ^たろう"
            }]})
        );
        assert_eq!(
            attribute(tags::PATIENT_NAME, Some("Müller^Anna ")),
            json!({"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]})
        );
        assert_eq!(
            attribute(tags::PATIENT_NAME, Some("=山田^太郎")),
            json!({"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]})
        );
    }

    #[test]
    fn numbers_are_json_numbers() {
        assert_eq!(
            attribute(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, Some("38")),
            json!({"vr": "IS", "Value": [38]})
        );
        assert_eq!(
            attribute(tags::SERIES_NUMBER, Some(" +7 ")),
            json!({"vr": "IS", "Value": [7]})
        );
        assert_eq!(
            attribute(tags::PIXEL_SPACING, Some("0.5\\0.25")),
            json!({"vr": "DS", "Value": [0.5, 0.25]})
        );
        assert_eq!(
            attribute(tags::ROWS, Some("512")),
            json!({"vr": "US", "Value": [512]})
        );
        assert_eq!(
            attribute(tags::SERIES_NUMBER, Some("x1")),
            json!({"vr": "IS", "Value": ["x1"]})
        );
    }

    #[test]
    fn multi_values_split_and_padding_trimmed() {
        assert_eq!(
            attribute(tags::MODALITIES_IN_STUDY, Some("CT\\MR ")),
            json!({"vr": "CS", "Value": ["CT", "MR"]})
        );
        assert_eq!(
            attribute(tags::STUDY_INSTANCE_UID, Some("1.2.3\0")),
            json!({"vr": "UI", "Value": ["1.2.3"]})
        );
        assert_eq!(
            attribute(tags::MODALITIES_IN_STUDY, Some("CT\\\\MR")),
            json!({"vr": "CS", "Value": ["CT", null, "MR"]})
        );
        // single-valued text VRs keep a backslash as a character
        assert_eq!(
            attribute(tags::RETRIEVE_URL, Some("http://h/a\\b")),
            json!({"vr": "UR", "Value": ["http://h/a\\b"]})
        );
    }

    #[test]
    fn empty_values_have_no_value_member() {
        assert_eq!(
            attribute(tags::ACCESSION_NUMBER, Some("")),
            json!({"vr": "SH"})
        );
        assert_eq!(
            attribute(tags::ACCESSION_NUMBER, Some("  ")),
            json!({"vr": "SH"})
        );
        assert_eq!(attribute(tags::ROWS, None), json!({"vr": "US"}));
        assert_eq!(
            attribute(tags::REQUEST_ATTRIBUTES_SEQUENCE, Some("x")),
            json!({"vr": "SQ"})
        );
    }

    #[test]
    fn data_sets_are_sorted_by_tag() {
        let mut row = pacsgrid_archive::AttrValues::new();
        row.insert(tags::STUDY_INSTANCE_UID, "1.2.3".into());
        row.insert(tags::PATIENT_ID, "P1".into());
        row.insert(tags::STUDY_DATE, "20200101".into());
        let v = super::dataset(row.iter().map(|(t, v)| (*t, Some(v.as_str()))));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["00080020", "00100020", "0020000D"]);
        assert_eq!(v["00080020"], json!({"vr": "DA", "Value": ["20200101"]}));
    }
}
