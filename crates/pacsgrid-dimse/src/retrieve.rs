//! What C-GET and C-MOVE share: counting sub-operations and answering with pending and
//! final responses.

use crate::association::{AssocError, Association};
use crate::identifier::{self, QrService, Refusal, MAX_IDENTIFIER};
use crate::message::Command;
use crate::server::Services;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use pacsgrid_archive::StoredInstance;
use pacsgrid_dicom::status;

/// Sub-operation counts of one retrieve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Sub-operations not yet attempted.
    pub remaining: usize,
    /// Succeeded.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Ended with a warning status.
    pub warning: usize,
    /// SOP Instance UIDs that failed.
    pub failed_uids: Vec<String>,
}

/// Counts are US (at most 65535) on the wire.
fn us(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Progress {
    /// A retrieve of `n` instances, none attempted yet.
    pub fn new(n: usize) -> Self {
        Progress {
            remaining: n,
            ..Progress::default()
        }
    }

    /// Records the outcome of one sub-operation by its status.
    pub fn record(&mut self, sop_instance_uid: &str, sub_status: u16) {
        self.remaining = self.remaining.saturating_sub(1);
        match status::category(sub_status) {
            status::Category::Success => self.completed += 1,
            status::Category::Warning => self.warning += 1,
            _ => self.fail(sop_instance_uid),
        }
    }

    /// Records a sub-operation that failed before reaching the peer.
    pub fn record_failure(&mut self, sop_instance_uid: &str) {
        self.remaining = self.remaining.saturating_sub(1);
        self.fail(sop_instance_uid);
    }

    fn fail(&mut self, sop_instance_uid: &str) {
        self.failed += 1;
        self.failed_uids.push(sop_instance_uid.to_string());
    }

    /// The final status: cancel, success, A702 when every sub-operation failed, or B000
    /// when some failed or warned.
    pub fn final_status(&self, cancelled: bool) -> u16 {
        if cancelled {
            status::CANCEL
        } else if self.failed == 0 && self.warning == 0 {
            status::SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            // PS3.4 C.4.2.3.1 / C.4.3.3.1: nothing sent is a failure, not a warning; "Refused:
            // Out of Resources - Unable to perform sub-operations", as dcmtk's and Orthanc's
            // SCPs answer, so that movescu and getscu report it as the failure it is
            status::REFUSED_OUT_OF_RESOURCES_SUBOPS
        } else {
            status::WARNING_SUBOPS_FAILED
        }
    }

    /// Sends a pending response with the counts so far.
    pub async fn send_pending(
        &self,
        assoc: &mut Association,
        pc_id: u8,
        request: &Command,
        rsp_field: u16,
    ) -> Result<(), AssocError> {
        let rsp = Command::response_to(request, rsp_field, status::PENDING)
            .u16(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, us(self.remaining))
            .u16(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, us(self.completed))
            .u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS, us(self.failed))
            .u16(tags::NUMBER_OF_WARNING_SUBOPERATIONS, us(self.warning))
            .build();
        assoc.send_command(pc_id, &rsp).await
    }

    /// Sends the final response: counts, an ErrorComment if given, and the
    /// FailedSOPInstanceUIDList identifier when anything failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_final(
        &self,
        assoc: &mut Association,
        pc_id: u8,
        transfer_syntax: &str,
        request: &Command,
        rsp_field: u16,
        code: u16,
        comment: Option<&str>,
    ) -> Result<(), AssocError> {
        let identifier = if self.failed_uids.is_empty() {
            None
        } else {
            let mut obj = InMemDicomObject::new_empty();
            obj.put(DataElement::new(
                tags::FAILED_SOP_INSTANCE_UID_LIST,
                VR::UI,
                PrimitiveValue::Strs(self.failed_uids.iter().cloned().collect()),
            ));
            match identifier::encode(&obj, transfer_syntax) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "FailedSOPInstanceUIDList not encodable; sent without it");
                    None
                }
            }
        };
        let mut b = Command::response_to(request, rsp_field, code);
        if code == status::CANCEL || code == status::PENDING {
            b = b.u16(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, us(self.remaining));
        }
        b = b
            .u16(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, us(self.completed))
            .u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS, us(self.failed))
            .u16(tags::NUMBER_OF_WARNING_SUBOPERATIONS, us(self.warning));
        if let Some(c) = comment {
            b = b.error_comment(c);
        }
        let rsp = b.with_dataset(identifier.is_some()).build();
        assoc.send_command(pc_id, &rsp).await?;
        if let Some(bytes) = identifier {
            assoc.send_dataset(pc_id, &bytes).await?;
        }
        Ok(())
    }
}

