//! One reconcile of a WorkloadIntent, as a pipeline with one file per step:
//! observe (`observe.rs`) → plan (`plan.rs`, pure, deciding in `plumbline-policies`) →
//! execute (`execute.rs`) → status (`conditions.rs` chooses the conditions, `status.rs` writes
//! them) → announce (`announce.rs`, the Events). The finalizer's revert is `revert.rs`.

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
use plumbline_crds::{conditions::reason, names::INTENT_FINALIZER, PlannedAction, WorkloadIntent};
use plumbline_policies::Invalid;
use std::{sync::Arc, time::Duration};
use tracing::{info, instrument};

use super::{
    announce::{announce, announce_degraded},
    conditions::{self, merge},
    execute::execute,
    observe::{cached_intents, observe},
    plan::{plan_for, status_plan, undo_plan},
    revert, signals,
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

fn requeue_until(
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    signal_due: Option<Duration>,
) -> Action {
    let wait = next
        .and_then(|t| (t - now).to_std().ok())
        .map(|d| d + Duration::from_secs(1))
        .unwrap_or(RESYNC)
        .min(RESYNC)
        .min(signal_due.unwrap_or(RESYNC));
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

    // The signals first: the plan decides on their stepped memories.
    let evaluated = signals::evaluate(&ctx.prometheus, wi, now, false).await;
    let tenants = crate::tenancy::cached_policies(&ctx.tenants).await?;
    let plan = match plan_for(&evaluated.intent, &observed, &tenants, now) {
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

    revert::release_former_targets(ctx, wi).await?;
    let execution = execute(ctx, wi, &plan, &observed).await;
    if execution.error.as_ref().is_some_and(Error::is_conflict) {
        // Someone changed the workload while we decided; decide again on what they wrote.
        info!("the workload changed while reconciling; looking again");
        return Ok(Action::requeue(CONFLICT_REOBSERVE));
    }
    let plan_status = status_plan(wi, &plan, &execution);
    let verdicts = conditions::with_signals(
        conditions::applied(&plan, &execution),
        evaluated.decision.as_ref(),
    );
    let degraded = verdicts[2].clone();
    let previous = wi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = ControllerStatus {
        conditions: merge(previous, &verdicts, generation, Timestamp::now()),
        observed_generation: generation,
        plan: plan_status,
        next_transition: plan.activity.next_transition.and_then(to_time),
        signals: evaluated.statuses(),
    };
    status::write(ctx, wi, &status).await?;
    signals::record(ctx, wi, &evaluated);
    signals::announce(ctx, wi, &evaluated).await;
    announce(ctx, wi, &plan, &execution, previous, &degraded).await;
    if let Some(e) = execution.error {
        return Err(e);
    }
    Ok(requeue_until(
        plan.activity.next_transition,
        now,
        evaluated.next_due,
    ))
}

/// Reports the intent `Degraded` for `why` (nothing applied, or reverting failed), keeping what
/// is known of its window, and tells it once.
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
    let verdicts = conditions::degraded(previous, why, message, error.map(ToString::to_string));
    let status = ControllerStatus {
        conditions: merge(
            previous,
            &verdicts,
            wi.metadata.generation,
            Timestamp::now(),
        ),
        observed_generation: wi.metadata.generation,
        plan,
        next_transition: None,
        // Kept as they are: nothing was evaluated.
        signals: wi
            .status
            .as_ref()
            .map(|s| s.signals.clone())
            .unwrap_or_default(),
    };
    status::write(ctx, wi, &status).await?;
    announce_degraded(ctx, wi, previous, why, message).await;
    Ok(())
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
    signals::forget(ctx, wi);
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
