//! The replica surge: a workload of an active critical or high intent that could not let its
//! ready pods on the host go without running short is first scaled up by that many pods.

use plumbline_crds::Priority;
use std::collections::BTreeMap;

use super::{HostPod, MaintenanceView, WorkloadFacts};

/// A workload scaled up for the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surge {
    pub workload: String,
    /// The replicas asked for.
    pub replicas: usize,
    /// How many above the workload's own replicas.
    pub by: usize,
    /// The intent it is for.
    pub intent: String,
}

/// Each workload's ready pods that still have to leave the host.
pub fn ready_on_host(pods: &[HostPod]) -> BTreeMap<&str, usize> {
    let mut ready = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| !p.stays && !p.terminating && p.ready)
    {
        *ready.entry(p.workload.as_str()).or_default() += 1;
    }
    ready
}

/// Whether a workload with no surge yet needs one: it has an active critical or high intent,
/// and its `ready_here` ready pods on the host could not all leave without taking it below a
/// budget, its floor or its last ready pod. (Its replicas are read only for such a workload.)
pub fn needs_surge(facts: &WorkloadFacts, ready_here: usize) -> bool {
    let Some(intent) = &facts.intent else {
        return false;
    };
    let eligible = intent.active && matches!(intent.priority, Priority::Critical | Priority::High);
    let left = facts.ready.saturating_sub(ready_here);
    eligible
        && ready_here > 0
        && (left == 0
            || facts
                .budgets
                .iter()
                .any(|(_, allowed)| *allowed < ready_here)
            || intent.replica_floor.is_some_and(|floor| left < floor))
}

/// The surges the drain needs: the ones in force stay as they are; a workload that
/// [`needs_surge`] gets one, by its ready pods on the host.
pub(super) fn surges(view: &MaintenanceView) -> Vec<Surge> {
    let ready_here = ready_on_host(&view.pods);
    let mut out = Vec::new();
    for (workload, facts) in &view.workloads {
        let intent = facts
            .intent
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        if let Some(replicas) = facts.surge {
            out.push(Surge {
                workload: workload.clone(),
                replicas,
                by: facts.replicas.map_or(0, |own| replicas.saturating_sub(own)),
                intent,
            });
            continue;
        }
        let need = ready_here.get(workload.as_str()).copied().unwrap_or(0);
        if let (Some(own), true) = (facts.replicas, needs_surge(facts, need)) {
            out.push(Surge {
                workload: workload.clone(),
                replicas: own + need,
                by: need,
                intent,
            });
        }
    }
    out
}
