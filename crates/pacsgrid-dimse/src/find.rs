//! C-FIND SCP: the identifier becomes a [`pacsgrid_dicom::Query`], the archive answers it
//! page by page, and each match goes back as a pending response, with C-CANCEL checked
//! between answers.

use crate::access::{self, AssocAccess};
use crate::association::{AssocError, Association};
use crate::identifier::{self, QrService, Refusal, MAX_IDENTIFIER};
use crate::message::{field, Command};
use crate::metrics::inc;
use crate::server::Services;
use pacsgrid_access::Operation;
use pacsgrid_dicom::status;

/// Matches fetched from the archive at a time: bounds memory for huge answers while keeping
/// the number of index queries small.
const PAGE: u32 = 500;

/// Answers one C-FIND-RQ. Errors are returned only when the association cannot go on.
pub(crate) async fn handle(
    svc: &Services,
    assoc: &mut Association,
    access: &mut AssocAccess,
    pc_id: u8,
    command: Command,
) -> Result<(), AssocError> {
    inc(&svc.metrics.finds);
    let ctx = assoc
        .context(pc_id)
        .cloned()
        .ok_or_else(|| AssocError::Protocol(format!("C-FIND on unaccepted context {pc_id}")))?;
    let msg_id = command.message_id().unwrap_or(0);
    if !command.has_dataset() {
        let r = Refusal {
            status: status::ERROR_CANNOT_UNDERSTAND,
            comment: "C-FIND-RQ without an identifier".into(),
        };
        return refuse(assoc, pc_id, &command, r).await;
    }
    let raw = assoc.read_small_dataset(pc_id, MAX_IDENTIFIER).await?;
    let model = match identifier::qr_model(&ctx.abstract_syntax) {
        Some((model, QrService::Find)) => model,
        _ => {
            let r = Refusal {
                status: status::SOP_CLASS_NOT_SUPPORTED,
                comment: format!("C-FIND on a {} context", ctx.abstract_syntax),
            };
            return refuse(assoc, pc_id, &command, r).await;
        }
    };
    if let Err(r) = access.permit(&svc.access, &Operation::Query).await {
        return refuse(assoc, pc_id, &command, r).await;
    }
    let (query, keys) = match identifier::parse_query(&raw, &ctx.transfer_syntax, model) {
        Ok(q) => q,
        Err(r) => return refuse(assoc, pc_id, &command, r).await,
    };
    let audit = access::query_event(
        &svc.access,
        &access.who,
        &ctx.abstract_syntax,
        &raw,
        &ctx.transfer_syntax,
    );
    tracing::info!(
        level = query.level.code(),
        keys = query.keys.len(),
        returns = query.return_tags.len(),
        "C-FIND"
    );

    let mut offset = 0u32;
    let mut answered = 0u64;
    // the audit record is written while the first page is looked up: no answer goes out
    // before it is durable, and it adds no latency of its own
    let (audited, first) = tokio::join!(
        svc.access.record(audit),
        svc.archive.find(&query, PAGE, offset)
    );
    if let Err(e) = audited {
        tracing::error!(error = %e, "C-FIND refused: the audit trail cannot take its record");
        let r = Refusal {
            status: status::REFUSED_OUT_OF_RESOURCES,
            comment: "audit trail unavailable".into(),
        };
        return refuse(assoc, pc_id, &command, r).await;
    }
    let mut first = Some(first);
    loop {
        let found = match first.take() {
            Some(f) => f,
            None => svc.archive.find(&query, PAGE, offset).await,
        };
        let page = match found {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "C-FIND failed in the archive");
                let r = Refusal {
                    status: status::FAILED_UNABLE_TO_PROCESS,
                    comment: format!("query failed: {e}"),
                };
                return refuse(assoc, pc_id, &command, r).await;
            }
        };
        let n = page.len();
        for row in page {
            if assoc.cancelled(msg_id).await? {
                tracing::info!(answered, "C-FIND cancelled");
                let rsp = Command::response_to(&command, field::C_FIND_RSP, status::CANCEL).build();
                return assoc.send_command(pc_id, &rsp).await;
            }
            let ans = identifier::answer(&query, &keys.vrs, &row, &svc.cfg.ae_title);
            let bytes = match identifier::encode(&ans, &ctx.transfer_syntax) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "C-FIND answer could not be encoded");
                    let r = Refusal {
                        status: status::FAILED_UNABLE_TO_PROCESS,
                        comment: e,
                    };
                    return refuse(assoc, pc_id, &command, r).await;
                }
            };
            let rsp = Command::response_to(&command, field::C_FIND_RSP, status::PENDING)
                .with_dataset(true)
                .build();
            assoc.send_command(pc_id, &rsp).await?;
            assoc.send_dataset(pc_id, &bytes).await?;
            answered += 1;
        }
        if n < PAGE as usize {
            break;
        }
        offset = offset.saturating_add(PAGE);
    }
    tracing::info!(answered, "C-FIND done");
    let rsp = Command::response_to(&command, field::C_FIND_RSP, status::SUCCESS).build();
    assoc.send_command(pc_id, &rsp).await
}

/// Sends a final failure response with an ErrorComment, and logs it.
async fn refuse(
    assoc: &mut Association,
    pc_id: u8,
    command: &Command,
    r: Refusal,
) -> Result<(), AssocError> {
    tracing::warn!(
        status = format_args!("{:#06x}", r.status),
        reason = %r.comment,
        "C-FIND refused"
    );
    let rsp = Command::response_to(command, field::C_FIND_RSP, r.status)
        .error_comment(&r.comment)
        .build();
    assoc.send_command(pc_id, &rsp).await
}
