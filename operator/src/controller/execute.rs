//! Carrying out the Kubernetes actions of a plan, in order, and recording how far each got.
//!
//! Actions on the workload's own fields are not applied one by one: together they form the
//! single apply configuration Plumbline holds on the workload (see `apply`). A change whose
//! desired value is what the field was before Plumbline is a revert: the field is handed back
//! to its previous owner and released. Fields Plumbline does not own are never touched, even
//! if a plan says to revert them (someone else changed them since, and their value stands).

use kube::ResourceExt;
use plumbline_crds::{
    names::{FIELD_MANAGER, TOPOLOGY_HOST_LABEL},
    ActionState, Layer, WorkloadIntent,
};
use plumbline_policies::{Change, CountOrPercent, Plan};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{
    apply::{self, WorkloadRef},
    fields::{self, Baseline, WorkloadField},
    observe::LiveWorkload,
    revert,
};
use crate::{
    context::Context,
    metrics::{ActionLayer as MetricLayer, ActionResult},
    Error, Result,
};

/// How far one action of the plan got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: ActionState,
    pub message: Option<String>,
}

impl Outcome {
    fn pending(message: impl Into<String>) -> Self {
        Self {
            state: ActionState::Pending,
            message: Some(message.into()),
        }
    }
    fn applied() -> Self {
        Self {
            state: ActionState::Applied,
            message: None,
        }
    }
    fn failed(error: &Error) -> Self {
        Self {
            state: ActionState::Failed,
            message: Some(error.to_string()),
        }
    }
}

/// The outcome of every revert and every action (same order as `plan.reverts` and
/// `plan.actions`) and the first error, if any.
#[derive(Debug)]
pub struct Execution {
    pub reverts: Vec<Outcome>,
    pub actions: Vec<Outcome>,
    pub error: Option<Error>,
    /// Whether anything on the cluster changed: something applied, handed back or deleted.
    pub changed: bool,
}

fn metric_action(change: &Change) -> &'static str {
    match change {
        Change::PriorityClass { .. } => "priority_class",
        Change::PriorityClassName { .. } => "priority_class_name",
        Change::Replicas { .. } => "replica_floor",
        Change::PodDisruptionBudget { .. } => "pod_disruption_budget",
        Change::ReadinessGate { .. } => "readiness_gate",
        Change::HostSpread { .. } => "host_spread",
        Change::CpuShares { .. } => "cpu_shares",
        Change::DiskIopsLimit { .. } => "disk_iops_limit",
    }
}

fn min_available_json(v: CountOrPercent) -> Value {
    match v {
        CountOrPercent::Count(n) => json!(n),
        CountOrPercent::Percent(p) => json!(format!("{p}%")),
    }
}

/// The workload field a change holds, with the value Plumbline applies for it.
fn held_field(change: &Change, workload: &LiveWorkload) -> Option<(WorkloadField, Value)> {
    match change {
        Change::Replicas { value, .. } => Some((WorkloadField::Replicas, json!(value.desired?))),
        Change::PriorityClassName { value, .. } => Some((
            WorkloadField::PriorityClassName,
            json!(value.desired.clone()?),
        )),
        Change::ReadinessGate { value, .. } => {
            let gate = value.desired.clone()?;
            // The list is atomic: keep the gates other owners set and add ours.
            let mut gates = workload.readiness_gates();
            if !gates.contains(&gate) {
                gates.push(gate);
            }
            Some((
                WorkloadField::ReadinessGates,
                Value::Array(
                    gates
                        .into_iter()
                        .map(|g| json!({"conditionType": g}))
                        .collect(),
                ),
            ))
        }
        Change::HostSpread { value, .. } => {
            let when = value.desired.clone()?;
            // Keep the other owners' constraints, except one on the same key.
            let mut constraints: Vec<Value> = workload
                .topology_spread_constraints()
                .into_iter()
                .filter(|c| {
                    c.get("topologyKey").and_then(Value::as_str) != Some(TOPOLOGY_HOST_LABEL)
                })
                .collect();
            constraints.push(json!({
                "maxSkew": 1,
                "topologyKey": TOPOLOGY_HOST_LABEL,
                "whenUnsatisfiable": when,
                "labelSelector": {"matchLabels": workload
                    .selector
                    .as_ref()
                    .and_then(|s| s.get("matchLabels"))
                    .cloned()
                    .unwrap_or_else(|| json!({}))},
            }));
            Some((
                WorkloadField::TopologySpreadConstraints,
                Value::Array(constraints),
            ))
        }
        _ => None,
    }
}

