//! Cross-layer storage health, decided without I/O.
//!
//! The operator feeds in per-disk latency samples and the shape of the cluster; these modules
//! answer: is this VM healthy for that intent's budget (with hysteresis, and *unknown* rather than
//! *degraded* when data is missing), which pods may be marked unready without breaking the
//! workload (the guard), what the pod and node conditions say, and which noisy neighbour to
//! throttle how hard, and when to let go.
//!
//! The flow for one sampling cycle:
//! 1. [`DiskHealth::observe`] each fresh [`StorageSample`] against a [`LatencyBudget`];
//! 2. [`DiskHealth::verdict`] at `now`, folded per VM with [`VmVerdict::worst_of`];
//! 3. [`pod_readiness`] per pod, then [`guard`] per workload;
//! 4. [`node_condition`] per node, and [`node_taints`] when degraded nodes are tainted, within
//!    [`cap_taints`];
//! 5. [`plan_neighbour_throttles`] over all victims and candidates;
//! 6. [`plan_protection`]: CPU shares for the VMs backing protected intents.

mod guard;
mod hysteresis;
mod neighbour;
mod node;
mod protect;
mod readiness;
mod sample;
mod state;
mod taint_cap;
mod tier;
mod vm;

pub use guard::{guard, GuardBudget, GuardCandidate, GuardDecision, GuardLimit, GuardPods};
pub use hysteresis::{DiskHealth, HysteresisPolicy, SampleUse, Verdict};
pub use neighbour::{
    apply_neighbour_actions, neighbours_of, plan_neighbour_throttles, NeighbourAction,
    NeighbourCandidate, NeighbourHistory, Shared, Throttle, ThrottleLadder, Victim,
};
pub use node::{node_condition, node_taints, reason as node_reason, NodeCondition, TAINT_EFFECT};
pub use protect::{
    plan_protection, restore_leftover, ProtectAction, ProtectFailure, Protection, ProtectionClaim,
    ProtectionPlan, SharesSupport, Wanted,
};
pub use readiness::{pod_readiness, reason as pod_reason, ReadinessVerdict, UnknownReadiness};
pub use sample::{format_latency, LatencyBudget, StorageSample};
pub use state::{HealthState, UnknownCause};
pub use taint_cap::{cap_taints, NodeFacts, TaintCap, TaintDecision, TaintHeld, WorkloadPlacement};
pub use tier::Tier;
pub use vm::VmVerdict;

/// A health policy that cannot work, e.g. "degrade after 4 of 3 samples".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthPolicyError {
    #[error("checking the health policy: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}
