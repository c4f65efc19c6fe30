//! Where the header of a stored data set ends (the first top-level element at or after the
//! pixel data, 7FE0,0008 Float Pixel Data onwards), and where the pixel data element that
//! follows it ends. A de-identified copy rewrites the bytes before the first, copies the pixel
//! data as stored while it streams past, and drops what follows it (private groups above
//! 7FE0, digital signatures, padding: all removed by the profile), so only the header is
//! ever held in memory.

use crate::uid::DatasetEncoding;
use crate::wire::{read_u16, read_u32};

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 32;
// Float and Double Float Pixel Data (7FE0,0008/0009) are pixel data too.
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0008);

/// Why a header boundary could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The bytes are not a data set this walker can follow.
    #[error("malformed data set at byte {at}: {why}")]
    Malformed {
        /// Offset in the data set.
        at: usize,
        /// What was wrong.
        why: String,
    },
    /// Deflated data sets have no byte boundary between header and pixel data.
    #[error("a deflated data set cannot be split")]
    Deflated,
}

/// Outcome of walking the bytes seen so far.
enum Walk {
    /// The element or item ends at this offset.
    End(usize),
    /// More bytes are needed.
    More,
}

/// Refuses an encoding whose bytes cannot be walked as they arrive (deflated data sets must
/// be inflated first).
fn walkable(encoding: DatasetEncoding) -> Result<(), SplitError> {
    if encoding == DatasetEncoding::Deflated {
        return Err(SplitError::Deflated);
    }
    Ok(())
}

/// A 16-bit number of `encoding` from the first two bytes of `b`.
fn u16_in(encoding: DatasetEncoding, b: &[u8]) -> u16 {
    read_u16([b[0], b[1]], encoding == DatasetEncoding::ExplicitBig)
}

/// A 32-bit number of `encoding` from the first four bytes of `b`.
fn u32_in(encoding: DatasetEncoding, b: &[u8]) -> u32 {
    read_u32(
        [b[0], b[1], b[2], b[3]],
        encoding == DatasetEncoding::ExplicitBig,
    )
}

/// Finds the header boundary of a data set whose bytes arrive in pieces: feed it the bytes
/// received so far (from the start of the data set) until it answers.
#[derive(Debug)]
pub struct HeaderSplitter {
    encoding: DatasetEncoding,
    /// Offset of the next top-level element not yet walked.
    pos: usize,
}

impl HeaderSplitter {
    /// A splitter for a data set in `encoding`.
    pub fn new(encoding: DatasetEncoding) -> Result<HeaderSplitter, SplitError> {
        walkable(encoding)?;
        Ok(HeaderSplitter { encoding, pos: 0 })
    }

    /// The offset where the header ends in `bytes` (all the data set's bytes received so
    /// far), or `None` when more are needed. With `at_end` (no more bytes will come), a data
    /// set without pixel data ends its header at its end.
    pub fn feed(&mut self, bytes: &[u8], at_end: bool) -> Result<Option<usize>, SplitError> {
        loop {
            if self.pos == bytes.len() && at_end {
                return Ok(Some(self.pos));
            }
            let Some((tag, vr, len, value_at)) = self.header(bytes, self.pos)? else {
                return self.need_more(bytes, at_end);
            };
            if tag >= PIXEL_DATA {
                return Ok(Some(self.pos));
            }
            match self.skip_value(bytes, vr, len, value_at, 0)? {
                Walk::End(end) => self.pos = end,
                Walk::More => return self.need_more(bytes, at_end),
            }
        }
    }

    fn need_more(&self, bytes: &[u8], at_end: bool) -> Result<Option<usize>, SplitError> {
        if at_end {
            return Err(SplitError::Malformed {
                at: bytes.len(),
                why: "the data set ends inside an element".into(),
            });
        }
        Ok(None)
    }

