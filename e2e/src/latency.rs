//! Injecting and clearing storage latency on libvirt guests and simulator VMs, and
//! measuring a guest's real per-operation disk latency.
//!
//! libvirt: latency is injected for real with an IOPS limit (`virsh blkdeviotune
//! --total-iops-sec`), which makes QEMU queue the guest's requests; the guest's block
//! counters (`virsh domstats --block`, times in ns) then show it as Δtimes/Δreqs.
//! Simulator: the stack's vcsim control endpoint sets what `QueryPerf` reports for
//! `virtualDisk.totalReadLatency.average` / `totalWriteLatency.average` of one VM.

use std::time::Duration;

use tokio::process::Command;

use crate::{stack_error, Result, Stack};

/// The disk every stack guest does its I/O on.
pub const GUEST_DISK: &str = "vda";

/// Cumulative block counters of one guest disk, as `virsh domstats --block` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub rd_reqs: u64,
    pub rd_times_ns: u64,
    pub wr_reqs: u64,
    pub wr_times_ns: u64,
    pub fl_reqs: u64,
    pub fl_times_ns: u64,
}

impl BlockCounters {
    /// Reads and writes (flushes are excluded: the guests' direct I/O issues none worth timing).
    pub fn ops(&self) -> u64 {
        self.rd_reqs + self.wr_reqs
    }

    pub fn busy_ns(&self) -> u64 {
        self.rd_times_ns + self.wr_times_ns
    }

    /// Parses the `block.N.*` lines of `virsh domstats --block` for the disk named `disk`.
    pub fn parse_domstats(text: &str, disk: &str) -> Option<Self> {
        let fields: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .collect();
        let index = fields.iter().find_map(|(k, v)| {
            let rest = k.strip_prefix("block.")?;
            let (i, field) = rest.split_once('.')?;
            (field == "name" && *v == disk).then_some(i)
        })?;
        let prefix = format!("block.{index}.");
        let mut c = Self::default();
        for (k, v) in &fields {
            let Some(field) = k.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(n) = v.parse::<u64>() else { continue };
            match field {
                "rd.reqs" => c.rd_reqs = n,
                "rd.times" => c.rd_times_ns = n,
                "wr.reqs" => c.wr_reqs = n,
                "wr.times" => c.wr_times_ns = n,
                "fl.reqs" => c.fl_reqs = n,
                "fl.times" => c.fl_times_ns = n,
                _ => {}
            }
        }
        Some(c)
    }
}

/// Mean time per read/write between two samples; `None` when no operation completed.
pub fn per_op_latency(before: &BlockCounters, after: &BlockCounters) -> Option<Duration> {
    let ops = after.ops().checked_sub(before.ops())?;
    let busy = after.busy_ns().checked_sub(before.busy_ns())?;
    (ops > 0).then(|| Duration::from_nanos(busy / ops))
}

/// The `total_iops_sec` of the guest's disk, as `virsh blkdeviotune` reports it (0: unlimited).
pub async fn total_iops_limit(uri: &str, domain: &str) -> Result<u64> {
    let what = format!("reading the IOPS limit of domain {domain}");
    let text = virsh(uri, &what, &["blkdeviotune", domain, GUEST_DISK]).await?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "total_iops_sec")
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| stack_error(what, format!("no total_iops_sec in:\n{text}")))
}

/// Sets the `total_iops_sec` of the guest's disk, live (0 lifts the limit).
pub async fn set_total_iops_limit(uri: &str, domain: &str, iops: u64) -> Result<()> {
    let iops = iops.to_string();
    virsh(
        uri,
        &format!("setting total-iops-sec {iops} on domain {domain}"),
        &[
            "blkdeviotune",
            domain,
            GUEST_DISK,
            "--total-iops-sec",
            &iops,
            "--live",
        ],
    )
    .await
    .map(drop)
}

