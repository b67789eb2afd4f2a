//! A hypervisor host as maintenance sees it.

use serde::{Deserialize, Serialize};

/// Whether a host is in, or on its way into, maintenance mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The name [`crate::BackingVm::host`] gives the VMs on this host (vSphere: the
    /// HostSystem's name; libvirt: the connection's hostname).
    pub name: String,
    /// vSphere: `runtime.inMaintenanceMode`. libvirt has no maintenance mode: never.
    pub in_maintenance: bool,
    /// vSphere: an `EnterMaintenanceMode_Task` is queued or running on the host (in its
    /// `recentTask`): someone started maintenance, and the host is not in it yet.
    pub entering: bool,
}
