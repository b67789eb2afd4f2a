//! Plans to and from `WorkloadIntent.status.plan`.
//!
//! The status keeps values as the strings people read (`3`, `50%`, `plumbline-critical`);
//! reading them back gives the same [`Action`]s, except for the PodDisruptionBudget selector,
//! which is not stored (it is the workload's selector, and a revert only deletes the budget).

use plumbline_crds::{ActionKind, ActionState, PlannedAction, PlannedTarget, TargetKind};

use crate::{
    plan::{Action, Change, CountOrPercent, Plan, ValueChange, VmRef, WorkloadRef},
    tiers::tier_of_priority_class,
};

/// `status.plan` could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading status.plan[{index}] ({kind:?} on {target}): {problem}")]
pub struct StatusError {
    pub index: usize,
    pub kind: ActionKind,
    pub target: String,
    pub problem: String,
}

/// The held actions of a plan as `status.plan`, all `Pending`; the operator updates `state`
/// (and `message`) as it applies them.
pub fn plan_to_status(plan: &Plan) -> Vec<PlannedAction> {
    plan.actions
        .iter()
        .map(|a| action_to_status(a, ActionState::Pending, None))
        .collect()
}

/// One action as a `status.plan` entry.
pub fn action_to_status(
    action: &Action,
    state: ActionState,
    message: Option<String>,
) -> PlannedAction {
    let (target, desired, previous) = match &action.change {
        Change::PriorityClass { name, class } => (
            PlannedTarget {
                kind: "PriorityClass".into(),
                namespace: None,
                name: name.clone(),
                provider: None,
                disk: None,
            },
            Some(format!(
                "value {} ({})",
                class.value,
                class.preemption.as_str()
            )),
            None,
        ),
        Change::PriorityClassName { workload, value } => (
            workload_target(workload),
            value.desired.clone(),
            value.previous.clone(),
        ),
        Change::Replicas { workload, value } => (
            workload_target(workload),
            text(&value.desired),
            text(&value.previous),
        ),
        Change::PodDisruptionBudget {
            namespace,
            name,
            value,
            ..
        } => (
            PlannedTarget {
                kind: "PodDisruptionBudget".into(),
                namespace: Some(namespace.clone()),
                name: name.clone(),
                provider: None,
                disk: None,
            },
            text(&value.desired),
            text(&value.previous),
        ),
        Change::ReadinessGate { workload, value } | Change::HostSpread { workload, value } => (
            workload_target(workload),
            value.desired.clone(),
            value.previous.clone(),
        ),
        Change::CpuShares { vm, value } => (
            vm_target(vm, None),
            text(&value.desired),
            text(&value.previous),
        ),
        Change::DiskIopsLimit { vm, disk, value } => (
            vm_target(vm, Some(disk)),
            text(&value.desired),
            text(&value.previous),
        ),
    };
    PlannedAction {
        layer: action.layer(),
        kind: action.kind(),
        target,
        desired,
        previous,
        reason: action.reason.clone(),
        state,
        message,
    }
}

/// `status.plan` back as actions, e.g. to pass as [`crate::Observed::applied`]. Entries that
/// never took effect (`Failed`, `Unsupported`) are still returned: their previous values are
/// still the originals.
pub fn actions_from_status(entries: &[PlannedAction]) -> Result<Vec<Action>, StatusError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| action_from_status(i, e))
        .collect()
}