async fn virsh(uri: &str, what: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .await
        .map_err(|e| stack_error(format!("{what} via {uri}"), format!("running virsh: {e}")))?;
    if !out.status.success() {
        return Err(stack_error(
            format!("{what} via {uri}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A guest's per-op latency measured over a window.
#[derive(Debug, Clone, Copy)]
pub struct MeasuredLatency {
    pub per_op: Duration,
    pub ops: u64,
    pub window: Duration,
}

impl Stack {
    /// `qemu:///system`, the libvirt the stack's guests run under.
    pub fn libvirt_uri(&self) -> Result<&str> {
        self.get("LIBVIRT_URI")
    }

    /// The stack's guests: `pl-vm1`, `pl-vm2`, `pl-vm3` (steady I/O) and `pl-noisy`.
    pub fn libvirt_domains(&self) -> Result<Vec<String>> {
        Ok(self
            .get("LIBVIRT_DOMAINS")?
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The guest that does much more I/O than the others.
    pub fn noisy_domain(&self) -> Result<&str> {
        self.get("LIBVIRT_NOISY_DOMAIN")
    }

    /// Current cumulative counters of the guest's disk.
    pub async fn block_counters(&self, domain: &str) -> Result<BlockCounters> {
        let what = format!("reading block stats of domain {domain}");
        let text = virsh(self.libvirt_uri()?, &what, &["domstats", "--block", domain]).await?;
        BlockCounters::parse_domstats(&text, GUEST_DISK)
            .ok_or_else(|| stack_error(what, format!("no disk {GUEST_DISK} in:\n{text}")))
    }

    /// Limits the guest's disk to `iops` operations per second (total), live.
    pub async fn inject_libvirt_latency(&self, domain: &str, iops: u32) -> Result<()> {
        set_total_iops_limit(self.libvirt_uri()?, domain, iops.into()).await
    }

    /// Removes the guest's IOPS limit.
    pub async fn clear_libvirt_latency(&self, domain: &str) -> Result<()> {
        set_total_iops_limit(self.libvirt_uri()?, domain, 0).await
    }

    /// The guest's mean per-op latency over at least `window` and at least `min_ops`
    /// operations; gives up after `timeout` if the guest does not do that much I/O.
    pub async fn measure_latency(
        &self,
        domain: &str,
        window: Duration,
        min_ops: u64,
        timeout: Duration,
    ) -> Result<MeasuredLatency> {
        let start = tokio::time::Instant::now();
        let before = self.block_counters(domain).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = self.block_counters(domain).await?;
            let elapsed = start.elapsed();
            let ops = after.ops().saturating_sub(before.ops());
            if elapsed >= window && ops >= min_ops {
                let per_op = per_op_latency(&before, &after).ok_or_else(|| {
                    stack_error(
                        format!("measuring latency of {domain}"),
                        "counters went backwards",
                    )
                })?;
                return Ok(MeasuredLatency {
                    per_op,
                    ops,
                    window: elapsed,
                });
            }
            if elapsed >= timeout {
                return Err(stack_error(
                    format!("measuring latency of {domain}"),
                    format!("only {ops} operations in {elapsed:?} (wanted {min_ops}); is the guest running?"),
                ));
            }
        }
    }

    pub(crate) fn vcsim_control(&self) -> Result<&str> {
        self.get("VCSIM_CONTROL_URL")
    }

    pub(crate) async fn vcsim_call(
        &self,
        what: String,
        req: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value> {
        let resp = req.send().await.map_err(|e| stack_error(what.clone(), e))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| stack_error(what.clone(), e))?;
        if !status.is_success() {
            return Err(stack_error(what, format!("{status}: {body}")));
        }
        Ok(body)
    }

    /// Makes the simulator report this virtual-disk latency for `vm` (name, DNS name or
    /// BIOS uuid) until cleared.
    pub async fn set_vsphere_latency(&self, vm: &str, read_ms: u64, write_ms: u64) -> Result<()> {
        let url = format!("{}/latency", self.vcsim_control()?);
        let req = reqwest::Client::new().put(url).json(&serde_json::json!({
            "vm": vm, "read_ms": read_ms, "write_ms": write_ms,
        }));
        self.vcsim_call(format!("setting simulator disk latency on {vm}"), req)
            .await
            .map(drop)
    }

    /// Back to the simulator's baseline latency for `vm`.
    pub async fn clear_vsphere_latency(&self, vm: &str) -> Result<()> {
        let url = format!("{}/latency", self.vcsim_control()?);
        let req = reqwest::Client::new().delete(url).query(&[("vm", vm)]);
        self.vcsim_call(format!("clearing simulator disk latency on {vm}"), req)
            .await
            .map(drop)
    }

    /// Ends every SOAP session on the simulator, so clients must log in again.
    pub async fn terminate_vsphere_sessions(&self) -> Result<u64> {
        let url = format!("{}/sessions/terminate", self.vcsim_control()?);
        let body = self
            .vcsim_call(
                "terminating simulator sessions".into(),
                reqwest::Client::new().post(url),
            )
            .await?;
        Ok(body["terminated"].as_u64().unwrap_or(0))
    }
}

/// Where, in a VM's next `ReconfigVM_Task`, the simulator ends the calling session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFault {
    /// The call arrives on an ended session: it is refused and starts no task.
    BeforeReconfigure,
    /// The task runs and its reference is answered; reading its result needs a new login.
    AfterReconfigure,
    /// The task runs and the answer is lost with the connection.
    LoseReconfigureAnswer,
}

impl SessionFault {
    fn point(self) -> &'static str {
        match self {
            Self::BeforeReconfigure => "before-reconfigure",
            Self::AfterReconfigure => "after-reconfigure",
            Self::LoseReconfigureAnswer => "lose-reconfigure-answer",
        }
    }
}

/// One `ReconfigVM_Task` call as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimReconfiguration {
    /// Answered with a fault; no task started.
    pub refused: bool,
    pub cpu_shares_before: i64,
    pub cpu_shares_after: i64,
    /// The session fault that fired on this call, if one did.
    #[serde(default)]
    pub session_ended: Option<String>,
}

impl SimReconfiguration {
    pub fn changed_cpu_shares(&self) -> bool {
        self.cpu_shares_before != self.cpu_shares_after
    }
}

/// A VM's CPU shares and extraConfig as the simulator holds them (not as an adapter reads them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimVmConfig {
    pub cpu_shares: i64,
    pub cpu_shares_level: String,
    pub extra_config: std::collections::BTreeMap<String, String>,
}

impl Stack {
    /// Ends the one simulator session whose key is `session_key`.
    pub async fn terminate_vsphere_session(&self, session_key: &str) -> Result<u64> {
        let url = format!("{}/sessions/terminate", self.vcsim_control()?);
        let req = reqwest::Client::new()
            .post(url)
            .query(&[("session", session_key)]);
        let body = self
            .vcsim_call("terminating one simulator session".into(), req)
            .await?;
        Ok(body["terminated"].as_u64().unwrap_or(0))
    }

    /// Makes the simulator end the calling session at `at` in `vm`'s next
    /// `ReconfigVM_Task` (once).
    pub async fn arm_vsphere_session_fault(&self, vm: &str, at: SessionFault) -> Result<()> {
        let url = format!("{}/faults", self.vcsim_control()?);
        let req = reqwest::Client::new()
            .put(url)
            .json(&serde_json::json!({"vm": vm, "at": at.point()}));
        self.vcsim_call(format!("arming a session fault on {vm}"), req)
            .await
            .map(drop)
    }

    /// Disarms a session fault that has not fired.
    pub async fn disarm_vsphere_session_fault(&self, vm: &str) -> Result<()> {
        let url = format!("{}/faults", self.vcsim_control()?);
        let req = reqwest::Client::new().delete(url).query(&[("vm", vm)]);
        self.vcsim_call(format!("disarming the session fault on {vm}"), req)
            .await
            .map(drop)
    }

    /// Every `ReconfigVM_Task` call `vm` received since the simulator started, in order.
    pub async fn vsphere_reconfigurations(&self, vm: &str) -> Result<Vec<SimReconfiguration>> {
        let what = format!("listing the reconfigurations of {vm}");
        let url = format!("{}/reconfigures", self.vcsim_control()?);
        let req = reqwest::Client::new().get(url).query(&[("vm", vm)]);
        let body = self.vcsim_call(what.clone(), req).await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }

    /// `vm`'s CPU shares and extraConfig, read inside the simulator.
    pub async fn vsphere_vm_config(&self, vm: &str) -> Result<SimVmConfig> {
        let what = format!("reading the configuration of {vm}");
        let url = format!("{}/config", self.vcsim_control()?);
        let req = reqwest::Client::new().get(url).query(&[("vm", vm)]);
        let body = self.vcsim_call(what.clone(), req).await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMSTATS: &str = "Domain: 'pl-vm2'
  block.count=1
  block.0.name=vda
  block.0.path=/var/tmp/plumbline-stack/libvirt/pl-vm2.qcow2
  block.0.rd.reqs=30
  block.0.rd.bytes=122880
  block.0.rd.times=21740460
  block.0.wr.reqs=28
  block.0.wr.bytes=114688
  block.0.wr.times=14473424
  block.0.fl.reqs=0
  block.0.fl.times=0
";

    #[test]
    fn parses_the_named_disk() {
        let c = BlockCounters::parse_domstats(DOMSTATS, "vda").unwrap();
        assert_eq!(c.rd_reqs, 30);
        assert_eq!(c.wr_times_ns, 14_473_424);
        assert_eq!(c.ops(), 58);
        assert!(BlockCounters::parse_domstats(DOMSTATS, "vdb").is_none());
    }

    #[test]
    fn per_op_latency_is_busy_time_over_operations() {
        let before = BlockCounters {
            rd_reqs: 10,
            rd_times_ns: 1_000,
            wr_reqs: 10,
            wr_times_ns: 1_000,
            ..Default::default()
        };
        let after = BlockCounters {
            rd_reqs: 15,
            rd_times_ns: 51_000,
            wr_reqs: 15,
            wr_times_ns: 51_000,
            ..Default::default()
        };
        assert_eq!(
            per_op_latency(&before, &after),
            Some(Duration::from_micros(10))
        );
        assert_eq!(per_op_latency(&before, &before), None);
        assert_eq!(per_op_latency(&after, &before), None);
    }
}
