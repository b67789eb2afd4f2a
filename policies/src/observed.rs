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
    /// `whenUnsatisfiable` of the pod template's topology spread constraint on the hypervisor
    /// host label, if it has one.
    pub host_spread: Option<String>,
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

/// The hypervisor side, as far as this intent is concerned: what the change ledger holds for
/// it, and what the storage-health loop last saw under it. The controller and `explain` fill it
/// from the `InfraChange`s and the intent's status; nothing here comes from a hypervisor call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedInfra {
    /// `InfraChange`s of the planning operator instance that name this intent among their
    /// owners.
    pub changes: Vec<plumbline_crds::InfraChange>,
    /// The VMs backing the workload's pods (`status.backing`), deduplicated.
    pub backing: Vec<ObservedBackingVm>,
    /// VMs sharing a host or datastore with them, with their I/O rates
    /// (`status.neighbourCandidates`).
    pub neighbours: Vec<plumbline_crds::NeighbourCandidateStatus>,
    /// What the storage-health loop reported about the pods' hosts (`status.placement`): the
    /// DRS rules kept, where a noisy neighbour would be moved and the moves made.
    pub placement: Option<plumbline_crds::PlacementStatus>,
}

/// A VM under one or more of the workload's pods, and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBackingVm {
    pub vm: crate::plan::VmRef,
    pub host: Option<String>,
    pub datastores: Vec<String>,
}
