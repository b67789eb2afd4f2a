//! Registers each listed VM as a Node and keeps it Ready the way a kubelet does: a Lease in
//! `kube-node-lease` renewed every heartbeat, and node status with fresh heartbeat times.
//! The node-lifecycle controller therefore never marks these nodes NotReady or evicts
//! their pods, and removes the `not-ready` taint a new node starts with.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    Api, Client,
};
use plumbline_e2e::node_list::{read_nodes_dir, SimNode};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{
    error::is_not_found, pod_ips::PodCidr, Error, RegisteredNodes, Result, Settings, FIELD_MANAGER,
};

const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// As the kubelet's default; the lifecycle controller's grace period is 40 s too.
const LEASE_DURATION_SECONDS: i32 = 40;

/// A lease outlives four missed heartbeats, as the kubelet's 40 s lease does its 10 s renewals.
fn lease_duration_seconds(heartbeat_every: std::time::Duration) -> i32 {
    let four = heartbeat_every.as_secs().saturating_mul(4);
    i32::try_from(four)
        .unwrap_or(i32::MAX)
        .max(LEASE_DURATION_SECONDS)
}

/// Node status is applied under its own manager: 1.20's managedFields do not tell
/// subresources apart, so a status apply under the registration's manager would drop the
/// labels that manager applied to the Node (metadata is writable through /status).
const NODE_STATUS_FIELD_MANAGER: &str = "kubelet-sim-node-status";
/// Marks nodes that have no real kubelet, as KWOK does.
const SIMULATED_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A node this process registered, with what the pod loop needs to place pods on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredNode {
    pub sim: SimNode,
    pub uid: String,
    pub pod_cidr: PodCidr,
}

pub async fn run(client: Client, settings: Settings, registered: RegisteredNodes) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let mut last_beat: BTreeMap<String, Instant> = BTreeMap::new();
    let mut rescan = tokio::time::interval(settings.rescan_every);
    loop {
        rescan.tick().await;
        let wanted = match read_nodes_dir(&settings.nodes_dir) {
            Ok(wanted) => wanted,
            Err(e) => {
                warn!(error = %e, "keeping the previous node list");
                continue;
            }
        };
        let mut taken: Option<BTreeSet<String>> = None;
        for sim in &wanted {
            let known = registered
                .read()
                .await
                .get(&sim.name)
                .map(|n| &n.sim == sim);
            if known == Some(true) {
                continue;
            }
            let taken = match &mut taken {
                Some(taken) => taken,
                None => match taken_pod_cidrs(&nodes).await {
                    Ok(listed) => taken.insert(listed),
                    Err(e) => {
                        warn!(error = %e, "will retry registering");
                        break;
                    }
                },
            };
            match register(&nodes, sim, taken).await {
                Ok(node) => {
                    info!(node = %sim.name, provider_id = %sim.provider_id, pod_cidr = %node.pod_cidr, "registered node");
                    registered.write().await.insert(sim.name.clone(), node);
                    last_beat.remove(&sim.name);
                }
                Err(e) => warn!(error = %e, "will retry registering"),
            }
        }

        let wanted_names: BTreeSet<&str> = wanted.iter().map(|n| n.name.as_str()).collect();
        let gone: Vec<String> = registered
            .read()
            .await
            .keys()
            .filter(|name| !wanted_names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            registered.write().await.remove(&name);
            last_beat.remove(&name);
            match nodes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(node = %name, "unlisted node deleted"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => warn!(node = %name, error = %e, "deleting unlisted node"),
            }
        }

        let due: Vec<RegisteredNode> = registered
            .read()
            .await
            .values()
            .filter(|n| {
                last_beat
                    .get(&n.sim.name)
                    .is_none_or(|t| t.elapsed() >= settings.heartbeat_every)
            })
            .cloned()
            .collect();
        for node in due {
            match heartbeat(&nodes, &leases, &node, settings.heartbeat_every).await {
                Ok(()) => {
                    last_beat.insert(node.sim.name.clone(), Instant::now());
                }
                Err(e @ Error::NodeReplaced { .. }) => {
                    warn!(error = %e, "re-registering");
                    registered.write().await.remove(&node.sim.name);
                }
                Err(Error::Kube { source, .. }) if is_not_found(&source) => {
                    warn!(node = %node.sim.name, "node vanished; re-registering");
                    registered.write().await.remove(&node.sim.name);
                }
                Err(e) => warn!(error = %e, "heartbeat failed; will retry"),
            }
        }
    }
}

