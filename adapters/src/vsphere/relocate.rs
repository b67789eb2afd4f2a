//! Moving a running VM to another host of its cluster (vMotion, `RelocateVM_Task` with only
//! `spec.host`: its datastores and resource pool stay), exactly once: nothing is sent when the
//! VM already runs there, and a move whose answer was lost is settled by reading where the VM
//! runs now, never by sending it again.

use std::time::Duration;

use super::{
    task::{self, Submission},
    VSphereHypervisor,
};
use crate::xml::{Element, MoRef};
use crate::{Result, VmId};

const ACTION: &str = "relocating a VM";
/// How much longer than the call's own timeout the adapter waits for the task.
const GRACE: Duration = Duration::from_secs(30);

fn request(vm: &MoRef, host: &MoRef) -> Element {
    Element::new("RelocateVM_Task")
        .child(Element::moref("_this", vm))
        .child(Element::new("spec").child(Element::moref("host", host)))
}

impl VSphereHypervisor {
    pub(super) async fn relocate_vm(&self, vm: &VmId, host: &str, timeout: Duration) -> Result<()> {
        let target = self.host_record(host).await?.moref;
        let record = self.vm(vm).await?;
        if record.host.as_ref() == Some(&target) {
            return Ok(());
        }
        let what = format!("VM {} ({vm}) to host {host}", record.name);
        let failure = match task::submit_within(
            &self.inner.session,
            ACTION,
            &what,
            request(&record.moref, &target),
            timeout + GRACE,
        )
        .await
        {
            Submission::Finished(result) => return result,
            Submission::Refused(e) | Submission::Unknown(e) => e,
        };
        // A lost session or answer: where the VM runs now says whether the move landed.
        if self.vm(vm).await?.host.as_ref() == Some(&target) {
            return Ok(());
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_only_the_host() {
        let r = request(
            &MoRef::new("VirtualMachine", "vm-54"),
            &MoRef::new("HostSystem", "host-42"),
        );
        assert_eq!(r.name, "RelocateVM_Task");
        let spec = r.first("spec").unwrap();
        assert_eq!(spec.children.len(), 1);
        assert_eq!(
            spec.first("host").and_then(Element::as_moref),
            Some(MoRef::new("HostSystem", "host-42"))
        );
    }
}
