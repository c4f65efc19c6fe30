//! C-GET SCP: the instances the identifier names go back on the requestor's own
//! association, as C-STORE sub-operations on the storage contexts it offered with the SCP
//! role, with a pending response after each and C-CANCEL honoured between them.

use crate::access::{AssocAccess, Sent};
use crate::association::{AssocError, Association};
use crate::client::{self, ClientError, Route};
use crate::identifier::QrService;
use crate::message::{field, Command};
use crate::metrics::inc;
use crate::retrieve::{self, Progress};
use crate::server::Services;
use pacsgrid_access::Operation;

/// Answers one C-GET-RQ. Errors are returned only when the association cannot go on.
pub(crate) async fn handle(
    svc: &Services,
    assoc: &mut Association,
    access: &mut AssocAccess,
    pc_id: u8,
    command: Command,
) -> Result<(), AssocError> {
    inc(&svc.metrics.retrieves);
    let msg_id = command.message_id().unwrap_or(0);
    let ts = assoc
        .context(pc_id)
        .map(|c| c.transfer_syntax.clone())
        .unwrap_or_default();
    let instances = match retrieve::locate(svc, assoc, pc_id, &command, QrService::Get).await? {
        Ok(found) => found,
        Err(r) => return retrieve::refuse(assoc, pc_id, &command, field::C_GET_RSP, &r).await,
    };
    if let Err(r) = access.permit(&svc.access, &Operation::Retrieve).await {
        return retrieve::refuse(assoc, pc_id, &command, field::C_GET_RSP, &r).await;
    }
    let mut delivered = Sent::default();
    let total = instances.len();
    let mut progress = Progress::new(total);
    let mut cancelled = false;
    for (i, inst) in instances.iter().enumerate() {
        if assoc.cancelled(msg_id).await? {
            cancelled = true;
            break;
        }
        svc.archive.read_ahead(&instances[i + 1..]);
        let Some(route) = client::route(
            assoc.contexts(),
            &inst.sop_class_uid,
            &inst.transfer_syntax,
            true,
        ) else {
            let why = client::no_route_why(
                assoc.contexts(),
                &inst.sop_class_uid,
                &inst.transfer_syntax,
                true,
            );
            tracing::warn!(
                sop_instance_uid = %inst.sop_instance_uid,
                sop_class = %inst.sop_class_uid,
                transfer_syntax = %inst.transfer_syntax,
                "C-GET sub-operation failed: {why}"
            );
            inc(&svc.metrics.retrieve_subops_failed);
            progress.record_failure(&inst.sop_instance_uid);
            continue;
        };
        let sub_pc = match &route {
            Route::AsStored(id) | Route::Convert(id, _) => *id,
        };
        let source = match client::prepare(&svc.archive, inst, &route).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(sop_instance_uid = %inst.sop_instance_uid, error = %e, "C-GET sub-operation failed");
                inc(&svc.metrics.retrieve_subops_failed);
                progress.record_failure(&inst.sop_instance_uid);
                continue;
            }
        };
        let sent = client::store_on(
            assoc,
            sub_pc,
            &inst.sop_class_uid,
            &inst.sop_instance_uid,
            source,
            None,
            Some(msg_id),
        )
        .await;
        match sent {
            Ok((rsp, cancel_seen)) => {
                if pacsgrid_dicom::status::category(rsp.status)
                    == pacsgrid_dicom::status::Category::Success
                {
                    inc(&svc.metrics.retrieve_subops_ok);
                    delivered.add(inst);
                } else {
                    inc(&svc.metrics.retrieve_subops_failed);
                    tracing::warn!(
                        sop_instance_uid = %inst.sop_instance_uid,
                        status = format_args!("{:#06x}", rsp.status),
                        comment = rsp.error_comment.as_deref().unwrap_or(""),
                        "C-GET sub-operation not successful"
                    );
                }
                progress.record(&inst.sop_instance_uid, rsp.status);
                cancelled |= cancel_seen;
            }
            Err(ClientError::Assoc(e)) => return Err(e),
            Err(ClientError::Midway(why)) => {
                return Err(AssocError::Protocol(format!(
                    "C-GET sub-operation source failed: {why}"
                )))
            }
            Err(e) => {
                tracing::warn!(sop_instance_uid = %inst.sop_instance_uid, error = %e, "C-GET sub-operation failed");
                inc(&svc.metrics.retrieve_subops_failed);
                progress.record_failure(&inst.sop_instance_uid);
            }
        }
        if cancelled {
            break;
        }
        if i + 1 < total {
            progress
                .send_pending(assoc, pc_id, &command, field::C_GET_RSP)
                .await?;
        }
    }
    if let Err(e) = delivered.record(&svc.access, &access.who, None).await {
        tracing::error!(error = %e, "could not audit the instances a C-GET sent");
    }
    let code = progress.final_status(cancelled);
    tracing::info!(
        completed = progress.completed,
        failed = progress.failed,
        warning = progress.warning,
        cancelled,
        "C-GET done"
    );
    progress
        .send_final(assoc, pc_id, &ts, &command, field::C_GET_RSP, code, None)
        .await
}
