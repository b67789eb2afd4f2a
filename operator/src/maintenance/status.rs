//! The status a maintenance's plan makes: phase, conditions (`DrainBlocked`,
//! `ReadyForMaintenance`), per-node progress and the pre-flight. Pure, so `explain` shows the
//! status the next pass would write.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use plumbline_crds::{
    conditions::{maintenance as m, status::TRUE},
    HostMaintenance, HostMaintenanceStatus, MaintenanceNode, MaintenanceWorkload,
};
use plumbline_policies::maintenance::MaintenancePlan;
use std::time::{Duration, SystemTime};

use crate::controller::conditions::{merge, ConditionVerdict};

pub fn status_for(
    hm: &HostMaintenance,
    plan: &MaintenancePlan,
    host_in_maintenance: Option<bool>,
    now: SystemTime,
) -> HostMaintenanceStatus {
    let previous = hm.status.clone().unwrap_or_default();
    let blocked = plan.blockers.first();
    let verdicts = [
        match blocked {
            Some(b) => ConditionVerdict::new(
                m::DRAIN_BLOCKED,
                (plan.phase != m::ENDED && b.reason != m::SURGE_PENDING) || b.reason == m::ABORTED,
                b.reason,
                plan.blockers
                    .iter()
                    .map(|b| b.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None => ConditionVerdict::new(
                m::DRAIN_BLOCKED,
                false,
                m::NOT_BLOCKED,
                "nothing blocks the drain",
            ),
        },
        if plan.ready_for_maintenance() {
            ConditionVerdict::new(
                m::READY_FOR_MAINTENANCE,
                true,
                m::DRAINED_REASON,
                format!("every node on host {} is drained", hm.spec.host),
            )
        } else {
            ConditionVerdict::new(
                m::READY_FOR_MAINTENANCE,
                false,
                m::NOT_DRAINED,
                format!(
                    "{} pod(s) still to leave the host's nodes",
                    plan.pending_pods
                ),
            )
        },
    ];
    let started = plan.phase != m::PENDING || !plan.cordon.is_empty();
    HostMaintenanceStatus {
        phase: Some(plan.phase.to_string()),
        conditions: merge(
            &previous.conditions,
            &verdicts,
            hm.metadata.generation,
            Timestamp::now(),
        ),
        started_at: previous.started_at.clone().or_else(|| {
            started.then(|| Time(Timestamp::try_from(now).unwrap_or_else(|_| Timestamp::now())))
        }),
        pending_pods: plan.pending_pods as i32,
        nodes: plan
            .nodes
            .iter()
            .map(|n| MaintenanceNode {
                name: n.name.clone(),
                vm: n.vm.clone(),
                state: n.state.to_string(),
                pending_pods: n.pending_pods as i32,
            })
            .collect(),
        workloads: plan
            .workloads
            .iter()
            .map(|w| MaintenanceWorkload {
                workload: w.workload.clone(),
                intent: w.intent.clone(),
                pods_on_host: w.pods_on_host as i32,
                ready: w.ready as i32,
                evictable: w.evictable,
                message: w.message.clone(),
            })
            .collect(),
        host_in_maintenance,
        observed_generation: hm.metadata.generation,
    }
}

/// How long `DrainBlocked` has been True (zero when it is not).
pub fn blocked_for(status: &HostMaintenanceStatus, now: SystemTime) -> Duration {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == m::DRAIN_BLOCKED && c.status == TRUE)
        .and_then(|c| {
            now.duration_since(SystemTime::from(c.last_transition_time.0))
                .ok()
        })
        .unwrap_or_default()
}
