//! The plan step of a reconcile, without I/O: what the operator observed and recorded,
//! translated into `plumbline-policies`' terms, the plan (or the undo plan), and the plan as
//! `status.plan` shows it. `explain` calls [`plan_for`] too.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use plumbline_crds::{
    names::{FIELD_MANAGER, STORAGE_READINESS_GATE},
    ActionState, PlannedAction, WorkloadIntent,
};
use plumbline_policies::{self as policies, Change, CountOrPercent, Invalid, Plan, ValueChange};
use tracing::warn;

use super::{
    apply::WorkloadRef,
    execute::Execution,
    fields::{self, Baseline, WorkloadField},
    observe::{IntentObservation, LiveWorkload},
};

/// The plan for `wi` against what was observed, as the controller and `explain` compute it:
/// nothing when the tenant policies do not allow the intent.
pub fn plan_for(
    wi: &WorkloadIntent,
    observed: &IntentObservation,
    tenants: &[policies::NamedPolicy],
    now: DateTime<Utc>,
) -> Result<Plan, Invalid> {
    if let policies::TenantVerdict::NotAllowed(refusal) = crate::tenancy::verdict(wi, tenants) {
        return Err(Invalid::NotAllowed(refusal));
    }
    policies::plan(wi, &to_policy(wi, observed), now)
}

/// What Plumbline applied before: `status.plan`, completed from the workload itself (the
/// baseline annotation and the intent's own budgets) so that a lost status never leaks a change.
pub(super) fn applied(wi: &WorkloadIntent, observed: &IntentObservation) -> Vec<policies::Action> {
    let entries = wi
        .status
        .as_ref()
        .map(|s| s.plan.as_slice())
        .unwrap_or_default();
    let mut applied = match policies::actions_from_status(entries) {
        Ok(actions) => actions,
        Err(e) => {
            warn!(error = %e, "status.plan is unreadable; relying on what the workload records");
            Vec::new()
        }
    };
    let Some(w) = &observed.workload else {
        return applied;
    };
    let target = w.target.clone();
    let mut recorded = Vec::new();
    if w.holder.as_deref() == Some(wi.name_any().as_str()) {
        for (field, previous) in &Baseline::from_annotation(&w.object).0 {
            if !fields::owned_by(&w.object, *field, FIELD_MANAGER) {
                continue;
            }
            let live = field.get(&w.object);
            let change = match field {
                WorkloadField::Replicas => Change::Replicas {
                    workload: target.clone(),
                    value: ValueChange::new(
                        live.and_then(|v| v.as_i64())
                            .and_then(|v| i32::try_from(v).ok()),
                        previous
                            .value
                            .as_ref()
                            .and_then(|v| v.as_i64())
                            .and_then(|v| i32::try_from(v).ok()),
                    ),
                },
                WorkloadField::PriorityClassName => Change::PriorityClassName {
                    workload: target.clone(),
                    value: ValueChange::new(
                        live.and_then(|v| v.as_str()).map(str::to_string),
                        previous
                            .value
                            .as_ref()
                            .and_then(|v| v.as_str())
                            .map(str::to_string),
                    ),
                },
                WorkloadField::TopologySpreadConstraints => Change::HostSpread {
                    workload: target.clone(),
                    value: ValueChange::new(
                        host_spread(live),
                        host_spread(previous.value.as_ref()),
                    ),
                },
                WorkloadField::ReadinessGates => {
                    let has_gate = |v: Option<&serde_json::Value>| {
                        v.and_then(|v| v.as_array())
                            .is_some_and(|gates| {
                                gates.iter().any(|g| {
                                    g.get("conditionType").and_then(|c| c.as_str())
                                        == Some(STORAGE_READINESS_GATE)
                                })
                            })
                            .then(|| STORAGE_READINESS_GATE.to_string())
                    };
                    Change::ReadinessGate {
                        workload: target.clone(),
                        value: ValueChange::new(has_gate(live), has_gate(previous.value.as_ref())),
                    }
                }
            };
            recorded.push(change);
        }
    }
    for budget in w
        .disruption_budgets
        .iter()
        .filter(|b| b.managed_by_plumbline)
    {
        if budget.name == policies::disruption_budget_name(&target) {
            recorded.push(Change::PodDisruptionBudget {
                namespace: target.namespace.clone(),
                name: budget.name.clone(),
                selector: Default::default(),
                value: ValueChange::new(budget.min_available, None::<CountOrPercent>),
            });
        }
    }
    for change in recorded {
        if !applied.iter().any(|a| a.change.same_target(&change)) {
            applied.push(policies::Action {
                change,
                reason: "recorded on the workload by Plumbline".to_string(),
            });
        }
    }
    applied
}