/// The workload a field change is about, in the operator's terms.
fn field_workload(change: &Change) -> Option<WorkloadRef> {
    match change {
        Change::Replicas { workload, .. }
        | Change::PriorityClassName { workload, .. }
        | Change::ReadinessGate { workload, .. }
        | Change::HostSpread { workload, .. } => Some(workload.clone()),
        _ => None,
    }
}

fn same_step(a: Step, b: Step) -> bool {
    matches!((a, b), (Step::Revert(x), Step::Revert(y)) | (Step::Action(x), Step::Action(y)) if x == y)
}

fn is_workload_field(change: &Change) -> bool {
    matches!(
        change,
        Change::Replicas { .. }
            | Change::PriorityClassName { .. }
            | Change::ReadinessGate { .. }
            | Change::HostSpread { .. }
    )
}

/// Where a step of the plan is: `plan.reverts[i]` or `plan.actions[i]`.
#[derive(Clone, Copy)]
enum Step {
    Revert(usize),
    Action(usize),
}

struct Book<'a> {
    ctx: &'a Context,
    plan: &'a Plan,
    reverts: Vec<Option<Outcome>>,
    actions: Vec<Option<Outcome>>,
    error: Option<Error>,
    changed: bool,
}

impl Book<'_> {
    fn change(&self, step: Step) -> &Change {
        match step {
            Step::Revert(i) => &self.plan.reverts[i].change,
            Step::Action(i) => &self.plan.actions[i].change,
        }
    }

    fn set(&mut self, step: Step, outcome: Outcome) {
        match step {
            Step::Revert(i) => self.reverts[i] = Some(outcome),
            Step::Action(i) => self.actions[i] = Some(outcome),
        }
    }

    /// Records the result of `steps` (one API call); false if it failed.
    fn record(&mut self, steps: &[Step], result: Result<bool>) -> bool {
        for &step in steps {
            let change = self.change(step).clone();
            let layer = match change.layer() {
                Layer::Kubernetes => MetricLayer::kubernetes,
                Layer::Hypervisor => MetricLayer::hypervisor,
            };
            let kind = match (&result, step) {
                (Err(_), _) => ActionResult::failed,
                (Ok(_), Step::Revert(_)) => ActionResult::reverted,
                (Ok(_), Step::Action(_)) => ActionResult::applied,
            };
            self.ctx.metrics.action(layer, metric_action(&change), kind);
        }
        match result {
            Ok(did) => {
                self.changed |= did;
                for &step in steps {
                    self.set(step, Outcome::applied());
                }
                true
            }
            Err(e) => {
                for &step in steps {
                    self.set(step, Outcome::failed(&e));
                }
                self.error = Some(e);
                false
            }
        }
    }
}

