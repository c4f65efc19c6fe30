use super::*;
use dicom_core::value::PrimitiveValue;

fn text(ds: &InMemDicomObject, tag: Tag) -> Option<String> {
    ds.get(tag).map(|e| {
        e.value()
            .to_str()
            .map(|s| s.to_string())
            .unwrap_or_default()
    })
}

fn el(tag: Tag, vr: VR, v: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// A CT header with what hospitals put in one: names, IDs, dates, an institution, private
/// tags, an overlay, and names and dates inside nested sequences.
fn sample() -> InMemDicomObject {
    let inner = InMemDicomObject::from_element_iter([
        el(tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
        el(tags::ACCESSION_NUMBER, VR::SH, "ACC42"),
        el(
            tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
            VR::DA,
            "20200310",
        ),
        el(Tag(0x0019, 0x0010), VR::LO, "ACME"),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.9"),
    ]);
    let outer = InMemDicomObject::from_element_iter([
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.8"),
        DataElement::new(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![inner.clone()]),
        ),
        el(tags::OBSERVATION_DATE_TIME, VR::DT, "20200310101500"),
    ]);
    InMemDicomObject::from_element_iter([
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        el(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
        el(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
        el(tags::STUDY_DATE, VR::DA, "20200315"),
        el(tags::STUDY_TIME, VR::TM, "101500"),
        el(tags::ACQUISITION_DATE_TIME, VR::DT, "20200315101700.5"),
        el(tags::ACCESSION_NUMBER, VR::SH, "ACC42"),
        el(tags::MODALITY, VR::CS, "CT"),
        el(tags::INSTITUTION_NAME, VR::LO, "St. Elsewhere"),
        el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "HOUSE^GREGORY"),
        el(tags::STUDY_DESCRIPTION, VR::LO, "CT head for Jane Doe"),
        el(tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
        el(tags::PATIENT_ID, VR::LO, "P123"),
        el(tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP"),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        el(tags::PATIENT_SEX, VR::CS, "F"),
        el(tags::PATIENT_AGE, VR::AS, "050Y"),
        el(tags::PATIENT_ADDRESS, VR::LO, "1 Main St"),
        el(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
        el(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4"),
        el(tags::STUDY_ID, VR::SH, "S1"),
        // a person name the table does not list: caught by its VR
        el(tags::EVALUATOR_NAME, VR::PN, "WATSON^J"),
        el(Tag(0x0029, 0x0010), VR::LO, "SIEMENS CSA HEADER"),
        el(Tag(0x0029, 0x1010), VR::LO, "DOE^JANE"),
        el(Tag(0x6000, 0x3000), VR::OW, "x"),
        el(Tag(0x0008, 0x0000), VR::UL, "0"),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![outer]),
        ),
        el(tags::BODY_PART_EXAMINED, VR::CS, "HEAD"),
    ])
}

fn deid() -> Deidentifier {
    Deidentifier::new(b"a test secret of some thirty-two bytes")
}

#[test]
fn identifying_attributes_go_and_the_rest_stays() {
    let d = deid();
    let key = d.patient("HOSP", "P123");
    let out = d.dataset(sample(), &key);
    assert_eq!(text(&out, tags::PATIENT_NAME), Some(key.pseudonym.clone()));
    assert_eq!(text(&out, tags::PATIENT_ID), Some(key.pseudonym.clone()));
    assert!(key.pseudonym.starts_with("ANON-") && key.pseudonym.len() == 21);
    for gone in [
        tags::INSTITUTION_NAME,
        tags::STUDY_DESCRIPTION,
        tags::ISSUER_OF_PATIENT_ID,
        tags::PATIENT_AGE,
        tags::PATIENT_ADDRESS,
        tags::EVALUATOR_NAME,
        Tag(0x0029, 0x0010),
        Tag(0x0029, 0x1010),
        Tag(0x6000, 0x3000),
        Tag(0x0008, 0x0000),
    ] {
        assert!(out.get(gone).is_none(), "{gone} is still there");
    }
    for emptied in [
        tags::ACCESSION_NUMBER,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::PATIENT_BIRTH_DATE,
        tags::PATIENT_SEX,
        tags::STUDY_ID,
    ] {
        assert_eq!(text(&out, emptied).as_deref(), Some(""), "{emptied}");
    }
    for (kept, v) in [
        (tags::SOP_INSTANCE_UID, "1.2.3.4.5"),
        (tags::STUDY_INSTANCE_UID, "1.2.3"),
        (tags::SERIES_INSTANCE_UID, "1.2.3.4"),
        (tags::MODALITY, "CT"),
        (tags::BODY_PART_EXAMINED, "HEAD"),
        (tags::STUDY_TIME, "101500"),
        (tags::SPECIFIC_CHARACTER_SET, "ISO_IR 100"),
    ] {
        assert_eq!(text(&out, kept).as_deref(), Some(v), "{kept}");
    }
    assert_eq!(
        text(&out, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    assert_eq!(
        text(&out, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("MODIFIED")
    );
    let codes = out
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap();
    let values: Vec<String> = codes
        .iter()
        .filter_map(|c| text(c, tags::CODE_VALUE))
        .collect();
    assert_eq!(values, ["113100", "113110", "113107"]);
}

#[test]
fn sequences_are_cleaned_at_every_depth() {
    let d = deid();
    let key = d.patient("HOSP", "P123");
    let out = d.dataset(sample(), &key);
    let outer = &out
        .get(tags::REFERENCED_IMAGE_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap()[0];
    assert_eq!(
        text(outer, tags::REFERENCED_SOP_INSTANCE_UID).as_deref(),
        Some("1.2.3.8")
    );
    assert_eq!(
        text(outer, tags::OBSERVATION_DATE_TIME),
        Some(dates::shift_dt("20200310101500", key.shift_days))
    );
    let inner = &outer
        .get(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap()[0];
    assert_eq!(text(inner, tags::PATIENT_NAME), Some(key.pseudonym.clone()));
    assert_eq!(text(inner, tags::ACCESSION_NUMBER).as_deref(), Some(""));
    assert!(inner.get(Tag(0x0019, 0x0010)).is_none());
    assert_eq!(
        text(inner, tags::SCHEDULED_PROCEDURE_STEP_START_DATE),
        Some(dates::shift_da("20200310", key.shift_days))
    );
    assert_eq!(
        text(inner, tags::REFERENCED_SOP_INSTANCE_UID).as_deref(),
        Some("1.2.3.9")
    );
}

#[test]
fn one_patient_one_pseudonym_and_one_shift() {
    let d = deid();
    let a = d.patient("HOSP", "P123");
    assert_eq!(a, d.patient("HOSP", " P123 "));
    assert!((1..=365).contains(&a.shift_days));
    // same ID at another issuer is another person
    assert_ne!(a.pseudonym, d.patient("OTHER", "P123").pseudonym);
    assert_ne!(a.pseudonym, d.patient("HOSP", "P124").pseudonym);
    // another secret, other pseudonyms
    assert_ne!(
        a.pseudonym,
        Deidentifier::new(b"another")
            .patient("HOSP", "P123")
            .pseudonym
    );
    let shifts: std::collections::BTreeSet<u32> = (0..200)
        .map(|i| d.patient("HOSP", &format!("P{i}")).shift_days)
        .collect();
    assert!(shifts.len() > 100, "shifts barely vary: {}", shifts.len());
}

#[test]
fn dates_of_one_patient_keep_their_intervals() {
    let d = deid();
    let key = d.patient("HOSP", "P123");
    let out = d.dataset(sample(), &key);
    let study = text(&out, tags::STUDY_DATE).unwrap();
    assert_ne!(study, "20200315");
    assert_eq!(study, dates::shift_da("20200315", key.shift_days));
    let acq = text(&out, tags::ACQUISITION_DATE_TIME).unwrap();
    assert!(
        acq.starts_with(&study) && acq.ends_with("101700.5"),
        "{acq}"
    );
    // the same rules on index values, for search answers
    assert_eq!(
        d.text(tags::STUDY_DATE, VR::DA, "20200315", &key),
        Some(study)
    );
    assert_eq!(
        d.text(tags::PATIENT_NAME, VR::PN, "DOE^JANE", &key),
        Some(key.pseudonym.clone())
    );
    assert_eq!(d.text(tags::INSTITUTION_NAME, VR::LO, "X", &key), None);
    assert_eq!(d.text(tags::STUDY_DESCRIPTION, VR::LO, "X", &key), None);
    assert_eq!(
        d.text(tags::ACCESSION_NUMBER, VR::SH, "A", &key).as_deref(),
        Some("")
    );
    assert_eq!(
        d.text(tags::MODALITY, VR::CS, "CT", &key).as_deref(),
        Some("CT")
    );
}

#[test]
fn standard_elements_read_as_un_stay_unless_names_or_dates() {
    let un = |tag: Tag| DataElement::new(tag, VR::UN, PrimitiveValue::U8(vec![b'X', b' '].into()));
    let ds = InMemDicomObject::from_element_iter([
        un(tags::ROWS),
        un(tags::MANUFACTURER),
        un(tags::PERFORMING_PHYSICIAN_NAME),
        un(tags::EVALUATOR_NAME),
        un(tags::CONTENT_DATE),
        un(Tag(0x0009, 0x1010)),
        un(Tag(0x0018, 0xFFF0)),
    ]);
    let d = deid();
    let out = d.dataset(ds, &d.patient("HOSP", "P123"));
    assert!(out.get(tags::ROWS).is_some());
    assert!(out.get(tags::MANUFACTURER).is_some());
    for gone in [
        tags::PERFORMING_PHYSICIAN_NAME,
        tags::EVALUATOR_NAME,
        tags::CONTENT_DATE,
        Tag(0x0009, 0x1010),
        Tag(0x0018, 0xFFF0),
    ] {
        assert!(out.get(gone).is_none(), "{gone}");
    }
}

#[test]
fn method_values_fit_their_vr() {
    assert!(
        METHOD.split('\\').all(|v| v.len() <= 64),
        "LO holds 64 characters"
    );
    assert_eq!(METHOD.split('\\').count(), 3);
    assert!(METHOD_CODES.iter().all(|(_, m)| m.len() <= 64));
}

#[test]
fn burned_in_annotation_withholds() {
    let mut ds = sample();
    assert!(!withheld(&ds));
    ds.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"));
    assert!(!withheld(&ds));
    ds.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES "));
    assert!(withheld(&ds));
}

#[test]
fn a_written_header_reads_back_de_identified() {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let d = deid();
    let key = d.patient("HOSP", "P123");
    let out = d.dataset(sample(), &key);
    let ts = TransferSyntaxRegistry.get("1.2.840.10008.1.2.1").unwrap();
    let mut bytes = Vec::new();
    out.write_dataset_with_ts(&mut bytes, ts).unwrap();
    let back = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).unwrap();
    assert_eq!(text(&back, tags::PATIENT_NAME), Some(key.pseudonym));
    assert!(!String::from_utf8_lossy(&bytes).contains("DOE"));
    assert!(!String::from_utf8_lossy(&bytes).contains("Elsewhere"));
}
