//! One feedback pass decided, with no I/O: from the views, the book, the nodes, the ledger and
//! what earlier passes remember, everything the pass is to write — pod and node conditions,
//! intent status bodies, the throttles and taints wanted in the ledger with their Events, and
//! the metric series. `super::feedback` carries the decision out.
//!
//! - [`memory`]: what a pass reads besides the book, and what it remembers;
//! - [`writes`]: what a pass writes;
//! - `intent`, `node`, `series`: each intent's, each node's and the metrics' share;
//! - `body`: an intent's status body as decided, its backing map built only when written;
//! - `fingerprint`: what a pass remembers of a status body it wrote.

mod body;
mod fingerprint;
mod intent;
pub mod memory;
mod node;
mod placement;
mod series;
pub mod writes;

pub use fingerprint::Fingerprint;
pub use memory::{PassInput, PassMemory};
pub use writes::{NodeWrite, PassDecision, PassSeries, PodWrite, StatusWrite};

use kube::ResourceExt;
use plumbline_crds::VmRef;
use plumbline_policies::health::{
    plan_neighbour_throttles, LatencyBudget, NeighbourCandidate, Tier, Victim,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};

use intent::{decide_intent, IntentsDecided};
use node::decide_nodes;
use series::decide_series;

use plumbline_crds::InfraChangeSpec;
use plumbline_policies::{
    ledger::relocation_spec,
    placement::{plan_relocations, HostChoice, PastRelocation, Relocation},
};

use crate::{
    health::{book::HealthBook, graph::VmKey, relocate, throttle},
    metrics::health::IntentLabels,
};

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
    let policy = &settings.relocation;
    memory.relocated.retain(|r| {
        r.decided
            .last()
            .is_some_and(|at| now.duration_since(*at).unwrap_or_default() < policy.repeat_window)
    });
    let relocating = Relocating {
        hosts: relocate::hosts(b, &leaving),
        past: relocate::past(input.changes, operator, &memory.relocated),
        candidates: &candidates,
    };
    let placed = placement::decide(input, b, views, &mut intents.bodies, &relocating);
    let statuses = std::mem::take(&mut intents.bodies)
        .into_iter()
        .filter_map(|(key, body)| intent::status_write(memory, input, key, body))
        .collect();

    let (nodes, taint_wants) = decide_nodes(memory, input, b, &strictest);
    let taints = memory.taints.plan(
        &taint_wants,
        input.nodes,
        views,
        settings.taint_cap,
        operator,
    );
    let series = decide_series(
        input,
        b,
        &all_vms,
        &strictest,
        &intents.pods,
        memory.taints.held() as i64,
        &mut memory.series,
    );

    let victims: Vec<Victim<VmRef>> = intents
        .victims
        .into_values()
        .filter(|v| !leaving.contains(&v.vm.provider))
        .collect();
    let in_force = throttle::in_force(input.changes, operator);
    let (moves, relocations) = decide_relocations(input, memory, &victims, &relocating, &in_force);
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
    let series = PassSeries {
        hosts: placed
            .hosts
            .into_iter()
            .map(|((namespace, intent), n)| (IntentLabels { namespace, intent }, n))
            .collect(),
        ..series
    };
    PassDecision {
        pods: intents.pods,
        nodes,
        statuses,
        throttles,
        actions,
        taints,
        rules: placed.rules,
        moves,
        relocations,
        series,
    }
}

/// How long a decided move stays wanted without its entry showing in the cache (a write that
/// failed is not retried after this: the budgets still count the move).
const UNSEEN_MOVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// What relocating a noisy neighbour looks at: the hosts with their clusters, the
/// relocations made, and the VMs with their hosts and I/O.
pub(super) struct Relocating<'a> {
    pub hosts: Vec<HostChoice>,
    pub past: Vec<PastRelocation<VmRef>>,
    pub candidates: &'a [NeighbourCandidate<VmRef>],
}