/// The planner's view of what was observed.
pub(super) fn to_policy(wi: &WorkloadIntent, observed: &IntentObservation) -> policies::Observed {
    policies::Observed {
        workload: observed.workload.as_ref().map(to_policy_workload),
        infra: observed.infra.clone(),
        // Hypervisor changes are the ledger's: their originals live in their InfraChanges.
        applied: applied(wi, observed)
            .into_iter()
            .filter(|a| a.layer() == plumbline_crds::Layer::Kubernetes)
            .collect(),
    }
}

pub(super) fn to_policy_workload(w: &LiveWorkload) -> policies::ObservedWorkload {
    let live = &w.object;
    let gates = WorkloadField::ReadinessGates
        .get(live)
        .and_then(|v| v.as_array())
        .map(|gates| {
            gates
                .iter()
                .filter_map(|g| {
                    g.get("conditionType")
                        .and_then(|c| c.as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    policies::ObservedWorkload {
        workload: w.target.clone(),
        // During a maintenance surge the planner sees the workload's own replicas.
        replicas: match w.surge {
            Some(s) => Some(s.original),
            None => WorkloadField::Replicas
                .get(live)
                .and_then(|v| v.as_i64())
                .and_then(|v| i32::try_from(v).ok()),
        },
        priority_class_name: WorkloadField::PriorityClassName
            .get(live)
            .and_then(|v| v.as_str())
            .map(str::to_string),
        readiness_gates: gates,
        host_spread: host_spread(WorkloadField::TopologySpreadConstraints.get(live)),
        selector: w
            .selector
            .as_ref()
            .and_then(|s| s.get("matchLabels"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default(),
        disruption_budgets: w.disruption_budgets.clone(),
    }
}

/// A plan that holds nothing and undoes whatever the intent applied before, for `why`.
pub(super) fn undo_plan(
    wi: &WorkloadIntent,
    observed: &IntentObservation,
    why: &str,
    now: DateTime<Utc>,
) -> Plan {
    let undo = policies::revert(&applied(wi, observed), &to_policy(wi, observed), why);
    Plan {
        workload: WorkloadRef::of(wi),
        priority: wi.spec.priority,
        activity: policies::activity(None, now),
        actions: Vec::new(),
        reverts: undo.actions,
        notes: undo.notes,
    }
}

/// What `status.plan` records after an execution: the held actions with how far each got, plus
/// applied actions whose revert has not succeeded yet (so it is retried).
pub(super) fn status_plan(
    wi: &WorkloadIntent,
    plan: &Plan,
    execution: &Execution,
) -> Vec<PlannedAction> {
    let mut entries: Vec<PlannedAction> = plan
        .actions
        .iter()
        .zip(&execution.actions)
        .map(|(action, outcome)| {
            policies::action_to_status(action, outcome.state, outcome.message.clone())
        })
        .collect();
    let previous = wi
        .status
        .as_ref()
        .map(|s| s.plan.as_slice())
        .unwrap_or_default();
    for (revert, outcome) in plan.reverts.iter().zip(&execution.reverts) {
        if outcome.state == ActionState::Applied {
            continue;
        }
        let key = policies::action_to_status(revert, ActionState::Pending, None);
        if let Some(entry) = previous
            .iter()
            .find(|p| p.kind == key.kind && p.target == key.target)
        {
            let mut entry = entry.clone();
            entry.message = Some(format!(
                "revert pending: {}",
                outcome
                    .message
                    .clone()
                    .unwrap_or_else(|| "not attempted yet".to_string())
            ));
            entries.push(entry);
        }
    }
    entries
}

/// `whenUnsatisfiable` of the constraint on the hypervisor host label in a
/// `topologySpreadConstraints` list, if there is one.
pub(super) fn host_spread(constraints: Option<&serde_json::Value>) -> Option<String> {
    constraints?
        .as_array()?
        .iter()
        .find(|c| {
            c.get("topologyKey").and_then(|k| k.as_str())
                == Some(plumbline_crds::names::TOPOLOGY_HOST_LABEL)
        })?
        .get("whenUnsatisfiable")
        .and_then(|w| w.as_str())
        .map(str::to_string)
}
