//! One instance in memory: the bytes of its frames and bulk data values. Everything here is synchronous (dicom-rs parses
//! synchronously): callers run it in `spawn_blocking`, one instance at a time.

use super::accept::{bitstream_media_type, range_covers, PixelChoice};
use crate::problem::Problem;
use dicom_core::{DicomValue, Tag};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use pacsgrid_dicom::uid;

/// Content type of uncompressed frame and bulk data parts.
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";

/// Parses a whole Part 10 object held in memory.
pub(crate) fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, Problem> {
    OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| Problem::internal(format!("stored object does not parse: {e}")))
}

fn int_of(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

/// Number of frames of an image (1 when NumberOfFrames is absent).
fn frame_count(obj: &InMemDicomObject) -> u32 {
    int_of(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1)
}

/// One part of a frames or bulk data answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// The part's Content-Type.
    pub content_type: String,
    /// Its content.
    pub data: Vec<u8>,
}

/// Which way of answering a pixel request was chosen for one instance.
enum Way {
    Uncompressed,
    Stored,
}

/// Picks the first acceptable way for an object stored in `ts`; the error explains for each
/// choice why it cannot be served.
fn choose(choices: &[PixelChoice], ts: &str) -> Result<Way, Problem> {
    let info = uid::transfer_syntax(ts);
    let encapsulated = info.map(|i| i.encapsulated).unwrap_or(false);
    let name = info.map(|i| i.name).unwrap_or("an unknown syntax");
    let stored_type = bitstream_media_type(ts);
    let mut why = Vec::new();
    for c in choices {
        match c {
            PixelChoice::Uncompressed => {
                if !encapsulated {
                    return Ok(Way::Uncompressed);
                }
                match pacsgrid_archive::transcode::cannot_decode(ts) {
                    None => return Ok(Way::Uncompressed),
                    Some(w) => why.push(format!("application/octet-stream: {w}")),
                }
            }
            PixelChoice::AsStored => return Ok(Way::Stored),
            PixelChoice::Bitstream {
                media_type,
                ts: want,
            } => {
                let ts_ok = want.as_deref().is_none_or(|w| w == ts);
                match stored_type {
                    Some(st) if ts_ok && range_covers(media_type, st) => return Ok(Way::Stored),
                    Some(st) => why.push(format!(
                        "{media_type}{}: the pixel data is stored as {name} ({st})",
                        want.as_deref()
                            .map(|w| format!(" in {w}"))
                            .unwrap_or_default()
                    )),
                    None => why.push(format!(
                        "{media_type}: the pixel data is stored uncompressed ({name}); ask for application/octet-stream"
                    )),
                }
            }
        }
    }
    Err(Problem::not_acceptable(format!(
        "none of the accepted media types can be produced: {}",
        why.join("; ")
    )))
}

/// The transfer syntax a part's bytes are in, for its Content-Type parameter.
fn part_type(way: &Way, ts: &str) -> String {
    match way {
        Way::Uncompressed => format!("{OCTET_STREAM}; transfer-syntax={}", uid::EXPLICIT_VR_LE),
        Way::Stored => match bitstream_media_type(ts) {
            Some(t) => format!("{t}; transfer-syntax={ts}"),
            None => format!("{OCTET_STREAM}; transfer-syntax={}", uid::EXPLICIT_VR_LE),
        },
    }
}

/// Parses a frame list (`1,3,5`, 1-based).
pub(crate) fn parse_frame_list(s: &str) -> Result<Vec<u32>, Problem> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        match item.parse::<u32>() {
            Ok(n) if n >= 1 => out.push(n),
            _ => {
                return Err(Problem::bad_request(format!(
                    "frame list {s:?}: {item:?} is not a frame number (frames are numbered from 1, separated by commas)"
                )))
            }
        }
    }
    Ok(out)
}

/// The requested frames (1-based) of a Part 10 object held in memory, as parts.
pub(crate) fn frames(
    bytes: &[u8],
    stored_ts: &str,
    list: &[u32],
    choices: &[PixelChoice],
) -> Result<Vec<Part>, Problem> {
    let obj = parse(bytes)?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(Problem::bad_request(
            "the instance has no pixel data, so it has no frames",
        ));
    }
    let n = frame_count(&obj);
    if let Some(bad) = list.iter().find(|f| **f > n) {
        return Err(Problem::bad_request(format!(
            "frame {bad} is out of range: the instance has {n} frame{}",
            if n == 1 { "" } else { "s" }
        )));
    }
    let way = choose(choices, stored_ts)?;
    let ct = part_type(&way, stored_ts);
    list.iter()
        .map(|f| {
            Ok(Part {
                content_type: ct.clone(),
                data: frame(&obj, stored_ts, f - 1, &way, n)?,
            })
        })
        .collect()
}

