//! The live graph, rebuilt from the caches each pass: Pod → Node → VM → disks → host and
//! datastores, and which intent covers which pod.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use plumbline_adapters::VmId;
use plumbline_crds::{NodeMappingStrategy, TargetKind, WorkloadIntent};
use plumbline_policies::{
    health::{GuardLimit, LatencyBudget, Tier},
    CountOrPercent,
};
use std::{collections::HashMap, fmt, sync::Arc};

use super::{
    book::{HealthBook, VmPlace},
    caches::{owning_workload, Caches},
    pod::CachedPod,
};

/// A VM as the noisy-neighbour logic names it: ordered by identity, shown by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmKey {
    pub id: VmId,
    pub name: String,
    pub provider: String,
}

impl VmKey {
    /// The VM as the ledger names it.
    pub fn to_ref(&self) -> plumbline_crds::VmRef {
        plumbline_crds::VmRef {
            name: self.name.clone(),
            id: self.id.as_str().to_string(),
            provider: self.provider.clone(),
        }
    }

    pub fn from_ref(vm: &plumbline_crds::VmRef) -> Self {
        Self {
            id: VmId::new(&vm.id),
            name: vm.name.clone(),
            provider: vm.provider.clone(),
        }
    }
}

impl fmt::Display for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// An intent and what the health loop needs from its spec.
#[derive(Debug, Clone)]
pub struct IntentView {
    pub intent: Arc<WorkloadIntent>,
    pub namespace: String,
    pub name: String,
    pub tier: Tier,
    /// `None` without a valid `storage` section.
    pub storage: Option<StorageView>,
    /// Active (window or signals), not being deleted.
    pub active: bool,
    /// Active, and not only on signal data missing for longer than `maxKeepLast`: disruptive
    /// hypervisor actions (neighbour throttles) may stay.
    pub disrupt: bool,
    /// Allowed and entitled to throttle noisy neighbours.
    pub may_throttle: bool,
    /// … and to move one throttling cannot tame (`infrastructure.relocateNoisyNeighbours`).
    pub may_relocate: bool,
    pub pods: Vec<PodView>,
}

#[derive(Debug, Clone, Copy)]
pub struct StorageView {
    pub budget: LatencyBudget,
    pub gate: bool,
    pub limit: GuardLimit,
}

/// One pod and what backs it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub pod: Arc<CachedPod>,
    pub name: String,
    pub node: Option<String>,
    pub vm: Option<VmKey>,
}

impl IntentView {
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The VM backing a node, by the mapping of the provider that knows it.
pub fn vm_for_node(book: &HealthBook, node: &Node) -> Option<VmKey> {
    let place = backing_for_node(book, node)?;
    Some(VmKey {
        id: place.vm.id.clone(),
        name: place.vm.name.clone(),
        provider: place.provider.name.clone(),
    })
}

/// The VM backing a node and its provider: the first provider by name whose mapping finds
/// the node's VM in its inventory.
pub fn backing_for_node<'a>(book: &'a HealthBook, node: &Node) -> Option<VmPlace<'a>> {
    let provider_vm = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(VmId::from_provider_id);
    book.providers().values().find_map(|p| {
        let found = match p.mapping {
            NodeMappingStrategy::ProviderId => provider_vm
                .as_ref()
                .and_then(|id| book.listed_by(&p.name, id))
                .map(|place| place.vm),
            NodeMappingStrategy::NodeName => {
                p.inventory().iter().find(|vm| vm.name == node.name_any())
            }
            NodeMappingStrategy::Label => {
                let value = p
                    .mapping_label
                    .as_ref()
                    .and_then(|l| node.labels().get(l))?;
                p.inventory().iter().find(|vm| &vm.name == value)
            }
        }?;
        Some(VmPlace {
            provider: p,
            vm: found,
        })
    })
}

fn guard_limit(c: CountOrPercent) -> GuardLimit {
    match c {
        CountOrPercent::Count(n) => GuardLimit::Count(n),
        CountOrPercent::Percent(p) => GuardLimit::Percent(p),
    }
}

/// Every intent with its pods and their backing VMs.
pub fn build(
    caches: &Caches,
    book: &HealthBook,
    schedule_now: chrono::DateTime<chrono::Utc>,
    intents: &[Arc<WorkloadIntent>],
) -> Vec<IntentView> {
    let nodes = caches.nodes.state();
    let node_vms: HashMap<&str, Option<VmKey>> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.as_deref().unwrap_or_default(),
                vm_for_node(book, n),
            )
        })
        .collect();
    // Each live pod under its workload, once: every intent then takes its own.
    let pods = caches.pods.state();
    let mut by_workload: HashMap<(&str, TargetKind, &str), Vec<&Arc<CachedPod>>> = HashMap::new();
    for p in pods.iter().filter(|p| !p.deleting) {
        if let Some((kind, name)) = owning_workload(p) {
            by_workload
                .entry((&p.namespace, kind, name))
                .or_default()
                .push(p);
        }
    }
    let mut views = Vec::new();
    for wi in intents {
        let Ok(valid) = plumbline_policies::validate_intent(&wi.spec) else {
            continue;
        };
        let namespace = wi.namespace().unwrap_or_default();
        let deleting = wi.metadata.deletion_timestamp.is_some();
        // Windows and signals (from the signals' memories in status, kept by the controller).
        let decision = plumbline_policies::activation::evaluate_intent(
            valid.schedule.as_ref(),
            valid.activation.as_ref(),
            wi,
            schedule_now,
        );
        let active = !deleting && decision.activity.active;
        // After maxKeepLast without signal data, disruptive actions (throttles) are released.
        let disrupt = active && decision.disruptive_allowed;
        let tier = Tier::from(wi.spec.priority);
        let may_throttle = plumbline_policies::tier(wi.spec.priority).may_throttle_neighbours
            && wi
                .spec
                .infrastructure
                .as_ref()
                .is_some_and(|i| i.throttle_noisy_neighbours);
        let may_relocate = may_throttle
            && wi
                .spec
                .infrastructure
                .as_ref()
                .is_some_and(|i| i.relocate_noisy_neighbours);
        let workload = (
            namespace.as_str(),
            wi.spec.target.kind,
            wi.spec.target.name.as_str(),
        );
        let mut members: Vec<PodView> = by_workload
            .get(&workload)
            .into_iter()
            .flatten()
            .map(|p| {
                let node = p.node_name.as_deref().map(String::from);
                let vm = node
                    .as_ref()
                    .and_then(|n| node_vms.get(n.as_str()).cloned().flatten());
                PodView {
                    name: p.name.to_string(),
                    pod: Arc::clone(p),
                    node,
                    vm,
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        views.push(IntentView {
            namespace,
            name: wi.name_any(),
            tier,
            storage: valid.storage.map(|s| StorageView {
                budget: LatencyBudget(s.latency_budget),
                gate: s.readiness_gate,
                limit: guard_limit(s.max_unready),
            }),
            active,
            disrupt,
            may_throttle,
            may_relocate,
            pods: members,
            intent: wi.clone(),
        });
    }
    views
}
