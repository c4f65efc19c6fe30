//! Instances as researchers receive them: de-identified (see `pacsgrid_dicom::deid`), in the
//! transfer syntax they are stored in, with a new file meta group (group length recomputed,
//! transfer syntax and SOP UIDs unchanged).
//!
//! A stored instance is streamed: its bytes are read up to the pixel data, that header is
//! rewritten, the pixel data element is copied as stored, and what follows it (private
//! groups above 7FE0, digital signatures, padding) is dropped; memory holds one header,
//! never an instance or a study. Deflated instances, and instances that
//! are converted or decoded for the client, are rewritten whole in memory, one at a time, as
//! those deliveries already hold them. An instance whose BurnedInAnnotation is YES is
//! withheld: it is left out of multi-instance answers and refused (403) where it is named.

use super::{meta_header, StreamError};
use crate::dicomweb::wado::multipart::PartWriter;
use crate::problem::Problem;
use axum::http::StatusCode;
use bytes::Bytes;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use futures::StreamExt;
use pacsgrid_archive::{Archive, StoredInstance};
use pacsgrid_dicom::deid::{self, Deidentifier, ElementEnd, HeaderSplitter};
use pacsgrid_dicom::uid;
use std::sync::Arc;

/// A header (everything before the pixel data) larger than this is not rewritten: the
/// object is refused rather than held in memory.
const MAX_HEADER: usize = 64 << 20;

/// The refusal of an instance withheld from the de-identified view.
pub(super) fn withheld_problem(inst: &StoredInstance) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        format!(
            "instance {} has burned-in annotation (BurnedInAnnotation = YES), which may show the patient's identity in its pixels; it is withheld from the de-identified view",
            inst.sop_instance_uid
        ),
    )
}

/// The de-identified data set of `ds`, whose patient the index names in `inst`.
fn clean(deid: &Deidentifier, inst: &StoredInstance, ds: InMemDicomObject) -> InMemDicomObject {
    let key = deid.patient(&inst.issuer, &inst.patient_id);
    deid.dataset(ds, &key)
}

/// The data set of `ds` written in `ts`, after the file meta group of `inst` in `ts`.
fn part10(inst: &StoredInstance, ts: &str, ds: &InMemDicomObject) -> Result<Vec<u8>, Problem> {
    let syntax = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| Problem::internal(format!("transfer syntax {ts} is not known here")))?;
    let mut out = meta_header(inst, ts)?;
    ds.write_dataset_with_ts(&mut out, syntax).map_err(|e| {
        Problem::internal(format!(
            "writing the de-identified {}: {e}",
            inst.sop_instance_uid
        ))
    })?;
    Ok(out)
}

/// A whole Part 10 object held in memory, de-identified; `None` when it is withheld.
pub(super) fn whole(
    deid: &Deidentifier,
    inst: &StoredInstance,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, Problem> {
    let obj = OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| Problem::internal(format!("stored object does not parse: {e}")))?;
    let ts = uid::trim_uid(obj.meta().transfer_syntax()).to_string();
    let ds = obj.into_inner();
    if deid::withheld(&ds) {
        return Ok(None);
    }
    part10(inst, &ts, &clean(deid, inst, ds)).map(Some)
}

/// Whether the whole object in `bytes` is withheld from the de-identified view (its header
/// alone is parsed).
pub(super) fn is_withheld(bytes: &[u8]) -> Result<bool, Problem> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .map_err(|e| Problem::internal(format!("stored object does not parse: {e}")))?;
    Ok(deid::withheld(&obj))
}

