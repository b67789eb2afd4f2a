//! Host maintenance, decided: which of the host's nodes to cordon, which pods to evict now, and
//! what blocks the rest. Plain data in, a plan out; the operator observes and carries it out,
//! and `plumbline explain` shows the same plan.
//!
//! - Every node of the host is cordoned at once (they all go down with it); pods leave
//!   `maxUnavailableNodes` nodes at a time, in name order. The cordons stay until the
//!   maintenance ends.
//! - A pod on a cordoned node is evicted unless that would take its workload below what is
//!   allowed: a PodDisruptionBudget's headroom, an active intent's replica floor, or (for a
//!   workload an intent governs) its last ready pod. DaemonSet and mirror pods stay, as with
//!   `kubectl drain`; the Eviction API checks the budgets again.
//! - A workload of an active critical or high intent that would otherwise run short (below its
//!   floor or budget, or out of ready pods) is first surged: its replicas are raised by the
//!   number of its ready pods on the host, and its pods there leave one at a time, each only
//!   while it has as many ready pods as the surge asks for. The surge stays until the
//!   maintenance ends.
//! - After `drainTimeout`: `Wait` keeps trying, `Force` deletes what is left except pods of
//!   critical intents inside their window, `Abort` uncordons and ends.

pub mod detect;
mod surge;

use surge::surges;
pub use surge::{needs_surge, ready_on_host, Surge};

use plumbline_crds::{conditions::maintenance as m, OnTimeout, Priority};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

/// The spec, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSpec {
    /// Show the pre-flight only.
    pub dry_run: bool,
    pub drain_timeout: Duration,
    pub on_timeout: OnTimeout,
    pub max_unavailable_nodes: usize,
    /// Put the host into maintenance mode once drained.
    pub enter_maintenance: bool,
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

impl MaintenanceSpec {
    /// The spec with its defaults, or why it cannot be used (with the field path).
    pub fn from_crd(spec: &plumbline_crds::HostMaintenanceSpec) -> Result<Self, String> {
        let drain_timeout = match &spec.drain_timeout {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(t) => parse_duration(t)
                .ok_or_else(|| format!("spec.drainTimeout: {t:?} is not a duration like 10m"))?,
        };
        let max = spec.max_unavailable_nodes.unwrap_or(1);
        if max < 1 {
            return Err(format!("spec.maxUnavailableNodes: {max} is below 1"));
        }
        Ok(Self {
            dry_run: spec.dry_run,
            drain_timeout,
            on_timeout: spec.on_timeout,
            max_unavailable_nodes: max as usize,
            enter_maintenance: spec.enter_maintenance,
        })
    }
}

/// `90s`, `10m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// One of the host's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNode {
    pub name: String,
    pub vm: String,
    /// `spec.unschedulable` now (by anyone).
    pub unschedulable: bool,
}

/// A pod on one of the host's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// `namespace/Kind/name` of its owning workload, or `namespace/Pod/name`.
    pub workload: String,
    /// Owned by a DaemonSet, or a mirror pod: left where it is.
    pub stays: bool,
    pub ready: bool,
    /// Already being deleted (evicted before, or by someone else).
    pub terminating: bool,
}

/// What the drain needs to know about a workload with pods on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadFacts {
    /// Its ready pods in the whole cluster.
    pub ready: usize,
    pub intent: Option<IntentFacts>,
    /// PodDisruptionBudgets selecting its pods: name and `status.disruptionsAllowed`.
    pub budgets: Vec<(String, usize)>,
    /// `spec.replicas` without a surge (the surge's recorded original while one is in
    /// force); `None` when not read (only workloads that may need a surge are read).
    pub replicas: Option<usize>,
    /// The replicas this maintenance's surge in force asks for.
    pub surge: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentFacts {
    /// `namespace/name`.
    pub name: String,
    pub priority: Priority,
    /// Inside its window (or without a schedule).
    pub active: bool,
    pub replica_floor: Option<usize>,
}

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct MaintenanceView {
    pub spec: MaintenanceSpec,
    /// When the drain started (`status.startedAt`); `None` before the first pass.
    pub started_at: Option<SystemTime>,
    /// The phase written last: `Ended` stays ended.
    pub previous_phase: Option<String>,
    pub nodes: Vec<HostNode>,
    pub pods: Vec<HostPod>,
    pub workloads: BTreeMap<String, WorkloadFacts>,
    /// Nodes this maintenance cordons already (its ledger entries).
    pub cordoned_by_us: BTreeSet<String>,
    /// This maintenance has put the host into maintenance mode (its ledger entry exists).
    pub host_mode_by_us: bool,
}

