//! Query/Retrieve identifiers: decoding a request's identifier into a [`Query`], and
//! encoding answers, with dicom-object in the presentation context's transfer syntax.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use pacsgrid_dicom::{status, uid, Level, Query, QueryError, QueryModel};
use std::collections::HashMap;

/// The largest identifier we accept: real ones are a few hundred bytes.
pub const MAX_IDENTIFIER: usize = 1 << 20;

/// Which Query/Retrieve service an abstract syntax names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrService {
    /// C-FIND.
    Find,
    /// C-MOVE.
    Move,
    /// C-GET.
    Get,
}

/// The information model and service of a Query/Retrieve SOP class.
pub fn qr_model(abstract_syntax: &str) -> Option<(QueryModel, QrService)> {
    use QrService as S;
    use QueryModel as M;
    Some(match uid::trim_uid(abstract_syntax) {
        uid::PATIENT_ROOT_FIND => (M::PatientRoot, S::Find),
        uid::PATIENT_ROOT_MOVE => (M::PatientRoot, S::Move),
        uid::PATIENT_ROOT_GET => (M::PatientRoot, S::Get),
        uid::STUDY_ROOT_FIND => (M::StudyRoot, S::Find),
        uid::STUDY_ROOT_MOVE => (M::StudyRoot, S::Move),
        uid::STUDY_ROOT_GET => (M::StudyRoot, S::Get),
        _ => return None,
    })
}

/// A refusal: the status to answer and the ErrorComment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// DIMSE status.
    pub status: u16,
    /// Why, for the ErrorComment and the log.
    pub comment: String,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>) -> Self {
        Refusal {
            status,
            comment: comment.into(),
        }
    }
}

fn registry_ts(ts_uid: &str) -> Result<&'static dicom_encoding::TransferSyntax, String> {
    TransferSyntaxRegistry
        .get(uid::trim_uid(ts_uid))
        .ok_or_else(|| format!("transfer syntax {ts_uid} is not supported for identifiers"))
}

/// Decodes an identifier in the context's transfer syntax.
pub fn decode(raw: &[u8], ts_uid: &str) -> Result<InMemDicomObject, Refusal> {
    let ts = registry_ts(ts_uid).map_err(|e| Refusal::new(status::ERROR_CANNOT_UNDERSTAND, e))?;
    InMemDicomObject::read_dataset_with_ts(raw, ts).map_err(|e| {
        Refusal::new(
            status::ERROR_CANNOT_UNDERSTAND,
            format!("identifier does not parse: {e}"),
        )
    })
}

/// Encodes an answer identifier in the context's transfer syntax.
pub fn encode(obj: &InMemDicomObject, ts_uid: &str) -> Result<Vec<u8>, String> {
    let ts = registry_ts(ts_uid)?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| format!("cannot encode identifier: {e}"))?;
    Ok(out)
}

/// A request identifier, read: the level, the keys as text, and each key's VR (to answer
/// a key in the form it was asked).
#[derive(Debug, Clone)]
pub struct Keys {
    /// QueryRetrieveLevel.
    pub level: Level,
    /// (tag, value) of every key, multi-values joined with `\`.
    pub pairs: Vec<(Tag, String)>,
    /// The VR of each key.
    pub vrs: HashMap<Tag, VR>,
}

/// Reads the keys of an identifier. Sequences are kept as empty return keys (sequence
/// matching is not supported; they come back empty).
pub fn keys(obj: &InMemDicomObject) -> Result<Keys, Refusal> {
    let level_text = obj
        .get(tags::QUERY_RETRIEVE_LEVEL)
        .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
        .unwrap_or_default();
    let level = Level::from_code(&level_text).ok_or_else(|| {
        Refusal::new(
            status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!("invalid QueryRetrieveLevel {:?}", level_text.trim()),
        )
    })?;
    let mut pairs = Vec::new();
    let mut vrs = HashMap::new();
    for e in obj.iter() {
        let tag = e.tag();
        if tag == tags::SPECIFIC_CHARACTER_SET || tag == tags::QUERY_RETRIEVE_LEVEL {
            continue;
        }
        vrs.insert(tag, e.vr());
        let text = match e.value() {
            Value::Primitive(p) => p.to_str().to_string(),
            _ => String::new(),
        };
        pairs.push((tag, text));
    }
    Ok(Keys { level, pairs, vrs })
}

