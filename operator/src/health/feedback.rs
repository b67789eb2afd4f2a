//! One feedback pass: verdicts per VM and budget, readiness per pod through the guard, the pod
//! and node conditions (and taints, carried out by [`super::taint`]), the intent's backing map
//! and guard report, metrics, and the noisy-neighbour decisions (carried out by
//! [`super::throttle`]).

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::{status, verdict},
    names::{HEALTH_FIELD_MANAGER, NODE_STORAGE_CONDITION, STORAGE_READINESS_GATE},
    InfraChange, InfraChangeSpec, VmRef, WorkloadIntent,
};
use plumbline_policies::health::{
    format_latency, guard, node_condition, plan_neighbour_throttles, pod_readiness, GuardCandidate,
    GuardPods, HealthState, LatencyBudget, NeighbourCandidate, NeighbourHistory, ReadinessVerdict,
    Tier, Verdict, Victim, VmVerdict,
};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use tracing::{debug, info, warn};

use super::{
    book::HealthBook,
    caches::Caches,
    graph::{self, IntentView, VmKey},
    settings::HealthSettings,
    taint::{self, TaintGuard, TaintWant},
    throttle,
};
use crate::{
    context::Context,
    metrics::health::{
        BackingLabels, DiskLabels, PodLabels, TransitionLabels, VerdictLabels, VmLabels,
    },
};

/// Messages carry the latest latency; refreshing them is worth a write this often, no more.
const MESSAGE_REFRESH: Duration = Duration::from_secs(30);

/// What a pass remembers for the next one.
#[derive(Default)]
pub struct Feedback {
    pod_written: HashMap<(String, String), Instant>,
    node_written: HashMap<String, Instant>,
    /// Each VM's state against each budget and since when (for releasing throttles).
    state_since: HashMap<(plumbline_adapters::VmId, LatencyBudget), (HealthState, SystemTime)>,
    /// What the noisy-neighbour ladder remembers between passes.
    neighbours: NeighbourHistory<VmRef>,
    intent_status: HashMap<(String, String), (Value, Instant)>,
    series: Series,
    taints: TaintGuard,
    /// Scoped to a namespace: only nodes running pods of its intents get a condition, so
    /// operators scoped to different namespaces (tests, tenants) never fight over a node.
    scoped: bool,
}

/// Label sets written last pass, so series of pods and VMs that went away are removed.
#[derive(Default)]
struct Series {
    backing: HashSet<BackingLabels>,
    pods: HashSet<PodLabels>,
    verdicts: HashSet<VerdictLabels>,
    disks: HashSet<DiskLabels>,
    iops: HashSet<VmLabels>,
}

struct PodWrite {
    namespace: String,
    pod: String,
    intent: String,
    verdict: ReadinessVerdict,
    transition: bool,
    detection: Option<Duration>,
}

struct NodeWrite {
    node: String,
    body: Value,
}

fn condition_of<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn node_condition_of<'a>(
    node: &'a Node,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
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

impl Feedback {
    pub fn new(scoped: bool) -> Self {
        Self {
            scoped,
            ..Self::default()
        }
    }

