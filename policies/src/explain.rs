//! A plan as text, for `plumbline explain` and for humans reading Events: per layer, what changes
//! from what to what, and why.

use std::fmt::Write;

use plumbline_crds::Layer;

use crate::{
    invalid::Invalid,
    plan::{Action, Change, Plan, ValueChange},
    revert::describe_target,
};

/// Renders a plan. Within each layer, reverts come first, as they are applied first.
pub fn explain(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan for {} (tier {})", plan.workload, plan.priority);
    let a = &plan.activity;
    let _ = write!(
        out,
        "Active: {} ({}): {}",
        if a.active { "yes" } else { "no" },
        a.reason,
        a.message
    );
    match a.next_transition {
        Some(t) => {
            let _ = writeln!(
                out,
                "; {} at {}",
                if a.active { "closes" } else { "opens" },
                t.format("%Y-%m-%d %H:%M UTC")
            );
        }
        None => out.push('\n'),
    }
    for layer in [Layer::Kubernetes, Layer::Hypervisor] {
        let _ = writeln!(out, "\n{layer:?} layer:");
        let steps: Vec<&Action> = plan
            .reverts
            .iter()
            .filter(|x| x.layer() == layer)
            .chain(plan.actions.iter().filter(|x| x.layer() == layer))
            .collect();
        if steps.is_empty() {
            let _ = writeln!(out, "  no changes");
        }
        for (i, step) in steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}", i + 1, describe(&step.change));
            let _ = writeln!(out, "     why: {}", step.reason);
        }
        for note in plan.notes.iter().filter(|n| n.layer == layer) {
            let _ = writeln!(out, "  - {}", note.text);
        }
    }
    out
}

/// Renders why an intent cannot be planned, one field per line.
pub fn explain_invalid(invalid: &Invalid) -> String {
    let mut out = format!("Nothing would be applied ({}):\n", invalid.reason());
    for e in invalid.field_errors() {
        let _ = writeln!(out, "  {e}");
    }
    out
}

/// One line per change, e.g. "Deployment shop/payments replicas: 2 -> 3".
pub fn describe(change: &Change) -> String {
    let target = describe_target(change);
    match change {
        Change::PriorityClass { name, class } => format!(
            "ensure PriorityClass {name}: value {}, preemptionPolicy {}",
            class.value,
            class.preemption.as_str()
        ),
        Change::PriorityClassName { value, .. } => {
            format!("{target} priorityClassName: {}", arrow(value, "unset"))
        }
        Change::Replicas { value, .. } => {
            format!("{target} replicas: {}", arrow(value, "unset (1)"))
        }
        Change::PodDisruptionBudget {
            selector, value, ..
        } => match (&value.previous, &value.desired) {
            (None, Some(m)) => format!(
                "create {target} minAvailable {m}, selecting {}",
                selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            (Some(m), None) => format!("delete {target} (minAvailable {m})"),
            _ => format!("{target} minAvailable: {}", arrow(value, "none")),
        },
        Change::ReadinessGate { value, .. } => match (&value.previous, &value.desired) {
            (_, Some(g)) => format!("add readiness gate {g} to the pod template of {target}"),
            (Some(g), None) => {
                format!("remove readiness gate {g} from the pod template of {target}")
            }
            (None, None) => format!("leave the readiness gates of {target}"),
        },
        Change::HostSpread { value, .. } => match (&value.previous, &value.desired) {
            (_, Some(w)) => format!(
                "spread the pods of {target} across hypervisor hosts (topology spread constraint on {}, maxSkew 1, {w})",
                plumbline_crds::names::TOPOLOGY_HOST_LABEL
            ),
            (Some(_), None) => {
                format!("remove the spread across hypervisor hosts from the pod template of {target}")
            }
            (None, None) => format!("leave the topology spread constraints of {target}"),
        },
        Change::CpuShares { value, .. } => {
            format!("{target} CPU shares: {}", arrow(value, "original"))
        }
        Change::DiskIopsLimit { value, .. } => {
            format!("{target} IOPS limit: {}", arrow(value, "unlimited"))
        }
    }
}

fn arrow<T: ToString>(s: &ValueChange<T>, absent: &str) -> String {
    let show = |v: &Option<T>| {
        v.as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| absent.to_string())
    };
    format!("{} -> {}", show(&s.previous), show(&s.desired))
}
