//! The plan: what Plumbline will change, on which layer, from what to what, and why.
//!
//! A [`Plan`] is an ordered list of [`Action`]s (Kubernetes layer first, then hypervisor).
//! Every action names its target and carries a [`ValueChange`]: the `desired` value Plumbline sets
//! and the `previous` value it found there. `None` means "absent" (field unset, object missing,
//! gate not present, no limit), so a revert is the same action with the two swapped
//! ([`Action::reverted`]). Previous values are the originals: once applied, they are kept in
//! the intent's `status.plan` (see [`crate::status`]) and carried over by [`crate::plan()`], so
//! a revert after many reconciles still restores what was there before Plumbline.
//!
//! The operator applies each [`Change`] with the matching Kubernetes or hypervisor call; it does
//! not need to interpret anything else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use plumbline_crds::{ActionKind, Layer, Priority, TargetKind};

/// A plan for one intent at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The workload the intent targets.
    pub workload: WorkloadRef,
    /// The intent's tier.
    pub priority: Priority,
    /// Whether the intent applies now, why, and when that changes.
    pub activity: Activity,
    /// What Plumbline holds while the intent is active, in order: Kubernetes layer first
    /// (PriorityClass before the workload that uses it), then the hypervisor layer. After applying
    /// them the operator stores exactly these in `status.plan`: it is the record of what to revert.
    pub actions: Vec<Action>,
    /// Changes that undo earlier ones, applied before `actions`: everything when the window is
    /// closed, or what the spec no longer asks for (hypervisor first, then Kubernetes). They are
    /// transient: once applied they leave no record. Keep an applied action in `status.plan`
    /// until its revert has succeeded, so that a failed revert is retried.
    pub reverts: Vec<Action>,
    /// Decisions not to act, in plain words (e.g. "replicas already 5, above the floor of 3").
    pub notes: Vec<Note>,
}

impl Plan {
    /// The actions of one layer, in order.
    pub fn layer(&self, layer: Layer) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(move |a| a.layer() == layer)
    }

    /// True when nothing is held and nothing is undone.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.reverts.is_empty()
    }
}

/// Whether an intent applies now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub active: bool,
    /// A reason from `plumbline_crds::conditions::reason` (NoSchedule, WindowOpen, WindowClosed).
    pub reason: &'static str,
    /// Plain words, e.g. "inside Mon-Fri 08:00-20:00 Europe/Berlin".
    pub message: String,
    /// When `active` next flips; `None` without a schedule (or if it never flips).
    pub next_transition: Option<DateTime<Utc>>,
}

/// Something Plumbline decided not to do, for `explain` and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub layer: Layer,
    pub text: String,
}

/// One change on one target, with the reason for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub change: Change,
    /// Why, in plain words (shown by `explain`, stored in status, used in Events).
    pub reason: String,
}

impl Action {
    pub fn layer(&self) -> Layer {
        self.change.layer()
    }

    pub fn kind(&self) -> ActionKind {
        self.change.kind()
    }

    /// The action that undoes this one: same target, desired and previous swapped.
    /// `None` for changes that are never reverted (the shared per-tier PriorityClass).
    pub fn reverted(&self, reason: impl Into<String>) -> Option<Action> {
        self.change.reverted().map(|change| Action {
            change,
            reason: reason.into(),
        })
    }
}

/// Desired and previous value of one setting. `None` means absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueChange<T> {
    pub desired: Option<T>,
    pub previous: Option<T>,
}

impl<T> ValueChange<T> {
    pub fn new(desired: Option<T>, previous: Option<T>) -> Self {
        Self { desired, previous }
    }

    /// The setting that undoes this one.
    pub fn swapped(self) -> Self {
        Self {
            desired: self.previous,
            previous: self.desired,
        }
    }
}

/// A change on one layer. Targets are named explicitly so that the operator can apply a change
/// without knowing the intent it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Kubernetes: ensure the tier's PriorityClass exists (cluster-scoped, shared by every intent
    /// of the tier, labelled managed-by plumbline). Never reverted: other intents may use it, and
    /// an unused PriorityClass changes nothing.
    PriorityClass {
        name: String,
        class: PriorityClassSpec,
    },
    /// Kubernetes: the workload's `spec.template.spec.priorityClassName`.
    PriorityClassName {
        workload: WorkloadRef,
        value: ValueChange<String>,
    },
    /// Kubernetes: the workload's `spec.replicas`, raised to the intent's replica floor.
    Replicas {
        workload: WorkloadRef,
        value: ValueChange<i32>,
    },
    /// Kubernetes: a PodDisruptionBudget Plumbline owns, selecting the workload's pods.
    /// `value` is its `minAvailable`; `desired: None` deletes it.
    PodDisruptionBudget {
        namespace: String,
        name: String,
        selector: BTreeMap<String, String>,
        value: ValueChange<CountOrPercent>,
    },
    /// Kubernetes: a readiness gate in the workload's pod template; `value` is the gate's condition
    /// type when present (`plumbline.dev/storage-healthy`), `None` when absent.
    ReadinessGate {
        workload: WorkloadRef,
        value: ValueChange<String>,
    },
    /// Kubernetes: a topology spread constraint across hypervisor hosts in the workload's pod
    /// template; `value` is its `whenUnsatisfiable` when present, `None` when absent.
    HostSpread {
        workload: WorkloadRef,
        value: ValueChange<String>,
    },
    /// Hypervisor: a VM's CPU shares (protecting the VMs that back the workload). `desired: None`
    /// (a revert of shares that could not be read before) means: restore the original the
    /// adapter recorded on the VM.
    CpuShares { vm: VmRef, value: ValueChange<u64> },
    /// Hypervisor: a VM disk's total IOPS limit (noisy-neighbour throttle); `None` is unlimited.
    DiskIopsLimit {
        vm: VmRef,
        disk: String,
        value: ValueChange<u64>,
    },
}