    /// Tag, VR (`None` for implicit VR and items), length and value offset of the element
    /// header at `at`; `None` when its bytes have not all arrived.
    #[allow(clippy::type_complexity)]
    fn header(
        &self,
        bytes: &[u8],
        at: usize,
    ) -> Result<Option<((u16, u16), Option<[u8; 2]>, u32, usize)>, SplitError> {
        let Some(t) = bytes.get(at..at + 8) else {
            return Ok(None);
        };
        let tag = (
            u16_in(self.encoding, &t[0..2]),
            u16_in(self.encoding, &t[2..4]),
        );
        if tag.0 == 0xFFFE || self.encoding == DatasetEncoding::ImplicitLittle {
            return Ok(Some((tag, None, u32_in(self.encoding, &t[4..8]), at + 8)));
        }
        let vr = [t[4], t[5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(SplitError::Malformed {
                at: at + 4,
                why: format!("invalid VR for ({:04X},{:04X})", tag.0, tag.1),
            });
        }
        let long = crate::wire::has_long_length(vr);
        if !long {
            return Ok(Some((
                tag,
                Some(vr),
                u32::from(u16_in(self.encoding, &t[6..8])),
                at + 8,
            )));
        }
        let Some(l) = bytes.get(at + 8..at + 12) else {
            return Ok(None);
        };
        Ok(Some((tag, Some(vr), u32_in(self.encoding, l), at + 12)))
    }

    /// Where the value starting at `at` ends: a defined length is skipped, an undefined one
    /// (sequences, encapsulated data) is walked item by item to its delimiter.
    fn skip_value(
        &self,
        bytes: &[u8],
        vr: Option<[u8; 2]>,
        len: u32,
        at: usize,
        depth: usize,
    ) -> Result<Walk, SplitError> {
        if len != UNDEFINED {
            let end = at + len as usize;
            return Ok(if end <= bytes.len() {
                Walk::End(end)
            } else {
                Walk::More
            });
        }
        if let Some(vr) = vr {
            if !matches!(&vr, b"SQ" | b"UN" | b"OB" | b"OW") {
                return Err(SplitError::Malformed {
                    at,
                    why: format!("undefined length on VR {}", String::from_utf8_lossy(&vr)),
                });
            }
        }
        if depth >= MAX_DEPTH {
            return Err(SplitError::Malformed {
                at,
                why: "sequences nested too deep".into(),
            });
        }
        let mut pos = at;
        loop {
            let Some((tag, _, ilen, value_at)) = self.header(bytes, pos)? else {
                return Ok(Walk::More);
            };
            match tag {
                (0xFFFE, 0xE0DD) => return Ok(Walk::End(value_at)),
                (0xFFFE, 0xE000) if ilen == UNDEFINED => {
                    match self.walk_item(bytes, value_at, depth + 1)? {
                        Walk::End(e) => pos = e,
                        Walk::More => return Ok(Walk::More),
                    }
                }
                (0xFFFE, 0xE000) => match self.skip_value(bytes, None, ilen, value_at, depth)? {
                    Walk::End(e) => pos = e,
                    Walk::More => return Ok(Walk::More),
                },
                (g, e) => {
                    return Err(SplitError::Malformed {
                        at: pos,
                        why: format!("({g:04X},{e:04X}) where an item was expected"),
                    })
                }
            }
        }
    }

    /// Walks the elements of an item of undefined length to its delimiter.
    fn walk_item(&self, bytes: &[u8], at: usize, depth: usize) -> Result<Walk, SplitError> {
        let mut pos = at;
        loop {
            let Some((tag, vr, len, value_at)) = self.header(bytes, pos)? else {
                return Ok(Walk::More);
            };
            if tag == (0xFFFE, 0xE00D) {
                return Ok(Walk::End(value_at));
            }
            match self.skip_value(bytes, vr, len, value_at, depth)? {
                Walk::End(e) => pos = e,
                Walk::More => return Ok(Walk::More),
            }
        }
    }
}

/// The tag of the element whose header starts `bytes`, if its four bytes are there.
pub fn tag_at(bytes: &[u8], encoding: DatasetEncoding) -> Option<(u16, u16)> {
    let b = bytes.get(..4)?;
    Some(match encoding {
        DatasetEncoding::ExplicitBig => (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ),
        _ => (
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ),
    })
}

/// Whether a tag is one of the pixel data elements (Float, Double Float, or Pixel Data).
pub fn is_pixel_data(tag: (u16, u16)) -> bool {
    tag.0 == 0x7FE0 && matches!(tag.1, 0x0008 | 0x0009 | 0x0010)
}

/// What [`ElementEnd`] expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The element's own header.
    Element,
    /// An item (fragment) header or the sequence delimiter of encapsulated data.
    Item,
}

