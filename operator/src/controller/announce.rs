//! The announce step of a reconcile: the Events that tell what changed (applied, reverted,
//! failed, recovered), each once.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};
use plumbline_crds::{
    conditions::{event, intent as condition, reason, status as cond_status},
    ActionState, WorkloadIntent,
};
use plumbline_policies::{self as policies, Change, Plan};
use tracing::{info, warn};

use super::{conditions::ConditionVerdict, execute::Execution};
use crate::context::Context;

/// Events for what changed on the cluster, and for recovering from Degraded.
pub(super) async fn announce(
    ctx: &Context,
    wi: &WorkloadIntent,
    plan: &Plan,
    execution: &Execution,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    degraded: &ConditionVerdict,
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

fn truncate(message: &str) -> String {
    // Event notes are limited to 1 kB.
    message.chars().take(1000).collect()
}

/// A Warning Event when the intent turns degraded, or degraded for another reason; not again
/// while it stays so.
pub(super) async fn announce_degraded(
    ctx: &Context,
    wi: &WorkloadIntent,
    previous: &[Condition],
    why: &'static str,
    message: &str,
) {
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
}
