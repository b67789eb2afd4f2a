//! One reconcile of a WorkloadIntent: observe → plan (pure, in `plumbline-policies`) →
//! execute the Kubernetes actions → write status and Events.

use chrono::{DateTime, Utc};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{finalizer, Event as Finalizer},
        reflector::ObjectRef,
    },
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::{event, intent as condition, reason, status as cond_status},
    names::{FIELD_MANAGER, INTENT_FINALIZER, STORAGE_READINESS_GATE},
    ActionState, PlannedAction, WorkloadIntent,
};
use plumbline_policies::{self as policies, Change, CountOrPercent, Invalid, Plan, Setting};
use std::{sync::Arc, time::Duration};
use tracing::{info, instrument, warn};

use super::{
    apply::WorkloadRef,
    conditions::{merge, Verdict},
    execute::{execute, Execution},
    fields::{self, Baseline, WorkloadField},
    observe::{cached_intents, observe, Observed, ObservedWorkload},
    revert,
    status::{self, ControllerStatus},
};
use crate::{context::Context, Error, Result};

/// The controller's name in metrics.
pub const CONTROLLER: &str = "workloadintent";

/// Periodic re-check even when nothing changes, so drift made by others is noticed.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon an intent that conflicts with another looks again.
const CONFLICT_RETRY: Duration = Duration::from_secs(15);
/// How soon a reconcile that lost a race with another writer looks again.
const CONFLICT_REOBSERVE: Duration = Duration::from_millis(200);
/// How soon an intent whose target is missing looks again (creation also triggers a reconcile).
const MISSING_TARGET_RETRY: Duration = Duration::from_secs(60);