fn action_from_status(index: usize, e: &PlannedAction) -> Result<Action, StatusError> {
    let fail = |problem: String| StatusError {
        index,
        kind: e.kind,
        target: format!("{} {}", e.target.kind, e.target.name),
        problem,
    };
    let workload = || -> Result<WorkloadRef, StatusError> {
        let kind = match e.target.kind.as_str() {
            "Deployment" => TargetKind::Deployment,
            "StatefulSet" => TargetKind::StatefulSet,
            other => {
                return Err(fail(format!(
                    "target kind {other:?} is not Deployment or StatefulSet"
                )))
            }
        };
        let namespace = e
            .target
            .namespace
            .clone()
            .ok_or_else(|| fail("target has no namespace".into()))?;
        Ok(WorkloadRef {
            kind,
            namespace,
            name: e.target.name.clone(),
        })
    };
    let vm = || -> Result<VmRef, StatusError> {
        let provider = e
            .target
            .provider
            .clone()
            .ok_or_else(|| fail("VM target has no provider".into()))?;
        Ok(VmRef {
            provider,
            name: e.target.name.clone(),
        })
    };
    let strings = || ValueChange::new(e.desired.clone(), e.previous.clone());
    let change = match e.kind {
        ActionKind::PriorityClass => {
            let tier = tier_of_priority_class(&e.target.name).ok_or_else(|| {
                fail(format!(
                    "{:?} is not a Plumbline tier PriorityClass",
                    e.target.name
                ))
            })?;
            Change::PriorityClass {
                name: e.target.name.clone(),
                class: tier.priority_class(),
            }
        }
        ActionKind::PriorityClassName => Change::PriorityClassName {
            workload: workload()?,
            value: strings(),
        },
        ActionKind::ReplicaFloor => Change::Replicas {
            workload: workload()?,
            value: parsed(e, |s| s.parse::<i32>().map_err(|e| e.to_string())).map_err(fail)?,
        },
        ActionKind::PodDisruptionBudget => Change::PodDisruptionBudget {
            namespace: e
                .target
                .namespace
                .clone()
                .ok_or_else(|| fail("target has no namespace".into()))?,
            name: e.target.name.clone(),
            selector: Default::default(),
            value: parsed(e, CountOrPercent::parse).map_err(fail)?,
        },
        ActionKind::ReadinessGate => Change::ReadinessGate {
            workload: workload()?,
            value: strings(),
        },
        ActionKind::HostSpread => Change::HostSpread {
            workload: workload()?,
            value: strings(),
        },
        ActionKind::CpuShares => Change::CpuShares {
            vm: vm()?,
            value: parsed(e, |s| s.parse::<u64>().map_err(|e| e.to_string())).map_err(fail)?,
        },
        ActionKind::DiskIopsLimit => Change::DiskIopsLimit {
            vm: vm()?,
            disk: e
                .target
                .disk
                .clone()
                .ok_or_else(|| fail("disk target has no disk".into()))?,
            value: parsed(e, |s| s.parse::<u64>().map_err(|e| e.to_string())).map_err(fail)?,
        },
    };
    if change.layer() != e.layer {
        return Err(fail(format!(
            "layer {:?} does not match kind {:?}",
            e.layer, e.kind
        )));
    }
    Ok(Action {
        change,
        reason: e.reason.clone(),
    })
}

fn parsed<T>(
    e: &PlannedAction,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<ValueChange<T>, String> {
    let one = |v: &Option<String>, which: &str| -> Result<Option<T>, String> {
        v.as_deref()
            .map(|s| parse(s).map_err(|p| format!("{which} {s:?}: {p}")))
            .transpose()
    };
    Ok(ValueChange::new(
        one(&e.desired, "desired")?,
        one(&e.previous, "previous")?,
    ))
}

fn text<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(ToString::to_string)
}

fn workload_target(w: &WorkloadRef) -> PlannedTarget {
    PlannedTarget {
        kind: format!("{:?}", w.kind),
        namespace: Some(w.namespace.clone()),
        name: w.name.clone(),
        provider: None,
        disk: None,
    }
}

fn vm_target(vm: &VmRef, disk: Option<&String>) -> PlannedTarget {
    PlannedTarget {
        kind: "VirtualMachine".into(),
        namespace: None,
        name: vm.name.clone(),
        provider: Some(vm.provider.clone()),
        disk: disk.cloned(),
    }
}