/// One node's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    pub name: String,
    pub vm: String,
    /// `Waiting`, `Draining` or `Drained`.
    pub state: &'static str,
    pub pending_pods: usize,
}

/// One workload's row in the pre-flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRow {
    pub workload: String,
    pub intent: Option<String>,
    pub pods_on_host: usize,
    pub ready: usize,
    pub evictable: bool,
    pub message: String,
}

/// What blocks the drain, for `DrainBlocked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: &'static str,
    pub message: String,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenancePlan {
    pub phase: &'static str,
    /// Nodes that should be cordoned (all of them while draining; none once ended).
    pub cordon: Vec<String>,
    /// Pods to evict now, as `namespace/name`.
    pub evict: Vec<(String, String)>,
    /// Pods to delete now (`onTimeout: Force`).
    pub delete: Vec<(String, String)>,
    /// Workloads scaled up until the maintenance ends (none once ended).
    pub surge: Vec<Surge>,
    /// The host in maintenance mode: from when it is drained (with `enterMaintenance`) until
    /// the maintenance ends.
    pub host_mode: bool,
    pub nodes: Vec<NodeProgress>,
    pub workloads: Vec<WorkloadRow>,
    pub pending_pods: usize,
    pub blockers: Vec<Blocker>,
    pub timed_out: bool,
}

impl MaintenancePlan {
    /// Nothing cordoned, nothing moved: the maintenance ended, or cannot be acted on.
    pub fn ended(blockers: Vec<Blocker>) -> Self {
        Self {
            phase: m::ENDED,
            cordon: Vec::new(),
            evict: Vec::new(),
            delete: Vec::new(),
            surge: Vec::new(),
            host_mode: false,
            nodes: Vec::new(),
            workloads: Vec::new(),
            pending_pods: 0,
            blockers,
            timed_out: false,
        }
    }

    pub fn ready_for_maintenance(&self) -> bool {
        self.phase == m::DRAINED
    }
}

/// Why a pod may not be evicted now, given the evictions already planned in this pass and
/// the replicas its surge asks for.
fn hold_back(
    facts: &WorkloadFacts,
    evicting: usize,
    budget_used: &BTreeMap<String, usize>,
    surge: Option<&Surge>,
) -> Option<Blocker> {
    if let Some(s) = surge {
        let ready = facts.ready.saturating_sub(evicting);
        if ready < s.replicas {
            return Some(Blocker {
                reason: m::SURGE_PENDING,
                message: format!(
                    "{} is surged to {} replicas for WorkloadIntent {}; {ready} ready, its pods on the host leave one at a time once the rest are ready",
                    s.workload, s.replicas, s.intent
                ),
            });
        }
    }
    for (name, allowed) in &facts.budgets {
        if budget_used.get(name).copied().unwrap_or(0) >= *allowed {
            return Some(Blocker {
                reason: m::DISRUPTION_BUDGET,
                message: format!(
                    "PodDisruptionBudget {name} allows {} more disruption(s) now",
                    allowed.saturating_sub(budget_used.get(name).copied().unwrap_or(0))
                ),
            });
        }
    }
    let intent = facts.intent.as_ref()?;
    let left = facts.ready.saturating_sub(evicting + 1);
    if intent.active {
        if let Some(floor) = intent.replica_floor {
            if left < floor {
                return Some(Blocker {
                    reason: m::REPLICA_FLOOR,
                    message: format!(
                        "WorkloadIntent {} keeps at least {floor} ready replica(s); {} ready now",
                        intent.name, facts.ready
                    ),
                });
            }
        }
    }
    (left == 0).then(|| Blocker {
        reason: m::LAST_READY_POD,
        message: format!(
            "evicting would take the last ready pod of a workload WorkloadIntent {} governs",
            intent.name
        ),
    })
}

