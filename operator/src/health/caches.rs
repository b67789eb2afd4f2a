//! The caches the health loop reads: pods decoded into [`CachedPod`] (the main memory cost at
//! scale), Nodes, HypervisorProviders, InfraChanges and HostMaintenances.

use futures::{future::BoxFuture, FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher, PredicateConfig, WatchStreamExt,
    },
    Api, Client,
};
use plumbline_crds::{
    names::NODE_STORAGE_CONDITION, HostMaintenance, HypervisorProvider, InfraChange,
};
use std::sync::Arc;
use tokio::sync::Notify;

use super::pod::{self, CachedPod, WirePod};

/// Keeps the metadata (without managedFields), the spec and, of the status, the conditions the
/// passes read: `Ready` and the storage condition. The rest of the status (images, addresses,
/// capacity, node info, the kubelet's other conditions) was half of each cached Node.
pub fn prune_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.take() {
        let mut conditions = status.conditions.unwrap_or_default();
        conditions.retain(|c| c.type_ == "Ready" || c.type_ == NODE_STORAGE_CONDITION);
        node.status = Some(NodeStatus {
            conditions: Some(conditions),
            ..NodeStatus::default()
        });
    }
}

/// What of a node the pass reads, hashed: a node event whose hash did not change does not wake
/// the pass (the next resync still sees the node, a deleted one included). A heartbeat alone
/// changes only a condition's `lastHeartbeatTime`; at 1,000 nodes the heartbeats woke a pass
/// many times a second, and the passes ran back to back (docs/scale.md).
fn node_wakes(node: &Node) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let conditions: Vec<_> = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (&c.type_, &c.status, &c.reason, &c.message))
        .collect();
    let spec = node.spec.as_ref().map(serde_json::to_string);
    let mut h = DefaultHasher::new();
    (
        &node.metadata.labels,
        &node.metadata.annotations,
        node.metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        spec.and_then(Result::ok),
        conditions,
    )
        .hash(&mut h);
    Some(h.finish())
}

pub struct Caches {
    pub pods: Store<CachedPod>,
    pub nodes: Store<Node>,
    pub providers: Store<HypervisorProvider>,
    /// Every InfraChange (of every operator instance: a provider's finalizer waits for all).
    pub changes: Store<InfraChange>,
    /// Every HostMaintenance; watched only with `--host-maintenance`, empty otherwise.
    pub maintenances: Store<HostMaintenance>,
}

/// Starts the watches. The returned future drives them and wakes `changed` on every event,
/// so new pods get their condition promptly.
pub fn start(
    client: &Client,
    namespace: Option<&str>,
    host_maintenance: bool,
    changed: Arc<Notify>,
) -> (Caches, BoxFuture<'static, ()>) {
    let pods_api: Api<WirePod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (pods, pods_writer) = reflector::store();
    let (nodes, nodes_writer) = reflector::store();
    let (providers, providers_writer) = reflector::store();
    let (changes, changes_writer) = reflector::store();
    let (maintenances, maintenances_writer) = reflector::store();
    let maintenance_watch = match host_maintenance {
        false => futures::future::ready(()).boxed(),
        true => watcher(
            Api::<HostMaintenance>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(maintenances_writer)
        .touched_objects()
        .filter_map(|r| futures::future::ready(r.ok()))
        .for_each({
            let changed = changed.clone();
            move |_| {
                changed.notify_one();
                futures::future::ready(())
            }
        })
        .boxed(),
    };
    // Each pod is made the cache's before the store keeps it (pod.rs); the store's writer is
    // fed here, not by `reflect`, since the watched and the kept types differ.
    let pod_watch = watcher(pods_api, watcher::Config::default())
        .default_backoff()
        .filter_map(|r| futures::future::ready(r.ok()))
        .for_each({
            let (changed, mut pods_writer) = (changed.clone(), pods_writer);
            let mut pools = pod::Pools::default();
            move |event| {
                pods_writer.apply_watcher_event(&pod::cached_event(event, &mut pools));
                changed.notify_one();
                futures::future::ready(())
            }
        });
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(prune_node)
        .reflect(nodes_writer)
        .touched_objects()
        .predicate_filter(node_wakes, PredicateConfig::default())
        .filter_map(|r| futures::future::ready(r.ok()))
        .for_each({
            let changed = changed.clone();
            move |_| {
                changed.notify_one();
                futures::future::ready(())
            }
        });
    let provider_watch = watcher(
        Api::<HypervisorProvider>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(providers_writer)
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok()))
    .for_each({
        let changed = changed.clone();
        move |_| {
            changed.notify_one();
            futures::future::ready(())
        }
    });
    let change_watch = watcher(
        Api::<InfraChange>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|ic: &mut InfraChange| ic.metadata.managed_fields = None)
    .reflect(changes_writer)
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok()))
    .for_each(move |_| {
        changed.notify_one();
        futures::future::ready(())
    });
    let drive = async move {
        futures::join!(
            pod_watch,
            node_watch,
            provider_watch,
            change_watch,
            maintenance_watch
        );
    }
    .boxed();
    (
        Caches {
            pods,
            nodes,
            providers,
            changes,
            maintenances,
        },
        drive,
    )
}

