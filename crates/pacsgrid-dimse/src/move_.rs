//! C-MOVE SCP: the instances the identifier names go to the named destination AE over a
//! sub-association we open, with pending responses on the requestor's association and
//! C-CANCEL honoured between sub-operations.

use crate::access::{AssocAccess, Sent};
use crate::association::{AssocError, Association};
use crate::client::{self, ClientError, StoreScu};
use crate::identifier::{QrService, Refusal};
use crate::message::{field, Command};
use crate::metrics::inc;
use crate::retrieve::{self, Progress};
use crate::server::Services;
use dicom_dictionary_std::tags;
use pacsgrid_access::Operation;
use pacsgrid_audit::Participant;
use pacsgrid_dicom::status;

/// Answers one C-MOVE-RQ. Errors are returned only when the requestor's association
/// cannot go on; a failing destination is reported in the statuses.
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
    let destination = command.string(tags::MOVE_DESTINATION).unwrap_or_default();
    let located = retrieve::locate(svc, assoc, pc_id, &command, QrService::Move).await?;
    // the destination is checked after the identifier is read: the data set must be
    // consumed before any response
    let Some(remote) = svc.cfg.remote_ae(&destination).cloned() else {
        let r = Refusal {
            status: status::REFUSED_MOVE_DESTINATION_UNKNOWN,
            comment: format!("move destination {destination:?} unknown"),
        };
        return retrieve::refuse(assoc, pc_id, &command, field::C_MOVE_RSP, &r).await;
    };
    let instances = match located {
        Ok(found) => found,
        Err(r) => return retrieve::refuse(assoc, pc_id, &command, field::C_MOVE_RSP, &r).await,
    };
    let op = Operation::Move {
        destination: remote.ae_title.clone(),
    };
    if let Err(r) = access.permit(&svc.access, &op).await {
        return retrieve::refuse(assoc, pc_id, &command, field::C_MOVE_RSP, &r).await;
    }
    let mut sent = Sent::default();
    let total = instances.len();
    let mut progress = Progress::new(total);
    if total == 0 {
        return progress
            .send_final(
                assoc,
                pc_id,
                &ts,
                &command,
                field::C_MOVE_RSP,
                status::SUCCESS,
                None,
            )
            .await;
    }

    let contexts = client::contexts_for(
        instances
            .iter()
            .map(|i| (i.sop_class_uid.as_str(), i.transfer_syntax.as_str())),
    );
    let connected = StoreScu::connect_with(
        &remote,
        &svc.cfg.ae_title,
        svc.cfg.effective_max_pdu(),
        contexts,
        svc.cfg.association_timeout,
        svc.cfg.idle_timeout,
    )
    .await;
    let mut scu = match connected {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(destination = %remote.ae_title, error = %e, "C-MOVE destination not reachable");
            for inst in &instances {
                progress.record_failure(&inst.sop_instance_uid);
            }
            let comment = format!("cannot associate with {}: {e}", remote.ae_title);
            return progress
                .send_final(
                    assoc,
                    pc_id,
                    &ts,
                    &command,
                    field::C_MOVE_RSP,
                    status::REFUSED_OUT_OF_RESOURCES_SUBOPS,
                    Some(&comment),
                )
                .await;
        }
    };

    let originator = assoc.calling_ae().to_string();
    let mut cancelled = false;
    let mut broken: Option<String> = None;
    for (i, inst) in instances.iter().enumerate() {
        if assoc.cancelled(msg_id).await? {
            cancelled = true;
            break;
        }
        svc.archive.read_ahead(&instances[i + 1..]);
        match scu
            .send(&svc.archive, inst, Some((&originator, msg_id)))
            .await
        {
            Ok(rsp) => {
                if status::category(rsp.status) == status::Category::Success {
                    inc(&svc.metrics.retrieve_subops_ok);
                    sent.add(inst);
                } else {
                    inc(&svc.metrics.retrieve_subops_failed);
                    tracing::warn!(
                        sop_instance_uid = %inst.sop_instance_uid,
                        status = format_args!("{:#06x}", rsp.status),
                        comment = rsp.error_comment.as_deref().unwrap_or(""),
                        "C-MOVE sub-operation not successful"
                    );
                }
                progress.record(&inst.sop_instance_uid, rsp.status);
            }
            Err(e) => {
                inc(&svc.metrics.retrieve_subops_failed);
                tracing::warn!(sop_instance_uid = %inst.sop_instance_uid, error = %e, "C-MOVE sub-operation failed");
                progress.record_failure(&inst.sop_instance_uid);
                if matches!(e, ClientError::Assoc(_) | ClientError::Midway(_)) {
                    // the sub-association is gone: the rest cannot be sent
                    for rest in &instances[i + 1..] {
                        inc(&svc.metrics.retrieve_subops_failed);
                        progress.record_failure(&rest.sop_instance_uid);
                    }
                    broken = Some(format!("association with {} failed: {e}", remote.ae_title));
                    break;
                }
            }
        }
        if i + 1 < total {
            progress
                .send_pending(assoc, pc_id, &command, field::C_MOVE_RSP)
                .await?;
        }
    }
    if broken.is_none() {
        if let Err(e) = scu.release().await {
            tracing::debug!(error = %e, "sub-association release failed");
        }
    }
    let dest = Participant::ae(&remote.ae_title, Some(&remote.host));
    if let Err(e) = sent.record(&svc.access, &access.who, Some(dest)).await {
        tracing::error!(error = %e, "could not audit the instances a C-MOVE sent");
    }
    let code = progress.final_status(cancelled);
    tracing::info!(
        destination = %remote.ae_title,
        completed = progress.completed,
        failed = progress.failed,
        warning = progress.warning,
        cancelled,
        "C-MOVE done"
    );
    progress
        .send_final(
            assoc,
            pc_id,
            &ts,
            &command,
            field::C_MOVE_RSP,
            code,
            broken.as_deref(),
        )
        .await
}
