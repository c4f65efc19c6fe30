//! Media types as they appear in Content-Type headers (RFC 9110 8.3.1): a type, a subtype
//! and parameters whose values may be quoted strings.

/// A parsed media type. Type, subtype and parameter names are lower-cased; parameter values
/// keep their case (a multipart boundary is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaType {
    /// `type/subtype`, lower-case.
    pub essence: String,
    /// Parameters in order of appearance.
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses `type/subtype; name=value; name="quoted value"`. None when there is no
    /// `type/subtype` or a parameter is malformed.
    pub fn parse(raw: &str) -> Option<MediaType> {
        let (essence, mut rest) = match raw.find(';') {
            Some(i) => (&raw[..i], &raw[i + 1..]),
            None => (raw, ""),
        };
        let essence = essence.trim().to_ascii_lowercase();
        let (ty, sub) = essence.split_once('/')?;
        if !is_token(ty) || !is_token(sub) {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', '\t', ';']);
            if rest.is_empty() {
                break;
            }
            let eq = rest.find('=')?;
            let name = rest[..eq].trim().to_ascii_lowercase();
            if !is_token(&name) {
                return None;
            }
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => out.push(chars.next()?.1),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                value = out;
                rest = &quoted[end?..];
                rest = rest.trim_start();
                if !(rest.is_empty() || rest.starts_with(';')) {
                    return None;
                }
            } else {
                let end = rest.find(';').unwrap_or(rest.len());
                value = rest[..end].trim().to_string();
                rest = &rest[end..];
            }
            params.push((name, value));
        }
        Some(MediaType { essence, params })
    }

    /// The value of a parameter (name compared case-insensitively).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a string is an RFC 9110 token (what type, subtype and parameter names are).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_related_with_quoted_params() {
        let m = MediaType::parse(
            "Multipart/Related; type=\"application/dicom\"; boundary=\"0f3c-AbC\"",
        )
        .unwrap();
        assert_eq!(m.essence, "multipart/related");
        assert_eq!(m.param("TYPE"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("0f3c-AbC"));
    }

    #[test]
    fn unquoted_params_escapes_and_no_params() {
        let m =
            MediaType::parse("multipart/related;boundary=abc ; type=application/dicom").unwrap();
        assert_eq!(m.param("boundary"), Some("abc"));
        assert_eq!(m.param("type"), Some("application/dicom"));
        let m = MediaType::parse(r#"a/b; x="q\"uo;te""#).unwrap();
        assert_eq!(m.param("x"), Some("q\"uo;te"));
        let m = MediaType::parse("application/dicom").unwrap();
        assert!(m.params.is_empty());
    }

    #[test]
    fn malformed_is_none() {
        assert!(MediaType::parse("").is_none());
        assert!(MediaType::parse("dicom").is_none());
        assert!(MediaType::parse("a/b; novalue").is_none());
        assert!(MediaType::parse("a/b; x=\"unterminated").is_none());
        assert!(MediaType::parse("a/b; x=\"v\" junk").is_none());
    }
}
