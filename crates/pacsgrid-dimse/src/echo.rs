//! C-ECHO SCP (Verification): answers success, so that a peer can test the association.

use crate::association::{AssocError, Association};
use crate::message::{field, Command};
use crate::metrics::{inc, DimseMetrics};
use pacsgrid_dicom::{status, uid};

/// Answers a C-ECHO-RQ.
pub(crate) async fn handle(
    assoc: &mut Association,
    pc_id: u8,
    command: Command,
    metrics: &DimseMetrics,
) -> Result<(), AssocError> {
    if command.has_dataset() {
        // a C-ECHO has no data set; tolerate one rather than desynchronise
        assoc.skip_dataset(pc_id).await?;
    }
    let on_verification = assoc
        .context(pc_id)
        .is_some_and(|c| c.abstract_syntax == uid::VERIFICATION);
    let code = if on_verification {
        status::SUCCESS
    } else {
        tracing::warn!(pc = pc_id, "C-ECHO on a context that is not Verification");
        status::SOP_CLASS_NOT_SUPPORTED
    };
    let rsp = Command::response_to(&command, field::C_ECHO_RSP, code).build();
    assoc.send_command(pc_id, &rsp).await?;
    inc(&metrics.echoes);
    tracing::debug!("C-ECHO answered");
    Ok(())
}
