//! Building the intent's conditions, keeping `lastTransitionTime` when a status did not change.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use plumbline_crds::{
    conditions::{intent as condition, placement::SPREAD_ACROSS_HOSTS, reason, status},
    ActionState, Layer, WorkloadIntent,
};
use plumbline_policies::Plan;

use super::execute::Execution;

/// One condition as decided by a reconcile, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionVerdict {
    pub type_: &'static str,
    pub is_true: bool,
    pub reason: &'static str,
    pub message: String,
}

impl ConditionVerdict {
    pub fn new(
        type_: &'static str,
        is_true: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            is_true,
            reason,
            message: message.into(),
        }
    }
}

/// Ready, Active and Degraded after a plan was executed: Ready unless applying failed or
/// hypervisor actions are still pending, Degraded only when applying failed, Active as the
/// plan's window says.
pub fn applied(plan: &Plan, execution: &Execution) -> [ConditionVerdict; 3] {
    let hypervisor_pending = execution
        .actions
        .iter()
        .zip(&plan.actions)
        .any(|(o, a)| o.state == ActionState::Pending && a.layer() == Layer::Hypervisor);
    let ready = match (&execution.error, plan.activity.active) {
        (Some(e), _) => {
            ConditionVerdict::new(condition::READY, false, reason::APPLY_FAILED, e.to_string())
        }
        (None, _) if hypervisor_pending => ConditionVerdict::new(
            condition::READY,
            false,
            reason::APPLYING,
            "Kubernetes actions applied; hypervisor actions pending",
        ),
        (None, true) => ConditionVerdict::new(
            condition::READY,
            true,
            reason::APPLIED,
            format!("{} action(s) applied", plan.actions.len()),
        ),
        (None, false) => ConditionVerdict::new(
            condition::READY,
            true,
            reason::REVERTED,
            "not active: every change is reverted",
        ),
    };
    let active = ConditionVerdict::new(
        condition::ACTIVE,
        plan.activity.active,
        plan.activity.reason,
        plan.activity.message.clone(),
    );
    let degraded = match &execution.error {
        Some(e) => ConditionVerdict::new(
            condition::DEGRADED,
            true,
            reason::APPLY_FAILED,
            e.to_string(),
        ),
        None => ConditionVerdict::new(
            condition::DEGRADED,
            false,
            reason::AS_EXPECTED,
            "no problems",
        ),
    };
    [ready, active, degraded]
}

/// The verdicts with the signals' say: `SignalsHealthy` for an intent with signals, and
/// `Degraded` with `InvalidSignal` when Prometheus rejected a query while nothing else is wrong
/// (the rest of the intent is still applied).
pub fn with_signals(
    verdicts: [ConditionVerdict; 3],
    decision: Option<&plumbline_policies::activation::Decision>,
) -> Vec<ConditionVerdict> {
    let mut out = verdicts.to_vec();
    let Some(decision) = decision else {
        return out;
    };
    if let Some(h) = &decision.health {
        out.push(ConditionVerdict::new(
            condition::SIGNALS_HEALTHY,
            h.healthy,
            h.reason,
            h.message.clone(),
        ));
    }
    if !decision.invalid.is_empty() && !out[2].is_true {
        out[2] = ConditionVerdict::new(
            condition::DEGRADED,
            true,
            reason::INVALID_SIGNAL,
            format!(
                "{}; the rest of the intent is applied",
                decision
                    .invalid
                    .iter()
                    .map(|(name, e)| format!(
                        "spec.activation signal {name}: Prometheus rejected the query: {e}"
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    out
}

/// Ready, Active and Degraded of an intent degraded for `why`: nothing is applied (or, with
/// `revert_error`, reverting what was failed), and Active keeps what is known of the window.
pub fn degraded(
    previous: &[Condition],
    why: &'static str,
    message: &str,
    revert_error: Option<String>,
) -> [ConditionVerdict; 3] {
    let ready = match revert_error {
        Some(e) => ConditionVerdict::new(
            condition::READY,
            false,
            reason::APPLY_FAILED,
            format!("reverting failed: {e}"),
        ),
        None => ConditionVerdict::new(condition::READY, false, why, "nothing is applied"),
    };
    let active = match previous.iter().find(|c| c.type_ == condition::ACTIVE) {
        // Keep what is known; a conflicting or invalid intent's window does not matter yet.
        Some(c) => ConditionVerdict::new(
            condition::ACTIVE,
            c.status == status::TRUE,
            known_reason(&c.reason),
            c.message.clone(),
        ),
        None => ConditionVerdict::new(
            condition::ACTIVE,
            false,
            why,
            "not evaluated: the intent is degraded",
        ),
    };
    let degraded = ConditionVerdict::new(condition::DEGRADED, true, why, message);
    [ready, active, degraded]
}

/// The reason constant a stored condition carries (reasons are `&'static str` here).
fn known_reason(stored: &str) -> &'static str {
    [
        reason::ALWAYS_ACTIVE,
        reason::WINDOW_OPEN,
        reason::WINDOW_CLOSED,
        reason::SIGNAL_ACTIVE,
        reason::SIGNALS_INACTIVE,
        reason::ALL_ACTIVE,
        reason::INVALID_SPEC,
        reason::TARGET_NOT_FOUND,
        reason::CONFLICTING_INTENT,
        reason::NOT_ALLOWED,
    ]
    .into_iter()
    .find(|r| *r == stored)
    .unwrap_or(reason::AS_EXPECTED)
}

/// `SpreadAcrossHosts`, for an intent asking for `placement.spreadAcrossHosts`, from the verdict
/// the storage-health loop put in `status.placement.spread`; keeps its transition time while
/// its status is unchanged.
pub fn spread(wi: &WorkloadIntent, now: Timestamp) -> Option<Condition> {
    wi.spec.placement.as_ref()?.spread_across_hosts?;
    let status = wi.status.as_ref()?;
    let verdict = status.placement.as_ref()?.spread.as_ref()?;
    let last_transition_time = status
        .conditions
        .iter()
        .find(|c| c.type_ == SPREAD_ACROSS_HOSTS && c.status == verdict.status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Some(Condition {
        type_: SPREAD_ACROSS_HOSTS.to_string(),
        status: verdict.status.clone(),
        reason: verdict.reason.clone(),
        message: verdict.message.clone(),
        observed_generation: wi.metadata.generation,
        last_transition_time,
    })
}

/// The conditions to write: `verdicts` in order, each keeping its previous transition time if
/// its status is unchanged.
pub fn merge(
    previous: &[Condition],
    verdicts: &[ConditionVerdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let status = if v.is_true {
                status::TRUE
            } else {
                status::FALSE
            };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: v.type_.to_string(),
                status: status.to_string(),
                reason: v.reason.to_string(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_crds::conditions::{intent, reason};

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge(
            &[],
            &[ConditionVerdict::new(
                intent::ACTIVE,
                true,
                reason::WINDOW_OPEN,
                "open",
            )],
            Some(1),
            t0,
        );
        let same = merge(
            &first,
            &[ConditionVerdict::new(
                intent::ACTIVE,
                true,
                reason::WINDOW_OPEN,
                "still open",
            )],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "still open");
        let flipped = merge(
            &same,
            &[ConditionVerdict::new(
                intent::ACTIVE,
                false,
                reason::WINDOW_CLOSED,
                "closed",
            )],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }
}
