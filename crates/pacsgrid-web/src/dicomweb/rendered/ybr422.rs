//! Native (uncompressed) 4:2:2 colour, which dicom-pixeldata does not decode: it sizes a
//! frame as three samples a pixel, while YBR_FULL_422 and YBR_PARTIAL_422 carry two (Y1 Y2
//! Cb Cr for each pair of pixels, PS3.3 C.7.6.3.1.2). Rendering such a frame goes through
//! here instead.

use crate::problem::Problem;
use dicom_pixeldata::image::{DynamicImage, RgbImage};

/// The 4:2:2 colour model of a native frame, if it is one this module renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ybr422 {
    /// Full-range luminance and chrominance (JFIF).
    Full,
    /// Studio range: luminance 16-235, chrominance 16-240 (retired in DICOM, still met).
    Partial,
}

impl Ybr422 {
    /// Which model `photometric` names, for 8-bit, 3-sample, interleaved data only.
    pub(crate) fn of(photometric: &str, samples: u16, bits: u16, planar: u16) -> Option<Self> {
        if samples != 3 || bits != 8 || planar != 0 {
            return None;
        }
        match photometric.trim() {
            "YBR_FULL_422" => Some(Ybr422::Full),
            "YBR_PARTIAL_422" => Some(Ybr422::Partial),
            _ => None,
        }
    }

    /// Frame `index` (0-based) of `pixels`, a `cols`×`rows` image, as RGB.
    pub(crate) fn to_rgb(
        self,
        pixels: &[u8],
        rows: u32,
        cols: u32,
        index: u32,
    ) -> Result<DynamicImage, Problem> {
        let (w, h) = (cols as usize, rows as usize);
        if w % 2 != 0 {
            return Err(Problem::not_acceptable(format!(
                "a 4:2:2 image must have an even number of columns, this one has {w}"
            )));
        }
        let len = w * h * 2;
        let start = len * index as usize;
        let frame = pixels.get(start..start + len).ok_or_else(|| {
            Problem::not_acceptable(format!(
                "the pixel data holds {} bytes, too few for frame {} of {w}x{h} 4:2:2 colour",
                pixels.len(),
                index + 1
            ))
        })?;
        let mut out = Vec::with_capacity(w * h * 3);
        for quad in frame.chunks_exact(4) {
            let (cb, cr) = (quad[2], quad[3]);
            out.extend_from_slice(&self.rgb(quad[0], cb, cr));
            out.extend_from_slice(&self.rgb(quad[1], cb, cr));
        }
        RgbImage::from_raw(cols, rows, out)
            .map(DynamicImage::ImageRgb8)
            .ok_or_else(|| Problem::internal("4:2:2 frame did not fill its image"))
    }

    fn rgb(self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
        // PS3.3 C.7.6.3.1.2: JFIF (ITU-R BT.601 full range) and BT.601 studio range.
        let (y, kr, kgb, kgr, kb) = match self {
            Ybr422::Full => (y, 1.402, 0.344_136, 0.714_136, 1.772),
            Ybr422::Partial => ((y - 16.0) * 1.164_4, 1.596, 0.392, 0.813, 2.017),
        };
        let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        [
            clamp(y + kr * cr),
            clamp(y - kgb * cb - kgr * cr),
            clamp(y + kb * cb),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_8_bit_interleaved_422_is_taken() {
        assert_eq!(Ybr422::of("YBR_FULL_422", 3, 8, 0), Some(Ybr422::Full));
        assert_eq!(
            Ybr422::of("YBR_PARTIAL_422 ", 3, 8, 0),
            Some(Ybr422::Partial)
        );
        assert_eq!(Ybr422::of("YBR_FULL", 3, 8, 0), None);
        assert_eq!(Ybr422::of("YBR_FULL_422", 3, 16, 0), None);
        assert_eq!(Ybr422::of("YBR_FULL_422", 3, 8, 1), None);
    }

    #[test]
    fn pairs_share_their_chrominance() {
        // grey (no chroma), then pure red in JFIF YCbCr (76, 85, 255)
        let px = [10u8, 200, 128, 128, 76, 76, 85, 255];
        let img = Ybr422::Full.to_rgb(&px, 1, 4, 0).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 0).0, [10, 10, 10]);
        assert_eq!(img.get_pixel(1, 0).0, [200, 200, 200]);
        let red = img.get_pixel(2, 0).0;
        assert!(red[0] >= 250 && red[1] <= 3 && red[2] <= 3, "{red:?}");
        assert_eq!(img.get_pixel(3, 0).0, red);
    }

    #[test]
    fn short_or_odd_data_is_refused_not_a_panic() {
        assert_eq!(
            Ybr422::Full
                .to_rgb(&[0u8; 6], 1, 4, 0)
                .unwrap_err()
                .status
                .as_u16(),
            406
        );
        assert_eq!(
            Ybr422::Full
                .to_rgb(&[0u8; 8], 1, 3, 0)
                .unwrap_err()
                .status
                .as_u16(),
            406
        );
    }
}