/// Streams one stored instance de-identified as a part of `w` (header rewritten, the rest
/// copied as stored). Returns false, having sent nothing, when the instance is withheld.
pub(super) async fn send_streamed(
    archive: &Archive,
    deid: &Arc<Deidentifier>,
    w: &mut PartWriter,
    inst: &StoredInstance,
    part_type: &str,
) -> Result<bool, StreamError> {
    let fail = |why: String| StreamError::Failed(format!("{}: {why}", inst.sop_instance_uid));
    let encoding = uid::transfer_syntax(&inst.transfer_syntax)
        .map(|i| i.encoding)
        .ok_or_else(|| fail(format!("unknown transfer syntax {}", inst.transfer_syntax)))?;
    let mut splitter = HeaderSplitter::new(encoding).map_err(|e| fail(e.to_string()))?;
    let ds_at = usize::try_from(inst.dataset_offset).map_err(|e| fail(e.to_string()))?;
    let mut chunks = archive
        .stream_file(inst, super::CHUNK)
        .await
        .map_err(Problem::from)?;
    let mut buf: Vec<u8> = Vec::new();
    let mut at_end = false;
    let header_end = loop {
        if buf.len() >= ds_at {
            if let Some(end) = splitter
                .feed(&buf[ds_at..], at_end)
                .map_err(|e| fail(e.to_string()))?
            {
                break ds_at + end;
            }
        } else if at_end {
            return Err(fail(
                "the stored object ends inside its file meta group".into(),
            ));
        }
        if buf.len() > MAX_HEADER {
            return Err(fail(format!(
                "its attributes before the pixel data exceed {} MiB, too large to de-identify",
                MAX_HEADER >> 20
            )));
        }
        match chunks.next().await {
            Some(c) => buf.extend_from_slice(&c.map_err(|e| fail(e.to_string()))?),
            None => at_end = true,
        }
    };
    let mut read = buf.len() as u64;
    let rest = Bytes::from(buf.split_off(header_end));
    let (deid, owned) = (Arc::clone(deid), inst.clone());
    let head = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, Problem> {
        let ts = owned.transfer_syntax.as_str();
        let syntax = TransferSyntaxRegistry
            .get(ts)
            .ok_or_else(|| Problem::internal(format!("transfer syntax {ts} is not known here")))?;
        let ds = InMemDicomObject::read_dataset_with_ts(&buf[ds_at..], syntax)
            .map_err(|e| Problem::internal(format!("stored header does not parse: {e}")))?;
        if deid::withheld(&ds) {
            return Ok(None);
        }
        part10(&owned, ts, &clean(&deid, &owned, ds)).map(Some)
    })
    .await
    .map_err(|e| fail(e.to_string()))??;
    let Some(head) = head else {
        tracing::info!(sop_instance_uid = %inst.sop_instance_uid, "withheld from a de-identified retrieve: burned-in annotation");
        return Ok(false);
    };
    w.begin_part(part_type).await?;
    w.send(Bytes::from(head)).await?;
    // The pixel data goes on as stored; whatever follows it (private groups above 7FE0,
    // digital signatures, padding) is read, to check the blob's length, and dropped.
    let mut pixels = match deid::tag_at(&rest, encoding) {
        Some(tag) if deid::is_pixel_data(tag) => {
            Some(ElementEnd::new(encoding).map_err(|e| fail(e.to_string()))?)
        }
        _ => None,
    };
    let mut next = Some(rest);
    while let Some(c) = next.take() {
        if let Some(tracker) = &mut pixels {
            match tracker.feed(&c).map_err(|e| fail(e.to_string()))? {
                Some(end) => {
                    w.send(c.slice(..end)).await?;
                    pixels = None;
                }
                None => w.send(c).await?,
            }
        }
        if let Some(c) = chunks.next().await {
            let c = c.map_err(|e| fail(e.to_string()))?;
            read += c.len() as u64;
            if read > inst.size {
                break;
            }
            next = Some(c);
        }
    }
    if pixels.is_some() && read <= inst.size {
        return Err(fail("the stored object ends inside its pixel data".into()));
    }
    // a blob of another length than indexed is damaged: cut the answer rather than pass it on
    if read != inst.size {
        return Err(fail(format!(
            "indexed with {} bytes but its blob has {}{read}",
            inst.size,
            if read > inst.size { "more than " } else { "" },
        )));
    }
    Ok(true)
}