/// The pods that still have to leave a node.
fn leaving<'a>(pods: &'a [HostPod], node: &str) -> impl Iterator<Item = &'a HostPod> {
    let node = node.to_string();
    pods.iter()
        .filter(move |p| p.node == node && !p.stays && !p.terminating)
}

/// Decides one pass of a maintenance.
pub fn plan_maintenance(view: &MaintenanceView, now: SystemTime) -> MaintenancePlan {
    if view.previous_phase.as_deref() == Some(m::ENDED) {
        return MaintenancePlan::ended(Vec::new());
    }
    if view.spec.dry_run {
        let mut plan = MaintenancePlan::ended(Vec::new());
        plan.phase = m::PENDING;
        plan.nodes = view
            .nodes
            .iter()
            .map(|n| NodeProgress {
                name: n.name.clone(),
                vm: n.vm.clone(),
                state: m::NODE_WAITING,
                pending_pods: leaving(&view.pods, &n.name).count(),
            })
            .collect();
        plan.pending_pods = plan.nodes.iter().map(|n| n.pending_pods).sum();
        plan.workloads = preflight(view, &surges(view));
        return plan;
    }
    let timed_out = view
        .started_at
        .and_then(|s| now.duration_since(s).ok())
        .is_some_and(|elapsed| elapsed >= view.spec.drain_timeout);

    let mut nodes: Vec<&HostNode> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let pending = |n: &HostNode| leaving(&view.pods, &n.name).count();
    // Every node of the host is cordoned at once, so nothing evicted lands on a node that is
    // going down too; pods leave `maxUnavailableNodes` nodes at a time, in name order.
    let cordon: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let draining: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| pending(n) > 0)
        .take(view.spec.max_unavailable_nodes)
        .map(|n| n.name.as_str())
        .collect();

    let surge = surges(view);
    let surge_of = |workload: &str| surge.iter().find(|s| s.workload == workload);
    let mut evict = Vec::new();
    let mut delete = Vec::new();
    let mut blockers: Vec<Blocker> = Vec::new();
    let mut evicting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut budget_used: BTreeMap<String, usize> = BTreeMap::new();
    let mut held: BTreeMap<&str, Blocker> = BTreeMap::new();
    let none = WorkloadFacts::default();
    for n in &nodes {
        // Only once the cordon is in force: nothing evicted may land on the node again.
        if !(draining.contains(n.name.as_str())
            && view.cordoned_by_us.contains(&n.name)
            && n.unschedulable)
        {
            continue;
        }
        for pod in leaving(&view.pods, &n.name) {
            let facts = view.workloads.get(&pod.workload).unwrap_or(&none);
            let count = evicting.entry(&pod.workload).or_default();
            let counted = if pod.ready { *count } else { 0 };
            let blocked = if pod.ready {
                hold_back(facts, counted, &budget_used, surge_of(&pod.workload))
            } else {
                // An unready pod serves no traffic: moving it costs nothing.
                None
            };
            match blocked {
                None => {
                    if pod.ready {
                        *count += 1;
                        for (name, _) in &facts.budgets {
                            *budget_used.entry(name.clone()).or_default() += 1;
                        }
                    }
                    evict.push((pod.namespace.clone(), pod.name.clone()));
                }
                Some(b) => {
                    let critical_in_window = facts
                        .intent
                        .as_ref()
                        .is_some_and(|i| i.active && i.priority == Priority::Critical);
                    if timed_out && view.spec.on_timeout == OnTimeout::Force && !critical_in_window
                    {
                        delete.push((pod.namespace.clone(), pod.name.clone()));
                    } else {
                        held.entry(&pod.workload).or_insert(b);
                    }
                }
            }
        }
    }
    for b in held.values() {
        if !blockers.contains(b) {
            blockers.push(b.clone());
        }
    }

    let progress: Vec<NodeProgress> = nodes
        .iter()
        .map(|n| {
            let pending_pods = pending(n);
            NodeProgress {
                name: n.name.clone(),
                vm: n.vm.clone(),
                state: if pending_pods == 0 && view.cordoned_by_us.contains(&n.name) {
                    m::NODE_DRAINED
                } else if draining.contains(n.name.as_str()) {
                    m::NODE_DRAINING
                } else {
                    m::NODE_WAITING
                },
                pending_pods,
            }
        })
        .collect();
    let pending_pods: usize = progress.iter().map(|p| p.pending_pods).sum();
    let workloads = preflight(view, &surge);

    if timed_out && pending_pods > 0 && view.spec.on_timeout == OnTimeout::Abort {
        let mut plan = MaintenancePlan::ended(vec![Blocker {
            reason: m::ABORTED,
            message: format!(
                "not drained within {:?} ({pending_pods} pod(s) left); onTimeout: Abort uncordons the nodes",
                view.spec.drain_timeout
            ),
        }]);
        plan.nodes = progress;
        plan.workloads = workloads;
        plan.pending_pods = pending_pods;
        return plan;
    }
    let phase = if pending_pods == 0 && view.cordoned_by_us.len() >= nodes.len() {
        m::DRAINED
    } else if view.cordoned_by_us.is_empty() {
        m::PENDING
    } else if timed_out {
        m::TIMED_OUT
    } else if evict.is_empty()
        && delete.is_empty()
        && blockers.iter().any(|b| b.reason != m::SURGE_PENDING)
    {
        m::BLOCKED
    } else {
        m::DRAINING
    };
    MaintenancePlan {
        phase,
        cordon,
        evict,
        delete,
        surge,
        host_mode: view.spec.enter_maintenance && (phase == m::DRAINED || view.host_mode_by_us),
        nodes: progress,
        workloads,
        pending_pods,
        blockers,
        timed_out,
    }
}

