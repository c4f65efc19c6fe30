//! The query parameters of rendered resources (PS3.18 8.3.5) and the choice of image format
//! from Accept.

use crate::problem::Problem;
use dicom_pixeldata::VoiLutFunction;

/// Largest viewport side accepted, so that a request cannot ask for a gigapixel image.
pub(crate) const MAX_VIEWPORT: u32 = 8192;
/// JPEG quality when the request names none.
pub(crate) const DEFAULT_QUALITY: u8 = 90;
/// The box a thumbnail fits in when the request gives no viewport.
pub(crate) const THUMBNAIL_SIZE: u32 = 128;

/// The image formats a rendered resource can be encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// image/jpeg (the default).
    Jpeg,
    /// image/png.
    Png,
}

impl Format {
    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
        }
    }
}

/// A window given in the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    /// Window centre, in rescaled (modality) values.
    pub center: f64,
    /// Window width.
    pub width: f64,
    /// VOI LUT function.
    pub function: VoiLutFunction,
}

/// A part of the source image to render: origin and size, a negative size flipping that axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// Left column of the region.
    pub x: u32,
    /// Top row of the region.
    pub y: u32,
    /// Width; negative flips horizontally.
    pub w: i64,
    /// Height; negative flips vertically.
    pub h: i64,
}

/// The box the rendered image is scaled to fit in, and optionally the part of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Viewport {
    /// Box width.
    pub width: u32,
    /// Box height.
    pub height: u32,
    /// The source region, all of it when absent.
    pub region: Option<Region>,
}

/// Everything that shapes a rendered image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RenderParams {
    /// The window from the request; the object's own (else min-max) when absent.
    pub window: Option<Window>,
    /// Scale to fit; the image's own size when absent.
    pub viewport: Option<Viewport>,
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// Output format.
    pub format: Format,
}

/// Parses the query parameters and the Accept header. Unknown parameters and `annotation`,
/// `charset`, `iccprofile` are ignored (this node draws no annotations and embeds no ICC
/// profile). `thumbnail` gives the default viewport of a thumbnail.
pub(crate) fn parse(
    query: &[(String, String)],
    accept_header: Option<&str>,
    thumbnail: bool,
) -> Result<RenderParams, Problem> {
    let mut window = None;
    let mut viewport = None;
    let mut quality = DEFAULT_QUALITY;
    let mut accept_param = None;
    for (k, v) in query {
        match k.as_str() {
            "window" => window = Some(parse_window(v)?),
            "viewport" => viewport = Some(parse_viewport(v)?),
            "quality" => quality = parse_quality(v)?,
            "accept" => accept_param = Some(v.as_str()),
            _ => {}
        }
    }
    if thumbnail && viewport.is_none() {
        viewport = Some(Viewport {
            width: THUMBNAIL_SIZE,
            height: THUMBNAIL_SIZE,
            region: None,
        });
    }
    // PS3.18 8.3.3.1: the accept query parameter takes precedence over the header.
    let format = choose_format(accept_param.or(accept_header))?;
    Ok(RenderParams {
        window,
        viewport,
        quality,
        format,
    })
}

fn parse_window(v: &str) -> Result<Window, Problem> {
    let bad = |why: &str| {
        Problem::bad_request(format!(
            "window={v:?}: {why}; expected window=center,width[,function] with function \
             linear, linear-exact or sigmoid"
        ))
    };
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad("two or three comma-separated values needed"));
    }
    let num = |s: &str, what: &str| -> Result<f64, Problem> {
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad(&format!("{what} {s:?} is not a number")))
    };
    let center = num(parts[0], "center")?;
    let width = num(parts[1], "width")?;
    let function = match parts.get(2).map(|f| f.to_ascii_lowercase()) {
        None => VoiLutFunction::Linear,
        Some(f) if f == "linear" => VoiLutFunction::Linear,
        Some(f) if f == "linear-exact" || f == "linear_exact" => VoiLutFunction::LinearExact,
        Some(f) if f == "sigmoid" => VoiLutFunction::Sigmoid,
        Some(f) => return Err(bad(&format!("unknown function {f:?}"))),
    };
    let min_width = if function == VoiLutFunction::Linear {
        1.0
    } else {
        0.0
    };
    if width < min_width || (width == 0.0 && function == VoiLutFunction::Sigmoid) {
        return Err(bad(&format!(
            "width {width} is too small for this function"
        )));
    }
    Ok(Window {
        center,
        width,
        function,
    })
}

fn parse_viewport(v: &str) -> Result<Viewport, Problem> {
    let bad = |why: &str| {
        Problem::bad_request(format!(
            "viewport={v:?}: {why}; expected viewport=vw,vh or viewport=vw,vh,sx,sy,sw,sh"
        ))
    };
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    if parts.len() != 2 && parts.len() != 6 {
        return Err(bad("two or six comma-separated values needed"));
    }
    let side = |s: &str, what: &str| -> Result<u32, Problem> {
        s.parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_VIEWPORT).contains(n))
            .ok_or_else(|| {
                bad(&format!(
                    "{what} {s:?} is not a whole number from 1 to {MAX_VIEWPORT}"
                ))
            })
    };
    let width = side(parts[0], "vw")?;
    let height = side(parts[1], "vh")?;
    let region = if parts.len() == 6 {
        let origin = |s: &str, what: &str| -> Result<u32, Problem> {
            if s.is_empty() {
                return Ok(0);
            }
            s.parse::<u32>()
                .map_err(|_| bad(&format!("{what} {s:?} is not a whole number ≥ 0")))
        };
        let size = |s: &str, what: &str| -> Result<i64, Problem> {
            s.parse::<i64>()
                .ok()
                .filter(|n| *n != 0 && n.unsigned_abs() <= u64::from(u32::MAX))
                .ok_or_else(|| bad(&format!("{what} {s:?} is not a non-zero whole number")))
        };
        Some(Region {
            x: origin(parts[2], "sx")?,
            y: origin(parts[3], "sy")?,
            w: size(parts[4], "sw")?,
            h: size(parts[5], "sh")?,
        })
    } else {
        None
    };
    Ok(Viewport {
        width,
        height,
        region,
    })
}

