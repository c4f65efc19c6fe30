//! Reading what the index needs from an object's header (everything before the pixel data).

use crate::error::StoreError;
use crate::walk::{self, Form};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use pacsgrid_dicom::part10::{parse_part10_header, Part10Header, MAX_META_GROUP};
use pacsgrid_dicom::query::{normalise_date, normalise_time, trim_value};
use pacsgrid_dicom::uid::{self, DatasetEncoding};
use pacsgrid_store::{InstanceAttrs, InstanceRecord, PatientAttrs, SeriesAttrs, StudyAttrs};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// What a parsed header yields: the index record (without hash, size, site, time) and the
/// UIDs the file meta group declares, to be checked against the sender's claims.
#[derive(Debug)]
pub struct ParsedHeader {
    /// The attributes for the index.
    pub record: InstanceRecord,
    /// MediaStorageSOPClassUID of the file meta group.
    pub meta_sop_class_uid: String,
    /// MediaStorageSOPInstanceUID of the file meta group.
    pub meta_sop_instance_uid: String,
}

/// Parses and checks a staged Part 10 file: structure complete (walked to the end without
/// loading values), header attributes read, identifying UIDs present, valid and consistent
/// with the file meta group.
pub fn parse_staged(path: &Path, default_issuer: &str) -> Result<ParsedHeader, StoreError> {
    // The structural walk runs first: it is cheap, bounded, and refuses garbage and
    // truncation before dicom-rs spends time on a data set that cannot be right.
    let meta = read_meta(path)?;
    let dataset_offset = meta.dataset_offset;
    let ts = uid::trim_uid(&meta.transfer_syntax).to_string();
    let info = uid::transfer_syntax(&ts)
        .ok_or_else(|| StoreError::CannotUnderstand(format!("unsupported transfer syntax {ts}")))?;
    check_structure(path, dataset_offset, info.encoding)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| StoreError::CannotUnderstand(flatten(&e.to_string())))?;
    let record = record_from(&obj, &ts, dataset_offset, default_issuer)?;
    Ok(ParsedHeader {
        record,
        meta_sop_class_uid: uid::trim_uid(&meta.sop_class_uid).to_string(),
        meta_sop_instance_uid: uid::trim_uid(&meta.sop_instance_uid).to_string(),
    })
}

/// Reads a file's meta group with the parser the C-STORE client uses too; a file without the
/// 128-byte preamble PS3.10 requires is refused.
fn read_meta(path: &Path) -> Result<Part10Header, StoreError> {
    let mut head = Vec::new();
    File::open(path)?
        .take((MAX_META_GROUP + 256) as u64)
        .read_to_end(&mut head)?;
    let meta = parse_part10_header(&head).map_err(StoreError::CannotUnderstand)?;
    if !meta.has_preamble {
        return Err(StoreError::CannotUnderstand(
            "no 128-byte preamble before DICM: not a DICOM Part 10 file".into(),
        ));
    }
    Ok(meta)
}

fn flatten(s: &str) -> String {
    s.replace('\n', " ")
}

fn check_structure(path: &Path, offset: u64, encoding: DatasetEncoding) -> Result<(), StoreError> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let r = BufReader::with_capacity(256 * 1024, f);
    let res = match encoding {
        DatasetEncoding::ImplicitLittle => walk::check_dataset(r, Form::ImplicitLittle),
        DatasetEncoding::ExplicitLittle => walk::check_dataset(r, Form::ExplicitLittle),
        DatasetEncoding::ExplicitBig => walk::check_dataset(r, Form::ExplicitBig),
        DatasetEncoding::Deflated => {
            walk::check_dataset(flate2::read::DeflateDecoder::new(r), Form::ExplicitLittle)
        }
    };
    res.map_err(|e| StoreError::CannotUnderstand(e.to_string()))
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> String {
    let Some(e) = obj.get(tag) else {
        return String::new();
    };
    if e.vr() == VR::UN {
        // Some writers (GDCM in implicit-to-explicit conversions) encode standard
        // elements as UN; PS3.5 6.2.2 lets a receiver read them with the dictionary VR,
        // and every key we index is a text VR, so the raw bytes are the text.
        return e
            .value()
            .to_bytes()
            .map(|b| trim_value(&String::from_utf8_lossy(&b)).to_string())
            .unwrap_or_default();
    }
    e.to_str()
        .map(|s| trim_value(&s).to_string())
        .unwrap_or_default()
}

fn int(obj: &DefaultDicomObject, tag: Tag) -> Option<i64> {
    let t = text(obj, tag);
    t.trim().parse::<i64>().ok()
}

fn required_uid(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<String, StoreError> {
    let v = text(obj, tag);
    if v.is_empty() {
        return Err(StoreError::Mismatch(format!("{name} is missing")));
    }
    if !uid::is_valid_uid(&v) {
        return Err(StoreError::Mismatch(format!(
            "{name} {v:?} is not a valid UID"
        )));
    }
    Ok(v)
}

fn record_from(
    obj: &DefaultDicomObject,
    ts: &str,
    dataset_offset: u64,
    default_issuer: &str,
) -> Result<InstanceRecord, StoreError> {
    let issuer = text(obj, tags::ISSUER_OF_PATIENT_ID);
    Ok(InstanceRecord {
        patient: PatientAttrs {
            patient_id: text(obj, tags::PATIENT_ID),
            issuer: if issuer.is_empty() {
                default_issuer.to_string()
            } else {
                issuer
            },
            name: text(obj, tags::PATIENT_NAME),
            birth_date: normalise_date(&text(obj, tags::PATIENT_BIRTH_DATE)).unwrap_or_default(),
            sex: text(obj, tags::PATIENT_SEX),
        },
        study: StudyAttrs {
            study_uid: required_uid(obj, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            date: normalise_date(&text(obj, tags::STUDY_DATE)).unwrap_or_default(),
            time: normalise_time(&text(obj, tags::STUDY_TIME)).unwrap_or_default(),
            accession: text(obj, tags::ACCESSION_NUMBER),
            study_id: text(obj, tags::STUDY_ID),
            description: text(obj, tags::STUDY_DESCRIPTION),
            referring_physician: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        },
        series: SeriesAttrs {
            series_uid: required_uid(obj, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            modality: text(obj, tags::MODALITY),
            number: int(obj, tags::SERIES_NUMBER),
            description: text(obj, tags::SERIES_DESCRIPTION),
            body_part: text(obj, tags::BODY_PART_EXAMINED),
            date: normalise_date(&text(obj, tags::SERIES_DATE)).unwrap_or_default(),
            time: normalise_time(&text(obj, tags::SERIES_TIME)).unwrap_or_default(),
        },
        instance: InstanceAttrs {
            sop_instance_uid: required_uid(obj, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
            sop_class_uid: required_uid(obj, tags::SOP_CLASS_UID, "SOPClassUID")?,
            number: int(obj, tags::INSTANCE_NUMBER),
            transfer_syntax: ts.to_string(),
        },
        dataset_offset,
        ..InstanceRecord::default()
    })
}
