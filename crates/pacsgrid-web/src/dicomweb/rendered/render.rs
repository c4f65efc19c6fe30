//! Turning one frame of a Part 10 object into a JPEG or PNG: decode, apply the modality and
//! VOI LUTs, crop and scale, encode. Synchronous and CPU-bound: run it in `spawn_blocking`.

use super::params::{Format, Region, RenderParams, Viewport};
use super::ybr422::Ybr422;
use crate::problem::Problem;
use dicom_dictionary_std::tags;
use dicom_object::file::{OpenFileOptions, ReadPreamble};
use dicom_pixeldata::image::{imageops::FilterType, DynamicImage, ImageEncoder};
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption, WindowLevel};

/// Whether this node can decode the pixel data of a transfer syntax; the 406 when not.
pub(crate) fn check_decodable(ts_uid: &str) -> Result<(), Problem> {
    match pacsgrid_archive::transcode::cannot_decode(ts_uid) {
        None => Ok(()),
        Some(why) => Err(Problem::not_acceptable(format!(
            "the instance cannot be rendered: {why}"
        ))),
    }
}

/// Renders frame `frame` (1-based) of the Part 10 object in `file`.
pub(crate) fn render(file: Vec<u8>, frame: u32, params: &RenderParams) -> Result<Vec<u8>, Problem> {
    // Parse after the preamble ourselves: the stored bytes may or may not carry one.
    let start = if file.len() >= 132 && &file[128..132] == b"DICM" {
        128
    } else {
        0
    };
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&file[start..])
        .map_err(|e| Problem::internal(format!("stored object does not parse: {e}")))?;
    drop(file);
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Err(Problem::not_acceptable(
            "the instance has no Pixel Data: only images can be rendered",
        ));
    }
    let frames = obj
        .element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    if frame == 0 || frame > frames {
        return Err(Problem::not_found(format!(
            "frame {frame} does not exist: the instance has {frames} frame(s)"
        )));
    }
    check_decodable(&obj.meta().transfer_syntax)?;
    let int = |tag| {
        obj.get(tag)
            .and_then(|e| e.to_int::<u32>().ok())
            .unwrap_or(0)
    };
    let photometric = obj
        .get(tags::PHOTOMETRIC_INTERPRETATION)
        .and_then(|e| e.to_str().ok())
        .unwrap_or_default();
    let native = pacsgrid_dicom::uid::transfer_syntax(obj.meta().transfer_syntax())
        .is_some_and(|t| !t.encapsulated);
    let ybr422 = Ybr422::of(
        &photometric,
        int(tags::SAMPLES_PER_PIXEL) as u16,
        int(tags::BITS_ALLOCATED) as u16,
        int(tags::PLANAR_CONFIGURATION) as u16,
    );
    if let (true, Some(model)) = (native, ybr422) {
        let pixels = obj
            .element(tags::PIXEL_DATA)
            .ok()
            .and_then(|e| e.to_bytes().ok())
            .ok_or_else(|| Problem::not_acceptable("the pixel data cannot be read"))?;
        let image = model.to_rgb(&pixels, int(tags::ROWS), int(tags::COLUMNS), frame - 1)?;
        return finish(image, params);
    }
    // The object was accepted and stored, but its pixel data do not decode (a value the
    // decoder cannot take, too few bytes, an unsupported layout): a property of this
    // instance, not a fault of the node.
    let decoded = obj.decode_pixel_data_frame(frame - 1).map_err(|e| {
        tracing::warn!(frame, error = %e, "rendering refused: the pixel data do not decode");
        Problem::not_acceptable(format!(
            "frame {frame} of this instance cannot be decoded to render it: {e}"
        ))
    })?;
    let voi = match params.window {
        Some(w) => VoiLutOption::CustomWithFunction(
            WindowLevel {
                center: w.center,
                width: w.width,
            },
            w.function,
        ),
        None => VoiLutOption::Default,
    };
    let options = ConvertOptions::new().with_voi_lut(voi).force_8bit();
    let image = decoded
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| Problem::not_acceptable(format!("this image cannot be rendered: {e}")))?;
    drop(decoded);
    finish(image, params)
}

