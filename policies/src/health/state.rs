//! The three health states and why a state can be unknown.

use std::time::SystemTime;

/// Health of a disk, a VM or a node against one latency budget.
///
/// The derived order is by badness (`Healthy < Unknown < Degraded`), so folding a VM's disks
/// with `max` yields the state of its worst disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    Healthy,
    Unknown,
    Degraded,
}

impl HealthState {
    /// Lower-case label for metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unknown => "unknown",
            HealthState::Degraded => "degraded",
        }
    }
}

/// Why there is no verdict. None of these ever count as evidence of degradation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownCause {
    /// No sample has arrived yet (new VM, new intent, or the hypervisor is unreachable).
    NoSamples,
    /// The newest sample is older than the policy's staleness limit.
    Stale { last_sample_at: SystemTime },
    /// Samples arrive but hysteresis has not settled yet (first samples were over budget).
    Confirming,
    /// The pod's node is not mapped to any VM a provider knows.
    NotBacked,
}

impl UnknownCause {
    pub fn describe(&self) -> &'static str {
        match self {
            UnknownCause::NoSamples => "no storage latency samples yet",
            UnknownCause::Stale { .. } => "storage latency samples are stale",
            UnknownCause::Confirming => "first storage latency samples are being confirmed",
            UnknownCause::NotBacked => "the node is not backed by a known VM",
        }
    }
}
