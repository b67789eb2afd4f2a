//! Reconfiguring a VM exactly once, even when the session ends or the answer is lost on
//! the way.
//!
//! Each attempt plans from a fresh read of the VM, and planning is idempotent (see
//! [`super::tuning::apply_edits`]): once a reconfiguration landed, planning again finds
//! nothing left to do. So after any interruption the VM is read again instead of the request
//! being sent again, and a reconfiguration that may still be running is waited for first.

use super::{
    inventory::VmRecord,
    task::{self, Submission},
    tuning::{self, Edits},
    VSphereHypervisor,
};
use crate::xml::Element;
use crate::{Error, Result, VmId};

/// Reads, plans and submits at most this often per call: one interruption costs an attempt,
/// and a server that keeps interrupting gets its error reported.
const ATTEMPTS: usize = 3;

/// What `Task.info.descriptionId` says for a `ReconfigVM_Task`.
const RECONFIGURE_TASK: &str = "VirtualMachine.reconfigure";

impl VSphereHypervisor {
    /// Brings the VM to what `plan` asks for. `plan` returns the edits still needed on the
    /// VM as read, and what to report once they are in place. When a plan finds nothing left
    /// to do after an attempt whose outcome was unknown, that attempt landed, and its report
    /// is returned.
    pub(super) async fn reconfigure<T>(
        &self,
        vm: &VmId,
        action: &str,
        plan: impl Fn(&VmRecord) -> Result<(Edits, T)>,
    ) -> Result<T> {
        let session = &self.inner.session;
        let mut maybe_landed: Option<T> = None;
        let mut attempt = 1;
        loop {
            let record = self.vm(vm).await?;
            let (edits, report) = plan(&record)?;
            if edits.is_empty() {
                return Ok(maybe_landed.unwrap_or(report));
            }
            let target = tuning::target(&record.id, &record.name);
            let request = Element::new("ReconfigVM_Task")
                .child(Element::moref("_this", &record.moref))
                .child(edits.into_spec());
            let interrupted = match task::submit(session, action, &target, request).await {
                Submission::Finished(result) => return result.map(|()| report),
                Submission::Refused(e) if is_lost_session(&e) => e,
                Submission::Refused(e) => return Err(e),
                Submission::Unknown(e) => {
                    // Never plan against a VM that a reconfiguration is still changing.
                    task::settle(session, action, &target, &record.moref, RECONFIGURE_TASK).await?;
                    maybe_landed = Some(report);
                    e
                }
            };
            if attempt == ATTEMPTS {
                return Err(interrupted);
            }
            tracing::warn!(%target, error = %interrupted, attempt,
                "reconfiguration interrupted; reading the VM again to see what is left to do");
            attempt += 1;
        }
    }
}

/// The server refused the call because it no longer knew the session; the session layer
/// has logged in again, and nothing was changed.
pub(super) fn is_lost_session(e: &Error) -> bool {
    matches!(e, Error::SoapFault { fault, .. } if fault == "NotAuthenticated")
}
