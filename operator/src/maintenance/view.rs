//! What one HostMaintenance looks at, read from the health loop's caches and book (and the
//! PodDisruptionBudgets, listed once per pass while a maintenance has pods to move): the
//! host's nodes, their pods, and what each of those pods' workloads can spare.

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::{api::DynamicObject, Api, Client, ResourceExt};
use plumbline_crds::{
    conditions::status, ChangePurpose, HostMaintenance, InfraChange, TargetKind, WorkloadIntent,
};
use plumbline_policies::{
    maintenance::{needs_surge, ready_on_host, HostNode, HostPod, IntentFacts, WorkloadFacts},
    WorkloadRef,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::SystemTime,
};
use tracing::warn;

use crate::{
    controller::{apply::workload_api, fields::WorkloadField},
    discovery::ServedApis,
    health::{book::HealthBook, caches::owning_workload, graph::vm_for_node, pod::CachedPod},
};

/// The `ChangeOwner.intent` of a maintenance's cordons.
pub fn owner_name(hm: &HostMaintenance) -> String {
    format!("HostMaintenance/{}", hm.name_any())
}

/// Where the host stands in the provider's inventory.
pub enum HostNodes {
    /// The provider has reported no inventory yet: unknown, so nothing is done.
    NoInventory,
    /// The provider reports no VM on that host.
    UnknownHost {
        hosts: BTreeSet<String>,
    },
    Found(Vec<HostNode>),
}

/// The nodes whose VMs the provider reports on the host.
pub fn host_nodes(book: &HealthBook, nodes: &[Arc<Node>], provider: &str, host: &str) -> HostNodes {
    let Some(view) = book.providers().get(provider) else {
        return HostNodes::NoInventory;
    };
    if view.inventory().is_empty() {
        return HostNodes::NoInventory;
    }
    if !view.inventory().iter().any(|vm| vm.host == host) {
        return HostNodes::UnknownHost {
            hosts: view.inventory().iter().map(|vm| vm.host.clone()).collect(),
        };
    }
    let found = nodes
        .iter()
        .filter_map(|node| {
            let key = vm_for_node(book, node)?;
            let place = book.vm(&key.id)?;
            (key.provider == provider && place.vm.host == host).then(|| HostNode {
                name: node.name_any(),
                vm: key.name.clone(),
                unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            })
        })
        .collect();
    HostNodes::Found(found)
}

/// `namespace/Kind/name` of the pod's workload, or `namespace/Pod/name`.
fn workload_key(pod: &CachedPod) -> String {
    let ns = &pod.namespace;
    match owning_workload(pod) {
        Some((kind, name)) => format!("{ns}/{kind:?}/{name}"),
        None => format!("{ns}/Pod/{}", pod.name),
    }
}

/// DaemonSet pods and mirror pods (owned by their Node) stay, as with `kubectl drain`.
fn stays(pod: &CachedPod) -> bool {
    pod.owners
        .iter()
        .any(|o| o.kind == "DaemonSet" || o.kind == "Node")
}

fn is_ready(pod: &CachedPod) -> bool {
    pod.condition("Ready")
        .is_some_and(|c| c.status == status::TRUE)
}

/// The pods on `nodes`.
pub fn host_pods(pods: &[Arc<CachedPod>], nodes: &[HostNode]) -> Vec<HostPod> {
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    pods.iter()
        .filter_map(|p| {
            let node = p.node_name.as_deref()?;
            names.contains(node).then(|| HostPod {
                namespace: p.namespace.to_string(),
                name: p.name.to_string(),
                node: node.to_string(),
                workload: workload_key(p),
                stays: stays(p),
                ready: is_ready(p),
                terminating: p.deleting,
            })
        })
        .collect()
}

/// A PodDisruptionBudget as the drain needs it.
pub struct Budget {
    namespace: String,
    name: String,
    selector: LabelSelector,
    allowed: usize,
}

/// Every PodDisruptionBudget, in the served version.
pub async fn budgets(client: &Client, apis: &ServedApis) -> Result<Vec<Budget>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &apis.pdb);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|o| {
            let selector: LabelSelector =
                serde_json::from_value(o.data["spec"]["selector"].clone()).ok()?;
            Some(Budget {
                namespace: o.namespace().unwrap_or_default(),
                name: o.name_any(),
                selector,
                allowed: o.data["status"]["disruptionsAllowed"].as_u64().unwrap_or(0) as usize,
            })
        })
        .collect())
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let by_expressions = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    // An empty selector selects nothing in policy/v1beta1 and everything in policy/v1; a
    // budget that selects nothing never blocks.
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    !empty && by_labels && by_expressions
}