/// Crops and scales a rendered frame as the request asks, then encodes it.
fn finish(image: DynamicImage, params: &RenderParams) -> Result<Vec<u8>, Problem> {
    let image = match params.viewport {
        Some(v) => fit(crop(image, v.region)?, v),
        None => image,
    };
    encode(image, params.format, params.quality)
}

/// Cuts the source region out (clamped to the image), flipping for negative sizes.
fn crop(image: DynamicImage, region: Option<Region>) -> Result<DynamicImage, Problem> {
    let Some(r) = region else {
        return Ok(image);
    };
    let (w, h) = (image.width(), image.height());
    let cw = clamp_len(r.x, r.w.unsigned_abs(), w);
    let ch = clamp_len(r.y, r.h.unsigned_abs(), h);
    if cw == 0 || ch == 0 {
        return Err(Problem::bad_request(format!(
            "viewport source region starts at ({},{}), outside the {w}x{h} image",
            r.x, r.y
        )));
    }
    let mut out = image.crop_imm(r.x, r.y, cw, ch);
    if r.w < 0 {
        out = out.fliph();
    }
    if r.h < 0 {
        out = out.flipv();
    }
    Ok(out)
}

fn clamp_len(origin: u32, len: u64, total: u32) -> u32 {
    let avail = u64::from(total.saturating_sub(origin));
    len.min(avail) as u32
}

/// The size of a `w`×`h` image scaled to fit a `vw`×`vh` box, keeping its aspect ratio.
pub(crate) fn fit_size(w: u32, h: u32, vw: u32, vh: u32) -> (u32, u32) {
    let scale = (f64::from(vw) / f64::from(w)).min(f64::from(vh) / f64::from(h));
    let nw = (f64::from(w) * scale).round().clamp(1.0, f64::from(vw)) as u32;
    let nh = (f64::from(h) * scale).round().clamp(1.0, f64::from(vh)) as u32;
    (nw, nh)
}

fn fit(image: DynamicImage, v: Viewport) -> DynamicImage {
    let (nw, nh) = fit_size(image.width(), image.height(), v.width, v.height);
    if (nw, nh) == (image.width(), image.height()) {
        return image;
    }
    image.resize_exact(nw, nh, FilterType::Triangle)
}

fn encode(image: DynamicImage, format: Format, quality: u8) -> Result<Vec<u8>, Problem> {
    let image = if image.color().has_color() {
        DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        DynamicImage::ImageLuma8(image.to_luma8())
    };
    let mut out = Vec::new();
    let (w, h, color) = (image.width(), image.height(), image.color());
    let result =
        match format {
            Format::Jpeg => dicom_pixeldata::image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out, quality,
            )
            .write_image(image.as_bytes(), w, h, color.into()),
            Format::Png => dicom_pixeldata::image::codecs::png::PngEncoder::new(&mut out)
                .write_image(image.as_bytes(), w, h, color.into()),
        };
    result.map_err(|e| Problem::internal(format!("cannot encode the image: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect() {
        assert_eq!(fit_size(512, 512, 128, 128), (128, 128));
        assert_eq!(fit_size(512, 256, 128, 128), (128, 64));
        assert_eq!(fit_size(256, 512, 100, 300), (100, 200));
        assert_eq!(fit_size(64, 64, 200, 100), (100, 100));
        assert_eq!(fit_size(1000, 1, 10, 10), (10, 1));
    }

    #[test]
    fn codecs_we_lack_are_406_with_the_syntax_named() {
        assert!(check_decodable("1.2.840.10008.1.2.1").is_ok());
        assert!(check_decodable("1.2.840.10008.1.2.5").is_ok());
        assert!(check_decodable("1.2.840.10008.1.2.4.90").is_ok());
        let e = check_decodable("1.2.840.10008.1.2.4.80").unwrap_err();
        assert_eq!(e.status.as_u16(), 406);
        assert!(e.detail.contains("1.2.840.10008.1.2.4.80"), "{}", e.detail);
    }
}
