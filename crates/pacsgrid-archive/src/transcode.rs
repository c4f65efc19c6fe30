//! Sending a stored object in another transfer syntax than it was stored in: between the
//! uncompressed syntaxes (re-encoding the data set), and from a compressed syntax to an
//! uncompressed one (decoding the pixel data with dicom-pixeldata). Nothing is ever
//! compressed here: a receiver that accepts only compressed syntaxes other than the stored
//! one gets the stored bytes or nothing. Synchronous: callers run it in `spawn_blocking`.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use pacsgrid_dicom::uid;

/// The most pixel data bytes one decode may produce: the decoded object is held whole in
/// memory (dicom-pixeldata decodes in memory), so a long compressed cine is refused rather
/// than allowed to take gigabytes.
pub const MAX_DECODED: u64 = 1 << 30;

/// Why objects stored in `ts` cannot be converted to an uncompressed syntax here, or `None`
/// when they can (an uncompressed syntax, or a compressed one this node has a decoder for).
pub fn cannot_decode(ts: &str) -> Option<String> {
    let name = uid::transfer_syntax(ts)
        .map(|i| i.name)
        .unwrap_or("unknown");
    match TransferSyntaxRegistry.get(ts) {
        None => Some(format!(
            "{name} ({ts}) is not a transfer syntax this node can read"
        )),
        Some(t) if t.is_encapsulated_pixel_data() && t.pixel_data_reader().is_none() => {
            Some(format!("this node has no decoder for {name} ({ts})"))
        }
        Some(_) => None,
    }
}

/// The data set of the Part 10 object `file`, written in the uncompressed syntax `to`,
/// decoding its pixel data first when it is stored compressed. The error says why not.
pub(crate) fn to_uncompressed(file: &[u8], to: &str) -> Result<Vec<u8>, String> {
    let target = TransferSyntaxRegistry
        .get(to)
        .filter(|t| !t.is_encapsulated_pixel_data())
        .ok_or_else(|| format!("{to} is not an uncompressed syntax this node writes"))?;
    // dicom-object finds the preamble by itself (stored objects carry one)
    let mut obj = OpenFileOptions::new()
        .from_reader(file)
        .map_err(|e| format!("the stored object does not parse: {e}"))?;
    let stored = obj.meta().transfer_syntax().to_string();
    let compressed = TransferSyntaxRegistry
        .get(&stored)
        .is_some_and(|t| t.is_encapsulated_pixel_data());
    if compressed {
        if let Some(why) = cannot_decode(&stored) {
            return Err(why);
        }
        let int = |tag| {
            obj.get(tag)
                .and_then(|e| e.to_int::<u64>().ok())
                .unwrap_or(1)
        };
        let samples = int(tags::SAMPLES_PER_PIXEL);
        let decoded = int(tags::ROWS)
            * int(tags::COLUMNS)
            * samples
            * int(tags::BITS_ALLOCATED).div_ceil(8)
            * int(tags::NUMBER_OF_FRAMES);
        if decoded > MAX_DECODED {
            return Err(format!(
                "decoded, its pixel data would take {decoded} bytes, more than the {MAX_DECODED} \
                 this node decodes in memory at once"
            ));
        }
        obj.transcode(target)
            .map_err(|e| format!("its pixel data do not decode: {e}"))?;
        if samples > 1 {
            // the decoders hand back interleaved samples
            obj.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| format!("writing it as {to}: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodable_syntaxes() {
        assert!(cannot_decode(uid::EXPLICIT_VR_LE).is_none());
        assert!(cannot_decode("1.2.840.10008.1.2.5").is_none(), "RLE");
        assert!(
            cannot_decode("1.2.840.10008.1.2.4.90").is_none(),
            "JPEG 2000"
        );
        let w = cannot_decode("1.2.840.10008.1.2.4.80").unwrap();
        assert!(w.contains("JPEG-LS"), "{w}");
        assert!(cannot_decode("1.2.3.4").is_some());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(to_uncompressed(b"not dicom", uid::EXPLICIT_VR_LE).is_err());
        assert!(to_uncompressed(&[0u8; 200], "1.2.840.10008.1.2.4.50").is_err());
    }
}