#[instrument(skip(wi, ctx), fields(intent = %format!("{}/{}", wi.namespace().unwrap_or_default(), wi.name_any())))]
pub async fn reconcile(wi: Arc<WorkloadIntent>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let namespace = wi.namespace().unwrap_or_default();
    let api: Api<WorkloadIntent> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = ObjectRef::from_obj(wi.as_ref());
    let unreadable = plumbline_crds::lenient::decode_errors(&wi.metadata);
    if !unreadable.is_empty()
        && wi.metadata.deletion_timestamp.is_none()
        && !wi.finalizers().iter().any(|f| f == INTENT_FINALIZER)
    {
        // Never planned (no finalizer yet), so nothing to undo: report the unreadable fields
        // and wait for an edit. Adding the finalizer would need the object decoded as written.
        let message = unreadable
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        finish_degraded(&ctx, &wi, reason::INVALID_SPEC, &message, None, Vec::new()).await?;
        ctx.retries.succeeded(&key);
        return Ok(Action::await_change());
    }
    // The finalizer is added untyped: kube's helper decodes the patched object, which fails
    // for an intent whose stored status the types cannot read (dropped by lenient decoding).
    let wi = super::lenient::ensure_finalizer(&ctx.client, wi, INTENT_FINALIZER)
        .await
        .map_err(|source| {
            Error::kube(
                format!(
                    "adding the finalizer to WorkloadIntent {namespace}/{}",
                    key.name
                ),
                source,
            )
        })?;
    let action = finalizer(&api, INTENT_FINALIZER, wi.clone(), |event| async {
        match event {
            Finalizer::Apply(wi) => apply(&wi, &ctx).await,
            Finalizer::Cleanup(wi) => cleanup(&wi, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer {
        name: format!("{namespace}/{}", wi.name_any()),
        source: Box::new(e),
    })?;
    ctx.retries.succeeded(&key);
    Ok(action)
}

/// The plan for `wi` against what was observed, as the controller and `explain` compute it:
/// nothing when the tenant policies do not allow the intent.
pub fn plan_for(
    wi: &WorkloadIntent,
    observed: &Observed,
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
fn applied(wi: &WorkloadIntent, observed: &Observed) -> Vec<policies::Action> {
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
                    value: Setting::new(
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
                    value: Setting::new(
                        live.and_then(|v| v.as_str()).map(str::to_string),
                        previous
                            .value
                            .as_ref()
                            .and_then(|v| v.as_str())
                            .map(str::to_string),
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
                        value: Setting::new(has_gate(live), has_gate(previous.value.as_ref())),
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
                value: Setting::new(budget.min_available, None::<CountOrPercent>),
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
fn to_policy(wi: &WorkloadIntent, observed: &Observed) -> policies::Observed {
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

fn to_policy_workload(w: &ObservedWorkload) -> policies::ObservedWorkload {
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
        replicas: WorkloadField::Replicas
            .get(live)
            .and_then(|v| v.as_i64())
            .and_then(|v| i32::try_from(v).ok()),
        priority_class_name: WorkloadField::PriorityClassName
            .get(live)
            .and_then(|v| v.as_str())
            .map(str::to_string),
        readiness_gates: gates,
        selector: w
            .selector
            .as_ref()
            .and_then(|s| s.get("matchLabels"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default(),
        disruption_budgets: w.disruption_budgets.clone(),
    }
}

fn requeue_until(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    let wait = next
        .and_then(|t| (t - now).to_std().ok())
        .map(|d| d + Duration::from_secs(1))
        .unwrap_or(RESYNC)
        .min(RESYNC);
    Action::requeue(wait)
}

fn to_time(t: DateTime<Utc>) -> Option<Time> {
    Timestamp::from_second(t.timestamp())
        .ok()
        .and_then(|s| {
            s.checked_add(k8s_openapi::jiff::SignedDuration::from_nanos(i64::from(
                t.timestamp_subsec_nanos(),
            )))
            .ok()
        })
        .map(Time)
}

/// The intent exists: plan and apply (or revert, outside its window).
async fn apply(wi: &WorkloadIntent, ctx: &Context) -> Result<Action> {
    let now = ctx.clock.now();
    let intents = cached_intents(&ctx.intents);
    let observed = observe(&ctx.client, &ctx.apis, wi, &intents).await?;
    let generation = wi.metadata.generation;

    if let Some(other) = &observed.conflicting {
        // Nothing of this intent is applied; the workload belongs to the other one.
        let message = format!(
            "{:?} {} is already governed by WorkloadIntent {other}; this intent is not applied until that one is deleted or retargeted",
            wi.spec.target.kind,
            wi.spec.target.name
        );
        finish_degraded(
            ctx,
            wi,
            reason::CONFLICTING_INTENT,
            &message,
            None,
            Vec::new(),
        )
        .await?;
        return Ok(Action::requeue(CONFLICT_RETRY));
    }

    let tenants = crate::tenancy::cached_policies(&ctx.tenants).await?;
    let plan = match plan_for(wi, &observed, &tenants, now) {
        Ok(plan) => plan,
        Err(invalid) => {
            // Whatever an earlier, valid version of the intent applied is undone: an intent
            // that cannot be planned holds nothing.
            let plan = undo_plan(wi, &observed, "the intent is invalid", now);
            let execution = execute(ctx, wi, &plan, &observed).await;
            let leftover = status_plan(wi, &plan, &execution);
            let message = invalid.to_string();
            finish_degraded(
                ctx,
                wi,
                invalid.reason(),
                &message,
                execution.error.as_ref(),
                leftover,
            )
            .await?;
            if let Some(e) = execution.error {
                return Err(e);
            }
            return Ok(match invalid {
                // A policy change triggers a reconcile (controller/mod.rs).
                Invalid::Spec(_) | Invalid::NotAllowed(_) => Action::await_change(),
                Invalid::TargetNotFound(_) => Action::requeue(MISSING_TARGET_RETRY),
            });
        }
    };

    release_former_targets(ctx, wi).await?;
    let execution = execute(ctx, wi, &plan, &observed).await;
    if execution.error.as_ref().is_some_and(Error::is_conflict) {
        // Someone changed the workload while we decided; decide again on what they wrote.
        info!("the workload changed while reconciling; looking again");
        return Ok(Action::requeue(CONFLICT_REOBSERVE));
    }
    let plan_status = status_plan(wi, &plan, &execution);
    let hypervisor_pending = execution.actions.iter().zip(&plan.actions).any(|(o, a)| {
        o.state == ActionState::Pending && a.layer() == plumbline_crds::Layer::Hypervisor
    });
    let ready = match (&execution.error, plan.activity.active) {
        (Some(e), _) => Verdict::new(condition::READY, false, reason::APPLY_FAILED, e.to_string()),
        (None, _) if hypervisor_pending => Verdict::new(
            condition::READY,
            false,
            reason::APPLYING,
            "Kubernetes actions applied; hypervisor actions pending",
        ),
        (None, true) => Verdict::new(
            condition::READY,
            true,
            reason::APPLIED,
            format!("{} action(s) applied", plan.actions.len()),
        ),
        (None, false) => Verdict::new(
            condition::READY,
            true,
            reason::REVERTED,
            "outside the schedule: every change is reverted",
        ),
    };
    let degraded = match &execution.error {
        Some(e) => Verdict::new(
            condition::DEGRADED,
            true,
            reason::APPLY_FAILED,
            e.to_string(),
        ),
        None => Verdict::new(
            condition::DEGRADED,
            false,
            reason::AS_EXPECTED,
            "no problems",
        ),
    };
    let active = Verdict::new(
        condition::ACTIVE,
        plan.activity.active,
        plan.activity.reason,
        plan.activity.message.clone(),
    );
    let previous = wi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = ControllerStatus {
        conditions: merge(
            previous,
            &[ready, active, degraded.clone()],
            generation,
            Timestamp::now(),
        ),
        observed_generation: generation,
        plan: plan_status,
        next_transition: plan.activity.next_transition.and_then(to_time),
    };
    status::write(ctx, wi, &status).await?;
    announce(ctx, wi, &plan, &execution, previous, &degraded).await;
    if let Some(e) = execution.error {
        return Err(e);
    }
    Ok(requeue_until(plan.activity.next_transition, now))
}

/// After a retarget, `status.plan` still names the workload the intent governed before; the
/// planner only sees the current target, so the old one is released here.
async fn release_former_targets(ctx: &Context, wi: &WorkloadIntent) -> Result<()> {
    let current = WorkloadRef::of(wi);
    let mut former: Vec<WorkloadRef> = Vec::new();
    for entry in wi
        .status
        .as_ref()
        .map(|s| s.plan.as_slice())
        .unwrap_or_default()
    {
        let kind = match entry.target.kind.as_str() {
            "Deployment" => plumbline_crds::TargetKind::Deployment,
            "StatefulSet" => plumbline_crds::TargetKind::StatefulSet,
            _ => continue,
        };
        let target = WorkloadRef {
            kind,
            namespace: entry
                .target
                .namespace
                .clone()
                .unwrap_or_else(|| current.namespace.clone()),
            name: entry.target.name.clone(),
        };
        if target != current && !former.contains(&target) {
            former.push(target);
        }
    }
    for target in former {
        let fields = revert::release_workload(ctx, wi, &target).await?;
        if !fields.is_empty() {
            info!(%target, ?fields, "released the intent's former target");
            ctx.publish(
                wi,
                Event {
                    type_: EventType::Normal,
                    reason: reason::REVERTED.to_string(),
                    note: Some(format!(
                        "no longer the target: released {} on {target}",
                        fields.join(", ")
                    )),
                    action: "Revert".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
    }
    Ok(())
}

/// What `status.plan` records after an execution: the held actions with how far each got, plus
/// applied actions whose revert has not succeeded yet (so it is retried).
fn status_plan(wi: &WorkloadIntent, plan: &Plan, execution: &Execution) -> Vec<PlannedAction> {
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

/// Writes a Degraded status. `plan` is what remains applied (normally nothing).
async fn finish_degraded(
    ctx: &Context,
    wi: &WorkloadIntent,
    why: &'static str,
    message: &str,
    error: Option<&Error>,
    plan: Vec<PlannedAction>,
) -> Result<()> {
    let previous = wi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let ready = match error {
        Some(e) => Verdict::new(
            condition::READY,
            false,
            reason::APPLY_FAILED,
            format!("reverting failed: {e}"),
        ),
        None => Verdict::new(condition::READY, false, why, "nothing is applied"),
    };
    let degraded = Verdict::new(condition::DEGRADED, true, why, message);
    let active = match previous.iter().find(|c| c.type_ == condition::ACTIVE) {
        // Keep what is known; a conflicting or invalid intent's window does not matter yet.
        Some(c) => Verdict::new(
            condition::ACTIVE,
            c.status == cond_status::TRUE,
            reason_const(&c.reason),
            c.message.clone(),
        ),
        None => Verdict::new(
            condition::ACTIVE,
            false,
            why,
            "not evaluated: the intent is degraded",
        ),
    };
    let status = ControllerStatus {
        conditions: merge(
            previous,
            &[ready, active, degraded.clone()],
            wi.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: wi.metadata.generation,
        plan,
        next_transition: None,
    };
    status::write(ctx, wi, &status).await?;
    let was = previous.iter().find(|c| c.type_ == condition::DEGRADED);
    if was.is_none_or(|c| c.status != cond_status::TRUE || c.reason != why) {
        warn!(reason = why, %message, "intent degraded");
        ctx.publish(
            wi,
            Event {
                type_: EventType::Warning,
                reason: why.to_string(),
                note: Some(truncate(message)),
                action: "Plan".to_string(),
                secondary: None,
            },
        )
        .await;
    }
    Ok(())
}

/// Condition reasons are `&'static str` constants; map a stored one back to its constant.
fn reason_const(stored: &str) -> &'static str {
    [
        reason::ALWAYS_ACTIVE,
        reason::WINDOW_OPEN,
        reason::WINDOW_CLOSED,
        reason::INVALID_SPEC,
        reason::TARGET_NOT_FOUND,
        reason::CONFLICTING_INTENT,
        reason::NOT_ALLOWED,
    ]
    .into_iter()
    .find(|r| *r == stored)
    .unwrap_or(reason::AS_EXPECTED)
}

fn truncate(message: &str) -> String {
    // Event notes are limited to 1 kB.
    message.chars().take(1000).collect()
}

/// Events for what changed on the cluster, and for recovering from Degraded.
async fn announce(
    ctx: &Context,
    wi: &WorkloadIntent,
    plan: &Plan,
    execution: &Execution,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    degraded: &Verdict,
) {
    if execution.changed {
        let reverted: Vec<String> = plan
            .reverts
            .iter()
            .zip(&execution.reverts)
            .filter(|(_, o)| o.state == ActionState::Applied)
            .map(|(a, _)| policies::describe(&a.change))
            .collect();
        let applied: Vec<String> = plan
            .actions
            .iter()
            .zip(&execution.actions)
            .filter(|(a, o)| {
                o.state == ActionState::Applied && !matches!(a.change, Change::PriorityClass { .. })
            })
            .map(|(a, _)| policies::describe(&a.change))
            .collect();
        if !reverted.is_empty() {
            info!(changes = ?reverted, "reverted");
            ctx.publish(
                wi,
                Event {
                    type_: EventType::Normal,
                    reason: reason::REVERTED.to_string(),
                    note: Some(truncate(&format!(
                        "{}: {}",
                        plan.activity.message,
                        reverted.join("; ")
                    ))),
                    action: "Revert".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
        if !applied.is_empty() {
            info!(changes = ?applied, "applied");
            ctx.publish(
                wi,
                Event {
                    type_: EventType::Normal,
                    reason: reason::APPLIED.to_string(),
                    note: Some(truncate(&applied.join("; "))),
                    action: "Apply".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
    }
    if let Some(e) = &execution.error {
        ctx.publish(
            wi,
            Event {
                type_: EventType::Warning,
                reason: reason::APPLY_FAILED.to_string(),
                note: Some(truncate(&e.to_string())),
                action: "Apply".to_string(),
                secondary: None,
            },
        )
        .await;
    }
    let was_degraded = previous
        .iter()
        .any(|c| c.type_ == condition::DEGRADED && c.status == cond_status::TRUE);
    if was_degraded && !degraded.is_true {
        ctx.publish(
            wi,
            Event {
                type_: EventType::Normal,
                reason: event::RECOVERED.to_string(),
                note: Some("the intent is no longer degraded".to_string()),
                action: "Plan".to_string(),
                secondary: None,
            },
        )
        .await;
    }
}

/// A plan that holds nothing and undoes whatever the intent applied before, for `why`.
fn undo_plan(wi: &WorkloadIntent, observed: &Observed, why: &str, now: DateTime<Utc>) -> Plan {
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

/// The intent is being deleted: revert everything it holds, then let it go.
async fn cleanup(wi: &WorkloadIntent, ctx: &Context) -> Result<Action> {
    let intents = cached_intents(&ctx.intents);
    let observed = observe(&ctx.client, &ctx.apis, wi, &intents).await?;
    if observed.conflicting.is_none() {
        let plan = undo_plan(wi, &observed, "the intent was deleted", ctx.clock.now());
        let execution = execute(ctx, wi, &plan, &observed).await;
        if let Some(e) = execution.error {
            return Err(e);
        }
    }
    // Whatever is still recorded as ours (e.g. changed by hand since) is released too.
    let reverted = revert::revert(ctx, wi).await?;
    // An intent waiting for this workload (a conflict) may take over now.
    for rival in intents.iter().filter(|other| {
        other.namespace() == wi.namespace()
            && other.spec.target == wi.spec.target
            && other.name_any() != wi.name_any()
    }) {
        let _ = ctx.reconcile.send(ObjectRef::from_obj(rival));
    }
    info!(fields = ?reverted.fields, pdbs = ?reverted.pdbs, "intent deleted: changes reverted");
    ctx.publish(
        wi,
        Event {
            type_: EventType::Normal,
            reason: reason::REVERTED.to_string(),
            note: Some("the intent is being deleted: every change it made is reverted".to_string()),
            action: "Revert".to_string(),
            secondary: None,
        },
    )
    .await;
    Ok(Action::await_change())
}
