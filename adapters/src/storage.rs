//! Storage samples: per-operation latency per disk over one sampling window.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{VmId, VmPlacement};

/// Mean latency of one kind of operation over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLatency {
    pub mean: Duration,
    /// Operations completed in the window, when the hypervisor reports it (libvirt does;
    /// vSphere's averaged latency counters do not).
    pub ops: Option<u64>,
}

/// Latency of one disk of one VM over `window`, ending at `observed_at`.
/// An operation kind is `None` when no such operation completed in the window (an idle disk
/// has no latency, not zero latency) or the hypervisor does not measure it (vSphere flush).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLatency {
    pub vm: VmId,
    pub disk: String,
    pub read: Option<OpLatency>,
    pub write: Option<OpLatency>,
    pub flush: Option<OpLatency>,
    pub window: Duration,
    pub observed_at: SystemTime,
}

impl DiskLatency {
    /// The worst mean latency of any operation kind in the window.
    pub fn worst(&self) -> Option<Duration> {
        [self.read, self.write, self.flush]
            .into_iter()
            .flatten()
            .map(|op| op.mean)
            .max()
    }
}

/// Why a disk seen this cycle has no latency figure yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotReady {
    /// First sight of the disk (or first cycle after a reconnect): a baseline was recorded.
    Baseline,
    /// Its counters went backwards (guest restarted, disk hot-unplugged and replugged);
    /// a new baseline was recorded instead of reporting a nonsensical delta.
    CounterReset,
    /// The hypervisor has no recent sample for it.
    NoRecentSample,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadyDisk {
    pub vm: VmId,
    pub disk: String,
    pub reason: NotReady,
}

/// The result of one sampling cycle on one hypervisor endpoint. Everything in it was read in
/// this cycle: after a lost connection nothing cached is presented as fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageSamples {
    pub taken_at: SystemTime,
    pub disks: Vec<DiskLatency>,
    pub not_ready: Vec<UnreadyDisk>,
    /// Where each VM ran, when the sampling read it anyway (vSphere: `runtime.host` in the
    /// same retrieval), so a VM moved by vMotion is seen within one cycle rather than at the
    /// next inventory. Empty when the adapter learns placement only from the inventory
    /// (libvirt: one host, which never changes).
    #[serde(default)]
    pub placements: Vec<VmPlacement>,
}

impl StorageSamples {
    pub fn for_vm<'a>(&'a self, vm: &'a VmId) -> impl Iterator<Item = &'a DiskLatency> + 'a {
        self.disks.iter().filter(move |d| &d.vm == vm)
    }
}
