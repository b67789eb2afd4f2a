//! How the health loop behaves: what `plumbline run`'s health flags choose.

use plumbline_policies::{
    health::{LatencyBudget, TaintCap, ThrottleLadder, UnknownReadiness},
    placement::RelocationPolicy,
};
use std::time::Duration;

use crate::ledger::LedgerSettings;

/// How the health loop behaves; the defaults are documented in docs/health.md.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// What an unknown verdict does to the pod condition (default: fail open).
    pub unknown: UnknownReadiness,
    /// Budget for node conditions of nodes running no pod of a storage intent.
    pub default_node_budget: LatencyBudget,
    pub ladder: ThrottleLadder,
    /// When and how often a noisy neighbour throttling cannot tame is moved.
    pub relocation: RelocationPolicy,
    /// A pass runs at least this often even without news (staleness turns into unknown).
    pub resync: Duration,
    /// Taint nodes whose storage is degraded (`NoSchedule`), and untaint them on recovery.
    /// Off by default: it needs `patch` on nodes.
    pub taint_degraded_nodes: bool,
    /// Carry out HostMaintenances: cordon and drain the nodes on a host going into
    /// maintenance. Off by default: it needs `patch` on nodes, `create` on pods/eviction and
    /// `delete` on pods (for `onTimeout: Force`). An operator scoped to a namespace moves only
    /// that namespace's pods (the chart turns it on only for an operator of the whole cluster).
    pub host_maintenance: bool,
    /// Label VM-backed nodes with the hypervisor host, provider and (vSphere) cluster under
    /// `topology.plumbline.dev/` (docs/placement.md). On by default: labels change no
    /// scheduling by themselves, and are what `topologySpreadConstraints` need. Needs
    /// `patch` on nodes.
    pub topology_labels: bool,
    /// How many nodes the storage taint may cover at once.
    pub taint_cap: TaintCap,
    /// How the change ledger's actuators behave (read-back interval, deadlines, concurrency).
    pub ledger: LedgerSettings,
    /// Test-only: break the loop on purpose, to prove that supervision notices.
    pub fault: Option<HealthFault>,
}

/// A deliberate failure of the health loop (the hidden `--test-fault` flag), so a test can
/// show that `/healthz` and the supervisor notice a dead or stalled loop in the real binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HealthFault {
    /// The loop returns after its first completed pass, as if it had crashed.
    HealthLoopExit,
    /// The loop stops passing after its first pass but stays alive, as if it hung.
    HealthLoopHang,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            unknown: UnknownReadiness::FailOpen,
            default_node_budget: LatencyBudget::from_millis(100),
            ladder: ThrottleLadder::default(),
            relocation: RelocationPolicy::default(),
            resync: Duration::from_secs(1),
            taint_degraded_nodes: false,
            host_maintenance: false,
            topology_labels: true,
            taint_cap: TaintCap::default(),
            ledger: LedgerSettings::default(),
            fault: None,
        }
    }
}