fn parse_quality(v: &str) -> Result<u8, Problem> {
    v.trim()
        .parse::<u8>()
        .ok()
        .filter(|q| (1..=100).contains(q))
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "quality={v:?}: expected a whole number from 1 to 100"
            ))
        })
}

/// Picks JPEG or PNG from an Accept value: the format with the highest q, the client's
/// order breaking ties; JPEG when nothing is said. 406 when neither is acceptable.
pub(crate) fn choose_format(accept: Option<&str>) -> Result<Format, Problem> {
    let accept = match accept.map(str::trim) {
        None | Some("") => return Ok(Format::Jpeg),
        Some(a) => a,
    };
    // (q, specificity, position) of the best range matching each format.
    let mut best: [Option<(f32, u8, usize)>; 2] = [None, None];
    for (pos, range) in accept.split(',').enumerate() {
        let mut items = range.split(';');
        let essence = items.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in items {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
        }
        for (i, fmt) in [Format::Jpeg, Format::Png].iter().enumerate() {
            let spec = if essence == fmt.media_type() {
                2
            } else if essence == "image/*" {
                1
            } else if essence == "*/*" || essence == "*" {
                0
            } else {
                continue;
            };
            // The most specific matching range decides the format's q (RFC 9110 12.5.1).
            if best[i].is_none_or(|(_, s, _)| spec > s) {
                best[i] = Some((q, spec, pos));
            }
        }
    }
    let candidates = [Format::Jpeg, Format::Png]
        .into_iter()
        .zip(best)
        .filter_map(|(f, b)| {
            b.filter(|(q, _, _)| *q > 0.0)
                .map(|(q, _, pos)| (f, q, pos))
        });
    let mut chosen: Option<(Format, f32, usize)> = None;
    for c in candidates {
        chosen = match chosen {
            Some(cur) if cur.1 > c.1 || (cur.1 == c.1 && cur.2 <= c.2) => Some(cur),
            _ => Some(c),
        };
    }
    chosen.map(|(f, _, _)| f).ok_or_else(|| {
        Problem::not_acceptable(format!(
            "rendered images are served as image/jpeg or image/png; Accept asked for {accept:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accept_picks_jpeg_png_or_refuses() {
        assert_eq!(choose_format(None).unwrap(), Format::Jpeg);
        assert_eq!(choose_format(Some("*/*")).unwrap(), Format::Jpeg);
        assert_eq!(choose_format(Some("image/*")).unwrap(), Format::Jpeg);
        assert_eq!(choose_format(Some("image/png")).unwrap(), Format::Png);
        assert_eq!(
            choose_format(Some("image/png, image/jpeg")).unwrap(),
            Format::Png
        );
        assert_eq!(
            choose_format(Some("image/jpeg;q=0.5, image/png;q=0.9")).unwrap(),
            Format::Png
        );
        assert_eq!(
            choose_format(Some("image/*, image/jpeg;q=0")).unwrap(),
            Format::Png
        );
        let e = choose_format(Some("image/gif")).unwrap_err();
        assert_eq!(e.status.as_u16(), 406);
        assert!(e.detail.contains("image/gif"));
    }

    #[test]
    fn window_viewport_quality() {
        let p = parse(
            &q(&[
                ("window", "40,400,sigmoid"),
                ("viewport", "64,32"),
                ("quality", "75"),
                ("annotation", "patient"),
            ]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            p.window,
            Some(Window {
                center: 40.0,
                width: 400.0,
                function: VoiLutFunction::Sigmoid
            })
        );
        assert_eq!(
            p.viewport,
            Some(Viewport {
                width: 64,
                height: 32,
                region: None
            })
        );
        assert_eq!(p.quality, 75);
        let p = parse(&q(&[("viewport", "10,10,0,5,-20,30")]), None, false).unwrap();
        assert_eq!(
            p.viewport.unwrap().region,
            Some(Region {
                x: 0,
                y: 5,
                w: -20,
                h: 30
            })
        );
    }

    #[test]
    fn thumbnail_defaults_to_128_box() {
        let p = parse(&[], Some("image/png"), true).unwrap();
        assert_eq!(p.viewport.unwrap().width, THUMBNAIL_SIZE);
        assert_eq!(p.format, Format::Png);
        let p = parse(&q(&[("accept", "image/png")]), Some("image/jpeg"), false).unwrap();
        assert_eq!(p.format, Format::Png);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (k, v) in [
            ("window", "abc"),
            ("window", "40"),
            ("window", "40,0"),
            ("window", "40,400,cubic"),
            ("viewport", "0,10"),
            ("viewport", "10"),
            ("viewport", "99999,10"),
            ("quality", "0"),
            ("quality", "101"),
            ("quality", "high"),
        ] {
            let e = parse(&q(&[(k, v)]), None, false).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{k}={v}");
            assert!(e.detail.starts_with(k), "{k}={v}: {}", e.detail);
        }
    }
}