/// Executes the Kubernetes layer of `plan` for `wi`: budget deletions, the shared
/// PriorityClass, the workload's fields (reverts and holds in one apply), then the budget.
/// Stops at the first failure; later steps stay Pending, so nothing depends on a step that did
/// not happen. Hypervisor steps are the change ledger's: each takes the state of its InfraChange.
pub async fn execute(
    ctx: &Context,
    wi: &WorkloadIntent,
    plan: &Plan,
    observed: &super::IntentObservation,
) -> Execution {
    let workload = observed.workload.as_ref();
    let mut book = Book {
        ctx,
        plan,
        reverts: vec![None; plan.reverts.len()],
        actions: vec![None; plan.actions.len()],
        error: None,
        changed: false,
    };
    let me = wi.name_any();
    let steps: Vec<Step> = (0..plan.reverts.len())
        .map(Step::Revert)
        .chain((0..plan.actions.len()).map(Step::Action))
        .collect();

    'run: {
        // 1. Budgets to delete or restore.
        for &step in &steps {
            let Step::Revert(_) = step else { continue };
            if let Change::PodDisruptionBudget { name, value, .. } = book.change(step).clone() {
                let result = pdb(ctx, wi, &name, value.desired, workload).await;
                if !book.record(&[step], result) {
                    break 'run;
                }
            }
        }
        // 2. Shared PriorityClasses, before any workload refers to them.
        for &step in &steps {
            if let Change::PriorityClass { name, class } = book.change(step).clone() {
                let result = apply::apply_priority_class(
                    ctx,
                    &name,
                    class.value,
                    class.preemption.as_str(),
                    &class.description,
                )
                .await
                .map(|()| false);
                if !book.record(&[step], result) {
                    break 'run;
                }
            }
        }
        // 3. The workload's fields, as one apply configuration. Reverts on another workload
        // (the intent was retargeted) release that workload first.
        let current = workload
            .map(|w| w.target.clone())
            .unwrap_or_else(|| WorkloadRef::of(wi));
        let elsewhere: Vec<(Step, WorkloadRef)> = steps
            .iter()
            .filter(|s| matches!(s, Step::Revert(_)))
            .filter_map(|s| {
                field_workload(book.change(*s))
                    .filter(|w| *w != current)
                    .map(|w| (*s, w))
            })
            .collect();
        let mut released: Vec<WorkloadRef> = Vec::new();
        for (step, other) in &elsewhere {
            let result = if released.contains(other) {
                Ok(false)
            } else {
                released.push(other.clone());
                revert::release_workload(ctx, wi, other)
                    .await
                    .map(|fields| !fields.is_empty())
            };
            if !book.record(&[*step], result) {
                break 'run;
            }
        }
        let field_steps: Vec<Step> = steps
            .iter()
            .copied()
            .filter(|s| {
                is_workload_field(book.change(*s))
                    && !elsewhere.iter().any(|(e, _)| same_step(*e, *s))
            })
            .collect();
        if let Some(workload) = workload {
            let mut hold: BTreeMap<WorkloadField, Value> = steps
                .iter()
                .filter(|s| matches!(s, Step::Action(_)))
                .filter_map(|s| held_field(book.change(*s), workload))
                .collect();
            // A maintenance surge in force: the floor Plumbline holds is held at the surged
            // value, which the surge's actuator writes too.
            if let (Some(replicas), Some(held)) = (
                workload.surge.and_then(|s| s.replicas),
                hold.get_mut(&WorkloadField::Replicas),
            ) {
                *held = Value::from(replicas);
            }
            let live = &workload.object;
            let held_by_me =
                fields::holder(live) == Some(me.as_str()) && fields::has_plumbline_fields(live);
            let result = if !hold.is_empty() || held_by_me {
                sync_workload(ctx, workload, &hold, held_by_me, &me).await
            } else {
                Ok(false)
            };
            if !book.record(&field_steps, result) {
                break 'run;
            }
        } else {
            // The workload is gone, and its fields with it.
            book.record(&field_steps, Ok(false));
        }
        // 4. The budget to hold.
        for &step in &steps {
            let Step::Action(_) = step else { continue };
            if let Change::PodDisruptionBudget {
                name,
                value,
                selector,
                ..
            } = book.change(step).clone()
            {
                let result = match value.desired {
                    Some(min) => {
                        let unchanged = workload.is_some_and(|w| {
                            w.disruption_budgets.iter().any(|b| {
                                b.managed_by_plumbline
                                    && b.name == name
                                    && b.min_available == Some(min)
                            })
                        });
                        apply::apply_pdb(
                            ctx,
                            wi,
                            &name,
                            &json!({ "matchLabels": selector }),
                            &min_available_json(min),
                        )
                        .await
                        .map(|()| !unchanged)
                    }
                    None => pdb(ctx, wi, &name, None, workload).await,
                };
                if !book.record(&[step], result) {
                    break 'run;
                }
            }
        }
    }

    let finish = |outcomes: Vec<Option<Outcome>>,
                  actions: &[plumbline_policies::Action]|
     -> Vec<Outcome> {
        actions
            .iter()
            .zip(outcomes)
            .map(|(action, outcome)| {
                outcome.unwrap_or_else(|| match action.layer() {
                    Layer::Kubernetes => Outcome::pending("not applied: an earlier step failed"),
                    Layer::Hypervisor => ledger_outcome(&action.change, &observed.infra.changes),
                })
            })
            .collect()
    };
    Execution {
        reverts: finish(book.reverts, &plan.reverts),
        actions: finish(book.actions, &plan.actions),
        error: book.error,
        changed: book.changed,
    }
}

