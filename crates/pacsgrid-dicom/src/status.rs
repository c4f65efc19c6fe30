//! DIMSE status codes (PS3.7 Annex C) that pacsgrid answers with.
//!
//! Named constants, so that a handler says which case it means and a test can check it.

/// Success.
pub const SUCCESS: u16 = 0x0000;
/// C-FIND/C-MOVE/C-GET pending: more answers follow.
pub const PENDING: u16 = 0xFF00;
/// C-FIND pending, but an optional key was not supported (values returned empty).
pub const PENDING_WARNING: u16 = 0xFF01;
/// The operation was cancelled by C-CANCEL.
pub const CANCEL: u16 = 0xFE00;
/// Warning: sub-operations completed with one or more failures or warnings (C-MOVE/C-GET).
pub const WARNING_SUBOPS_FAILED: u16 = 0xB000;
/// Warning on C-STORE: this SOP Instance UID is already stored with different bytes; the new
/// object was kept aside (quarantined), the stored one is unchanged.
///
/// PS3.4 has no dedicated code; B000 ("coercion of data elements") is the generic storage
/// warning every SCU shows as a warning, and the Error Comment says what happened.
pub const WARNING_STORED_CONFLICT: u16 = 0xB000;
/// Refused: out of resources (storage full, too many operations).
pub const REFUSED_OUT_OF_RESOURCES: u16 = 0xA700;
/// C-MOVE/C-GET refused: out of resources, unable to calculate the number of matches.
pub const REFUSED_OUT_OF_RESOURCES_MATCHES: u16 = 0xA701;
/// C-MOVE/C-GET refused: out of resources, unable to perform sub-operations.
pub const REFUSED_OUT_OF_RESOURCES_SUBOPS: u16 = 0xA702;
/// C-MOVE refused: the move destination is unknown.
pub const REFUSED_MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
/// Error: the data set does not match the SOP class (or the identifier does not match the
/// information model).
pub const ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// Error: cannot understand (the data set does not parse, is truncated, or is inconsistent).
pub const ERROR_CANNOT_UNDERSTAND: u16 = 0xC000;
/// Failed: unable to process (an internal failure; the log says why).
pub const FAILED_UNABLE_TO_PROCESS: u16 = 0xC001;
/// C-MOVE/C-GET failed: the identifier names nothing that can be retrieved.
pub const FAILED_UNABLE_TO_PROCESS_RETRIEVE: u16 = 0xC002;
/// Failure: the SOP class is not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Refused: not authorized (PS3.7 C.4): the requester lacks the right for this operation.
pub const REFUSED_NOT_AUTHORIZED: u16 = 0x0124;
/// Failure: a required argument is invalid (e.g. SOP Instance UID mismatch).
pub const INVALID_ARGUMENT_VALUE: u16 = 0x0115;
/// Failure: processing failure.
pub const PROCESSING_FAILURE: u16 = 0x0110;
/// Failure: unrecognised operation (a command the SCP does not offer).
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;

/// The broad category of a status, as PS3.7 C.1 groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// 0000.
    Success,
    /// FF00, FF01.
    Pending,
    /// FE00.
    Cancel,
    /// 0001, 0107, 0116, Bxxx.
    Warning,
    /// Everything else.
    Failure,
}

/// Classifies a status code.
pub fn category(status: u16) -> Category {
    match status {
        0x0000 => Category::Success,
        0xFF00 | 0xFF01 => Category::Pending,
        0xFE00 => Category::Cancel,
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => Category::Warning,
        _ => Category::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(category(SUCCESS), Category::Success);
        assert_eq!(category(WARNING_STORED_CONFLICT), Category::Warning);
        assert_eq!(
            category(REFUSED_MOVE_DESTINATION_UNKNOWN),
            Category::Failure
        );
        assert_eq!(category(PENDING_WARNING), Category::Pending);
    }
}
