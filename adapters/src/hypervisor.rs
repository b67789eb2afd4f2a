//! The one interface every hypervisor adapter implements.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    AntiAffinityRule, BackingVm, Capabilities, HostState, Result, Setting, StorageSamples, Tunable,
    TunableReport, VmId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HypervisorKind {
    Libvirt,
    VSphere,
}

impl fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Libvirt => "libvirt",
            Self::VSphere => "vsphere",
        })
    }
}

/// Where an adapter is connected to; safe to log (never carries credentials).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub kind: HypervisorKind,
    /// libvirt URI or vSphere SDK URL.
    pub url: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionState {
    Connected {
        since: SystemTime,
    },
    /// Lost or never established; calls fail fast with [`crate::Error::Disconnected`] until
    /// a reconnect attempt (made by the next call once `retry_at` has passed) succeeds.
    Disconnected {
        since: SystemTime,
        reason: String,
        retry_at: SystemTime,
    },
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// A hypervisor endpoint (one libvirt host, one vCenter) as Plumbline needs it. It knows
/// nothing about intents: it reports VMs, samples storage latency, and changes tunables
/// while recording their originals on the VM so they can be reverted by a later process.
///
/// All methods are safe to call concurrently. A lost connection is reported as
/// [`crate::Error::Disconnected`] and repaired by later calls (with backoff), never by
/// returning stale data.
#[async_trait]
pub trait Hypervisor: Send + Sync + fmt::Debug {
    fn endpoint(&self) -> &Endpoint;

    /// The connection as last observed; does no I/O.
    fn connection(&self) -> ConnectionState;

    /// What this endpoint supports; probed once per connection, unsupported features are
    /// reported here instead of failing each call.
    async fn capabilities(&self) -> Result<Capabilities>;

    /// Every VM on the endpoint, in one bulk query.
    async fn inventory(&self) -> Result<Vec<BackingVm>>;

    /// One sampling cycle: per-disk latency of every running VM, in one bulk query per host.
    async fn sample_storage(&self) -> Result<StorageSamples>;

    /// Current values of the VM's tunables and the originals recorded on it.
    async fn tunables(&self, vm: &VmId) -> Result<TunableReport>;

    /// Applies the settings. Before the first change of a tunable its current value is
    /// recorded on the VM; later changes keep that first original.
    async fn apply(&self, vm: &VmId, settings: &[Setting]) -> Result<()>;

    /// Restores the recorded originals of the given tunables and forgets the records.
    /// Tunables without a record are left alone. Returns the settings restored.
    async fn revert(&self, vm: &VmId, tunables: &[Tunable]) -> Result<Vec<Setting>>;

    /// Restores every recorded original on the VM.
    async fn revert_all(&self, vm: &VmId) -> Result<Vec<Setting>> {
        let report = self.tunables(vm).await?;
        let recorded: Vec<Tunable> = report.originals.into_iter().map(|s| s.tunable).collect();
        if recorded.is_empty() {
            return Ok(Vec::new());
        }
        self.revert(vm, &recorded).await
    }

    /// Every host of the endpoint, and whether it is in or entering maintenance mode, in
    /// one bulk query. libvirt: its one host, never in maintenance (libvirt has no
    /// maintenance mode; taking the host down is up to whoever runs it).
    async fn host_states(&self) -> Result<Vec<HostState>>;

    /// Puts the host (named as [`BackingVm::host`] names it) into maintenance mode and waits
    /// until it is in it. vSphere: `EnterMaintenanceMode_Task` with `timeout` (whole seconds,
    /// at least 1; the server fails the task with `Timedout` after it, an
    /// [`crate::Error::TaskFailed`]) and powered-off VMs left on the host. A maintenance-mode
    /// task already in flight on the host (someone's `EnterMaintenanceMode_Task`) is waited
    /// for first, as long as `timeout`; then nothing is called when the host is in
    /// maintenance mode. libvirt: [`crate::Error::UnsupportedOperation`]. An unknown host:
    /// [`crate::Error::HostNotFound`].
    async fn enter_maintenance(&self, host: &str, timeout: Duration) -> Result<()>;

    /// Takes the host out of maintenance mode (vSphere: `ExitMaintenanceMode_Task` with
    /// `timeout`) and waits until it is out. A maintenance-mode task in flight is waited for
    /// first, as long as `timeout`, so that an `EnterMaintenanceMode_Task` does not put the
    /// host back afterwards; then nothing is called when the host is not in maintenance mode.
    /// libvirt: [`crate::Error::UnsupportedOperation`].
    async fn exit_maintenance(&self, host: &str, timeout: Duration) -> Result<()>;

    /// Moves the running VM to `host` (named as [`BackingVm::host`] names it) of its cluster
    /// and waits until it runs there; nothing is sent when it already does. vSphere: vMotion,
    /// `RelocateVM_Task` with only `spec.host` (datastores and resource pool stay), waited for
    /// as long as `timeout` plus a grace. libvirt: [`crate::Error::UnsupportedOperation`] (a
    /// provider is one host). An unknown host: [`crate::Error::HostNotFound`].
    async fn relocate(&self, vm: &VmId, host: &str, timeout: Duration) -> Result<()>;

    /// The VM-VM anti-affinity rule named `name` in compute cluster `cluster` (named as
    /// [`BackingVm::cluster`] names it), or `None` when the cluster has no rule of that name.
    /// A rule of another kind with that name is an [`crate::Error::UnsupportedOperation`]:
    /// it is not Plumbline's to change. vSphere reads the cluster's `configurationEx.rule`;
    /// libvirt has no clusters: [`crate::Error::UnsupportedOperation`].
    async fn anti_affinity_rule(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<AntiAffinityRule>>;

    /// Makes the cluster's rule of that name exactly `rule` (adding it, or editing the one
    /// there), unless it already is. vSphere: `ReconfigureComputeResource_Task` with a
    /// `rulesSpec` add or edit; an answer lost on the way is settled by reading the rule again,
    /// never by sending the change twice.
    async fn set_anti_affinity_rule(&self, cluster: &str, rule: &AntiAffinityRule) -> Result<()>;

    /// Removes the cluster's rule of that name; nothing when there is none.
    async fn remove_anti_affinity_rule(&self, cluster: &str, name: &str) -> Result<()>;

    /// Ends the session (vSphere logout, libvirt close). Later calls reconnect.
    async fn close(&self) -> Result<()>;
}
