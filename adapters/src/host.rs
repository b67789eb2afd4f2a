//! A hypervisor host as maintenance and placement see it.

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
    /// vSphere: the compute cluster the host belongs to (as [`crate::BackingVm::cluster`]
    /// names it); `None` for a standalone host and for libvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}
