//! A structural check of a data set that reads element headers and skips values.
//!
//! dicom-rs parses by loading values into memory; to prove that a 2 GB object is complete
//! (not truncated, every length consistent) without holding it, we walk the element
//! headers and seek over the values. Used for every object before it is acknowledged.

use std::io::{self, Read};

/// Byte order and VR form of the data set being walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Implicit VR little endian.
    ImplicitLittle,
    /// Explicit VR little endian.
    ExplicitLittle,
    /// Explicit VR big endian.
    ExplicitBig,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 32;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);

/// What is wrong with a data set's structure.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The data ends inside an element.
    #[error("data set is truncated at byte {0}")]
    Truncated(u64),
    /// A header does not make sense.
    #[error("malformed data set at byte {at}: {why}")]
    Malformed {
        /// Byte position.
        at: u64,
        /// What was found.
        why: String,
    },
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

struct Walker<R> {
    r: R,
    pos: u64,
    form: Form,
}

enum Header {
    Eof,
    Element {
        tag: (u16, u16),
        vr: Option<[u8; 2]>,
        len: u32,
    },
}

impl<R: Read> Walker<R> {
    fn fill(&mut self, buf: &mut [u8], at_boundary: bool) -> Result<bool, WalkError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    if got == 0 && at_boundary {
                        return Ok(false);
                    }
                    return Err(WalkError::Truncated(self.pos + got as u64));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        pacsgrid_dicom::wire::read_u16(b, self.form == Form::ExplicitBig)
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        pacsgrid_dicom::wire::read_u32(b, self.form == Form::ExplicitBig)
    }

    fn header(&mut self, at_boundary: bool) -> Result<Header, WalkError> {
        let mut t = [0u8; 4];
        if !self.fill(&mut t, at_boundary)? {
            return Ok(Header::Eof);
        }
        let tag = (self.u16([t[0], t[1]]), self.u16([t[2], t[3]]));
        let mut l = [0u8; 4];
        // item and delimiter tags never carry a VR, whatever the transfer syntax
        if tag.0 == 0xFFFE || self.form == Form::ImplicitLittle {
            self.fill(&mut l, false)?;
            return Ok(Header::Element {
                tag,
                vr: None,
                len: self.u32(l),
            });
        }
        let mut vr = [0u8; 2];
        self.fill(&mut vr, false)?;
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(WalkError::Malformed {
                at: self.pos - 2,
                why: format!(
                    "invalid VR bytes {:02X}{:02X} for ({:04X},{:04X})",
                    vr[0], vr[1], tag.0, tag.1
                ),
            });
        }
        let long = pacsgrid_dicom::wire::has_long_length(vr);
        let len = if long {
            let mut skip = [0u8; 2];
            self.fill(&mut skip, false)?;
            self.fill(&mut l, false)?;
            self.u32(l)
        } else {
            let mut s = [0u8; 2];
            self.fill(&mut s, false)?;
            u32::from(self.u16(s))
        };
        Ok(Header::Element {
            tag,
            vr: Some(vr),
            len,
        })
    }

    fn skip(&mut self, len: u32) -> Result<(), WalkError> {
        let n = io::copy(&mut (&mut self.r).take(u64::from(len)), &mut io::sink())?;
        self.pos += n;
        if n < u64::from(len) {
            return Err(WalkError::Truncated(self.pos));
        }
        Ok(())
    }

    /// Walks elements until EOF (depth 0) or the given delimiter.
    fn elements(&mut self, depth: usize, until: Option<(u16, u16)>) -> Result<(), WalkError> {
        if depth > MAX_DEPTH {
            return Err(WalkError::Malformed {
                at: self.pos,
                why: "sequences nested too deeply".into(),
            });
        }
        loop {
            match self.header(until.is_none())? {
                Header::Eof => return Ok(()),
                Header::Element { tag, vr, len } => {
                    if Some(tag) == until {
                        return Ok(());
                    }
                    if tag.0 == 0xFFFE {
                        return Err(WalkError::Malformed {
                            at: self.pos,
                            why: format!("unexpected delimiter ({:04X},{:04X})", tag.0, tag.1),
                        });
                    }
                    if len == UNDEFINED {
                        // SQ, UN or implicit with undefined length, or encapsulated pixel data:
                        // all are items up to a sequence delimiter
                        let encapsulated = matches!(vr.as_ref(), Some(b"OB") | Some(b"OW"));
                        self.items(depth + 1, encapsulated)?;
                    } else {
                        self.skip(len)?;
                    }
                }
            }
        }
    }

    fn items(&mut self, depth: usize, fragments: bool) -> Result<(), WalkError> {
        loop {
            match self.header(false)? {
                Header::Eof => return Err(WalkError::Truncated(self.pos)),
                Header::Element { tag, len, .. } => {
                    if tag == SEQ_END {
                        return Ok(());
                    }
                    if tag != ITEM {
                        return Err(WalkError::Malformed {
                            at: self.pos,
                            why: format!("expected an item, found ({:04X},{:04X})", tag.0, tag.1),
                        });
                    }
                    if len == UNDEFINED && !fragments {
                        self.elements(depth, Some(ITEM_END))?;
                    } else if len == UNDEFINED {
                        return Err(WalkError::Malformed {
                            at: self.pos,
                            why: "pixel data fragment of undefined length".into(),
                        });
                    } else {
                        self.skip(len)?;
                    }
                }
            }
        }
    }
}

/// Walks a whole data set from `r` and fails if it is truncated or malformed.
pub fn check_dataset(r: impl Read, form: Form) -> Result<(), WalkError> {
    let mut w = Walker { r, pos: 0, form };
    w.elements(0, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.0.to_le_bytes());
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn encapsulated(fragments: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        for f in fragments {
            v.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            v.extend_from_slice(&(f.len() as u32).to_le_bytes());
            v.extend_from_slice(f);
        }
        v.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn complete_dataset_passes_and_truncations_fail() {
        let mut ds = el((0x0008, 0x0018), b"UI", b"1.2.3\0");
        ds.extend(el((0x0010, 0x0010), b"PN", b"DOE^J "));
        ds.extend(encapsulated(&[b"", b"abcd"]));
        check_dataset(&ds[..], Form::ExplicitLittle).unwrap();
        for cut in 1..ds.len() {
            assert!(
                check_dataset(&ds[..cut], Form::ExplicitLittle).is_err() || cut == 14 || cut == 28,
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        let junk = b"this is not dicom at all, just text".to_vec();
        assert!(check_dataset(&junk[..], Form::ExplicitLittle).is_err());
    }

    #[test]
    fn implicit_sequences_of_undefined_length() {
        // (0008,1115) SQ undefined, one item undefined with (0008,1150) UI, delimiters
        let mut ds = vec![0x08, 0x00, 0x15, 0x11, 0xFF, 0xFF, 0xFF, 0xFF];
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        ds.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 4, 0, 0, 0, b'1', b'.', b'2', 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_dataset(&ds[..], Form::ImplicitLittle).unwrap();
        assert!(check_dataset(&ds[..ds.len() - 8], Form::ImplicitLittle).is_err());
    }
}
