//! Test fixtures shared by the STOW-RS and rendered tests: small Part 10 images and a
//! router over a fresh archive.

use crate::{HttpOptions, HttpState};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use pacsgrid_archive::{Archive, ArchiveConfig};
use std::sync::Arc;

/// CT Image Storage.
pub(crate) const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
/// The study every fixture instance belongs to unless told otherwise.
pub(crate) const STUDY: &str = "1.2.826.0.1.3680043.2.1";
/// The series of the fixtures.
pub(crate) const SERIES: &str = "1.2.826.0.1.3680043.2.1.1";

/// What a fixture image looks like.
pub(crate) struct Image {
    /// SOPInstanceUID.
    pub sop: String,
    /// StudyInstanceUID.
    pub study: String,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Frames (each a ramp shifted by the frame index).
    pub frames: u32,
    /// WindowCenter/WindowWidth, if any.
    pub window: Option<(f64, f64)>,
}

impl Image {
    /// A 16-bit single-frame image of the fixture study.
    pub fn new(sop: &str) -> Image {
        Image {
            sop: sop.into(),
            study: STUDY.into(),
            rows: 16,
            cols: 24,
            frames: 1,
            window: None,
        }
    }

    /// The Part 10 bytes (preamble, meta group, explicit VR little endian data set).
    pub fn part10(&self) -> Vec<u8> {
        let mut o = InMemDicomObject::new_empty();
        let s = |t, vr, v: String| DataElement::new(t, vr, PrimitiveValue::from(v));
        o.put(s(tags::SOP_CLASS_UID, VR::UI, CT.into()));
        o.put(s(tags::SOP_INSTANCE_UID, VR::UI, self.sop.clone()));
        o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, self.study.clone()));
        o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, SERIES.into()));
        o.put(s(tags::MODALITY, VR::CS, "CT".into()));
        o.put(s(tags::PATIENT_ID, VR::LO, "WEBTEST".into()));
        o.put(s(tags::PATIENT_NAME, VR::PN, "TEST^WEB".into()));
        o.put(s(tags::SERIES_NUMBER, VR::IS, "1".into()));
        o.put(s(tags::INSTANCE_NUMBER, VR::IS, "1".into()));
        o.put(s(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ));
        let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
        o.put(us(tags::ROWS, self.rows));
        o.put(us(tags::COLUMNS, self.cols));
        o.put(us(tags::SAMPLES_PER_PIXEL, 1));
        o.put(us(tags::BITS_ALLOCATED, 16));
        o.put(us(tags::BITS_STORED, 12));
        o.put(us(tags::HIGH_BIT, 11));
        o.put(us(tags::PIXEL_REPRESENTATION, 0));
        if self.frames > 1 {
            o.put(s(tags::NUMBER_OF_FRAMES, VR::IS, self.frames.to_string()));
        }
        if let Some((c, w)) = self.window {
            o.put(s(tags::WINDOW_CENTER, VR::DS, format!("{c}")));
            o.put(s(tags::WINDOW_WIDTH, VR::DS, format!("{w}")));
        }
        let n = usize::from(self.rows) * usize::from(self.cols);
        let mut pixels: Vec<u16> = Vec::with_capacity(n * self.frames as usize);
        for f in 0..self.frames {
            pixels.extend((0..n).map(|i| ((i * 4000 / n) as u32 + f * 10) as u16));
        }
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = o
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid(CT)
                    .media_storage_sop_instance_uid(self.sop.as_str()),
            )
            .expect("fixture meta group");
        let mut out = Vec::new();
        file.write_all(&mut out).expect("fixture encodes");
        out
    }
}

/// An HTTP state over a fresh archive in `dir`.
pub(crate) async fn state(dir: &std::path::Path, max_upload_bytes: u64) -> HttpState {
    let archive = Archive::open(ArchiveConfig {
        data_dir: dir.to_path_buf(),
        site: "test".into(),
        default_issuer: "TESTISSUER".into(),
        blobs: Default::default(),
        index: Default::default(),
    })
    .await
    .expect("archive opens");
    HttpState {
        archive,
        extra_metrics: Vec::new(),
        access: Arc::new(pacsgrid_access::AccessPoint::open_door("test")),
        deid: Arc::new(pacsgrid_dicom::deid::Deidentifier::new(b"test secret")),
        options: Arc::new(HttpOptions {
            cors_allow_origins: Vec::new(),
            max_upload_bytes,
        }),
    }
}