/// Turns a query refusal into a status: a key at the wrong level does not match the
/// information model (A900); a malformed value cannot be understood (C000).
pub fn query_refusal(e: &QueryError) -> Refusal {
    let code = match e {
        QueryError::BadLevel(_) | QueryError::KeyBelowLevel { .. } => {
            status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS
        }
        QueryError::BadValue { .. } => status::ERROR_CANNOT_UNDERSTAND,
    };
    Refusal::new(code, e.to_string())
}

/// Decodes an identifier and parses it as a query of `model`.
pub fn parse_query(raw: &[u8], ts_uid: &str, model: QueryModel) -> Result<(Query, Keys), Refusal> {
    let obj = decode(raw, ts_uid)?;
    let keys = keys(&obj)?;
    let query = Query::parse(
        model,
        keys.level,
        keys.pairs.iter().map(|(t, v)| (*t, v.as_str())),
    )
    .map_err(|e| query_refusal(&e))?;
    Ok((query, keys))
}

/// The VR a tag is answered with: the request's, else the dictionary's, else UN.
pub fn vr_of(tag: Tag, asked: &HashMap<Tag, VR>) -> VR {
    if let Some(vr) = asked.get(&tag) {
        if *vr != VR::UN {
            return *vr;
        }
    }
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::UN)
}

/// Builds an element of `vr` from a text value (multi-values separated by `\`). Values
/// that do not fit the VR are answered empty rather than invented.
pub fn element(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    if value.is_empty() {
        return DataElement::empty(tag, vr);
    }
    let parts = || value.split('\\').map(|s| s.trim());
    let prim: Option<PrimitiveValue> = match vr {
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::PN
        | VR::SH
        | VR::TM
        | VR::UC
        | VR::UI => Some(PrimitiveValue::Strs(
            value.split('\\').map(|s| s.to_string()).collect(),
        )),
        VR::LT | VR::ST | VR::UT | VR::UR => Some(PrimitiveValue::from(value.to_string())),
        VR::US => parts()
            .map(|p| p.parse::<u16>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::U16(v.into())),
        VR::SS => parts()
            .map(|p| p.parse::<i16>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::I16(v.into())),
        VR::UL => parts()
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::U32(v.into())),
        VR::SL => parts()
            .map(|p| p.parse::<i32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::I32(v.into())),
        VR::FL => parts()
            .map(|p| p.parse::<f32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::F32(v.into())),
        VR::FD => parts()
            .map(|p| p.parse::<f64>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::F64(v.into())),
        _ => None,
    };
    match prim {
        Some(p) => DataElement::new(tag, vr, p),
        None => DataElement::empty(tag, vr),
    }
}

