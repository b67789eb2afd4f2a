//! The simulator's VMs where they run now, and vMotion: `RelocateVM_Task` made over vim25 by
//! the simulator's control endpoint (e2e/vcsim/placement.go), as any vSphere client would
//! make it. What a test sets up or checks here does not depend on the adapter under test.

use crate::{stack_error, Result, Stack};

/// One VM as the simulator holds it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimVmPlacement {
    pub moid: String,
    pub name: String,
    /// The Node name kubelet-sim registers for it.
    #[serde(rename = "dnsName")]
    pub dns_name: String,
    pub uuid: String,
    pub host: String,
    /// The host's cluster; empty for the standalone host.
    pub cluster: String,
}

impl Stack {
    /// Every simulator VM with its current host and cluster.
    pub async fn vsphere_vms(&self) -> Result<Vec<SimVmPlacement>> {
        let what = "listing the simulator's VMs".to_string();
        let url = format!("{}/vms", self.vcsim_control()?);
        let body = self
            .vcsim_call(what.clone(), reqwest::Client::new().get(url))
            .await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }

    /// Moves `vm` (name, node name or UUID) to `host` with `RelocateVM_Task`, waited for.
    /// Returns the VM where it is now.
    pub async fn relocate_vsphere_vm(&self, vm: &str, host: &str) -> Result<SimVmPlacement> {
        let what = format!("relocating simulator VM {vm} to {host}");
        let url = format!("{}/vms/relocate", self.vcsim_control()?);
        let req = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({"vm": vm, "host": host}));
        let body = self.vcsim_call(what.clone(), req).await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }
}
