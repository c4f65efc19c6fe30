//! UIDs: validation, transfer syntaxes and the SOP classes pacsgrid serves.

/// The Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Patient Root Query/Retrieve - FIND.
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
/// Patient Root Query/Retrieve - MOVE.
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
/// Patient Root Query/Retrieve - GET.
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
/// Study Root Query/Retrieve - FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Study Root Query/Retrieve - MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
/// Study Root Query/Retrieve - GET.
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Implicit VR Little Endian, the default transfer syntax.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Deflated Explicit VR Little Endian.
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
/// Explicit VR Big Endian (retired, still sent by old modalities).
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// The implementation class UID pacsgrid writes into file meta headers and associations.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.229448757350392960834413926378468915170";
/// The implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "PACSGRID_01";

/// How the data set of a transfer syntax is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetEncoding {
    /// Implicit VR, little endian.
    ImplicitLittle,
    /// Explicit VR, little endian (also every encapsulated syntax).
    ExplicitLittle,
    /// Explicit VR, big endian.
    ExplicitBig,
    /// Explicit VR little endian, deflated (RFC 1951) after the meta header.
    Deflated,
}

/// What pacsgrid knows about a transfer syntax it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSyntaxInfo {
    /// The UID.
    pub uid: &'static str,
    /// A short name for logs.
    pub name: &'static str,
    /// How the data set is encoded.
    pub encoding: DatasetEncoding,
    /// Whether pixel data is encapsulated (compressed or video).
    pub encapsulated: bool,
}

const fn ts(
    uid: &'static str,
    name: &'static str,
    encoding: DatasetEncoding,
    encapsulated: bool,
) -> TransferSyntaxInfo {
    TransferSyntaxInfo {
        uid,
        name,
        encoding,
        encapsulated,
    }
}

use DatasetEncoding as E;

/// Every transfer syntax pacsgrid accepts for storage, in the order it prefers them when a
/// sender proposes several in one presentation context (uncompressed first, so that the
/// pixel data needs no codec to be displayed; compressed kept as sent).
pub static TRANSFER_SYNTAXES: &[TransferSyntaxInfo] = &[
    ts(
        EXPLICIT_VR_LE,
        "Explicit VR Little Endian",
        E::ExplicitLittle,
        false,
    ),
    ts(
        IMPLICIT_VR_LE,
        "Implicit VR Little Endian",
        E::ImplicitLittle,
        false,
    ),
    ts(
        DEFLATED_EXPLICIT_VR_LE,
        "Deflated Explicit VR Little Endian",
        E::Deflated,
        false,
    ),
    ts(
        EXPLICIT_VR_BE,
        "Explicit VR Big Endian",
        E::ExplicitBig,
        false,
    ),
    ts(
        "1.2.840.10008.1.2.4.50",
        "JPEG Baseline",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.51",
        "JPEG Extended",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.57",
        "JPEG Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless SV1",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.80",
        "JPEG-LS Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.81",
        "JPEG-LS Near-Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.90",
        "JPEG 2000 Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.91",
        "JPEG 2000",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.92",
        "JPEG 2000 Part 2 Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.93",
        "JPEG 2000 Part 2",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.201",
        "HTJ2K Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.202",
        "HTJ2K Lossless RPCL",
        E::ExplicitLittle,
        true,
    ),
    ts("1.2.840.10008.1.2.4.203", "HTJ2K", E::ExplicitLittle, true),
    ts(
        "1.2.840.10008.1.2.4.110",
        "JPEG XL Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.111",
        "JPEG XL JPEG Recompression",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.112",
        "JPEG XL",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.5",
        "RLE Lossless",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.100",
        "MPEG2 MP@ML",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.101",
        "MPEG2 MP@HL",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.102",
        "MPEG-4 AVC/H.264 HP@4.1",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.103",
        "MPEG-4 AVC/H.264 BD",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.104",
        "MPEG-4 AVC/H.264 HP@4.2 2D",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.105",
        "MPEG-4 AVC/H.264 HP@4.2 3D",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.106",
        "MPEG-4 AVC/H.264 Stereo HP@4.2",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.107",
        "HEVC/H.265 Main",
        E::ExplicitLittle,
        true,
    ),
    ts(
        "1.2.840.10008.1.2.4.108",
        "HEVC/H.265 Main 10",
        E::ExplicitLittle,
        true,
    ),
];

/// Looks up an accepted transfer syntax (padding tolerated).
pub fn transfer_syntax(uid: &str) -> Option<&'static TransferSyntaxInfo> {
    let uid = trim_uid(uid);
    TRANSFER_SYNTAXES.iter().find(|t| t.uid == uid)
}

/// Strips the trailing NUL or space padding of a UID value.
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_matches(|c: char| c == '\0' || c == ' ')
}

/// SOP classes outside the `1.2.840.10008.5.1.4.1.1.` arc that are storage classes.
const OTHER_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.38.1",  // Hanging Protocol Storage
    "1.2.840.10008.5.1.4.39.1",  // Color Palette Storage
    "1.2.840.10008.5.1.4.43.1",  // Generic Implant Template Storage
    "1.2.840.10008.5.1.4.44.1",  // Implant Assembly Template Storage
    "1.2.840.10008.5.1.4.45.1",  // Implant Template Group Storage
    "1.2.840.10008.5.1.4.34.10", // RT Brachy Application Setup Delivery Instruction
];

/// Whether a SOP class UID is a storage SOP class pacsgrid accepts with C-STORE.
///
/// Every standard storage class lives under `1.2.840.10008.5.1.4.1.1.`; a few newer ones
/// live elsewhere. Private (vendor) classes are accepted when configured as extra classes.
pub fn is_storage_sop_class(uid: &str) -> bool {
    let uid = trim_uid(uid);
    (uid.starts_with("1.2.840.10008.5.1.4.1.1.") && is_valid_uid(uid))
        || OTHER_STORAGE.contains(&uid)
}

/// Whether a string is a valid DICOM UID (PS3.5 9.1): 1 to 64 characters, components of
/// digits separated by single dots, no leading zero in a multi-digit component.
///
/// A UID that passes this check is safe to use in a file name or a URL path.
pub fn is_valid_uid(uid: &str) -> bool {
    if uid.is_empty() || uid.len() > 64 {
        return false;
    }
    uid.split('.').all(|c| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_digit())
            && !(c.len() > 1 && c.starts_with('0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(is_valid_uid("2.25.0"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1..2"));
        assert!(!is_valid_uid("1.02"));
        assert!(!is_valid_uid("../../etc/passwd"));
        assert!(!is_valid_uid("1.2.3."));
        assert!(!is_valid_uid(&"1.".repeat(40)));
    }

    #[test]
    fn storage_classes() {
        assert!(is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2\0"));
        assert!(!is_storage_sop_class(STUDY_ROOT_FIND));
        assert!(!is_storage_sop_class(VERIFICATION));
        assert!(transfer_syntax("1.2.840.10008.1.2.4.80").is_some());
        assert!(transfer_syntax("1.2.3").is_none());
    }
}
