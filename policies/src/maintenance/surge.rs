//! The replica surge: a workload of an active critical or high intent that could not let its
//! ready pods on the host go without running short is first scaled up by that many pods.

use plumbline_crds::Priority;
use std::collections::BTreeMap;

use super::MaintenanceView;

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

/// The surges the drain needs: the ones in force stay as they are; a workload of an active
/// critical or high intent whose ready pods on the host could not all leave without taking it
/// below a budget, its floor or its last ready pod gets one, by that many pods.
pub(super) fn surges(view: &MaintenanceView) -> Vec<Surge> {
    let mut ready_here: BTreeMap<&str, usize> = BTreeMap::new();
    for p in view
        .pods
        .iter()
        .filter(|p| !p.stays && !p.terminating && p.ready)
    {
        *ready_here.entry(&p.workload).or_default() += 1;
    }
    let mut out = Vec::new();
    for (workload, facts) in &view.workloads {
        let intent_name = facts.intent.as_ref().map(|i| i.name.clone());
        if let Some(replicas) = facts.surge {
            out.push(Surge {
                workload: workload.clone(),
                replicas,
                by: facts.replicas.map_or(0, |own| replicas.saturating_sub(own)),
                intent: intent_name.unwrap_or_default(),
            });
            continue;
        }
        let Some(intent) = &facts.intent else {
            continue;
        };
        let eligible =
            intent.active && matches!(intent.priority, Priority::Critical | Priority::High);
        let need = ready_here.get(workload.as_str()).copied().unwrap_or(0);
        let (Some(own), true, true) = (facts.replicas, eligible, need > 0) else {
            continue;
        };
        let left = facts.ready.saturating_sub(need);
        let short = left == 0
            || facts.budgets.iter().any(|(_, allowed)| *allowed < need)
            || intent.replica_floor.is_some_and(|floor| left < floor);
        if short {
            out.push(Surge {
                workload: workload.clone(),
                replicas: own + need,
                by: need,
                intent: intent.name.clone(),
            });
        }
    }
    out
}
