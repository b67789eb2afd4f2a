//! The plan as stored in `WorkloadIntent.status.plan`: one entry per action, per layer.
//!
//! `plumbline-policies` computes plans with typed values and converts them to and from this
//! form; values here are the strings a human reads (`3`, `"50%"`, `plumbline-critical`,
//! `present`). Previous values are what a revert restores, so they must survive a restart of
//! the operator: this status is where they are kept.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an action takes effect.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Layer {
    Kubernetes,
    Hypervisor,
}

/// What an action changes.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ActionKind {
    /// Ensure the tier's PriorityClass exists (shared by all intents of the tier).
    PriorityClass,
    /// Set the workload's pod template `priorityClassName`.
    PriorityClassName,
    /// Raise the workload's `spec.replicas` to the floor.
    ReplicaFloor,
    /// Own a PodDisruptionBudget for the workload.
    PodDisruptionBudget,
    /// Add the storage readiness gate to the pod template.
    ReadinessGate,
    /// Spread the pods across hypervisor hosts: a topology spread constraint on the host label.
    HostSpread,
    /// Set a VM's CPU shares.
    CpuShares,
    /// Limit a VM disk's total IOPS (noisy-neighbour throttle).
    DiskIopsLimit,
}

/// How far an action got.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum ActionState {
    /// Planned, not applied yet (also every action of `explain`).
    #[default]
    Pending,
    /// Applied and read back.
    Applied,
    /// Applying failed; see `message`.
    Failed,
    /// The hypervisor cannot do this (capability missing); nothing was changed.
    Unsupported,
}

/// The object (and part of it) an action changes.
#[derive(
    Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PlannedTarget {
    /// Kind of object: Deployment, StatefulSet, PriorityClass, PodDisruptionBudget, VirtualMachine.
    pub kind: String,
    /// Namespace, for namespaced Kubernetes objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name (for a VM: its hypervisor name).
    pub name: String,
    /// HypervisorProvider, for VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Disk of the VM (e.g. vda), for per-disk actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// One action of a plan.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedAction {
    /// Kubernetes or Hypervisor.
    pub layer: Layer,
    /// What is changed.
    pub kind: ActionKind,
    /// The object changed.
    pub target: PlannedTarget,
    /// Value Plumbline sets; absent means "removed" (field unset, object deleted, gate removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// Value before Plumbline changed it; absent means it was not set. A revert restores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Why, in plain words.
    pub reason: String,
    /// How far it got.
    #[serde(default)]
    pub state: ActionState,
    /// Details of a failure or of an unsupported capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