/// The Deployment or StatefulSet a pod belongs to, from its owner: a StatefulSet directly, a
/// Deployment through its ReplicaSet named `<deployment>-<pod-template-hash>`.
pub fn owning_workload(pod: &CachedPod) -> Option<(plumbline_crds::TargetKind, &str)> {
    let owner = pod.controller()?;
    match owner.kind.as_str() {
        "StatefulSet" => Some((plumbline_crds::TargetKind::StatefulSet, &owner.name)),
        "ReplicaSet" => {
            let hash = pod.labels.get("pod-template-hash")?;
            let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
            Some((plumbline_crds::TargetKind::Deployment, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(owner_kind: &str, owner: &str, hash: Option<&str>) -> CachedPod {
        let mut labels = serde_json::Map::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), json!(h));
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": "p", "namespace": "ns", "labels": labels,
                "managedFields": [{"manager": "x"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner, "uid": "u", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
                "readinessGates": [{"conditionType": "plumbline.dev/storage-healthy"}],
                "containers": [{"name": "app", "image": "i", "env": [{"name": "BIG", "value": "x"}]}]
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"}
        }))
        .unwrap()
    }

    #[test]
    fn owners_resolve_to_the_workload() {
        use plumbline_crds::TargetKind;
        assert_eq!(
            owning_workload(&pod("ReplicaSet", "payments-5d4f", Some("5d4f"))),
            Some((TargetKind::Deployment, "payments"))
        );
        assert_eq!(
            owning_workload(&pod("StatefulSet", "db", None)),
            Some((TargetKind::StatefulSet, "db"))
        );
        assert_eq!(
            owning_workload(&pod("ReplicaSet", "payments-5d4f", None)),
            None
        );
        assert_eq!(owning_workload(&pod("Job", "j", None)), None);
    }

    #[test]
    fn a_pruned_node_keeps_what_the_passes_read() {
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": {"a": "b"}, "managedFields": [{"manager": "x"}]},
            "spec": {"providerID": "vsphere://u1", "unschedulable": true},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"},
                    {"type": NODE_STORAGE_CONDITION, "status": "False"},
                ],
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "k",
                             "osImage": "o", "containerRuntimeVersion": "c", "kubeletVersion": "v",
                             "kubeProxyVersion": "p", "operatingSystem": "linux", "architecture": "amd64"},
                "images": [{"names": ["i"]}],
                "capacity": {"cpu": "2"},
            },
        }))
        .unwrap();
        prune_node(&mut node);
        assert!(node.metadata.managed_fields.is_none());
        assert_eq!(node.metadata.labels.as_ref().unwrap()["a"], "b");
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("vsphere://u1"));
        assert_eq!(spec.unschedulable, Some(true));
        let status = node.status.unwrap();
        let kept: Vec<_> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, ["Ready", NODE_STORAGE_CONDITION]);
        assert!(status.node_info.is_none() && status.images.is_none() && status.capacity.is_none());
    }

    #[test]
    fn a_heartbeat_alone_does_not_wake_the_pass_and_what_the_pass_reads_does() {
        let node = |heartbeat: &str, ready: &str, label: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n", "labels": {"topology.plumbline.dev/host": label}},
                "spec": {"providerID": "vsphere://u1"},
                "status": {"conditions": [{
                    "type": "Ready", "status": ready, "reason": "KubeletReady",
                    "lastHeartbeatTime": heartbeat, "lastTransitionTime": "2026-12-02T00:00:00Z",
                }]},
            }))
            .unwrap()
        };
        let base = node_wakes(&node("2026-12-02T08:00:00Z", "True", "h1"));
        assert_eq!(
            base,
            node_wakes(&node("2026-12-02T08:01:00Z", "True", "h1"))
        );
        assert_ne!(
            base,
            node_wakes(&node("2026-12-02T08:00:00Z", "False", "h1"))
        );
        assert_ne!(
            base,
            node_wakes(&node("2026-12-02T08:00:00Z", "True", "h2"))
        );
        let mut cordoned = node("2026-12-02T08:00:00Z", "True", "h1");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_ne!(base, node_wakes(&cordoned));
    }
}