/// A hypervisor action's state is its InfraChange's.
fn ledger_outcome(change: &Change, changes: &[plumbline_crds::InfraChange]) -> Outcome {
    use plumbline_crds::conditions::infra_change as ic;
    let (vm, setting) = match change {
        Change::CpuShares { vm, .. } => (vm, "cpu_shares".to_string()),
        Change::DiskIopsLimit { vm, disk, .. } => (vm, format!("disk.{disk}.total_iops_sec")),
        _ => return Outcome::pending("not a hypervisor change"),
    };
    let Some(entry) = changes.iter().find(|c| {
        c.spec.setting == setting
            && c.spec.target.name == vm.name
            && c.spec.target.provider.as_deref() == Some(vm.provider.as_str())
    }) else {
        return Outcome::pending(
            "decided by the storage-health loop; not in the change ledger yet",
        );
    };
    let name = entry.metadata.name.clone().unwrap_or_default();
    let status = entry.status.clone().unwrap_or_default();
    let state = status.state.unwrap_or_else(|| ic::PENDING.to_string());
    let message = format!(
        "InfraChange {name}: {state}{}",
        status
            .last_error
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    Outcome {
        state: match state.as_str() {
            ic::APPLIED => ActionState::Applied,
            ic::FAILED => ActionState::Failed,
            ic::UNSUPPORTED => ActionState::Unsupported,
            _ => ActionState::Pending,
        },
        message: Some(message),
    }
}

/// Deletes the intent's budget (`desired: None`) or sets its minAvailable back.
async fn pdb(
    ctx: &Context,
    wi: &WorkloadIntent,
    name: &str,
    desired: Option<CountOrPercent>,
    workload: Option<&LiveWorkload>,
) -> Result<bool> {
    match (desired, workload.and_then(|w| w.selector.clone())) {
        (Some(min), Some(selector)) => {
            apply::apply_pdb(ctx, wi, name, &selector, &min_available_json(min))
                .await
                .map(|()| true)
        }
        _ => apply::delete_pdb(ctx, wi, name).await,
    }
}

/// Makes Plumbline hold exactly `hold` on the workload: fields it owns but should no longer
/// hold are handed back to their previous owners first, then one apply sets the rest (or,
/// with nothing to hold, releases everything). Returns whether anything changed hands.
async fn sync_workload(
    ctx: &Context,
    workload: &LiveWorkload,
    hold: &BTreeMap<WorkloadField, Value>,
    held_by_me: bool,
    me: &str,
) -> Result<bool> {
    let live = &workload.object;
    let mut changed = false;
    let mut rv = live.resource_version();
    if held_by_me {
        let recorded = Baseline::from_annotation(live);
        for (field, previous) in &recorded.0 {
            if hold.contains_key(field) || !fields::owned_by(live, *field, FIELD_MANAGER) {
                continue;
            }
            if let (Some(value), Some(manager)) = (&previous.value, &previous.manager) {
                rv = apply::hand_back(
                    ctx,
                    &workload.target,
                    *field,
                    value.clone(),
                    manager,
                    rv.as_deref(),
                )
                .await?;
            }
            changed = true;
        }
    }
    let baseline = Baseline(
        hold.keys()
            .map(|f| {
                (
                    *f,
                    workload
                        .without_plumbline
                        .get(f)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect(),
    );
    let already = hold
        .iter()
        .all(|(f, v)| f.get(live) == Some(v) && fields::owned_by(live, *f, FIELD_MANAGER));
    changed |= !already;
    let holder = (!hold.is_empty()).then_some(me);
    apply::apply_workload(
        ctx,
        &workload.target,
        hold,
        &baseline,
        holder,
        rv.as_deref(),
    )
    .await?;
    Ok(changed)
}