/// The relocations due now and the ledger entries to keep (`super::super::relocate`).
fn decide_relocations(
    input: &PassInput<'_>,
    memory: &mut PassMemory,
    victims: &[Victim<VmRef>],
    relocating: &Relocating<'_>,
    in_force: &BTreeMap<VmRef, plumbline_policies::health::Throttle<VmRef>>,
) -> (Vec<InfraChangeSpec>, Vec<Relocation<VmRef>>) {
    let (now, operator, policy) = (input.now, input.operator, &input.settings.relocation);
    let relocations = plan_relocations(
        now,
        victims,
        relocating.candidates,
        in_force,
        &input.settings.ladder,
        &relocating.hosts,
        &relocating.past,
        policy,
    );
    let moving: BTreeSet<&VmRef> = relocations.iter().map(|r| &r.vm).collect();
    let mut moves = relocate::kept(input.changes, operator, now, policy, &moving, input.views);
    // A move decided earlier stays wanted until the cache shows its entry (then `kept` has it).
    let in_cache = |spec: &InfraChangeSpec| {
        input.changes.iter().any(|ic| {
            ic.spec.target == spec.target
                && ic.spec.setting == spec.setting
                && ic.spec.relocation == spec.relocation
        })
    };
    memory.unseen_moves.retain(|spec| {
        !in_cache(spec)
            && !moving
                .iter()
                .any(|vm| spec.target.vm_id.as_deref() == Some(vm.id.as_str()))
            && spec
                .relocation
                .as_ref()
                .and_then(|r| r.decided.last())
                .is_some_and(|at| {
                    now.duration_since(plumbline_policies::ledger::from_time(at))
                        .unwrap_or_default()
                        < UNSEEN_MOVE_PATIENCE
                })
    });
    moves.extend(memory.unseen_moves.iter().cloned());
    for r in &relocations {
        let intent = victims
            .iter()
            .find(|v| v.vm == r.victim)
            .map(|v| v.intent.as_str())
            .unwrap_or_default();
        let spec = relocation_spec(r, intent, operator);
        memory.unseen_moves.push(spec.clone());
        moves.push(spec);
        memory.relocated.retain(|p| p.vm != r.vm);
        memory.relocated.push(PastRelocation {
            vm: r.vm.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            decided: r.decided.clone(),
        });
    }
    (moves, relocations)
}

#[cfg(test)]
mod tests {
    use super::{memory::MESSAGE_REFRESH, *};
    use crate::health::pod::{CachedPod, Condition};
    use crate::health::{book::ProviderView, caches::Caches, graph, settings::HealthSettings};
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::api::core::v1::{Node, NodeCondition};
    use kube::runtime::{reflector, watcher};
    use plumbline_adapters::{
        BackingVm, Capability, DiskLatency, OpLatency, Support, VmDisk, VmId,
    };
    use plumbline_crds::{conditions::status, names::STORAGE_READINESS_GATE};
    use plumbline_crds::{
        conditions::{node as node_reason, pod as pod_reason},
        ChangePurpose, NodeMappingStrategy, WorkloadIntent,
    };
    use plumbline_policies::health::NeighbourAction;
    use plumbline_policies::health::UnknownReadiness;
    use serde_json::json;
    use std::{
        sync::Arc,
        time::{Duration, Instant, SystemTime},
    };

    const OPERATOR: &str = "namespace/shop";

    /// A store holding `objects`, synced.
    fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
    where
        K: reflector::Lookup<DynamicType = ()> + Clone + 'static,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn pod(name: &str) -> CachedPod {
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
            cluster: None,
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
        pods: Vec<CachedPod>,
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
            let mut guests = vec![guest("u1", "vm1")];
            if noisy {
                guests.push(guest("u2", "vm2"));
            }
            let mut book = HealthBook::default();
            book.insert_provider(provider.with_inventory(guests));
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
                maintenances: store_of(Vec::new()),
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
                let pod = self.pods.iter_mut().find(|p| *p.name == *w.pod).unwrap();
                pod.storage = Some(Condition {
                    status: w.status(),
                    reason: Some(w.verdict.reason.into()),
                    message: Some(w.verdict.message.as_str().into()),
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
                    .insert(w.intent.clone(), (w.fingerprint, self.instant));
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
        let pods = d.series.pods.as_ref().unwrap();
        let unready = pods.iter().filter(|(_, v)| *v == 0).count();
        assert_eq!((pods.len(), unready), (3, 2));
        assert_eq!(d.series.backing.as_ref().unwrap().len(), 3);
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
        // The series stand as they are: the pods' storage health is what was written.
        assert!(second.series.pods.is_none() && second.series.backing.is_none());
        // A pod that goes changes them.
        world.pods.pop();
        let third = world.pass();
        assert_eq!(third.series.pods.map(|p| p.len()), Some(2));
        assert_eq!(third.series.backing.map(|b| b.len()), Some(2));
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

    #[test]
    fn pods_on_a_node_of_no_provider_are_spread_unknown_and_ask_for_no_rule() {
        let mut w = World::new(false);
        w.intent.spec.storage = None;
        w.intent.spec.placement = Some(plumbline_crds::Placement {
            spread_across_hosts: Some(plumbline_crds::HostSpread::Required),
        });
        w.node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        let d = w.pass();
        assert!(d.rules.is_empty());
        let body = &d.statuses[0].body;
        assert_eq!(body["placement"]["podsOnUnknownHosts"], 3, "{body}");
        assert_eq!(
            body["placement"]["spread"]["reason"], "HostsUnknown",
            "{body}"
        );
        assert_eq!(
            body["placement"]["spread"]["status"],
            status::UNKNOWN,
            "{body}"
        );
    }
}
