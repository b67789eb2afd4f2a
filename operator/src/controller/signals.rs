//! The signals step of a reconcile: each signal of `spec.activation` that is due is read from
//! Prometheus, and its memory stepped (`plumbline_policies::activation::step`). The memories
//! go back into the intent's `status.signals`, where the planner, the storage-health loop and
//! the next reconcile (of this replica or of a new leader) read them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use plumbline_crds::{
    conditions::{event, intent as condition, status as cond_status},
    SignalStatus, WorkloadIntent,
};
use plumbline_policies::{
    activation::{self, Decision, SignalMemory},
    validate_intent,
};

use crate::{context::Context, prometheus::Source};

/// The intent as the planner should see it (its `status.signals` stepped), what the decision
/// made of it, and when the next signal is due.
pub struct Evaluated {
    pub intent: WorkloadIntent,
    pub decision: Option<Decision>,
    pub next_due: Option<Duration>,
}

impl Evaluated {
    /// `status.signals` to write.
    pub fn statuses(&self) -> Vec<SignalStatus> {
        self.intent
            .status
            .as_ref()
            .map(|s| s.signals.clone())
            .unwrap_or_default()
    }
}

/// Reads the due signals of `wi` (all of them with `force`, as `explain` does) from `source`
/// and steps their memories. Intents without `spec.activation` (or with an invalid spec) come
/// back unchanged.
pub async fn evaluate(
    source: &Source,
    wi: &WorkloadIntent,
    now: DateTime<Utc>,
    force: bool,
) -> Evaluated {
    let Ok(valid) = validate_intent(&wi.spec) else {
        return unchanged(wi);
    };
    let Some(activation) = valid.activation.as_ref() else {
        return unchanged(wi);
    };
    let previous = activation::memories_from_status(
        wi.status
            .as_ref()
            .map(|s| s.signals.as_slice())
            .unwrap_or_default(),
    );
    let mut memories: Vec<SignalMemory> = Vec::new();
    let mut next_due: Option<Duration> = None;
    for rule in &activation.signals {
        let memory = previous.iter().find(|m| m.name == rule.name);
        let memory = match memory {
            Some(m) if !force && !activation::due_in(rule, Some(m), now).is_zero() => m.clone(),
            _ => {
                let reading = source.read(&rule.query).await;
                activation::step(rule, activation.on_empty, memory, reading, now)
            }
        };
        let due = activation::due_in(rule, Some(&memory), now).max(Duration::from_millis(200));
        next_due = Some(next_due.map_or(due, |d| d.min(due)));
        memories.push(memory);
    }
    let decision = activation::evaluate(valid.schedule.as_ref(), Some(activation), &memories, now);
    let mut intent = wi.clone();
    intent.status.get_or_insert_with(Default::default).signals =
        memories.iter().map(activation::memory_to_status).collect();
    Evaluated {
        intent,
        decision: Some(decision),
        next_due,
    }
}

/// What `explain` says of each signal after a live reading, one line each.
pub fn outlook(evaluated: &Evaluated, now: DateTime<Utc>) -> Vec<String> {
    let Some(activation) = validate_intent(&evaluated.intent.spec)
        .ok()
        .and_then(|v| v.activation)
    else {
        return Vec::new();
    };
    let memories = activation::memories_from_status(&evaluated.statuses());
    activation
        .signals
        .iter()
        .filter_map(|rule| {
            let m = memories.iter().find(|m| m.name == rule.name)?;
            Some(activation::outlook(rule, m, now))
        })
        .collect()
}

/// Drops the signal series of an intent being deleted.
pub fn forget(ctx: &Context, wi: &WorkloadIntent) {
    let names: Vec<String> = wi
        .status
        .as_ref()
        .map(|s| s.signals.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    ctx.metrics
        .signals
        .forget(&wi.namespace().unwrap_or_default(), &wi.name_any(), &names);
}

/// The Events of an intent with signals, each once: activation flips (reason: what activated
/// it, or why not), signal data going missing or a query rejected (Warning), data back, and the
/// release of disruptive hypervisor actions after `maxKeepLast` (Warning).
pub async fn announce(ctx: &Context, wi: &WorkloadIntent, evaluated: &Evaluated) {
    let Some(decision) = &evaluated.decision else {
        return;
    };
    let previous = wi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let find = |t: &str| previous.iter().find(|c| c.type_ == t);
    let active = &decision.activity;
    let was_active = find(condition::ACTIVE).map(|c| c.status == cond_status::TRUE);
    if was_active != Some(active.active) {
        ctx.publish(
            wi,
            crate::context::event(
                false,
                active.reason,
                &active.message,
                if active.active {
                    "Activate"
                } else {
                    "Deactivate"
                },
            ),
        )
        .await;
    }
    if let Some(health) = &decision.health {
        let was = find(condition::SIGNALS_HEALTHY);
        let was_healthy = was.is_none_or(|c| c.status == cond_status::TRUE);
        if !health.healthy && was.is_none_or(|c| c.reason != health.reason) {
            ctx.publish(
                wi,
                crate::context::event(true, health.reason, &health.message, "Evaluate"),
            )
            .await;
        } else if health.healthy && !was_healthy {
            ctx.publish(
                wi,
                crate::context::event(false, event::SIGNALS_RECOVERED, &health.message, "Evaluate"),
            )
            .await;
        }
    }
    let released = active.active && !decision.disruptive_allowed;
    let was_released = find(condition::ACTIVE)
        .is_some_and(|c| c.status == cond_status::TRUE && c.message.contains(activation::RELEASED));
    if released && !was_released {
        ctx.publish(
            wi,
            crate::context::event(
                true,
                event::HYPERVISOR_ACTIONS_RELEASED,
                &active.message,
                "Release",
            ),
        )
        .await;
    }
}

fn unchanged(wi: &WorkloadIntent) -> Evaluated {
    Evaluated {
        intent: wi.clone(),
        decision: None,
        next_due: None,
    }
}

/// Records the signals' gauges, and a transition when the `Active` condition flips.
pub fn record(ctx: &Context, wi: &WorkloadIntent, evaluated: &Evaluated) {
    let Some(decision) = &evaluated.decision else {
        return;
    };
    let namespace = wi.namespace().unwrap_or_default();
    let name = wi.name_any();
    let memories = activation::memories_from_status(&evaluated.statuses());
    let rules = validate_intent(&wi.spec)
        .ok()
        .and_then(|v| v.activation)
        .map(|a| a.signals)
        .unwrap_or_default();
    let active = decision.activity.active;
    ctx.metrics
        .signals
        .observe(&namespace, &name, &rules, &memories, active);
    let was_active = wi.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == plumbline_crds::conditions::intent::ACTIVE)
            .map(|c| c.status == cond_status::TRUE)
    });
    if was_active != Some(active) {
        let cause = if active {
            decision.cause.as_str()
        } else {
            decision.activity.reason
        };
        ctx.metrics
            .signals
            .transition(&namespace, &name, active, cause);
    }
}
