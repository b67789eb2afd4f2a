//! What one feedback pass reads besides the book, and what it remembers for the next.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use plumbline_crds::{HypervisorProvider, InfraChange, InfraChangeSpec, VmRef};
use plumbline_policies::{
    health::{HealthState, LatencyBudget, NeighbourHistory},
    placement::PastRelocation,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::health::{graph::IntentView, intern::Pool, settings::HealthSettings, taint::TaintGuard};

use super::fingerprint::Fingerprint;

/// Messages carry the latest latency; refreshing them is worth a write this often, no more.
pub(super) const MESSAGE_REFRESH: Duration = Duration::from_secs(30);

/// What a pass remembers for the next one. The shell records the writes that succeeded
/// (`pod_written`, `node_written`, `intent_status`); [`super::decide`] keeps the rest.
#[derive(Default)]
pub struct PassMemory {
    /// When each pod's condition was last written, by `(namespace, pod)`.
    pub pod_written: HashMap<(String, String), Instant>,
    /// When each node's condition was last written.
    pub node_written: HashMap<String, Instant>,
    /// The fingerprint of each intent's status body as last written, and when, by
    /// `(namespace, name)`.
    pub intent_status: HashMap<(String, String), (Fingerprint, Instant)>,
    /// Each VM's state against each budget and since when (for releasing throttles).
    pub(super) state_since:
        HashMap<(plumbline_adapters::VmId, LatencyBudget), (HealthState, SystemTime)>,
    /// What the noisy-neighbour ladder remembers between passes.
    pub(super) neighbours: NeighbourHistory<VmRef>,
    /// The nodes the taint cap holds back.
    pub(super) taints: TaintGuard,
    /// Relocations decided within the repeat window, for the budgets (the ledger's entries go
    /// with their intent).
    pub(super) relocated: Vec<PastRelocation<VmRef>>,
    /// Relocation entries decided but not yet in the ledger cache: still wanted, or the writer
    /// would delete an entry it has just created before the cache shows it.
    pub(super) unseen_moves: Vec<InfraChangeSpec>,
    /// What the per-pod metric series were made of last pass.
    pub(super) series: SeriesSeen,
}

impl PassMemory {
    /// What the pass remembers only for pods, nodes, VMs and intents that are still there: a
    /// long-running operator sees many come and go, and must not keep them all.
    pub(super) fn forget_gone(
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

/// Whether a message written at `at` (if ever) is old enough to refresh.
pub(super) fn refresh_due(at: Option<&Instant>, now: Instant) -> bool {
    at.is_none_or(|at| now.saturating_duration_since(*at) >= MESSAGE_REFRESH)
}

/// What the per-pod series were made of last pass, by a hash: unchanged, they are not built
/// again (`super::series`). At 10,000 pods, building and comparing their 20,000 label sets was
/// a tenth of the pass (docs/scale.md).
#[derive(Default)]
pub(super) struct SeriesSeen {
    pub(super) backing: Option<u64>,
    pub(super) pods: Option<u64>,
    /// The series' label values, one shared copy of each (pod names included: the two
    /// families' series of a pod share its name).
    pub(super) names: Pool<str>,
}