/// All of an object's pixel data as bulk data: one part with every frame when
/// uncompressed, one part per frame's bitstream when as stored.
pub(crate) fn pixel_bulk(
    bytes: &[u8],
    stored_ts: &str,
    choices: &[PixelChoice],
) -> Result<Vec<Part>, Problem> {
    let obj = parse(bytes)?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(Problem::not_found("the instance has no pixel data"));
    }
    let n = frame_count(&obj);
    let way = choose(choices, stored_ts)?;
    let ct = part_type(&way, stored_ts);
    let encapsulated = uid::transfer_syntax(stored_ts).is_some_and(|i| i.encapsulated);
    if matches!(way, Way::Uncompressed) || !encapsulated {
        let mut data = Vec::new();
        for f in 0..n {
            data.extend(frame(&obj, stored_ts, f, &way, n)?);
        }
        return Ok(vec![Part {
            content_type: ct,
            data,
        }]);
    }
    (0..n)
        .map(|f| {
            Ok(Part {
                content_type: ct.clone(),
                data: frame(&obj, stored_ts, f, &way, n)?,
            })
        })
        .collect()
}

/// One frame (0-based) in the chosen way.
fn frame(
    obj: &DefaultDicomObject,
    stored_ts: &str,
    index: u32,
    way: &Way,
    n: u32,
) -> Result<Vec<u8>, Problem> {
    let encapsulated = uid::transfer_syntax(stored_ts).is_some_and(|i| i.encapsulated);
    let pixel = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| Problem::not_found("the instance has no pixel data"))?;
    if !encapsulated {
        return native_frame(obj, index);
    }
    match way {
        Way::Stored => encapsulated_frame(pixel.value(), index, n),
        Way::Uncompressed => {
            let decoded = obj.decode_pixel_data_frame(index).map_err(|e| {
                Problem::not_acceptable(format!(
                    "frame {} cannot be decoded to uncompressed pixel data: {e}",
                    index + 1
                ))
            })?;
            Ok(decoded.data().to_vec())
        }
    }
}

/// A frame of native pixel data: Rows × Columns × SamplesPerPixel × BitsAllocated/8 bytes.
fn native_frame(obj: &InMemDicomObject, index: u32) -> Result<Vec<u8>, Problem> {
    let get = |tag, name| {
        int_of(obj, tag)
            .map(|v| v as usize)
            .ok_or_else(|| Problem::internal(format!("the image has no usable {name}")))
    };
    let rows = get(tags::ROWS, "Rows")?;
    let cols = get(tags::COLUMNS, "Columns")?;
    let spp = int_of(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
    let bits = get(tags::BITS_ALLOCATED, "BitsAllocated")?;
    if bits % 8 != 0 {
        return Err(Problem::not_acceptable(format!(
            "frames of {bits}-bit packed pixel data are not served one by one; ask for the pixel data bulk data"
        )));
    }
    let photometric = obj
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let len = native_frame_len(rows, cols, spp, bits / 8, &photometric);
    let pixel = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| Problem::not_found("the instance has no pixel data"))?;
    let all = pixel
        .to_bytes()
        .map_err(|e| Problem::internal(format!("pixel data is not readable: {e}")))?;
    let start = len * index as usize;
    all.get(start..start + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            // the stored object is short of its own declared size: a property of the
            // instance as it was sent, which the node keeps as is
            Problem::not_acceptable(format!(
                "pixel data holds {} bytes, too few for frame {}",
                all.len(),
                index + 1
            ))
        })
}

/// Bytes of one native frame. The 4:2:2 colour models carry two luminance samples and one
/// pair of chrominance samples for every two pixels (PS3.3 C.7.6.3.1.2), so their frames hold
/// two samples a pixel, not three.
pub(crate) fn native_frame_len(
    rows: usize,
    cols: usize,
    samples: usize,
    bytes_per_sample: usize,
    photometric: &str,
) -> usize {
    let samples = match photometric {
        "YBR_FULL_422" | "YBR_PARTIAL_422" if samples == 3 => 2,
        _ => samples,
    };
    rows * cols * samples * bytes_per_sample
}

/// The compressed bitstream of one frame (PS3.5 A.4): the fragment of the frame when each
/// frame is one fragment, all fragments for a single frame, else split by the Basic Offset
/// Table.
fn encapsulated_frame(
    value: &DicomValue<InMemDicomObject, Vec<u8>>,
    index: u32,
    n: u32,
) -> Result<Vec<u8>, Problem> {
    let fragments = value
        .fragments()
        .ok_or_else(|| Problem::internal("pixel data is not encapsulated as its syntax says"))?;
    if n == 1 {
        return Ok(fragments.concat());
    }
    if fragments.len() == n as usize {
        return Ok(fragments[index as usize].clone());
    }
    let table = value.offset_table().unwrap_or(&[]);
    if table.len() != n as usize {
        return Err(Problem::internal(format!(
            "{} fragments for {n} frames and no usable Basic Offset Table",
            fragments.len()
        )));
    }
    // offsets count from the first fragment's item tag; each item has an 8-byte header
    let start = u64::from(table[index as usize]);
    let end = table
        .get(index as usize + 1)
        .map(|e| u64::from(*e))
        .unwrap_or(u64::MAX);
    let mut pos = 0u64;
    let mut out = Vec::new();
    for f in fragments {
        if pos >= start && pos < end {
            out.extend_from_slice(f);
        }
        pos += 8 + f.len() as u64;
    }
    Ok(out)
}

