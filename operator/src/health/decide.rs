//! One feedback pass decided, with no I/O: from the views, the book, the nodes, the ledger and
//! what earlier passes remember, everything the pass is to write — pod and node conditions,
//! intent status bodies, the throttles and taints wanted in the ledger with their Events, and
//! the metric series. [`super::feedback`] carries the decision out.

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition};
use kube::ResourceExt;
use plumbline_crds::{
    conditions::{status, verdict},
    names::{NODE_STORAGE_CONDITION, STORAGE_READINESS_GATE},
    HypervisorProvider, InfraChange, InfraChangeSpec, NeighbourCandidateStatus, VmRef,
};
use plumbline_policies::health::{
    format_latency, guard, neighbours_of, node_condition, plan_neighbour_throttles, pod_readiness,
    GuardCandidate, GuardPods, HealthState, LatencyBudget, NeighbourAction, NeighbourCandidate,
    NeighbourHistory, ReadinessVerdict, ThrottleLadder, Tier, UnknownCause, Verdict, Victim,
    VmVerdict,
};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    book::HealthBook,
    graph::{self, IntentView, StorageView, VmKey},
    settings::HealthSettings,
    taint::{TaintGuard, TaintPlan, TaintWant},
    throttle,
};
use crate::metrics::health::{BackingLabels, DiskLabels, PodLabels, VerdictLabels, VmLabels};

/// Messages carry the latest latency; refreshing them is worth a write this often, no more.
const MESSAGE_REFRESH: Duration = Duration::from_secs(30);

/// How many neighbours an intent's status lists.
const LISTED_NEIGHBOURS: usize = 5;

/// What a pass remembers for the next one. The shell records the writes that succeeded
/// (`pod_written`, `node_written`, `intent_status`); [`decide`] keeps the rest.
#[derive(Default)]
pub struct PassMemory {
    /// When each pod's condition was last written, by `(namespace, pod)`.
    pub pod_written: HashMap<(String, String), Instant>,
    /// When each node's condition was last written.
    pub node_written: HashMap<String, Instant>,
    /// Each intent's status body as last written, and when, by `(namespace, name)`.
    pub intent_status: HashMap<(String, String), (Value, Instant)>,
    /// Each VM's state against each budget and since when (for releasing throttles).
    state_since: HashMap<(plumbline_adapters::VmId, LatencyBudget), (HealthState, SystemTime)>,
    /// What the noisy-neighbour ladder remembers between passes.
    neighbours: NeighbourHistory<VmRef>,
    /// The nodes the taint cap holds back.
    taints: TaintGuard,
}

/// What one pass reads, besides the book and its memory.
#[derive(Clone, Copy)]
pub struct PassInput<'a> {
    /// The intents their tenant policies allow, with their pods and VMs (`graph::build`).
    pub views: &'a [IntentView],
    pub nodes: &'a [Arc<Node>],
    pub providers: &'a [Arc<HypervisorProvider>],
    /// Every InfraChange in the ledger.
    pub changes: &'a [Arc<InfraChange>],
    /// Whether an intent `(namespace, name)` may judge (and taint) nodes.
    pub may_judge_nodes: &'a dyn Fn(&str, &str) -> bool,
    pub settings: &'a HealthSettings,
    /// This operator instance, as the ledger names it.
    pub operator: &'a str,
    /// Scoped to a namespace: only nodes running pods of its intents get a condition, so
    /// operators scoped to different namespaces (tests, tenants) never fight over a node.
    pub scoped: bool,
    /// The pass's clock.
    pub now: SystemTime,
    /// The same instant on the monotonic clock, against which write times are measured.
    pub instant: Instant,
}

/// A pod condition to write.
pub struct PodWrite {
    pub namespace: String,
    pub pod: String,
    pub intent: String,
    pub verdict: ReadinessVerdict,
    /// The condition's status changes.
    pub transition: bool,
    /// From the onset of degradation to this write, for a pod newly marked unready.
    pub detection: Option<Duration>,
}

impl PodWrite {
    /// The condition's status: `"True"` or `"False"`.
    pub fn status(&self) -> &'static str {
        status_word(self.verdict.ready)
    }

    /// The pod status to apply.
    pub fn body(&self, now: SystemTime) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "conditions": [{
                    "type": STORAGE_READINESS_GATE,
                    "status": self.status(),
                    "reason": self.verdict.reason,
                    "message": self.verdict.message,
                    "lastTransitionTime": rfc3339(now),
                }]
            }
        })
    }
}

/// A node condition to write.
pub struct NodeWrite {
    pub node: String,
    pub condition: Value,
}

impl NodeWrite {
    /// The node status to apply.
    pub fn body(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "status": { "conditions": [self.condition] }
        })
    }
}

/// An intent's status (backing map, guard report, throttles and candidates) to write.
pub struct StatusWrite {
    /// `(namespace, name)`.
    pub intent: (String, String),
    pub body: Value,
}

