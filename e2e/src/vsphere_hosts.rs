//! The simulator's hosts and their maintenance mode, read and driven through its control
//! endpoint (e2e/vcsim/maintenance.go), not through vim25: what a test sets up or checks
//! here does not depend on the adapter under test.

use std::time::Duration;

use crate::{stack_error, Result, Stack};

/// One host as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimHost {
    pub moid: String,
    pub name: String,
    pub in_maintenance: bool,
    /// Its lingering `EnterMaintenanceMode_Task`s still running.
    pub lingering: Vec<String>,
    /// Its `recentTask`, oldest first.
    pub recent_tasks: Vec<SimTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimTask {
    pub task: String,
    /// `HostSystem.enterMaintenanceMode`, `HostSystem.exitMaintenanceMode`, …
    pub description_id: String,
    /// `queued`, `running`, `success` or `error`.
    pub state: String,
}

impl SimHost {
    /// How many of its recent tasks have this description.
    pub fn tasks(&self, description_id: &str) -> usize {
        self.recent_tasks
            .iter()
            .filter(|t| t.description_id == description_id)
            .count()
    }
}

impl Stack {
    /// Every simulator host, by name.
    pub async fn vsphere_hosts(&self) -> Result<Vec<SimHost>> {
        let what = "listing the simulator's hosts".to_string();
        let url = format!("{}/hosts", self.vcsim_control()?);
        let body = self
            .vcsim_call(what.clone(), reqwest::Client::new().get(url))
            .await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }

    /// One simulator host by name.
    pub async fn vsphere_host(&self, name: &str) -> Result<SimHost> {
        self.vsphere_hosts()
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| stack_error(format!("reading simulator host {name}"), "no such host"))
    }

    /// Starts an `EnterMaintenanceMode_Task` on `host`, as another vSphere client would; it
    /// stays running for `running`, then the host is in maintenance mode. Returns the task's id.
    pub async fn start_vsphere_maintenance(&self, host: &str, running: Duration) -> Result<String> {
        let url = format!("{}/hosts/maintenance", self.vcsim_control()?);
        let req = reqwest::Client::new().post(url).json(&serde_json::json!({
            "host": host, "running_s": running.as_secs_f64(),
        }));
        let body = self
            .vcsim_call(
                format!("starting maintenance of simulator host {host}"),
                req,
            )
            .await?;
        Ok(body["task"].as_str().unwrap_or_default().to_string())
    }

    /// Makes `host`'s next `EnterMaintenanceMode_Task` over vim25 stay running for `running`
    /// (or until the call's timeout, when that is shorter: then it fails with `Timedout`).
    pub async fn linger_vsphere_maintenance(&self, host: &str, running: Duration) -> Result<()> {
        let url = format!("{}/hosts/linger", self.vcsim_control()?);
        let req = reqwest::Client::new().put(url).json(&serde_json::json!({
            "host": host, "running_s": running.as_secs_f64(),
        }));
        self.vcsim_call(
            format!("arming a lingering maintenance task on {host}"),
            req,
        )
        .await
        .map(drop)
    }

    /// Puts `host` back as a test found it: its lingering tasks cancelled, the next one
    /// disarmed, and the host out of maintenance mode.
    pub async fn end_vsphere_maintenance(&self, host: &str) -> Result<()> {
        let url = format!("{}/hosts/maintenance", self.vcsim_control()?);
        let req = reqwest::Client::new().delete(url).query(&[("host", host)]);
        self.vcsim_call(format!("ending maintenance of simulator host {host}"), req)
            .await?;
        let url = format!("{}/hosts/linger", self.vcsim_control()?);
        let req = reqwest::Client::new().delete(url).query(&[("host", host)]);
        self.vcsim_call(format!("disarming lingering tasks on {host}"), req)
            .await
            .map(drop)
    }
}