/// Reads a C-GET / C-MOVE identifier and finds the instances it names. The outer error
/// ends the association; the inner one is a refusal to answer with.
pub(crate) async fn locate(
    svc: &Services,
    assoc: &mut Association,
    pc_id: u8,
    command: &Command,
    service: QrService,
) -> Result<Result<Vec<StoredInstance>, Refusal>, AssocError> {
    let Some(ctx) = assoc.context(pc_id).cloned() else {
        return Err(AssocError::Protocol(format!(
            "retrieve on unaccepted context {pc_id}"
        )));
    };
    if !command.has_dataset() {
        return Ok(Err(Refusal {
            status: status::ERROR_CANNOT_UNDERSTAND,
            comment: "retrieve request without an identifier".into(),
        }));
    }
    let raw = assoc.read_small_dataset(pc_id, MAX_IDENTIFIER).await?;
    let model = match identifier::qr_model(&ctx.abstract_syntax) {
        Some((model, s)) if s == service => model,
        _ => {
            return Ok(Err(Refusal {
                status: status::SOP_CLASS_NOT_SUPPORTED,
                comment: format!("{service:?} on a {} context", ctx.abstract_syntax),
            }))
        }
    };
    let (query, _) = match identifier::parse_query(&raw, &ctx.transfer_syntax, model) {
        Ok(q) => q,
        Err(r) => return Ok(Err(r)),
    };
    match svc.archive.locate(&query).await {
        Ok(found) => {
            tracing::info!(
                level = query.level.code(),
                instances = found.len(),
                "{service:?} located"
            );
            Ok(Ok(found))
        }
        Err(e) => {
            tracing::warn!(error = %e, "locating instances failed");
            Ok(Err(Refusal {
                status: status::FAILED_UNABLE_TO_PROCESS,
                comment: format!("lookup failed: {e}"),
            }))
        }
    }
}

/// Answers a refused retrieve with a final failure and zero counts.
pub(crate) async fn refuse(
    assoc: &mut Association,
    pc_id: u8,
    request: &Command,
    rsp_field: u16,
    r: &Refusal,
) -> Result<(), AssocError> {
    tracing::warn!(
        status = format_args!("{:#06x}", r.status),
        reason = %r.comment,
        "retrieve refused"
    );
    let rsp = Command::response_to(request, rsp_field, r.status)
        .error_comment(&r.comment)
        .build();
    assoc.send_command(pc_id, &rsp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_final_status() {
        let mut p = Progress::new(3);
        p.record("1.1", status::SUCCESS);
        assert_eq!(p.final_status(false), status::SUCCESS);
        p.record("1.2", 0xB000);
        p.record_failure("1.3");
        assert_eq!(
            (p.remaining, p.completed, p.warning, p.failed),
            (0, 1, 1, 1)
        );
        assert_eq!(p.failed_uids, vec!["1.3".to_string()]);
        assert_eq!(p.final_status(false), status::WARNING_SUBOPS_FAILED);
        assert_eq!(p.final_status(true), status::CANCEL);
        assert_eq!(us(70_000), u16::MAX);
    }

    #[test]
    fn nothing_sent_is_a_refusal_not_a_warning() {
        let mut p = Progress::new(2);
        p.record_failure("1.1");
        p.record_failure("1.2");
        assert_eq!(
            p.final_status(false),
            status::REFUSED_OUT_OF_RESOURCES_SUBOPS
        );
        // one that went with a warning is a sub-operation performed
        p.record("1.3", 0xB000);
        assert_eq!(p.final_status(false), status::WARNING_SUBOPS_FAILED);
    }
}