    /// Computes and writes everything for one pass; returns the infrastructure changes it
    /// wants in force (noisy-neighbour throttles, node taints) for the ledger.
    pub async fn pass(
        &mut self,
        ctx: &Arc<Context>,
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        settings: &HealthSettings,
        operator: &str,
        now: SystemTime,
    ) -> Vec<InfraChangeSpec> {
        // Only intents their tenant policies allow may trigger infrastructure actions.
        let tenancy = crate::tenancy::InfrastructureIntents::read(ctx);
        let intents: Vec<Arc<WorkloadIntent>> = tenancy.intents.clone();
        let changes: Vec<Arc<InfraChange>> = caches.changes.state();
        let mut pod_writes = Vec::new();
        let mut node_writes = Vec::new();
        let mut taint_wants = Vec::new();
        let mut status_writes = Vec::new();
        let actions;
        let views;
        let wanted_throttles;
        let taint_plan;
        {
            let mut b = match book.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            views = graph::build(caches, &b, now.into(), &intents);
            let mut wanted: BTreeMap<plumbline_adapters::VmId, BTreeSet<LatencyBudget>> =
                BTreeMap::new();
            // The strictest budget each VM serves, for node conditions and the VM verdict metric.
            let mut strictest: BTreeMap<plumbline_adapters::VmId, LatencyBudget> = BTreeMap::new();
            let mut protected_by: BTreeMap<plumbline_adapters::VmId, Tier> = BTreeMap::new();
            for view in &views {
                for p in &view.pods {
                    let Some(vm) = &p.vm else { continue };
                    let tier = protected_by.entry(vm.id.clone()).or_insert(view.tier);
                    *tier = (*tier).max(view.tier);
                    if let Some(s) = view.storage {
                        wanted.entry(vm.id.clone()).or_default().insert(s.budget);
                        // A namespace not granted NodeTaints does not judge (or taint) nodes.
                        if tenancy.may_judge_nodes(&view.namespace, &view.name) {
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
            let leaving: HashSet<String> = caches
                .providers
                .state()
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
            let mut victims: BTreeMap<VmKey, Victim<VmRef>> = BTreeMap::new();
            for view in &views {
                let Some(storage) = view.storage else {
                    continue;
                };
                let throttles = throttle::status_for(&changes, operator, &view.label());
                self.intent_pass(
                    view,
                    storage,
                    &mut b,
                    now,
                    settings,
                    &throttles,
                    &candidates,
                    &mut pod_writes,
                    &mut status_writes,
                    &mut victims,
                );
            }

            // Node conditions.
            let nodes_with_pods: HashSet<&str> = views
                .iter()
                .flat_map(|v| v.pods.iter())
                .filter_map(|p| p.node.as_deref())
                .collect();
            for node in caches.nodes.state() {
                // A scoped operator leaves nodes without its pods alone (and a taint it put
                // there goes: no entry is wanted for it).
                if self.scoped && !nodes_with_pods.contains(node.name_any().as_str()) {
                    continue;
                }
                let Some(vm) = graph::vm_for_node(&b, &node) else {
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
                let current = node_condition_of(&node, NODE_STORAGE_CONDITION);
                let name = node.name_any();
                let differs = current.is_none_or(|cur| {
                    cur.status != c.status || cur.reason.as_deref() != Some(c.reason)
                });
                let stale_message = current
                    .is_some_and(|cur| cur.message.as_deref() != Some(c.message.as_str()))
                    && self
                        .node_written
                        .get(&name)
                        .is_none_or(|at| at.elapsed() >= MESSAGE_REFRESH);
                if differs || stale_message {
                    let transition = match current {
                        Some(cur) if cur.status == c.status => {
                            cur.last_transition_time.as_ref().map(|t| t.0.to_string())
                        }
                        _ => None,
                    }
                    .unwrap_or_else(|| rfc3339(now));
                    node_writes.push(NodeWrite {
                        node: name,
                        body: json!({
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

            taint_plan = self.taints.plan(
                &taint_wants,
                &caches.nodes.state(),
                &views,
                settings.taint_cap,
                operator,
            );
            ctx.metrics
                .health
                .taints_held
                .set(self.taints.held() as i64);

            // Metrics per VM and disk.
            let mut series = Series::default();
            for vm in &all_vms {
                let budget = *strictest
                    .get(&vm.id)
                    .unwrap_or(&settings.default_node_budget);
                let state = b.verdict(&vm.id, budget, now).state();
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
                    ctx.metrics
                        .health
                        .vm_verdict
                        .get_or_create(&labels)
                        .set((s == state) as i64);
                    series.verdicts.insert(labels);
                }
                if let Some(iops) = b.iops.get(&vm.id) {
                    let labels = VmLabels {
                        provider: vm.provider.clone(),
                        vm: vm.name.clone(),
                    };
                    ctx.metrics.health.vm_iops.get_or_create(&labels).set(*iops);
                    series.iops.insert(labels);
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
                        ctx.metrics
                            .health
                            .disk_latency
                            .get_or_create(&labels)
                            .set(secs);
                        series.disks.insert(labels);
                    }
                }
            }
            for view in &views {
                for p in &view.pods {
                    let Some(vm) = &p.vm else { continue };
                    let Some(place) = b.vm(&vm.id) else { continue };
                    let labels = BackingLabels {
                        provider: vm.provider.clone(),
                        host: place.vm.host.clone(),
                        vm: vm.name.clone(),
                        node: p.node.clone().unwrap_or_default(),
                        namespace: view.namespace.clone(),
                        pod: p.name.clone(),
                        intent: view.name.clone(),
                    };
                    ctx.metrics
                        .health
                        .backing_info
                        .get_or_create(&labels)
                        .set(1);
                    series.backing.insert(labels);
                }
            }
            for w in &pod_writes {
                let labels = PodLabels {
                    namespace: w.namespace.clone(),
                    pod: w.pod.clone(),
                    intent: w.intent.clone(),
                };
                series.pods.insert(labels);
            }
            for view in &views {
                if view.storage.is_none() {
                    continue;
                }
                for p in &view.pods {
                    let ready = condition_of(&p.pod, STORAGE_READINESS_GATE)
                        .map(|c| c.status == status::TRUE);
                    let labels = PodLabels {
                        namespace: view.namespace.clone(),
                        pod: p.name.clone(),
                        intent: view.name.clone(),
                    };
                    let written = pod_writes
                        .iter()
                        .find(|w| w.namespace == view.namespace && w.pod == p.name)
                        .map(|w| w.verdict.ready);
                    if let Some(ready) = written.or(ready) {
                        ctx.metrics
                            .health
                            .pod_storage_healthy
                            .get_or_create(&labels)
                            .set(ready as i64);
                        series.pods.insert(labels);
                    }
                }
            }
            self.replace_series(ctx, series);

            let victims: Vec<Victim<VmRef>> = victims
                .into_values()
                .filter(|v| !leaving.contains(&v.vm.provider))
                .collect();
            let in_force = throttle::in_force(&changes, operator);
            actions = plan_neighbour_throttles(
                now,
                &victims,
                &candidates,
                &in_force,
                &self.neighbours,
                &settings.ladder,
            );
            self.neighbours
                .record(&actions, &victims, now, &settings.ladder);
            wanted_throttles =
                throttle::wanted(&changes, operator, &views, in_force, &actions, now, |vm| {
                    b.vm(&plumbline_adapters::VmId::new(&vm.id))
                        .map(|p| p.vm.disks.iter().map(|d| d.name.clone()).collect())
                        .unwrap_or_default()
                });
            b.retain_budgets(&wanted, now);
            self.forget_gone(&views, &caches.nodes.state(), &wanted);
        }

        for w in pod_writes {
            self.write_pod(ctx, w, now).await;
        }
        for w in node_writes {
            self.write_node(ctx, w).await;
        }
        for (key, body) in status_writes {
            self.write_intent_status(ctx, key, body).await;
        }
        throttle::publish(ctx, &views, &changes, &wanted_throttles, operator, &actions).await;
        taint::publish(ctx, taint_plan.newly_held).await;
        let mut wanted = wanted_throttles;
        wanted.extend(taint_plan.wanted);
        wanted
    }

    #[allow(clippy::too_many_arguments)]
    fn intent_pass(
        &mut self,
        view: &IntentView,
        storage: graph::StorageView,
        b: &mut HealthBook,
        now: SystemTime,
        settings: &HealthSettings,
        throttles: &[plumbline_crds::NeighbourThrottleStatus],
        neighbours: &[NeighbourCandidate<VmRef>],
        pod_writes: &mut Vec<PodWrite>,
        status_writes: &mut Vec<((String, String), Value)>,
        victims: &mut BTreeMap<VmKey, Victim<VmRef>>,
    ) {
        let mut verdicts: Vec<(VmVerdict, ReadinessVerdict)> = Vec::new();
        for p in &view.pods {
            let vm_verdict = match &p.vm {
                Some(vm) => b.verdict(&vm.id, storage.budget, now),
                None => VmVerdict::unknown(plumbline_policies::health::UnknownCause::NotBacked),
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

            // Victims for the noisy-neighbour logic: merged per VM, worst state and highest tier.
            if let Some(vm) = &p.vm {
                let state = vm_verdict.state();
                let key = (vm.id.clone(), storage.budget);
                let entered = match self.state_since.get(&key) {
                    Some((was, at)) if *was == state => *at,
                    _ => now,
                };
                self.state_since.insert(key, (state, entered));
                let in_state = now.duration_since(entered).unwrap_or_default();
                let only_in = |s: HealthState| if state == s { in_state } else { Duration::ZERO };
                let (healthy_for, unknown_for) =
                    (only_in(HealthState::Healthy), only_in(HealthState::Unknown));
                if view.may_throttle {
                    if let Some(place) = b.vm(&vm.id) {
                        let latency = latest.map(|(l, _)| l);
                        let v = victims.entry(vm.clone()).or_insert_with(|| Victim {
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
                && self
                    .pod_written
                    .get(&key)
                    .is_none_or(|at| at.elapsed() >= MESSAGE_REFRESH);
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
                pod_writes.push(PodWrite {
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
        // The shape without figures decides whether to write now; figures refresh slowly, so
        // status churn does not wake the intent controller every second.
        let shape = |v: &Value| {
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
        };
        let due = match self.intent_status.get(&key) {
            None => true,
            Some((prev, at)) => {
                shape(prev) != shape(&body) || (prev != &body && at.elapsed() >= MESSAGE_REFRESH)
            }
        };
        if due {
            status_writes.push((key, body));
        }
    }

    async fn write_pod(&mut self, ctx: &Context, w: PodWrite, now: SystemTime) {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "conditions": [{
                    "type": STORAGE_READINESS_GATE,
                    "status": status_word(w.verdict.ready),
                    "reason": w.verdict.reason,
                    "message": w.verdict.message,
                    "lastTransitionTime": rfc3339(now),
                }]
            }
        });
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &w.namespace);
        match api
            .patch_status(
                &w.pod,
                &PatchParams::apply(HEALTH_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                self.pod_written
                    .insert((w.namespace.clone(), w.pod.clone()), Instant::now());
                if w.transition {
                    ctx.metrics
                        .health
                        .readiness_transitions
                        .get_or_create(&TransitionLabels {
                            namespace: w.namespace.clone(),
                            intent: w.intent.clone(),
                            to: status_word(w.verdict.ready).into(),
                        })
                        .inc();
                    info!(pod = %format!("{}/{}", w.namespace, w.pod), ready = w.verdict.ready, reason = w.verdict.reason, message = %w.verdict.message, "storage readiness changed");
                }
                if let Some(d) = w.detection {
                    ctx.metrics
                        .health
                        .detection_latency
                        .observe(d.as_secs_f64());
                }
            }
            Err(e) => {
                warn!(pod = %format!("{}/{}", w.namespace, w.pod), error = %e, "writing the storage readiness condition failed")
            }
        }
    }

    async fn write_node(&mut self, ctx: &Context, w: NodeWrite) {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "status": { "conditions": [w.body] }
        });
        match Api::<Node>::all(ctx.client.clone())
            .patch_status(
                &w.node,
                &PatchParams::apply(HEALTH_FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                self.node_written.insert(w.node.clone(), Instant::now());
                debug!(node = %w.node, "node storage condition written");
            }
            Err(e) => {
                warn!(node = %w.node, error = %e, "writing the node storage condition failed")
            }
        }
    }

    async fn write_intent_status(&mut self, ctx: &Context, key: (String, String), body: Value) {
        let patch = plumbline_crds::apply::status::<WorkloadIntent>(body.clone());
        match Api::<WorkloadIntent>::namespaced(ctx.client.clone(), &key.0)
            .patch_status(
                &key.1,
                &PatchParams::apply(HEALTH_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.intent_status.insert(key, (body, Instant::now()));
            }
            Err(e) => {
                warn!(intent = %format!("{}/{}", key.0, key.1), error = %e, "writing backing map and guard to status failed")
            }
        }
    }

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

    fn replace_series(&mut self, ctx: &Context, new: Series) {
        let m = &ctx.metrics.health;
        for l in self.series.backing.difference(&new.backing) {
            m.backing_info.remove(l);
        }
        for l in self.series.pods.difference(&new.pods) {
            m.pod_storage_healthy.remove(l);
        }
        for l in self.series.verdicts.difference(&new.verdicts) {
            m.vm_verdict.remove(l);
        }
        for l in self.series.disks.difference(&new.disks) {
            m.disk_latency.remove(l);
        }
        for l in self.series.iops.difference(&new.iops) {
            m.vm_iops.remove(l);
        }
        self.series = new;
    }
}

/// How many neighbours an intent's status lists.
const LISTED_NEIGHBOURS: usize = 5;

/// The busiest VMs the ladder could throttle for any of the intent's VMs, by name.
fn neighbour_candidates(
    view: &IntentView,
    b: &HealthBook,
    candidates: &[NeighbourCandidate<VmRef>],
    ladder: &plumbline_policies::health::ThrottleLadder,
) -> Vec<plumbline_crds::NeighbourCandidateStatus> {
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
        for (c, _) in plumbline_policies::health::neighbours_of(&victim, candidates, ladder) {
            near.insert(&c.vm, c);
        }
    }
    let mut busiest: Vec<&NeighbourCandidate<VmRef>> = near.into_values().collect();
    busiest.sort_by(|a, b| b.iops.total_cmp(&a.iops).then_with(|| a.vm.cmp(&b.vm)));
    busiest.truncate(LISTED_NEIGHBOURS);
    busiest.sort_by(|a, b| a.vm.cmp(&b.vm));
    busiest
        .into_iter()
        .map(|c| plumbline_crds::NeighbourCandidateStatus {
            vm: c.vm.name.clone(),
            vm_id: c.vm.id.clone(),
            provider: c.vm.provider.clone(),
            host: c.host.clone(),
            datastores: c.datastores.iter().cloned().collect(),
            iops: c.iops.round() as i64,
        })
        .collect()
}