/// Follows one element (the pixel data) from its first byte while its bytes stream past
/// without being kept, and says where it ends: a defined length is counted, encapsulated
/// fragments are counted item by item up to the sequence delimiter.
#[derive(Debug)]
pub struct ElementEnd {
    encoding: DatasetEncoding,
    expect: Expect,
    /// Header bytes that arrived so far (a header may straddle two chunks).
    pending: Vec<u8>,
    /// Value bytes still to pass before the next header.
    skip: u64,
    /// Whether the element ends when `skip` reaches 0.
    ends_after_skip: bool,
}

impl ElementEnd {
    /// A tracker for an element whose first byte is the next one fed.
    pub fn new(encoding: DatasetEncoding) -> Result<ElementEnd, SplitError> {
        walkable(encoding)?;
        Ok(ElementEnd {
            encoding,
            expect: Expect::Element,
            pending: Vec::with_capacity(12),
            skip: 0,
            ends_after_skip: false,
        })
    }

    /// Header bytes needed before `pending` can be read.
    fn needed(&self) -> usize {
        let explicit = self.encoding != DatasetEncoding::ImplicitLittle;
        if self.expect == Expect::Element && explicit && self.pending.len() >= 6 {
            let vr = &self.pending[4..6];
            if matches!(vr, b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"UN") {
                return 12;
            }
        }
        8
    }