/// A bulk data value by its path: `TTTTTTTT` at the top level, or
/// `SSSSSSSS/i/TTTTTTTT...` through sequence items (i counts from 0).
pub(crate) fn parse_tag_path(path: &str) -> Result<(Vec<(Tag, usize)>, Tag), Problem> {
    let bad = || {
        Problem::bad_request(format!(
            "bulk data path {path:?} is not a tag path (TTTTTTTT, or SSSSSSSS/item/TTTTTTTT)"
        ))
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len().is_multiple_of(2) {
        return Err(bad());
    }
    let tag = |s: &str| -> Result<Tag, Problem> {
        if s.len() != 8 {
            return Err(bad());
        }
        let v = u32::from_str_radix(s, 16).map_err(|_| bad())?;
        Ok(Tag((v >> 16) as u16, (v & 0xFFFF) as u16))
    };
    let mut seqs = Vec::new();
    for pair in parts[..parts.len() - 1].chunks(2) {
        let item = pair[1].parse::<usize>().map_err(|_| bad())?;
        seqs.push((tag(pair[0])?, item));
    }
    Ok((seqs, tag(parts[parts.len() - 1])?))
}

/// The bytes of a (non pixel data) bulk data value, as stored in little endian.
pub(crate) fn bulk_value(
    bytes: &[u8],
    seqs: &[(Tag, usize)],
    tag: Tag,
) -> Result<Vec<u8>, Problem> {
    let obj = parse(bytes)?;
    let missing = || Problem::not_found(format!("the instance has no bulk data value at {tag}"));
    let mut cur: &InMemDicomObject = &obj;
    for (seq, item) in seqs {
        let e = cur.get(*seq).ok_or_else(missing)?;
        cur = e.items().and_then(|i| i.get(*item)).ok_or_else(missing)?;
    }
    let e = cur.get(tag).ok_or_else(missing)?;
    if e.header().is_non_primitive() {
        return Err(Problem::not_found(format!(
            "{tag} is not a bulk data value"
        )));
    }
    e.to_bytes()
        .map(|b| b.into_owned())
        .map_err(|e| Problem::internal(format!("value {tag} is not readable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists() {
        assert_eq!(parse_frame_list("1,3, 5").unwrap(), vec![1, 3, 5]);
        assert_eq!(parse_frame_list("0").unwrap_err().status.as_u16(), 400);
        assert_eq!(parse_frame_list("1,,2").unwrap_err().status.as_u16(), 400);
        assert_eq!(parse_frame_list("a").unwrap_err().status.as_u16(), 400);
    }

    #[test]
    fn native_frames_of_422_colour_hold_two_samples_a_pixel() {
        assert_eq!(native_frame_len(100, 100, 3, 1, "YBR_FULL_422"), 20_000);
        assert_eq!(native_frame_len(100, 100, 3, 1, "YBR_FULL"), 30_000);
        assert_eq!(native_frame_len(100, 100, 3, 1, "RGB"), 30_000);
        assert_eq!(native_frame_len(512, 512, 1, 2, "MONOCHROME2"), 524_288);
    }

    #[test]
    fn tag_paths() {
        let (s, t) = parse_tag_path("7FE00010").unwrap();
        assert!(s.is_empty());
        assert_eq!(t, tags::PIXEL_DATA);
        let (s, t) = parse_tag_path("00540016/0/00181072").unwrap();
        assert_eq!(s, vec![(Tag(0x0054, 0x0016), 0)]);
        assert_eq!(t, Tag(0x0018, 0x1072));
        assert!(parse_tag_path("00540016/0").is_err());
        assert!(parse_tag_path("7FE0001").is_err());
        assert!(parse_tag_path("xyz").is_err());
    }

    #[test]
    fn choice_prefers_order_and_explains_refusals() {
        let jp2 = "1.2.840.10008.1.2.4.90";
        assert!(matches!(
            choose(&[PixelChoice::Uncompressed], jp2),
            Ok(Way::Uncompressed)
        ));
        let want_jpeg = PixelChoice::Bitstream {
            media_type: "image/jpeg".into(),
            ts: None,
        };
        let e = choose(std::slice::from_ref(&want_jpeg), jp2).err().unwrap();
        assert_eq!(e.status.as_u16(), 406);
        assert!(e.detail.contains("image/jp2"), "{}", e.detail);
        let e = choose(&[want_jpeg], uid::EXPLICIT_VR_LE).err().unwrap();
        assert!(e.detail.contains("uncompressed"), "{}", e.detail);
        let e = choose(&[PixelChoice::Uncompressed], "1.2.840.10008.1.2.4.80")
            .err()
            .unwrap();
        assert!(e.detail.contains("JPEG-LS"), "{}", e.detail);
    }
}