impl Change {
    pub fn layer(&self) -> Layer {
        match self {
            Change::PriorityClass { .. }
            | Change::PriorityClassName { .. }
            | Change::Replicas { .. }
            | Change::PodDisruptionBudget { .. }
            | Change::ReadinessGate { .. }
            | Change::HostSpread { .. } => Layer::Kubernetes,
            Change::CpuShares { .. } | Change::DiskIopsLimit { .. } => Layer::Hypervisor,
        }
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Change::PriorityClass { .. } => ActionKind::PriorityClass,
            Change::PriorityClassName { .. } => ActionKind::PriorityClassName,
            Change::Replicas { .. } => ActionKind::ReplicaFloor,
            Change::PodDisruptionBudget { .. } => ActionKind::PodDisruptionBudget,
            Change::ReadinessGate { .. } => ActionKind::ReadinessGate,
            Change::HostSpread { .. } => ActionKind::HostSpread,
            Change::CpuShares { .. } => ActionKind::CpuShares,
            Change::DiskIopsLimit { .. } => ActionKind::DiskIopsLimit,
        }
    }

    /// The change that undoes this one, if it is ever undone.
    pub fn reverted(&self) -> Option<Change> {
        Some(match self.clone() {
            Change::PriorityClass { .. } => return None,
            Change::PriorityClassName { workload, value } => Change::PriorityClassName {
                workload,
                value: value.swapped(),
            },
            Change::Replicas { workload, value } => Change::Replicas {
                workload,
                value: value.swapped(),
            },
            Change::PodDisruptionBudget {
                namespace,
                name,
                selector,
                value,
            } => Change::PodDisruptionBudget {
                namespace,
                name,
                selector,
                value: value.swapped(),
            },
            Change::ReadinessGate { workload, value } => Change::ReadinessGate {
                workload,
                value: value.swapped(),
            },
            Change::HostSpread { workload, value } => Change::HostSpread {
                workload,
                value: value.swapped(),
            },
            Change::CpuShares { vm, value } => Change::CpuShares {
                vm,
                value: value.swapped(),
            },
            Change::DiskIopsLimit { vm, disk, value } => Change::DiskIopsLimit {
                vm,
                disk,
                value: value.swapped(),
            },
        })
    }

    /// Two changes with the same target touch the same field of the same object.
    pub fn same_target(&self, other: &Change) -> bool {
        self.target_key() == other.target_key()
    }

    /// Identity of the changed field, independent of values.
    pub(crate) fn target_key(&self) -> (ActionKind, String) {
        let key = match self {
            Change::PriorityClass { name, .. } => name.clone(),
            Change::PriorityClassName { workload, .. }
            | Change::Replicas { workload, .. }
            | Change::ReadinessGate { workload, .. }
            | Change::HostSpread { workload, .. } => workload.to_string(),
            Change::PodDisruptionBudget {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
            Change::CpuShares { vm, .. } => vm.to_string(),
            Change::DiskIopsLimit { vm, disk, .. } => format!("{vm}/{disk}"),
        };
        (self.kind(), key)
    }
}

/// A PriorityClass as Plumbline creates it for a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityClassSpec {
    pub value: i32,
    pub preemption: Preemption,
    pub description: String,
}

/// PriorityClass `preemptionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preemption {
    PreemptLowerPriority,
    Never,
}

impl Preemption {
    pub fn as_str(self) -> &'static str {
        match self {
            Preemption::PreemptLowerPriority => "PreemptLowerPriority",
            Preemption::Never => "Never",
        }
    }
}

/// A Deployment or StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: TargetKind,
    pub namespace: String,
    pub name: String,
}

impl WorkloadRef {
    /// The workload `wi` targets.
    pub fn of(wi: &plumbline_crds::WorkloadIntent) -> Self {
        Self {
            kind: wi.spec.target.kind,
            namespace: wi.metadata.namespace.clone().unwrap_or_default(),
            name: wi.spec.target.name.clone(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A VM by HypervisorProvider and hypervisor name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmRef {
    pub provider: String,
    pub name: String,
}

impl std::fmt::Display for VmRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.name)
    }
}

/// A count of pods or a percentage of them (`minAvailable`, `maxUnready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountOrPercent {
    Count(u32),
    Percent(u32),
}

impl std::fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountOrPercent::Count(n) => write!(f, "{n}"),
            CountOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}