    /// Feeds the next bytes; returns the offset in `chunk` just past the element's end, once
    /// it is in this chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Option<usize>, SplitError> {
        let mut i = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min((chunk.len() - i) as u64) as usize;
                i += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
                if self.ends_after_skip {
                    return Ok(Some(i));
                }
            }
            while self.pending.len() < self.needed() && i < chunk.len() {
                let want = (self.needed() - self.pending.len()).min(chunk.len() - i);
                self.pending.extend_from_slice(&chunk[i..i + want]);
                i += want;
            }
            if self.pending.len() < self.needed() {
                return Ok(None);
            }
            let h = std::mem::take(&mut self.pending);
            let tag = (
                u16_in(self.encoding, &h[0..2]),
                u16_in(self.encoding, &h[2..4]),
            );
            let len = if h.len() == 12 {
                u32_in(self.encoding, &h[8..12])
            } else if self.encoding == DatasetEncoding::ImplicitLittle
                || self.expect == Expect::Item
            {
                u32_in(self.encoding, &h[4..8])
            } else {
                u32::from(u16_in(self.encoding, &h[6..8]))
            };
            match (self.expect, tag, len) {
                (Expect::Element, _, UNDEFINED) => self.expect = Expect::Item,
                (Expect::Element, _, n) | (Expect::Item, (0xFFFE, 0xE000), n) if n != UNDEFINED => {
                    self.ends_after_skip = self.expect == Expect::Element;
                    if n == 0 && self.ends_after_skip {
                        return Ok(Some(i));
                    }
                    self.skip = u64::from(n);
                }
                (Expect::Item, (0xFFFE, 0xE0DD), _) => return Ok(Some(i)),
                (_, (g, e), _) => {
                    return Err(SplitError::Malformed {
                        at: i,
                        why: format!("({g:04X},{e:04X}) inside encapsulated pixel data"),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(g: u16, e: u16, vr: &[u8; 2], val: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&g.to_le_bytes());
        v.extend_from_slice(&e.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(val.len() as u16).to_le_bytes());
        v.extend_from_slice(val);
        v
    }

    fn undefined(g: u16, e: u16, vr: &[u8; 2]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&g.to_le_bytes());
        v.extend_from_slice(&e.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&[0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        v
    }

    fn item(tag_e: u16, len: u32) -> Vec<u8> {
        let mut v = vec![0xFE, 0xFF];
        v.extend_from_slice(&tag_e.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    #[test]
    fn finds_pixel_data_after_nested_sequences_fed_byte_by_byte() {
        let mut ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        // a sequence of undefined length with one undefined-length item holding a name
        ds.extend(undefined(0x0008, 0x1110, b"SQ"));
        ds.extend(item(0xE000, UNDEFINED));
        ds.extend(el(0x0010, 0x0010, b"PN", b"DOE^J "));
        ds.extend(item(0xE00D, 0));
        ds.extend(item(0xE0DD, 0));
        ds.extend(el(0x0028, 0x0010, b"US", &[2, 0]));
        let header_len = ds.len();
        ds.extend(undefined(0x7FE0, 0x0010, b"OB"));
        ds.extend(item(0xE000, 0));
        ds.extend(item(0xE000, 4));
        ds.extend_from_slice(&[1, 2, 3, 4]);
        ds.extend(item(0xE0DD, 0));
        let mut s = HeaderSplitter::new(DatasetEncoding::ExplicitLittle).unwrap();
        let mut found = None;
        for n in 0..=ds.len() {
            if let Some(at) = s.feed(&ds[..n], false).unwrap() {
                found = Some((n, at));
                break;
            }
        }
        let (n, at) = found.unwrap();
        assert_eq!(at, header_len);
        assert!(n <= header_len + 12, "read {n} bytes");
    }

    #[test]
    fn a_data_set_without_pixel_data_ends_at_its_end() {
        let ds = el(0x0008, 0x0016, b"UI", b"1.2\0");
        let mut s = HeaderSplitter::new(DatasetEncoding::ExplicitLittle).unwrap();
        assert_eq!(s.feed(&ds, false).unwrap(), None);
        assert_eq!(s.feed(&ds, true).unwrap(), Some(ds.len()));
        let mut s = HeaderSplitter::new(DatasetEncoding::ExplicitLittle).unwrap();
        assert!(s.feed(&ds[..6], true).is_err());
        assert!(HeaderSplitter::new(DatasetEncoding::Deflated).is_err());
    }

    #[test]
    fn the_pixel_data_end_is_found_in_any_chunking() {
        let mut px = undefined(0x7FE0, 0x0010, b"OB");
        px.extend(item(0xE000, 0));
        px.extend(item(0xE000, 6));
        px.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        px.extend(item(0xE0DD, 0));
        // native pixel data: an OW value of 10 bytes, long-VR header form
        let mut native_long = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
        native_long.extend_from_slice(&10u32.to_le_bytes());
        native_long.extend_from_slice(&[9; 10]);
        for element in [px, native_long] {
            let trailer = el(0xFFFC, 0xFFFC, b"OB", &[0, 0]);
            let mut all = element.clone();
            all.extend(&trailer);
            for size in 1..=all.len() {
                let mut t = ElementEnd::new(DatasetEncoding::ExplicitLittle).unwrap();
                let mut end = None;
                for (n, chunk) in all.chunks(size).enumerate() {
                    if let Some(at) = t.feed(chunk).unwrap() {
                        end = Some(n * size + at);
                        break;
                    }
                }
                assert_eq!(end, Some(element.len()), "chunks of {size}");
            }
        }
        assert_eq!(
            tag_at(&[0xE0, 0x7F, 0x10, 0x00], DatasetEncoding::ExplicitLittle),
            Some((0x7FE0, 0x0010))
        );
        assert!(is_pixel_data((0x7FE0, 0x0008)) && !is_pixel_data((0x7FE1, 0x0010)));
    }

    #[test]
    fn implicit_vr_lengths_are_four_bytes() {
        let mut ds = Vec::new();
        for (g, e, val) in [
            (0x0010u16, 0x0010u16, &b"DOE^J "[..]),
            (0x7FE0, 0x0010, &[0u8; 4][..]),
        ] {
            ds.extend_from_slice(&g.to_le_bytes());
            ds.extend_from_slice(&e.to_le_bytes());
            ds.extend_from_slice(&(val.len() as u32).to_le_bytes());
            ds.extend_from_slice(val);
        }
        let mut s = HeaderSplitter::new(DatasetEncoding::ImplicitLittle).unwrap();
        assert_eq!(s.feed(&ds, true).unwrap(), Some(14));
    }
}
