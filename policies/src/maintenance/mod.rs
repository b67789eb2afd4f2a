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

/// The surges the drain needs: the ones in force stay as they are; a workload of an active
/// critical or high intent whose ready pods on the host could not all leave without taking it
/// below a budget, its floor or its last ready pod gets one, by that many pods.
fn surges(view: &MaintenanceView) -> Vec<Surge> {
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
mod tests {
    use super::*;

    fn spec() -> MaintenanceSpec {
        MaintenanceSpec {
            dry_run: false,
            drain_timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Wait,
            max_unavailable_nodes: 1,
            enter_maintenance: false,
        }
    }

    fn node(name: &str, unschedulable: bool) -> HostNode {
        HostNode {
            name: name.into(),
            vm: format!("vm-{name}"),
            unschedulable,
        }
    }

    fn pod(name: &str, node: &str, workload: &str) -> HostPod {
        HostPod {
            namespace: "shop".into(),
            name: name.into(),
            node: node.into(),
            workload: workload.into(),
            stays: false,
            ready: true,
            terminating: false,
        }
    }

    fn view(nodes: Vec<HostNode>, pods: Vec<HostPod>) -> MaintenanceView {
        MaintenanceView {
            spec: spec(),
            started_at: Some(SystemTime::UNIX_EPOCH),
            previous_phase: None,
            nodes,
            pods,
            workloads: BTreeMap::new(),
            cordoned_by_us: BTreeSet::new(),
            host_mode_by_us: false,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_first_pass_cordons_every_node_and_evicts_nothing_yet() {
        let v = view(
            vec![node("b", false), node("a", false)],
            vec![
                pod("p1", "a", "shop/Deployment/web"),
                pod("p2", "b", "shop/Deployment/web"),
            ],
        );
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.phase, m::PENDING);
        assert_eq!(plan.cordon, vec!["a".to_string(), "b".to_string()]);
        assert!(plan.evict.is_empty(), "the cordon comes first: {plan:?}");
        assert_eq!(plan.pending_pods, 2);
    }

    #[test]
    fn a_cordoned_node_is_emptied_then_the_next_one_goes() {
        let mut v = view(
            vec![node("a", true), node("b", true)],
            vec![
                pod("p1", "a", "shop/Deployment/web"),
                pod("p2", "b", "shop/Deployment/web"),
            ],
        );
        v.workloads.insert(
            "shop/Deployment/web".into(),
            WorkloadFacts {
                ready: 4,
                ..WorkloadFacts::default()
            },
        );
        v.cordoned_by_us.extend(["a".to_string(), "b".to_string()]);
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.phase, m::DRAINING);
        assert_eq!(
            plan.evict,
            vec![("shop".into(), "p1".into())],
            "one node at a time"
        );
        assert_eq!(plan.nodes[1].state, m::NODE_WAITING);

        // p1 left: a is drained, b is next.
        v.pods.remove(0);
        let plan = plan_maintenance(&v, at(2));
        assert_eq!(plan.evict, vec![("shop".into(), "p2".into())]);
        assert_eq!(plan.nodes[0].state, m::NODE_DRAINED);
        assert_eq!(plan.nodes[1].state, m::NODE_DRAINING);
    }

    #[test]
    fn daemonset_and_mirror_pods_stay_and_do_not_hold_the_drain() {
        let mut v = view(
            vec![node("a", true)],
            vec![pod("ds", "a", "shop/DaemonSet/agent")],
        );
        v.pods[0].stays = true;
        v.cordoned_by_us.insert("a".into());
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.phase, m::DRAINED);
        assert!(plan.ready_for_maintenance());
        assert!(plan.evict.is_empty());
    }

    #[test]
    fn a_budget_with_no_headroom_blocks_and_is_named() {
        let mut v = view(
            vec![node("a", true)],
            vec![pod("p1", "a", "shop/Deployment/web")],
        );
        v.workloads.insert(
            "shop/Deployment/web".into(),
            WorkloadFacts {
                ready: 3,
                intent: None,
                budgets: vec![("web-pdb".into(), 0)],
                ..WorkloadFacts::default()
            },
        );
        v.cordoned_by_us.insert("a".into());
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.phase, m::BLOCKED);
        assert!(plan.evict.is_empty());
        assert_eq!(plan.blockers[0].reason, m::DISRUPTION_BUDGET);
        assert!(plan.blockers[0].message.contains("web-pdb"), "{plan:?}");
        assert!(!plan.workloads[0].evictable);
    }

    #[test]
    fn evictions_in_one_pass_never_go_below_the_replica_floor() {
        let mut v = view(
            vec![node("a", true)],
            vec![
                pod("p1", "a", "shop/Deployment/pay"),
                pod("p2", "a", "shop/Deployment/pay"),
                pod("p3", "a", "shop/Deployment/pay"),
            ],
        );
        v.workloads.insert(
            "shop/Deployment/pay".into(),
            WorkloadFacts {
                ready: 4,
                intent: Some(IntentFacts {
                    name: "shop/pay".into(),
                    priority: Priority::Critical,
                    active: true,
                    replica_floor: Some(2),
                }),
                budgets: Vec::new(),
                ..WorkloadFacts::default()
            },
        );
        v.cordoned_by_us.insert("a".into());
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.evict.len(), 2, "4 ready, floor 2: {plan:?}");
        assert_eq!(plan.blockers[0].reason, m::REPLICA_FLOOR);
        assert!(plan.blockers[0].message.contains("shop/pay"));
    }

    #[test]
    fn after_the_timeout_force_deletes_all_but_critical_pods_in_their_window() {
        let mut v = view(
            vec![node("a", true)],
            vec![
                pod("crit", "a", "shop/Deployment/pay"),
                pod("other", "a", "shop/Deployment/web"),
            ],
        );
        let intent = |name: &str, priority| IntentFacts {
            name: name.into(),
            priority,
            active: true,
            replica_floor: Some(1),
        };
        v.workloads.insert(
            "shop/Deployment/pay".into(),
            WorkloadFacts {
                ready: 1,
                intent: Some(intent("shop/pay", Priority::Critical)),
                budgets: Vec::new(),
                ..WorkloadFacts::default()
            },
        );
        v.workloads.insert(
            "shop/Deployment/web".into(),
            WorkloadFacts {
                ready: 1,
                intent: Some(intent("shop/web", Priority::High)),
                budgets: Vec::new(),
                ..WorkloadFacts::default()
            },
        );
        v.cordoned_by_us.insert("a".into());
        v.spec.on_timeout = OnTimeout::Force;
        let before = plan_maintenance(&v, at(599));
        assert!(before.delete.is_empty() && before.evict.is_empty());
        assert_eq!(before.phase, m::BLOCKED);
        let after = plan_maintenance(&v, at(600));
        assert_eq!(after.delete, vec![("shop".into(), "other".into())]);
        assert_eq!(after.phase, m::TIMED_OUT);
    }

    #[test]
    fn abort_after_the_timeout_uncordons_and_ends_for_good() {
        let mut v = view(
            vec![node("a", true)],
            vec![pod("p1", "a", "shop/Deployment/web")],
        );
        v.workloads.insert(
            "shop/Deployment/web".into(),
            WorkloadFacts {
                ready: 1,
                intent: None,
                budgets: vec![("web-pdb".into(), 0)],
                ..WorkloadFacts::default()
            },
        );
        v.cordoned_by_us.insert("a".into());
        v.spec.on_timeout = OnTimeout::Abort;
        let plan = plan_maintenance(&v, at(601));
        assert_eq!(plan.phase, m::ENDED);
        assert!(plan.cordon.is_empty());
        assert_eq!(plan.blockers[0].reason, m::ABORTED);
        v.previous_phase = Some(m::ENDED.into());
        v.pods.clear();
        assert_eq!(plan_maintenance(&v, at(700)).phase, m::ENDED);
    }

    #[test]
    fn a_dry_run_shows_the_preflight_and_touches_nothing() {
        let mut v = view(
            vec![node("a", false)],
            vec![pod("p1", "a", "shop/Deployment/web")],
        );
        v.spec.dry_run = true;
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(plan.phase, m::PENDING);
        assert!(plan.cordon.is_empty() && plan.evict.is_empty());
        assert_eq!(plan.pending_pods, 1);
        assert_eq!(plan.workloads[0].workload, "shop/Deployment/web");
    }

    #[test]
    fn two_nodes_at_once_when_allowed() {
        let mut v = view(
            vec![node("a", true), node("b", true), node("c", true)],
            vec![
                pod("p1", "a", "w"),
                pod("p2", "b", "w"),
                pod("p3", "c", "w"),
            ],
        );
        v.spec.max_unavailable_nodes = 2;
        v.cordoned_by_us.extend(["a", "b", "c"].map(String::from));
        v.workloads.insert(
            "w".into(),
            WorkloadFacts {
                ready: 6,
                ..WorkloadFacts::default()
            },
        );
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(
            plan.evict,
            vec![("shop".into(), "p1".into()), ("shop".into(), "p2".into())]
        );
    }

    fn critical(floor: usize) -> IntentFacts {
        IntentFacts {
            name: "shop/pay".into(),
            priority: Priority::Critical,
            active: true,
            replica_floor: Some(floor),
        }
    }

    #[test]
    fn a_critical_workload_that_would_run_short_is_surged_first_then_leaves_one_pod_at_a_time() {
        let mut v = view(
            vec![node("a", true)],
            vec![
                pod("p1", "a", "shop/Deployment/pay"),
                pod("p2", "a", "shop/Deployment/pay"),
            ],
        );
        v.cordoned_by_us.insert("a".into());
        let facts = |ready, allowed, surge| WorkloadFacts {
            ready,
            intent: Some(critical(2)),
            budgets: vec![("pay-pdb".into(), allowed)],
            replicas: Some(2),
            surge,
        };
        // Both ready pods are on the host and the budget allows none: surge by 2 first.
        v.workloads
            .insert("shop/Deployment/pay".into(), facts(2, 0, None));
        let plan = plan_maintenance(&v, at(1));
        assert_eq!(
            plan.surge,
            vec![Surge {
                workload: "shop/Deployment/pay".into(),
                replicas: 4,
                by: 2,
                intent: "shop/pay".into(),
            }]
        );
        assert!(plan.evict.is_empty(), "{plan:?}");
        assert_eq!(plan.blockers[0].reason, m::SURGE_PENDING);
        assert_eq!(
            plan.phase,
            m::DRAINING,
            "waiting for a surge is not blocked"
        );
        assert!(plan.workloads[0].message.contains("surged by 2 to 4"));

        // In force, the new pods not ready yet: still waiting, and the surge is kept as is.
        v.workloads
            .insert("shop/Deployment/pay".into(), facts(3, 1, Some(4)));
        let plan = plan_maintenance(&v, at(2));
        assert!(plan.evict.is_empty());
        assert_eq!(plan.surge[0].replicas, 4);

        // All 4 ready: one pod leaves, the next waits for its replacement.
        v.workloads
            .insert("shop/Deployment/pay".into(), facts(4, 2, Some(4)));
        let plan = plan_maintenance(&v, at(3));
        assert_eq!(plan.evict, vec![("shop".into(), "p1".into())]);

        // Drained: the surge stays until the maintenance ends.
        v.pods.clear();
        let plan = plan_maintenance(&v, at(4));
        assert_eq!(plan.phase, m::DRAINED);
        assert_eq!(plan.surge.len(), 1);
    }

    #[test]
    fn only_active_critical_or_high_intents_that_would_run_short_are_surged() {
        let mut v = view(
            vec![node("a", true)],
            vec![pod("p1", "a", "shop/Deployment/pay")],
        );
        v.cordoned_by_us.insert("a".into());
        let mut facts = WorkloadFacts {
            ready: 1,
            intent: Some(critical(1)),
            replicas: Some(1),
            ..WorkloadFacts::default()
        };
        let mut with = |f: &WorkloadFacts| {
            v.workloads.insert("shop/Deployment/pay".into(), f.clone());
            plan_maintenance(&v, at(1)).surge.len()
        };
        assert_eq!(with(&facts), 1, "its only ready pod is on the host");
        facts.intent.as_mut().unwrap().priority = Priority::Standard;
        assert_eq!(with(&facts), 0, "standard tier");
        facts.intent.as_mut().unwrap().priority = Priority::High;
        facts.intent.as_mut().unwrap().active = false;
        assert_eq!(with(&facts), 0, "outside its window");
        facts.intent.as_mut().unwrap().active = true;
        facts.ready = 3;
        assert_eq!(with(&facts), 0, "enough ready elsewhere");
        facts.ready = 1;
        facts.replicas = None;
        assert_eq!(with(&facts), 0, "replicas unknown");
    }

    #[test]
    fn the_host_enters_maintenance_mode_once_drained_and_stays_until_the_end() {
        let mut v = view(
            vec![node("a", true)],
            vec![pod("p1", "a", "shop/Deployment/web")],
        );
        v.spec.enter_maintenance = true;
        v.cordoned_by_us.insert("a".into());
        v.workloads.insert(
            "shop/Deployment/web".into(),
            WorkloadFacts {
                ready: 3,
                ..WorkloadFacts::default()
            },
        );
        assert!(!plan_maintenance(&v, at(1)).host_mode, "not drained yet");
        v.pods.clear();
        assert!(plan_maintenance(&v, at(2)).host_mode, "drained");
        // A pod lands again (someone uncordoned by hand): the host stays in maintenance mode.
        v.host_mode_by_us = true;
        v.pods.push(pod("p2", "a", "shop/Deployment/web"));
        assert!(plan_maintenance(&v, at(3)).host_mode);
        v.spec.enter_maintenance = false;
        assert!(!plan_maintenance(&v, at(4)).host_mode, "not asked for");
        v.spec.enter_maintenance = true;
        v.previous_phase = Some(m::ENDED.into());
        assert!(!plan_maintenance(&v, at(5)).host_mode, "ended");
    }

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10"), None);
        let bad = plumbline_crds::HostMaintenanceSpec {
            provider: "p".into(),
            host: "h".into(),
            reason: None,
            drain_timeout: Some("soon".into()),
            on_timeout: OnTimeout::Wait,
            max_unavailable_nodes: None,
            dry_run: false,
            enter_maintenance: false,
        };
        assert!(MaintenanceSpec::from_crd(&bad)
            .unwrap_err()
            .starts_with("spec.drainTimeout"));
    }
}
