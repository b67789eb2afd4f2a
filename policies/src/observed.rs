//! What the operator observed, as plain data: the target workload, the VMs under it, and what
//! Plumbline applied before. The operator fills these from its caches; tests build them by hand.

use std::collections::BTreeMap;

use crate::plan::{Action, CountOrPercent, WorkloadRef};

/// Everything [`crate::plan()`] looks at besides the intent and the time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// The target workload; `None` when it does not exist (the plan is then invalid).
    pub workload: Option<ObservedWorkload>,
    /// The VMs backing the workload's pods, and the throttles the health logic decided.
    pub infra: ObservedInfra,
    /// What Plumbline applied before for this intent (parsed from `status.plan`, see
    /// [`crate::status::actions_from_status`]). Their previous values are the originals that a
    /// revert restores.
    pub applied: Vec<Action>,
}

/// The target Deployment or StatefulSet as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedWorkload {
    pub workload: WorkloadRef,
    /// `spec.replicas`; `None` when unset (Kubernetes then runs 1).
    pub replicas: Option<i32>,
    /// `spec.template.spec.priorityClassName`.
    pub priority_class_name: Option<String>,
    /// Condition types of `spec.template.spec.readinessGates`.
    pub readiness_gates: Vec<String>,
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    /// PodDisruptionBudgets in the namespace that select this workload's pods.
    pub disruption_budgets: Vec<ObservedDisruptionBudget>,
}

/// A PodDisruptionBudget covering the workload's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDisruptionBudget {
    pub name: String,
    /// Labelled `app.kubernetes.io/managed-by: plumbline`.
    pub managed_by_plumbline: bool,
    pub min_available: Option<CountOrPercent>,
}

/// The hypervisor side, as far as this intent is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedInfra {
    /// VMs backing the nodes the workload's pods run on (deduplicated).
    pub backing_vms: Vec<BackingVm>,
    /// Noisy-neighbour throttles the health logic decided for this intent's victims
    /// (see `crate::health::plan_neighbour_throttles`); they become hypervisor actions.
    pub neighbour_throttles: Vec<NeighbourThrottle>,
}

/// A VM under one or more of the workload's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingVm {
    pub vm: crate::plan::VmRef,
    /// Current CPU shares; `None` when unknown.
    pub cpu_shares: Option<u64>,
    /// The hypervisor can set CPU shares here (cgroups may be missing).
    pub cpu_shares_supported: bool,
}

/// One I/O limit on a neighbour VM's disk, as decided by the health logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourThrottle {
    pub vm: crate::plan::VmRef,
    pub disk: String,
    /// The IOPS limit to set; `None` releases the throttle.
    pub limit_iops: Option<u64>,
    /// The limit before Plumbline throttled (`None`: unlimited).
    pub previous_iops: Option<u64>,
    /// Why, e.g. "vm7 has 4200 IOPS on host esx1 while payments' vm2 is at 48ms (budget 20ms)".
    pub reason: String,
}
