//! WADO-RS metadata: each instance's full data set as DICOM JSON (PS3.18 F.2), with large
//! binary values replaced by a `BulkDataURI` that the bulkdata resource answers.

use crate::problem::Problem;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use pacsgrid_archive::BlobReader;
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;

/// Binary values whose base64 text is longer than this (about 1 KiB of bytes) go out as a
/// BulkDataURI rather than inline.
const INLINE_LIMIT: usize = 1400;

const BINARY_VRS: &[&str] = &["OB", "OD", "OF", "OL", "OV", "OW", "UN"];

/// A blocking `Read` over a blob reader, for dicom-rs's synchronous parser; only for use
/// inside `spawn_blocking`, where blocking on the runtime is allowed.
pub(crate) struct BlockingRead {
    rt: tokio::runtime::Handle,
    inner: BlobReader,
}

impl BlockingRead {
    /// Wraps a blob reader; call from the async side, use from a blocking thread.
    pub fn new(inner: BlobReader) -> BlockingRead {
        BlockingRead {
            rt: tokio::runtime::Handle::current(),
            inner,
        }
    }
}

impl std::io::Read for BlockingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.rt.block_on(self.inner.read(buf))
    }
}

/// Reads an object's attributes up to, not including, the pixel data: the pixel data is
/// never read, however large.
pub(crate) fn read_header(reader: BlockingRead) -> Result<DefaultDicomObject, Problem> {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(std::io::BufReader::with_capacity(64 << 10, reader))
        .map_err(|e| Problem::internal(format!("stored object does not parse: {e}")))
}

/// The DICOM JSON object of one instance. `instance_url` is the instance's absolute WADO-RS
/// URL; bulk data URIs hang below it.
pub(crate) fn instance_json(
    obj: &DefaultDicomObject,
    instance_url: &str,
    stored_ts: &str,
) -> Result<Value, Problem> {
    let mut v = dicom_json::to_value(&**obj)
        .map_err(|e| Problem::internal(format!("could not convert to DICOM JSON: {e}")))?;
    let base = format!("{instance_url}/bulkdata/");
    if let Value::Object(map) = &mut v {
        replace_bulk(map, &base, "");
        // The parser stopped at the pixel data; an image always has it (and only an
        // image has Rows and Columns).
        if obj.get(tags::ROWS).is_some() && obj.get(tags::COLUMNS).is_some() {
            let native =
                pacsgrid_dicom::uid::transfer_syntax(stored_ts).is_some_and(|i| !i.encapsulated);
            let bits = obj
                .get(tags::BITS_ALLOCATED)
                .and_then(|e| e.to_int::<u16>().ok())
                .unwrap_or(8);
            let vr = if native && bits > 8 { "OW" } else { "OB" };
            map.insert(
                "7FE00010".into(),
                json!({"vr": vr, "BulkDataURI": format!("{base}7FE00010")}),
            );
        }
        // which syntax the bytes are stored in: viewers use it to ask for them as stored
        map.insert("00083002".into(), json!({"vr": "UI", "Value": [stored_ts]}));
    }
    Ok(v)
}

/// Replaces large inline binaries by BulkDataURIs, descending into sequence items
/// (`prefix` is the tag path so far, e.g. `00540016/0/`).
fn replace_bulk(map: &mut Map<String, Value>, base: &str, prefix: &str) {
    for (tag, elem) in map.iter_mut() {
        let Some(obj) = elem.as_object_mut() else {
            continue;
        };
        let vr = obj
            .get("vr")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if vr == "SQ" {
            if let Some(Value::Array(items)) = obj.get_mut("Value") {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Object(m) = item {
                        replace_bulk(m, base, &format!("{prefix}{tag}/{i}/"));
                    }
                }
            }
            continue;
        }
        if !BINARY_VRS.contains(&vr.as_str()) {
            continue;
        }
        let large = obj
            .get("InlineBinary")
            .and_then(Value::as_str)
            .is_some_and(|s| s.len() > INLINE_LIMIT);
        if large {
            obj.remove("InlineBinary");
            obj.insert(
                "BulkDataURI".into(),
                Value::String(format!("{base}{prefix}{tag}")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_binaries_become_uris_small_stay_inline() {
        let big = "A".repeat(2000);
        let mut v = json!({
            "00091010": {"vr": "OB", "InlineBinary": big},
            "00091011": {"vr": "OB", "InlineBinary": "AAE="},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "X"}]},
            "00540016": {"vr": "SQ", "Value": [{"00291010": {"vr": "UN", "InlineBinary": big}}]}
        });
        let Value::Object(m) = &mut v else { panic!() };
        replace_bulk(m, "http://h/i/bulkdata/", "");
        assert_eq!(
            v["00091010"],
            json!({"vr": "OB", "BulkDataURI": "http://h/i/bulkdata/00091010"})
        );
        assert_eq!(v["00091011"]["InlineBinary"], "AAE=");
        assert_eq!(
            v["00540016"]["Value"][0]["00291010"]["BulkDataURI"],
            "http://h/i/bulkdata/00540016/0/00291010"
        );
    }
}