/// Creates or updates the Node object; keeps the podCIDR it already has (it is immutable).
async fn register(
    nodes: &Api<Node>,
    sim: &SimNode,
    taken: &mut BTreeSet<String>,
) -> Result<RegisteredNode> {
    let existing = nodes
        .get_opt(&sim.name)
        .await
        .map_err(Error::kube("reading node", &sim.name))?;
    let existing = match existing {
        Some(node) if provider_id_of(&node).is_some_and(|id| id != sim.provider_id) => {
            // spec.providerID is immutable: a VM recreated under the same name (new UUID)
            // needs a new Node, as a cloud node controller would replace it.
            info!(node = %sim.name, provider_id = %sim.provider_id, "VM changed; replacing its node");
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: node.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match nodes.delete(&sim.name, &params).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(Error::kube("replacing node", &sim.name)(source)),
            }
            None
        }
        other => other,
    };
    let pod_cidr = match existing.and_then(|n| n.spec?.pod_cidr) {
        Some(cidr) => PodCidr::parse(&sim.name, &cidr)?,
        None => free_pod_cidr(taken)?,
    };
    let mut labels = sim.labels.clone();
    for (k, v) in [
        ("kubernetes.io/hostname", sim.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
    ] {
        labels.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": sim.name,
            "labels": labels,
            "annotations": {SIMULATED_ANNOTATION: "fake"},
        },
        "spec": {
            "providerID": sim.provider_id,
            "podCIDR": pod_cidr.to_string(),
            "podCIDRs": [pod_cidr.to_string()],
        },
    });
    let node = nodes
        .patch(
            &sim.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::kube("registering node", &sim.name))?;
    Ok(RegisteredNode {
        sim: sim.clone(),
        uid: node.metadata.uid.unwrap_or_default(),
        pod_cidr,
    })
}

fn provider_id_of(node: &Node) -> Option<&str> {
    node.spec.as_ref()?.provider_id.as_deref()
}

/// Every podCIDR the cluster's nodes hold: listed once per rescan that registers nodes, not
/// once per node (a thousand registrations would list a thousand nodes each).
async fn taken_pod_cidrs(nodes: &Api<Node>) -> Result<BTreeSet<String>> {
    let list = nodes
        .list(&Default::default())
        .await
        .map_err(Error::kube("listing nodes", "for a free podCIDR"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.spec?.pod_cidr)
        .collect())
}

/// The first podCIDR not in `taken`, which it then joins.
fn free_pod_cidr(taken: &mut BTreeSet<String>) -> Result<PodCidr> {
    let cidr = (0..=u16::MAX)
        .map_while(PodCidr::nth)
        .find(|c| !taken.contains(&c.to_string()))
        .ok_or(Error::PodIpsExhausted {
            node: "(new node)".into(),
            cidr: "10.244.0.0/16 to 10.255.255.0/24".into(),
        })?;
    taken.insert(cidr.to_string());
    Ok(cidr)
}

async fn heartbeat(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    node: &RegisteredNode,
    every: std::time::Duration,
) -> Result<()> {
    let name = &node.sim.name;
    let current = nodes
        .get(name)
        .await
        .map_err(Error::kube("reading node", name))?;
    if current.metadata.uid.as_deref() != Some(node.uid.as_str()) {
        // Deleted and made again by someone else, or by a status apply racing a delete
        // (1.20 lets server-side apply on /status create a bare object).
        return Err(Error::NodeReplaced { node: name.clone() });
    }
    let now = Time(Timestamp::now());
    let body = node_status(node, &current, &now);
    nodes
        .patch_status(
            name,
            &PatchParams::apply(NODE_STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::kube("posting status of node", name))?;

    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": NODE_LEASE_NAMESPACE,
            // As the kubelet does, so the lease goes away with its node.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.uid}],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": lease_duration_seconds(every),
            "renewTime": MicroTime(now.0),
        },
    });
    leases
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await
        .map_err(Error::kube("renewing lease of node", name))?;
    Ok(())
}

fn node_status(node: &RegisteredNode, current: &Node, now: &Time) -> Value {
    let existing = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let conditions: Vec<Value> = [
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet-sim is posting ready status",
        ),
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        let since = existing
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    })
    .collect();
    let capacity = json!({"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.sim.name},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": node.pod_cidr.node_ip().to_string()},
                {"type": "Hostname", "address": node.sim.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": node.sim.vm_uuid().replace('-', ""),
                "systemUUID": node.sim.vm_uuid(),
                "bootID": node.uid,
                "kernelVersion": "kubelet-sim",
                "osImage": "kubelet-sim (no container runtime)",
                "containerRuntimeVersion": "kubelet-sim://0.1.0",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    })
}