/// The metric series of one pass, with their values; series not among them go.
#[derive(Default)]
pub struct PassSeries {
    pub verdicts: Vec<(VerdictLabels, i64)>,
    pub iops: Vec<(VmLabels, f64)>,
    pub disks: Vec<(DiskLabels, f64)>,
    pub backing: Vec<BackingLabels>,
    pub pods: Vec<(PodLabels, i64)>,
    /// Deserving nodes the taint cap holds back.
    pub taints_held: i64,
}

/// Everything one pass writes, in the order it is written.
pub struct PassDecision {
    pub pods: Vec<PodWrite>,
    pub nodes: Vec<NodeWrite>,
    pub statuses: Vec<StatusWrite>,
    /// The noisy-neighbour throttles wanted in the ledger.
    pub throttles: Vec<InfraChangeSpec>,
    /// This pass's steps, undos and releases on the ladder, each an Event.
    pub actions: Vec<NeighbourAction<VmRef>>,
    /// The taints wanted in the ledger, and the nodes newly held back (each an Event).
    pub taints: TaintPlan,
    pub series: PassSeries,
}

fn condition_of<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn node_condition_of<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn status_word(ready: bool) -> &'static str {
    if ready {
        status::TRUE
    } else {
        status::FALSE
    }
}

fn verdict_word(state: HealthState) -> &'static str {
    match state {
        HealthState::Healthy => verdict::HEALTHY,
        HealthState::Degraded => verdict::DEGRADED,
        HealthState::Unknown => verdict::UNKNOWN,
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether a message written at `at` (if ever) is old enough to refresh.
fn refresh_due(at: Option<&Instant>, now: Instant) -> bool {
    at.is_none_or(|at| now.saturating_duration_since(*at) >= MESSAGE_REFRESH)
}

/// Decides one pass. Reads verdicts from `book` (registering the budgets asked for, and
/// forgetting the others), and keeps `memory` for the next pass.
pub fn decide(
    input: &PassInput<'_>,
    book: &mut HealthBook,
    memory: &mut PassMemory,
) -> PassDecision {
    let PassInput {
        views,
        settings,
        operator,
        now,
        ..
    } = *input;
    let b = book;
    let mut wanted: BTreeMap<plumbline_adapters::VmId, BTreeSet<LatencyBudget>> = BTreeMap::new();
    // The strictest budget each VM serves, for node conditions and the VM verdict metric.
    let mut strictest: BTreeMap<plumbline_adapters::VmId, LatencyBudget> = BTreeMap::new();
    let mut protected_by: BTreeMap<plumbline_adapters::VmId, Tier> = BTreeMap::new();
    for view in views {
        for p in &view.pods {
            let Some(vm) = &p.vm else { continue };
            let tier = protected_by.entry(vm.id.clone()).or_insert(view.tier);
            *tier = (*tier).max(view.tier);
            if let Some(s) = view.storage {
                wanted.entry(vm.id.clone()).or_default().insert(s.budget);
                // A namespace not granted NodeTaints does not judge (or taint) nodes.
                if (input.may_judge_nodes)(&view.namespace, &view.name) {
                    let e = strictest.entry(vm.id.clone()).or_insert(s.budget);
                    *e = (*e).min(s.budget);
                }
            }
        }
    }
    let all_vms: Vec<VmKey> = b
        .all_vms()
        .map(|p| VmKey {
            id: p.vm.id.clone(),
            name: p.vm.name.clone(),
            provider: p.provider.name.clone(),
        })
        .collect();
    for vm in &all_vms {
        let budget = *strictest
            .get(&vm.id)
            .unwrap_or(&settings.default_node_budget);
        wanted.entry(vm.id.clone()).or_default().insert(budget);
    }

    // Noisy neighbours: on VMs of providers that are not being deleted.
    let leaving: HashSet<String> = input
        .providers
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(|p| p.name_any())
        .collect();
    let candidates: Vec<NeighbourCandidate<VmRef>> = b
        .all_vms()
        .filter(|p| !leaving.contains(&p.provider.name))
        .map(|p| NeighbourCandidate {
            vm: VmRef {
                id: p.vm.id.as_str().to_string(),
                name: p.vm.name.clone(),
                provider: p.provider.name.clone(),
            },
            host: Some(p.vm.host.clone()),
            datastores: p.vm.datastores.iter().cloned().collect(),
            iops: b.iops.get(&p.vm.id).copied().unwrap_or(0.0),
            protected_by: protected_by.get(&p.vm.id).copied(),
            can_limit_io: p.provider.can_limit_io() && p.vm.running,
        })
        .collect();
    let mut intents = IntentsDecided::default();
    for view in views {
        let Some(storage) = view.storage else {
            continue;
        };
        decide_intent(memory, input, b, view, storage, &candidates, &mut intents);
    }

    let (nodes, taint_wants) = decide_nodes(memory, input, b, &strictest);
    let taints = memory.taints.plan(
        &taint_wants,
        input.nodes,
        views,
        settings.taint_cap,
        operator,
    );
    let series = series(
        input,
        b,
        &all_vms,
        &strictest,
        &intents.pods,
        memory.taints.held() as i64,
    );

    let victims: Vec<Victim<VmRef>> = intents
        .victims
        .into_values()
        .filter(|v| !leaving.contains(&v.vm.provider))
        .collect();
    let in_force = throttle::in_force(input.changes, operator);
    let actions = plan_neighbour_throttles(
        now,
        &victims,
        &candidates,
        &in_force,
        &memory.neighbours,
        &settings.ladder,
    );
    memory
        .neighbours
        .record(&actions, &victims, now, &settings.ladder);
    let throttles = throttle::wanted(
        input.changes,
        operator,
        views,
        in_force,
        &actions,
        now,
        |vm| {
            b.vm(&plumbline_adapters::VmId::new(&vm.id))
                .map(|p| p.vm.disks.iter().map(|d| d.name.clone()).collect())
                .unwrap_or_default()
        },
    );
    b.retain_budgets(&wanted, now);
    memory.forget_gone(views, input.nodes, &wanted);
    PassDecision {
        pods: intents.pods,
        nodes,
        statuses: intents.statuses,
        throttles,
        actions,
        taints,
        series,
    }
}

/// What the intents' share of a pass decided so far.
#[derive(Default)]
struct IntentsDecided {
    pods: Vec<PodWrite>,
    statuses: Vec<StatusWrite>,
    /// Victims for the noisy-neighbour logic: merged per VM, worst state and highest tier.
    victims: BTreeMap<VmKey, Victim<VmRef>>,
}

/// One intent with a storage section: its pods' readiness through the guard, its status, and
/// the victims among its VMs.
fn decide_intent(
    memory: &mut PassMemory,
    input: &PassInput<'_>,
    b: &mut HealthBook,
    view: &IntentView,
    storage: StorageView,
    neighbours: &[NeighbourCandidate<VmRef>],
    out: &mut IntentsDecided,
) {
    let (now, settings) = (input.now, input.settings);
    let throttles = throttle::status_for(input.changes, input.operator, &view.label());
    let mut verdicts: Vec<(VmVerdict, ReadinessVerdict)> = Vec::new();
    for p in &view.pods {
        let vm_verdict = match &p.vm {
            Some(vm) => b.verdict(&vm.id, storage.budget, now),
            None => VmVerdict::unknown(UnknownCause::NotBacked),
        };
        let readiness = pod_readiness(
            p.vm.as_ref().map(|v| v.name.as_str()),
            &vm_verdict,
            storage.budget,
            settings.unknown,
        );
        verdicts.push((vm_verdict, readiness));
    }
    let candidates = view
        .pods
        .iter()
        .zip(&verdicts)
        .filter(|(_, (_, r))| !r.ready)
        .map(|(p, (_, r))| GuardCandidate {
            pod: p.name.clone(),
            severity: r.severity,
            currently_unready: condition_of(&p.pod, STORAGE_READINESS_GATE)
                .is_some_and(|c| c.status == status::FALSE),
        })
        .collect();
    // Not Ready, and not because of us: these use up the guard's budget first.
    let unready_elsewhere = view
        .pods
        .iter()
        .filter(|p| {
            condition_of(&p.pod, "Ready").is_none_or(|c| c.status != status::TRUE)
                && condition_of(&p.pod, STORAGE_READINESS_GATE)
                    .is_none_or(|c| c.status != status::FALSE)
        })
        .count();
    let decision = guard(
        GuardPods {
            total: view.pods.len(),
            unready_elsewhere,
        },
        storage.limit,
        candidates,
    );
    let held: HashSet<&String> = decision.held_back.iter().collect();

    let mut backing = Vec::new();
    for (p, (vm_verdict, readiness)) in view.pods.iter().zip(verdicts) {
        let readiness = if held.contains(&p.name) {
            readiness.held_by_guard(&decision.budget)
        } else {
            readiness
        };
        let latest = p.vm.as_ref().and_then(|vm| b.latest_latency(&vm.id));
        let mut entry = json!({ "pod": p.name, "verdict": verdict_word(vm_verdict.state()) });
        if let Some(n) = &p.node {
            entry["node"] = json!(n);
        }
        if let Some(vm) = &p.vm {
            entry["vm"] = json!(vm.name);
            entry["provider"] = json!(vm.provider);
            if let Some(place) = b.vm(&vm.id) {
                entry["host"] = json!(place.vm.host);
                if !place.vm.datastores.is_empty() {
                    entry["datastores"] = json!(place.vm.datastores);
                }
            }
        }
        if let Some((latency, at)) = latest {
            entry["latency"] = json!(format_latency(latency));
            entry["sampledAt"] = json!(rfc3339(at));
        }
        backing.push(entry);

        if let Some(vm) = &p.vm {
            let state = vm_verdict.state();
            let key = (vm.id.clone(), storage.budget);
            let entered = match memory.state_since.get(&key) {
                Some((was, at)) if *was == state => *at,
                _ => now,
            };
            memory.state_since.insert(key, (state, entered));
            let in_state = now.duration_since(entered).unwrap_or_default();
            let only_in = |s: HealthState| if state == s { in_state } else { Duration::ZERO };
            let (healthy_for, unknown_for) =
                (only_in(HealthState::Healthy), only_in(HealthState::Unknown));
            if view.may_throttle {
                if let Some(place) = b.vm(&vm.id) {
                    let latency = latest.map(|(l, _)| l);
                    let v = out.victims.entry(vm.clone()).or_insert_with(|| Victim {
                        vm: vm.to_ref(),
                        tier: view.tier,
                        intent: view.label(),
                        state,
                        healthy_for,
                        unknown_for,
                        latency,
                        sample_interval: place.provider.interval,
                        active: view.active,
                        host: Some(place.vm.host.clone()),
                        datastores: place.vm.datastores.iter().cloned().collect(),
                    });
                    v.state = v.state.max(state);
                    v.tier = v.tier.max(view.tier);
                    v.active |= view.active;
                    v.healthy_for = v.healthy_for.min(healthy_for);
                    v.unknown_for = v.unknown_for.min(unknown_for);
                    v.latency = v.latency.max(latency);
                }
            }
        }

        if !storage.gate {
            continue;
        }
        let current = condition_of(&p.pod, STORAGE_READINESS_GATE);
        let want = status_word(readiness.ready);
        let differs = current
            .is_none_or(|c| c.status != want || c.reason.as_deref() != Some(readiness.reason));
        let key = (view.namespace.clone(), p.name.clone());
        let stale_message = current
            .is_some_and(|c| c.message.as_deref() != Some(readiness.message.as_str()))
            && refresh_due(memory.pod_written.get(&key), input.instant);
        if differs || stale_message {
            let transition = current.is_some_and(|c| c.status != want);
            let detection = match vm_verdict.verdict {
                Verdict::Degraded { onset, .. }
                    if !readiness.ready && (transition || current.is_none()) =>
                {
                    let window =
                        p.vm.as_ref()
                            .and_then(|vm| b.vm(&vm.id))
                            .map(|place| place.provider.interval)
                            .unwrap_or_default();
                    now.duration_since(onset).ok().map(|d| d + window)
                }
                _ => None,
            };
            out.pods.push(PodWrite {
                namespace: view.namespace.clone(),
                pod: p.name.clone(),
                intent: view.name.clone(),
                verdict: readiness,
                transition,
                detection,
            });
        }
    }

    let guard_report = json!({
        "allowedUnready": decision.budget.allowed,
        "unreadyElsewhere": decision.budget.unready_elsewhere,
        "markedUnready": decision.marked,
        "heldReady": decision.held_back,
    });
    let mut body = json!({ "backing": backing, "guard": guard_report });
    if !throttles.is_empty() {
        body["neighbourThrottles"] = json!(throttles);
    }
    if view.may_throttle {
        let near = neighbour_candidates(view, b, neighbours, &settings.ladder);
        if !near.is_empty() {
            body["neighbourCandidates"] = json!(near);
        }
    }
    let key = (view.namespace.clone(), view.name.clone());
    let due = match memory.intent_status.get(&key) {
        None => true,
        Some((prev, at)) => {
            status_shape(prev) != status_shape(&body)
                || (prev != &body && refresh_due(Some(at), input.instant))
        }
    };
    if due {
        out.statuses.push(StatusWrite { intent: key, body });
    }
}

/// The status without its figures: the shape decides whether to write now; figures refresh
/// slowly, so status churn does not wake the intent controller every second.
fn status_shape(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(list) = v.get_mut("backing").and_then(Value::as_array_mut) {
        for e in list {
            if let Some(o) = e.as_object_mut() {
                o.remove("latency");
                o.remove("sampledAt");
            }
        }
    }
    if let Some(list) = v
        .get_mut("neighbourCandidates")
        .and_then(Value::as_array_mut)
    {
        for e in list {
            if let Some(o) = e.as_object_mut() {
                o.remove("iops");
            }
        }
    }
    v
}

/// The storage condition of each node backed by a known VM (for a scoped operator, only nodes
/// running its pods), and the nodes that deserve the taint.
fn decide_nodes(
    memory: &PassMemory,
    input: &PassInput<'_>,
    b: &mut HealthBook,
    strictest: &BTreeMap<plumbline_adapters::VmId, LatencyBudget>,
) -> (Vec<NodeWrite>, Vec<TaintWant>) {
    let (views, settings, now) = (input.views, input.settings, input.now);
    let mut writes = Vec::new();
    let mut taint_wants = Vec::new();
    let nodes_with_pods: HashSet<&str> = views
        .iter()
        .flat_map(|v| v.pods.iter())
        .filter_map(|p| p.node.as_deref())
        .collect();
    for node in input.nodes {
        // A scoped operator leaves nodes without its pods alone (and a taint it put there
        // goes: no entry is wanted for it).
        if input.scoped && !nodes_with_pods.contains(node.name_any().as_str()) {
            continue;
        }
        let Some(vm) = graph::vm_for_node(b, node) else {
            continue;
        };
        let budget = *strictest
            .get(&vm.id)
            .unwrap_or(&settings.default_node_budget);
        let verdict = b.verdict(&vm.id, budget, now);
        let c = node_condition(&vm.name, &verdict, budget);
        if settings.taint_degraded_nodes && c.taint {
            let name = node.name_any();
            taint_wants.push(TaintWant {
                intents: views
                    .iter()
                    .filter(|v| {
                        v.pods
                            .iter()
                            .any(|p| p.node.as_deref() == Some(name.as_str()))
                    })
                    .map(IntentView::label)
                    .collect(),
                because: format!(
                    "the storage of VM {} is over budget (latency budget {})",
                    vm.name,
                    format_latency(budget.0)
                ),
                node: name,
            });
        }
        let current = node_condition_of(node, NODE_STORAGE_CONDITION);
        let name = node.name_any();
        let differs = current
            .is_none_or(|cur| cur.status != c.status || cur.reason.as_deref() != Some(c.reason));
        let stale_message = current
            .is_some_and(|cur| cur.message.as_deref() != Some(c.message.as_str()))
            && refresh_due(memory.node_written.get(&name), input.instant);
        if differs || stale_message {
            let transition = match current {
                Some(cur) if cur.status == c.status => {
                    cur.last_transition_time.as_ref().map(|t| t.0.to_string())
                }
                _ => None,
            }
            .unwrap_or_else(|| rfc3339(now));
            writes.push(NodeWrite {
                node: name,
                condition: json!({
                    "type": NODE_STORAGE_CONDITION,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                    "lastHeartbeatTime": rfc3339(now),
                    "lastTransitionTime": transition,
                }),
            });
        }
    }
    (writes, taint_wants)
}

/// The pass's metric series: per VM its verdict, I/O rate and disk latencies; per pod what
/// backs it and whether its storage is healthy.
fn series(
    input: &PassInput<'_>,
    b: &mut HealthBook,
    all_vms: &[VmKey],
    strictest: &BTreeMap<plumbline_adapters::VmId, LatencyBudget>,
    pod_writes: &[PodWrite],
    taints_held: i64,
) -> PassSeries {
    let mut series = PassSeries {
        taints_held,
        ..PassSeries::default()
    };
    for vm in all_vms {
        let budget = *strictest
            .get(&vm.id)
            .unwrap_or(&input.settings.default_node_budget);
        let state = b.verdict(&vm.id, budget, input.now).state();
        for s in [
            HealthState::Healthy,
            HealthState::Degraded,
            HealthState::Unknown,
        ] {
            let labels = VerdictLabels {
                provider: vm.provider.clone(),
                vm: vm.name.clone(),
                state: s.as_str().into(),
            };
            series.verdicts.push((labels, (s == state) as i64));
        }
        if let Some(iops) = b.iops.get(&vm.id) {
            let labels = VmLabels {
                provider: vm.provider.clone(),
                vm: vm.name.clone(),
            };
            series.iops.push((labels, *iops));
        }
        for ((id, disk), s) in &b.disks {
            if id != &vm.id {
                continue;
            }
            if let Some(latest) = s.recent.back() {
                let labels = DiskLabels {
                    provider: vm.provider.clone(),
                    vm: vm.name.clone(),
                    disk: disk.clone(),
                };
                let secs = latest.per_op.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                series.disks.push((labels, secs));
            }
        }
    }
    for view in input.views {
        for p in &view.pods {
            let Some(vm) = &p.vm else { continue };
            let Some(place) = b.vm(&vm.id) else { continue };
            series.backing.push(BackingLabels {
                provider: vm.provider.clone(),
                host: place.vm.host.clone(),
                vm: vm.name.clone(),
                node: p.node.clone().unwrap_or_default(),
                namespace: view.namespace.clone(),
                pod: p.name.clone(),
                intent: view.name.clone(),
            });
        }
    }
    // Every pod written has a series: it belongs to an intent with a storage section.
    for view in input.views.iter().filter(|v| v.storage.is_some()) {
        for p in &view.pods {
            let ready =
                condition_of(&p.pod, STORAGE_READINESS_GATE).map(|c| c.status == status::TRUE);
            let written = pod_writes
                .iter()
                .find(|w| w.namespace == view.namespace && w.pod == p.name)
                .map(|w| w.verdict.ready);
            if let Some(ready) = written.or(ready) {
                let labels = PodLabels {
                    namespace: view.namespace.clone(),
                    pod: p.name.clone(),
                    intent: view.name.clone(),
                };
                series.pods.push((labels, ready as i64));
            }
        }
    }
    series
}

impl PassMemory {
    /// What the pass remembers only for pods, nodes, VMs and intents that are still there: a
    /// long-running operator sees many come and go, and must not keep them all.
    fn forget_gone(
        &mut self,
        views: &[IntentView],
        nodes: &[Arc<Node>],
        wanted: &BTreeMap<plumbline_adapters::VmId, BTreeSet<LatencyBudget>>,
    ) {
        let pods: HashSet<(&str, &str)> = views
            .iter()
            .flat_map(|v| {
                v.pods
                    .iter()
                    .map(|p| (v.namespace.as_str(), p.name.as_str()))
            })
            .collect();
        self.pod_written
            .retain(|(ns, pod), _| pods.contains(&(ns.as_str(), pod.as_str())));
        let nodes: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.node_written.retain(|n, _| nodes.contains(n));
        self.state_since
            .retain(|(vm, budget), _| wanted.get(vm).is_some_and(|b| b.contains(budget)));
        let intents: HashSet<(&str, &str)> = views
            .iter()
            .map(|v| (v.namespace.as_str(), v.name.as_str()))
            .collect();
        self.intent_status
            .retain(|(ns, name), _| intents.contains(&(ns.as_str(), name.as_str())));
    }
}

/// The busiest VMs the ladder could throttle for any of the intent's VMs, by name.
fn neighbour_candidates(
    view: &IntentView,
    b: &HealthBook,
    candidates: &[NeighbourCandidate<VmRef>],
    ladder: &ThrottleLadder,
) -> Vec<NeighbourCandidateStatus> {
    let mut near: BTreeMap<&VmRef, &NeighbourCandidate<VmRef>> = BTreeMap::new();
    for vm in view.pods.iter().filter_map(|p| p.vm.as_ref()) {
        let Some(place) = b.vm(&vm.id) else { continue };
        let victim = Victim {
            vm: vm.to_ref(),
            tier: view.tier,
            intent: view.label(),
            state: HealthState::Degraded,
            healthy_for: Duration::ZERO,
            unknown_for: Duration::ZERO,
            latency: None,
            sample_interval: place.provider.interval,
            active: true,
            host: Some(place.vm.host.clone()),
            datastores: place.vm.datastores.iter().cloned().collect(),
        };
        for (c, _) in neighbours_of(&victim, candidates, ladder) {
            near.insert(&c.vm, c);
        }
    }
    let mut busiest: Vec<&NeighbourCandidate<VmRef>> = near.into_values().collect();
    busiest.sort_by(|a, b| b.iops.total_cmp(&a.iops).then_with(|| a.vm.cmp(&b.vm)));
    busiest.truncate(LISTED_NEIGHBOURS);
    busiest.sort_by(|a, b| a.vm.cmp(&b.vm));
    busiest
        .into_iter()
        .map(|c| NeighbourCandidateStatus {
            vm: c.vm.name.clone(),
            vm_id: c.vm.id.clone(),
            provider: c.vm.provider.clone(),
            host: c.host.clone(),
            datastores: c.datastores.iter().cloned().collect(),
            iops: c.iops.round() as i64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{book::ProviderView, caches::Caches};
    use k8s_openapi::api::core::v1::NodeStatus;
    use kube::runtime::{reflector, watcher};
    use plumbline_adapters::{
        BackingVm, Capability, DiskLatency, OpLatency, Support, VmDisk, VmId,
    };
    use plumbline_crds::{
        conditions::{node as node_reason, pod as pod_reason},
        ChangePurpose, NodeMappingStrategy, WorkloadIntent,
    };
    use plumbline_policies::health::UnknownReadiness;

    const OPERATOR: &str = "namespace/shop";

    /// A store holding `objects`, synced.
    fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn pod(name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "abc"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-abc", "uid": "rs1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}],
                     "readinessGates": [{"conditionType": STORAGE_READINESS_GATE}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": STORAGE_READINESS_GATE, "status": "True", "reason": pod_reason::WITHIN_BUDGET}]}
        }))
        .unwrap()
    }

    fn guest(id: &str, name: &str) -> BackingVm {
        BackingVm {
            id: VmId::new(id),
            name: name.into(),
            provider_id: format!("libvirt:///{id}"),
            host: "h1".into(),
            datastores: vec!["/ds".into()],
            disks: vec![VmDisk {
                name: "vda".into(),
                path: None,
                datastore: Some("/ds".into()),
            }],
            running: true,
        }
    }

    /// Three pods of `web` (critical, 5 ms budget, `maxUnready: 2`) on node `n1`, backed by
    /// guest `vm1`; with `noisy`, guest `vm2` shares its datastore and the intent may throttle
    /// noisy neighbours.
    struct World {
        intent: WorkloadIntent,
        pods: Vec<Pod>,
        node: Node,
        book: HealthBook,
        now: SystemTime,
        instant: Instant,
        settings: HealthSettings,
        memory: PassMemory,
    }

    impl World {
        fn new(noisy: bool) -> Self {
            let intent = serde_json::from_value(json!({
                "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
                "metadata": {"name": "web", "namespace": "shop", "uid": "i1"},
                "spec": {"target": {"kind": "Deployment", "name": "web"}, "priority": "critical",
                         "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": 2},
                         "infrastructure": {"throttleNoisyNeighbours": noisy}}
            }))
            .unwrap();
            let node = serde_json::from_value(json!({
                "metadata": {"name": "n1"}, "spec": {"providerID": "libvirt:///u1"}
            }))
            .unwrap();
            let mut provider = ProviderView::new(
                "kvm",
                Duration::from_secs(1),
                NodeMappingStrategy::ProviderId,
                None,
            );
            provider.connected = true;
            provider
                .capabilities
                .entries
                .insert(Capability::DiskIopsLimit, Support::Supported);
            provider.inventory = vec![guest("u1", "vm1")];
            if noisy {
                provider.inventory.push(guest("u2", "vm2"));
            }
            let mut book = HealthBook::default();
            book.providers.insert("kvm".into(), provider);
            Self {
                intent,
                pods: (1..=3).map(|i| pod(&format!("web-abc-{i}"))).collect(),
                node,
                book,
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
                instant: Instant::now(),
                settings: HealthSettings::default(),
                memory: PassMemory::default(),
            }
        }

        /// Three samples, a second apart, up to now: `vm1` at `ms` per operation, `vm2` busy.
        fn sampled(mut self, ms: u64) -> Self {
            for i in (0..3).rev() {
                let at = self.now - Duration::from_secs(i);
                let disk = |vm: &str, ms: u64, ops: u64| {
                    let op = Some(OpLatency {
                        mean: Duration::from_millis(ms),
                        ops: Some(ops),
                    });
                    DiskLatency {
                        vm: VmId::new(vm),
                        disk: "vda".into(),
                        read: op,
                        write: op,
                        flush: None,
                        window: Duration::from_secs(1),
                        observed_at: at,
                    }
                };
                self.book
                    .record_samples("kvm", at, &[disk("u1", ms, 100), disk("u2", 1, 200)]);
            }
            self
        }

        fn pass(&mut self) -> PassDecision {
            let caches = Caches {
                pods: store_of(self.pods.clone()),
                nodes: store_of(vec![self.node.clone()]),
                providers: store_of(Vec::new()),
                changes: store_of(Vec::new()),
            };
            let intents = [Arc::new(self.intent.clone())];
            let views = graph::build(&caches, &self.book, self.now.into(), &intents);
            let nodes = caches.nodes.state();
            let input = PassInput {
                views: &views,
                nodes: &nodes,
                providers: &[],
                changes: &[],
                may_judge_nodes: &|_, _| true,
                settings: &self.settings,
                operator: OPERATOR,
                scoped: true,
                now: self.now,
                instant: self.instant,
            };
            decide(&input, &mut self.book, &mut self.memory)
        }

        /// What the shell does when every write succeeds.
        fn written(&mut self, d: &PassDecision) {
            for w in &d.pods {
                let pod = self
                    .pods
                    .iter_mut()
                    .find(|p| p.name_any() == w.pod)
                    .unwrap();
                let conditions = pod.status.as_mut().unwrap().conditions.as_mut().unwrap();
                conditions.retain(|c| c.type_ != STORAGE_READINESS_GATE);
                conditions.push(PodCondition {
                    type_: STORAGE_READINESS_GATE.into(),
                    status: w.status().into(),
                    reason: Some(w.verdict.reason.into()),
                    message: Some(w.verdict.message.clone()),
                    ..PodCondition::default()
                });
                self.memory
                    .pod_written
                    .insert((w.namespace.clone(), w.pod.clone()), self.instant);
            }
            for w in &d.nodes {
                self.node.status = Some(NodeStatus {
                    conditions: Some(vec![serde_json::from_value(w.condition.clone()).unwrap()]),
                    ..NodeStatus::default()
                });
                self.memory
                    .node_written
                    .insert(w.node.clone(), self.instant);
            }
            for w in &d.statuses {
                self.memory
                    .intent_status
                    .insert(w.intent.clone(), (w.body.clone(), self.instant));
            }
        }

        fn node_condition(&mut self) -> &mut NodeCondition {
            &mut self
                .node
                .status
                .as_mut()
                .unwrap()
                .conditions
                .as_mut()
                .unwrap()[0]
        }
    }

    fn pod_conditions(d: &PassDecision) -> Vec<(String, &'static str, &'static str)> {
        d.pods
            .iter()
            .map(|w| (w.pod.clone(), w.status(), w.verdict.reason))
            .collect()
    }

    #[test]
    fn pods_over_budget_are_marked_unready_up_to_the_guard_and_the_last_is_held() {
        let mut world = World::new(false).sampled(40);
        let d = world.pass();
        let conditions = pod_conditions(&d);
        let marked = conditions
            .iter()
            .filter(|(_, s, r)| *s == status::FALSE && *r == pod_reason::OVER_BUDGET)
            .count();
        let held = conditions
            .iter()
            .filter(|(_, s, r)| *s == status::TRUE && *r == pod_reason::HELD_BY_GUARD)
            .count();
        assert_eq!((d.pods.len(), marked, held), (3, 2, 1), "{conditions:?}");
        // The two marked unready change status, and their detection latency is measured.
        for w in d.pods.iter().filter(|w| !w.verdict.ready) {
            assert!(w.transition && w.detection.is_some(), "{}", w.pod);
        }
        assert_eq!(d.nodes.len(), 1);
        assert_eq!(d.nodes[0].condition["status"], status::TRUE);
        assert_eq!(d.nodes[0].condition["reason"], node_reason::OVER_BUDGET);
        assert_eq!(d.statuses.len(), 1);
        let guard = &d.statuses[0].body["guard"];
        assert_eq!(guard["allowedUnready"], 2, "{guard}");
        assert_eq!(guard["heldReady"].as_array().unwrap().len(), 1, "{guard}");
        assert_eq!(d.statuses[0].body["backing"][0]["vm"], "vm1");
        assert!(d.throttles.is_empty() && d.actions.is_empty());
        let unready = d.series.pods.iter().filter(|(_, v)| *v == 0).count();
        assert_eq!((d.series.pods.len(), unready), (3, 2));
        assert_eq!(d.series.backing.len(), 3);
    }

    #[test]
    fn what_was_written_is_not_rewritten() {
        let mut world = World::new(false).sampled(40);
        let first = world.pass();
        world.written(&first);
        let second = world.pass();
        assert!(second.pods.is_empty(), "{:?}", pod_conditions(&second));
        assert!(second.nodes.is_empty());
        assert!(second.statuses.is_empty());
        // The metrics still say what holds.
        assert_eq!(second.series.pods.len(), 3);
    }

    #[test]
    fn a_node_condition_is_rewritten_when_its_reason_changes_and_keeps_its_transition_time() {
        let mut world = World::new(false).sampled(40);
        let first = world.pass();
        world.written(&first);
        let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
        );
        let c = world.node_condition();
        c.reason = Some(node_reason::UNKNOWN.into());
        c.last_transition_time = Some(since.clone());
        let d = world.pass();
        assert_eq!(d.nodes.len(), 1);
        let c = &d.nodes[0].condition;
        assert_eq!(c["reason"], node_reason::OVER_BUDGET);
        assert_eq!(
            c["lastTransitionTime"],
            since.0.to_string(),
            "status unchanged"
        );
    }

    #[test]
    fn a_changed_message_waits_for_the_refresh_interval() {
        let mut world = World::new(false).sampled(40);
        let first = world.pass();
        world.written(&first);
        world.node_condition().message = Some("an older latency".into());
        assert!(world.pass().nodes.is_empty(), "written just now");
        world.instant += MESSAGE_REFRESH;
        let d = world.pass();
        assert_eq!(d.nodes.len(), 1, "written a refresh interval ago");
        assert_eq!(d.nodes[0].condition["reason"], node_reason::OVER_BUDGET);
    }

    #[test]
    fn an_unknown_verdict_fails_open_by_default() {
        let mut world = World::new(false);
        let d = world.pass();
        let conditions = pod_conditions(&d);
        assert_eq!(conditions.len(), 3);
        assert!(
            conditions
                .iter()
                .all(|(_, s, r)| *s == status::TRUE && *r == pod_reason::UNKNOWN),
            "{conditions:?}"
        );
        assert!(d
            .pods
            .iter()
            .all(|w| !w.transition && w.detection.is_none()));
        assert_eq!(d.nodes[0].condition["status"], status::UNKNOWN);
    }

    #[test]
    fn an_unknown_verdict_failing_closed_goes_through_the_guard() {
        let mut world = World::new(false);
        world.settings.unknown = UnknownReadiness::FailClosed;
        let d = world.pass();
        let mut reasons: Vec<(&str, &str)> = pod_conditions(&d)
            .into_iter()
            .map(|(_, s, r)| (s, r))
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                (status::FALSE, pod_reason::UNKNOWN),
                (status::FALSE, pod_reason::UNKNOWN),
                (status::TRUE, pod_reason::UNKNOWN_HELD_BY_GUARD),
            ]
        );
    }

    #[test]
    fn a_busy_neighbour_on_the_datastore_is_throttled_through_the_ledger() {
        let mut world = World::new(true).sampled(40);
        let d = world.pass();
        assert_eq!(d.actions.len(), 1, "{:?}", d.actions);
        assert!(matches!(
            &d.actions[0],
            NeighbourAction::Step { vm, level: 1, .. } if vm.name == "vm2"
        ));
        assert_eq!(d.throttles.len(), 1, "one per disk of vm2");
        let t = &d.throttles[0];
        assert_eq!(t.purpose, ChangePurpose::NeighbourThrottle);
        assert_eq!(
            (t.target.name.as_str(), t.operator.as_str()),
            ("vm2", OPERATOR)
        );
        assert!(t.owners.iter().any(|o| o.intent == "shop/web"));
        let near = &d.statuses[0].body["neighbourCandidates"];
        assert_eq!(near[0]["vm"], "vm2", "{near}");
        assert_eq!(d.series.iops.len(), 2);
    }
}