/// Each workload with pods on the host: can one of its pods be evicted now, and what happens.
fn preflight(view: &MaintenanceView, surges: &[Surge]) -> Vec<WorkloadRow> {
    let mut on_host: BTreeMap<&str, usize> = BTreeMap::new();
    for p in view.pods.iter().filter(|p| !p.stays) {
        *on_host.entry(&p.workload).or_default() += 1;
    }
    let none = WorkloadFacts::default();
    on_host
        .into_iter()
        .map(|(workload, pods_on_host)| {
            let facts = view.workloads.get(workload).unwrap_or(&none);
            let surge = surges.iter().find(|s| s.workload == workload);
            let blocked = hold_back(facts, 0, &BTreeMap::new(), surge);
            let message = match (&blocked, surge) {
                (_, Some(s)) => format!(
                    "surged by {} to {} replicas for WorkloadIntent {} first; its pods on the host leave one at a time once the new ones are ready elsewhere",
                    s.by, s.replicas, s.intent
                ),
                (Some(b), None) => format!("held: {}", b.message),
                (None, None) if facts.ready <= pods_on_host => format!(
                    "evicted one at a time; all {} ready pod(s) are on the host, so it may run short until replacements are ready elsewhere",
                    facts.ready
                ),
                (None, None) => {
                    "evicted through the Eviction API, respecting its budgets".to_string()
                }
            };
            WorkloadRow {
                workload: workload.to_string(),
                intent: facts.intent.as_ref().map(|i| i.name.clone()),
                pods_on_host,
                ready: facts.ready,
                evictable: blocked.is_none() || surge.is_some(),
                message,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
