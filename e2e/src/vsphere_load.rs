//! I/O load on a simulator VM, through the control endpoint (e2e/vcsim/contention.go): the VM
//! does `iops` (capped by its disks' IOPS limit), and every other VM on its host sees its disk
//! latency rise by `fixed_ms` plus `ms_per_iop` per IOPS done. The load follows the VM when it
//! is moved to another host.

use crate::{Result, Stack};

impl Stack {
    pub async fn set_vsphere_load(
        &self,
        vm: &str,
        iops: u64,
        fixed_ms: f64,
        ms_per_iop: f64,
    ) -> Result<()> {
        let what = format!("setting the I/O load of simulator VM {vm}");
        let url = format!("{}/load", self.vcsim_control()?);
        let req = reqwest::Client::new().put(url).json(&serde_json::json!({
            "vm": vm, "iops": iops, "fixed_ms": fixed_ms, "ms_per_iop": ms_per_iop,
        }));
        self.vcsim_call(what, req).await.map(|_| ())
    }

    /// No load on the VM, and no contention from it.
    pub async fn clear_vsphere_load(&self, vm: &str) -> Result<()> {
        let what = format!("clearing the I/O load of simulator VM {vm}");
        let url = format!("{}/load", self.vcsim_control()?);
        let req = reqwest::Client::new().delete(url).query(&[("vm", vm)]);
        self.vcsim_call(what, req).await.map(|_| ())
    }
}
