//! Undoing what Plumbline applied: the window closed, the intent was deleted, or a target is no
//! longer part of the plan.

use plumbline_crds::{names::STORAGE_READINESS_GATE, Layer};

use crate::{
    observed::Observed,
    plan::{Action, Change, Note},
};

/// Reverts run hypervisor first, then Kubernetes (the reverse of holding).
pub(crate) fn sort_reverts(reverts: &mut [Action]) {
    reverts.sort_by_key(|a| std::cmp::Reverse(a.layer()));
}

/// The actions that restore previous values, and what was left alone and why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Undo {
    /// Hypervisor first, then Kubernetes.
    pub actions: Vec<Action>,
    pub notes: Vec<Note>,
}

/// Reverts `applied` (as stored in `status.plan`), restoring each previous value, except:
/// - the per-tier PriorityClass, shared by other intents (never reverted);
/// - a field that no longer shows what Plumbline set: someone else changed it since, and their
///   value stays;
/// - fields of a workload that is gone;
/// - hypervisor changes: their InfraChange in the change ledger restores the original through
///   its finalizer, whoever deletes it.
///
/// `why` starts each reason, e.g. "the intent was deleted".
pub fn revert(applied: &[Action], observed: &Observed, why: &str) -> Undo {
    let mut undo = Undo::default();
    for action in applied.iter().rev() {
        let change = &action.change;
        if matches!(change, Change::PriorityClass { .. }) || change.layer() == Layer::Hypervisor {
            continue;
        }
        match still_ours(change, observed) {
            Ours::No(now) => undo.notes.push(Note {
                layer: change.layer(),
                text: format!(
                    "{} of {} is now {now}, not what Plumbline set: someone else changed it, leaving it",
                    describe_field(change),
                    describe_target(change)
                ),
            }),
            Ours::Gone => undo.notes.push(Note {
                layer: change.layer(),
                text: format!("{} is gone: nothing to revert", describe_target(change)),
            }),
            Ours::Yes | Ours::Unknown => {
                if let Some(reverted) = action.reverted(format!("{why}: restoring the value from before Plumbline")) {
                    undo.actions.push(reverted);
                }
            }
        }
    }
    sort_reverts(&mut undo.actions);
    undo
}

enum Ours {
    Yes,
    /// Shows something else now (rendered for the note).
    No(String),
    /// The object is gone.
    Gone,
    /// Not observed (hypervisor values the adapter restores from its own record).
    Unknown,
}

fn still_ours(change: &Change, observed: &Observed) -> Ours {
    let workload =
        |w: &crate::plan::WorkloadRef| observed.workload.as_ref().filter(|o| &o.workload == w);
    let compare = |now: Option<String>, ours: &Option<String>| {
        if &now == ours {
            Ours::Yes
        } else {
            Ours::No(now.unwrap_or_else(|| "unset".to_string()))
        }
    };
    match change {
        Change::PriorityClass { .. } => Ours::Unknown,
        Change::PriorityClassName { workload: w, value } => match workload(w) {
            None => Ours::Gone,
            Some(o) => compare(o.priority_class_name.clone(), &value.desired),
        },
        Change::Replicas { workload: w, value } => match workload(w) {
            None => Ours::Gone,
            Some(o) => compare(
                o.replicas.map(|r| r.to_string()),
                &value.desired.map(|r| r.to_string()),
            ),
        },
        Change::ReadinessGate { workload: w, value } => match workload(w) {
            None => Ours::Gone,
            Some(o) => {
                let present = o
                    .readiness_gates
                    .iter()
                    .any(|g| g == STORAGE_READINESS_GATE);
                match (present, value.desired.is_some()) {
                    (true, true) | (false, false) => Ours::Yes,
                    (false, true) => Ours::No("without the gate".to_string()),
                    (true, false) => Ours::No("with the gate".to_string()),
                }
            }
        },
        Change::HostSpread { workload: w, value } => match workload(w) {
            None => Ours::Gone,
            Some(o) => compare(o.host_spread.clone(), &value.desired),
        },
        Change::PodDisruptionBudget { name, value, .. } => {
            match observed.workload.as_ref().and_then(|o| {
                o.disruption_budgets
                    .iter()
                    .find(|b| b.managed_by_plumbline && &b.name == name)
            }) {
                // Our PDB outlives the workload; delete it whenever it is unobserved.
                None => Ours::Unknown,
                Some(b) => compare(
                    b.min_available.map(|m| m.to_string()),
                    &value.desired.map(|m| m.to_string()),
                ),
            }
        }
        // Never reverted here (see `revert`): the ledger owns them.
        Change::CpuShares { .. } | Change::DiskIopsLimit { .. } => Ours::Unknown,
    }
}

/// E.g. "replicas", "priorityClassName".
pub(crate) fn describe_field(change: &Change) -> &'static str {
    match change {
        Change::PriorityClass { .. } => "PriorityClass",
        Change::PriorityClassName { .. } => "priorityClassName",
        Change::Replicas { .. } => "replicas",
        Change::PodDisruptionBudget { .. } => "minAvailable",
        Change::ReadinessGate { .. } => "readiness gate",
        Change::HostSpread { .. } => "spread across hosts",
        Change::CpuShares { .. } => "CPU shares",
        Change::DiskIopsLimit { .. } => "IOPS limit",
    }
}

/// E.g. "Deployment shop/payments", "VM libvirt/vm2", "PodDisruptionBudget shop/payments-plumbline".
pub(crate) fn describe_target(change: &Change) -> String {
    match change {
        Change::PriorityClass { name, .. } => format!("PriorityClass {name}"),
        Change::PriorityClassName { workload, .. }
        | Change::Replicas { workload, .. }
        | Change::ReadinessGate { workload, .. }
        | Change::HostSpread { workload, .. } => workload.to_string(),
        Change::PodDisruptionBudget {
            namespace, name, ..
        } => format!("PodDisruptionBudget {namespace}/{name}"),
        Change::CpuShares { vm, .. } => format!("VM {vm}"),
        Change::DiskIopsLimit { vm, disk, .. } => format!("VM {vm} disk {disk}"),
    }
}
