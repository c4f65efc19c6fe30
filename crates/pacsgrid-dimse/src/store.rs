//! C-STORE SCP: validates the command, streams the data set into the archive fragment by
//! fragment, and answers only once the archive says the object is durable.

use crate::access::AssocAccess;
use crate::association::{AssocError, Association};
use crate::message::{field, Command};
use crate::metrics::{add, inc, DimseMetrics};
use crate::server::Services;
use dicom_dictionary_std::tags;
use pacsgrid_access::Operation;
use pacsgrid_archive::{IncomingMeta, StoreError, StoreOutcome};
use pacsgrid_dicom::status;
use std::time::Instant;

/// What we answer a C-STORE-RQ with.
struct Answer {
    status: u16,
    comment: Option<String>,
    /// The outcome word for the log: stored, duplicate, quarantined, refused.
    outcome: &'static str,
}

impl Answer {
    fn fail(status: u16, comment: impl Into<String>) -> Self {
        Answer {
            status,
            comment: Some(comment.into()),
            outcome: "refused",
        }
    }
}

/// What the log line of one C-STORE reports besides the answer.
struct Report {
    sop_instance: Option<String>,
    bytes: u64,
    started: Instant,
    commit_ms: u64,
}

/// Receives one C-STORE-RQ whose command has arrived on `pc_id`.
///
/// Returns an error only when the association itself cannot go on; every refusal of the
/// object is a response status, after the data set has been read to its end.
pub(crate) async fn handle(
    svc: &Services,
    assoc: &mut Association,
    access: &mut AssocAccess,
    pc_id: u8,
    command: Command,
) -> Result<(), AssocError> {
    let (archive, metrics) = (&svc.archive, &*svc.metrics);
    let started = Instant::now();
    let context = assoc
        .context(pc_id)
        .cloned()
        .ok_or_else(|| AssocError::Protocol(format!("C-STORE on unaccepted context {pc_id}")))?;
    let sop_class = command.affected_sop_class();
    let sop_instance = command.string(tags::AFFECTED_SOP_INSTANCE_UID);

    if !command.has_dataset() {
        let answer = Answer::fail(
            status::ERROR_CANNOT_UNDERSTAND,
            "C-STORE-RQ without a data set",
        );
        let report = Report {
            sop_instance,
            bytes: 0,
            started,
            commit_ms: 0,
        };
        return respond(assoc, pc_id, &command, answer, report, metrics).await;
    }

    // refusals decided from the command alone; the data set is still read and dropped
    let permitted = access.permit(&svc.access, &Operation::Store).await;
    let refusal = match (permitted, &sop_class, &sop_instance) {
        (Err(r), _, _) => Some(Answer::fail(r.status, r.comment)),
        (_, None, _) => Some(Answer::fail(
            status::ERROR_CANNOT_UNDERSTAND,
            "command lacks AffectedSOPClassUID",
        )),
        (_, _, None) => Some(Answer::fail(
            status::ERROR_CANNOT_UNDERSTAND,
            "command lacks AffectedSOPInstanceUID",
        )),
        (_, Some(class), _) if *class != context.abstract_syntax => Some(Answer::fail(
            status::ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            format!(
                "SOP class {class} sent on a {} context",
                context.abstract_syntax
            ),
        )),
        _ => None,
    };

    let mut incoming = None;
    let mut answer = refusal;
    if answer.is_none() {
        let meta = IncomingMeta {
            sop_class_uid: sop_class.clone().unwrap_or_default(),
            sop_instance_uid: sop_instance.clone().unwrap_or_default(),
            transfer_syntax: context.transfer_syntax.clone(),
            source: assoc.calling_ae().to_string(),
        };
        match archive.begin_store(meta).await {
            Ok(mut inc) => {
                access.mark(&mut inc);
                incoming = Some(inc)
            }
            Err(e) => answer = Some(store_error(&e)),
        }
    }

    // stream the data set: every fragment goes to the staging file as it arrives, so the
    // memory held is one PDU whatever the object's size
    let mut received = 0u64;
    loop {
        // on an association error `incoming` is dropped here, which discards the staged file
        let pdv = assoc.next_data_fragment(pc_id).await?;
        received += pdv.data.len() as u64;
        if let Some(inc) = incoming.as_mut() {
            if let Err(e) = inc.write(&pdv.data).await {
                answer = Some(store_error(&e));
                incoming = None;
            }
        }
        if pdv.is_last {
            break;
        }
    }
    add(&metrics.bytes_received, received);

    let commit_started = Instant::now();
    let finished = match (answer, incoming) {
        (Some(a), _) => Err(a),
        (None, Some(inc)) => Ok(inc.finish().await),
        (None, None) => Err(Answer::fail(
            status::FAILED_UNABLE_TO_PROCESS,
            "internal: nothing to store",
        )),
    };
    if let Ok(Ok(outcome)) = &finished {
        access
            .stored(&svc.access, &svc.archive, outcome.subject())
            .await;
    }
    let answer = match finished {
        Err(a) => a,
        Ok(result) => match result {
            Ok(StoreOutcome::Stored { .. }) => Answer {
                status: status::SUCCESS,
                comment: None,
                outcome: "stored",
            },
            Ok(StoreOutcome::Duplicate { .. }) => Answer {
                status: status::SUCCESS,
                comment: None,
                outcome: "duplicate",
            },
            Ok(StoreOutcome::Quarantined { .. }) => Answer {
                status: status::WARNING_STORED_CONFLICT,
                comment: Some("already stored with different content; new copy quarantined".into()),
                outcome: "quarantined",
            },
            Err(e) => store_error(&e),
        },
    };
    let report = Report {
        sop_instance,
        bytes: received,
        started,
        commit_ms: commit_started.elapsed().as_millis() as u64,
    };
    respond(assoc, pc_id, &command, answer, report, metrics).await
}

fn store_error(e: &StoreError) -> Answer {
    Answer::fail(e.dimse_status(), e.to_string())
}

async fn respond(
    assoc: &mut Association,
    pc_id: u8,
    command: &Command,
    answer: Answer,
    report: Report,
    metrics: &DimseMetrics,
) -> Result<(), AssocError> {
    let category = status::category(answer.status);
    let ms = report.started.elapsed().as_millis() as u64;
    let sop = report.sop_instance.as_deref().unwrap_or("?");
    let (bytes, commit_ms, outcome) = (report.bytes, report.commit_ms, answer.outcome);
    match category {
        status::Category::Success => {
            inc(&metrics.stores_ok);
            tracing::info!(
                sop_instance_uid = sop,
                outcome,
                bytes,
                ms,
                commit_ms,
                "C-STORE"
            );
        }
        status::Category::Warning => {
            inc(&metrics.stores_quarantined);
            tracing::warn!(
                sop_instance_uid = sop,
                outcome,
                status = format_args!("{:#06x}", answer.status),
                reason = answer.comment.as_deref().unwrap_or(""),
                "C-STORE warning"
            );
        }
        _ => {
            inc(&metrics.stores_failed);
            tracing::warn!(
                sop_instance_uid = sop,
                outcome,
                status = format_args!("{:#06x}", answer.status),
                reason = answer.comment.as_deref().unwrap_or(""),
                "C-STORE refused"
            );
        }
    }
    let mut rsp = Command::response_to(command, field::C_STORE_RSP, answer.status);
    if let Some(c) = &answer.comment {
        rsp = rsp.error_comment(c);
    }
    assoc.send_command(pc_id, &rsp.build()).await
}