/// Builds one C-FIND answer: the requested return keys (empty when we do not index them),
/// QueryRetrieveLevel, RetrieveAETitle, and SpecificCharacterSet "ISO_IR 192" when any value
/// is not ASCII (values are UTF-8 inside pacsgrid).
///
/// IssuerOfPatientID is added when PatientID is asked for: patients are per issuer, and two
/// answers with the same PatientID must say which issuer each belongs to.
pub fn answer(
    query: &Query,
    asked_vrs: &HashMap<Tag, VR>,
    row: &pacsgrid_archive::AttrValues,
    retrieve_ae: &str,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    let mut non_ascii = false;
    let mut put = |obj: &mut InMemDicomObject, tag: Tag| {
        let value = row.get(&tag).map(String::as_str).unwrap_or("");
        non_ascii |= !value.is_ascii();
        obj.put(element(tag, vr_of(tag, asked_vrs), value));
    };
    for tag in &query.return_tags {
        if *tag == tags::RETRIEVE_AE_TITLE || *tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        put(&mut obj, *tag);
    }
    if query.return_tags.contains(&tags::PATIENT_ID)
        && !query.return_tags.contains(&tags::ISSUER_OF_PATIENT_ID)
        && row.contains_key(&tags::ISSUER_OF_PATIENT_ID)
    {
        put(&mut obj, tags::ISSUER_OF_PATIENT_ID);
    }
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(query.level.code()),
    ));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(retrieve_ae.trim()),
    ));
    if non_ascii {
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from("ISO_IR 192"),
        ));
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(level: &str, extra: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from(level),
        ));
        for e in extra {
            obj.put(e);
        }
        obj
    }

    #[test]
    fn identifier_to_query_and_back() {
        let req = request(
            "STUDY",
            vec![
                DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("M*")),
                DataElement::empty(tags::STUDY_INSTANCE_UID, VR::UI),
                DataElement::empty(tags::MODALITIES_IN_STUDY, VR::CS),
                DataElement::empty(Tag(0x0009, 0x1010), VR::LO),
                DataElement::empty(tags::PATIENT_ID, VR::LO),
            ],
        );
        for ts in [uid::IMPLICIT_VR_LE, uid::EXPLICIT_VR_LE] {
            let raw = encode(&req, ts).unwrap();
            let (query, keys) = parse_query(&raw, ts, QueryModel::StudyRoot).unwrap();
            assert_eq!(query.level, Level::Study);
            assert_eq!(query.keys.len(), 1);
            assert_eq!(query.return_tags.len(), 5);

            let mut row = pacsgrid_archive::AttrValues::new();
            row.insert(tags::PATIENT_NAME, "Müller^Anna".into());
            row.insert(tags::STUDY_INSTANCE_UID, "1.2.3".into());
            row.insert(tags::MODALITIES_IN_STUDY, "CT\\MR".into());
            row.insert(tags::PATIENT_ID, "P1".into());
            row.insert(tags::ISSUER_OF_PATIENT_ID, "SITE_A".into());
            row.insert(tags::STUDY_DATE, "20200101".into());
            let ans = answer(&query, &keys.vrs, &row, "PACSGRID");
            let bytes = encode(&ans, ts).unwrap();
            // UTF-8 on the wire, declared
            assert!(bytes.windows(7).any(|w| w == "Müller".as_bytes()));
            let back = decode(&bytes, ts).unwrap();
            let s = |t| back.element(t).unwrap().to_str().unwrap().to_string();
            assert_eq!(s(tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
            assert_eq!(s(tags::PATIENT_NAME), "Müller^Anna");
            assert_eq!(s(tags::MODALITIES_IN_STUDY), "CT\\MR");
            assert_eq!(s(tags::QUERY_RETRIEVE_LEVEL), "STUDY");
            assert_eq!(s(tags::RETRIEVE_AE_TITLE), "PACSGRID");
            assert_eq!(s(tags::ISSUER_OF_PATIENT_ID), "SITE_A");
            assert_eq!(s(Tag(0x0009, 0x1010)), "");
            // not asked for: not answered
            assert!(back.element_opt(tags::STUDY_DATE).unwrap().is_none());
        }
    }

    #[test]
    fn bad_identifiers_are_refused_with_a_status() {
        let raw = encode(&request("FRAME", vec![]), uid::IMPLICIT_VR_LE).unwrap();
        let r = parse_query(&raw, uid::IMPLICIT_VR_LE, QueryModel::StudyRoot).unwrap_err();
        assert_eq!(r.status, status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS);
        let req = request(
            "STUDY",
            vec![DataElement::new(
                tags::STUDY_DATE,
                VR::DA,
                PrimitiveValue::from("2020-13-45"),
            )],
        );
        let raw = encode(&req, uid::IMPLICIT_VR_LE).unwrap();
        let r = parse_query(&raw, uid::IMPLICIT_VR_LE, QueryModel::StudyRoot).unwrap_err();
        assert_eq!(r.status, status::ERROR_CANNOT_UNDERSTAND);
        assert!(r.comment.contains("StudyDate"), "{}", r.comment);
        // garbage reads as an empty or broken data set: refused either way, never a crash
        assert!(parse_query(&[1, 2, 3], uid::IMPLICIT_VR_LE, QueryModel::StudyRoot).is_err());
        assert!(parse_query(&[0xff; 40], uid::EXPLICIT_VR_LE, QueryModel::StudyRoot).is_err());
    }

    #[test]
    fn values_that_do_not_fit_their_vr_are_answered_empty() {
        let e = element(tags::ROWS, VR::US, "512");
        assert_eq!(e.to_int::<u16>().unwrap(), 512);
        let e = element(tags::ROWS, VR::US, "abc");
        assert!(e.to_str().unwrap().is_empty());
        let e = element(Tag(0x0008, 0x1111), VR::SQ, "");
        assert_eq!(e.vr(), VR::SQ);
    }
}