/// For each workload with pods to move, or surged: its ready pods cluster-wide, its intent
/// and budgets.
pub fn workload_facts(
    moving: &[HostPod],
    surged: &BTreeMap<String, (usize, Option<usize>)>,
    pods: &[Arc<CachedPod>],
    intents: &[Arc<WorkloadIntent>],
    budgets: &[Budget],
    now: SystemTime,
) -> BTreeMap<String, WorkloadFacts> {
    let wanted: BTreeSet<&str> = moving
        .iter()
        .map(|p| p.workload.as_str())
        .chain(surged.keys().map(String::as_str))
        .collect();
    let mut facts: BTreeMap<String, WorkloadFacts> = BTreeMap::new();
    for pod in pods {
        let key = workload_key(pod);
        if !wanted.contains(key.as_str()) {
            continue;
        }
        let entry = facts.entry(key).or_default();
        if is_ready(pod) && !pod.deleting {
            entry.ready += 1;
        }
        for b in budgets {
            if *b.namespace == *pod.namespace
                && selects(&b.selector, &pod.labels)
                && !entry.budgets.iter().any(|(n, _)| n == &b.name)
            {
                entry.budgets.push((b.name.clone(), b.allowed));
            }
        }
    }
    for key in surged.keys() {
        facts.entry(key.clone()).or_default();
    }
    let schedule_now = chrono::DateTime::<chrono::Utc>::from(now);
    for wi in intents {
        let Ok(valid) = plumbline_policies::validate_intent(&wi.spec) else {
            continue;
        };
        let ns = wi.namespace().unwrap_or_default();
        let key = format!("{ns}/{:?}/{}", wi.spec.target.kind, wi.spec.target.name);
        if let Some(f) = facts.get_mut(&key) {
            f.intent = Some(IntentFacts {
                name: format!("{ns}/{}", wi.name_any()),
                priority: wi.spec.priority,
                active: wi.metadata.deletion_timestamp.is_none()
                    && plumbline_policies::activation::evaluate_intent(
                        valid.schedule.as_ref(),
                        valid.activation.as_ref(),
                        wi,
                        schedule_now,
                    )
                    .activity
                    .active,
                replica_floor: wi
                    .spec
                    .availability
                    .as_ref()
                    .and_then(|a| a.replica_floor)
                    .map(|f| f.max(0) as usize),
            });
        }
    }
    facts
}

/// The workload a `namespace/Kind/name` key names (Deployments and StatefulSets only).
pub fn workload_ref(key: &str) -> Option<WorkloadRef> {
    let mut parts = key.splitn(3, '/');
    let (namespace, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    let kind = match kind {
        "Deployment" => TargetKind::Deployment,
        "StatefulSet" => TargetKind::StatefulSet,
        _ => return None,
    };
    Some(WorkloadRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The surges `hm` has in force, by workload key: the replicas asked for and the workload's
/// own replicas recorded before the surge (none yet while the original is being recorded).
pub fn surges_of(
    hm: &HostMaintenance,
    changes: &[Arc<InfraChange>],
    operator: &str,
) -> BTreeMap<String, (usize, Option<usize>)> {
    mine(hm, changes, operator, ChangePurpose::MaintenanceSurge)
        .filter_map(|ic| {
            let t = &ic.spec.target;
            let key = format!(
                "{}/{:?}/{}",
                t.namespace.as_deref()?,
                t.workload_kind()?,
                t.name
            );
            let original = ic
                .status
                .as_ref()
                .and_then(|s| s.original.as_deref())
                .and_then(|o| o.parse().ok());
            Some((key, (ic.spec.desired.parse().ok()?, original)))
        })
        .collect()
}

/// Fills in each workload's replicas and the surge in force: a surge's recorded original,
/// else `spec.replicas` read now, only for the workloads that need a surge
/// ([`needs_surge`]); others are left unread.
pub async fn replicas(
    client: &Client,
    pods: &[HostPod],
    facts: &mut BTreeMap<String, WorkloadFacts>,
    surges: &BTreeMap<String, (usize, Option<usize>)>,
) {
    let ready_here = ready_on_host(pods);
    for (key, f) in facts.iter_mut() {
        if let Some((replicas, original)) = surges.get(key) {
            f.surge = Some(*replicas);
            f.replicas = *original;
            continue;
        }
        let need = ready_here.get(key.as_str()).copied().unwrap_or(0);
        let Some(target) = workload_ref(key).filter(|_| needs_surge(f, need)) else {
            continue;
        };
        match workload_api(client, &target).get(&target.name).await {
            Ok(obj) => {
                f.replicas = Some(
                    WorkloadField::Replicas
                        .get(&obj)
                        .and_then(|v| v.as_u64())
                        .unwrap_or(1) as usize,
                )
            }
            Err(e) => {
                warn!(workload = %target, error = %e, "reading replicas for a surge failed; no surge this pass")
            }
        }
    }
}

/// `hm`'s ledger entries of `purpose` in force.
fn mine<'a>(
    hm: &HostMaintenance,
    changes: &'a [Arc<InfraChange>],
    operator: &'a str,
    purpose: ChangePurpose,
) -> impl Iterator<Item = &'a Arc<InfraChange>> {
    let owner = owner_name(hm);
    changes.iter().filter(move |ic| {
        ic.spec.operator == operator
            && ic.spec.purpose == purpose
            && ic.metadata.deletion_timestamp.is_none()
            && ic.spec.owners.iter().any(|o| o.intent == owner)
    })
}

/// Whether `hm` has put its host into maintenance mode (its ledger entry exists).
pub fn host_mode_by(hm: &HostMaintenance, changes: &[Arc<InfraChange>], operator: &str) -> bool {
    mine(hm, changes, operator, ChangePurpose::HostMaintenanceMode)
        .next()
        .is_some()
}

/// Whether the provider last reported the host in (or entering) maintenance mode; `None`
/// when it has not said.
pub fn host_in_maintenance(
    book: &std::sync::Mutex<HealthBook>,
    hm: &HostMaintenance,
) -> Option<bool> {
    let book = crate::locks::lock(book);
    let host = book
        .providers()
        .get(&hm.spec.provider)?
        .hosts
        .iter()
        .find(|h| h.name == hm.spec.host)?
        .clone();
    Some(host.in_maintenance || host.entering)
}

/// The nodes `hm` cordons already: its ledger entries in force.
pub fn cordoned_by(
    hm: &HostMaintenance,
    changes: &[Arc<InfraChange>],
    operator: &str,
) -> BTreeSet<String> {
    mine(hm, changes, operator, ChangePurpose::MaintenanceCordon)
        .map(|ic| ic.spec.target.name.clone())
        .collect()
}
