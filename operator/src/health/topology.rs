//! Topology labels on VM-backed nodes (`topology.plumbline.dev/{host,provider,cluster}`,
//! docs/placement.md). What each node should carry, and which nodes to write, is decided by
//! `plumbline_policies::topology`; this module reads the caches and the book, and writes.
//!
//! Writes are server-side applies of the node's metadata under this instance's own field
//! manager (`plumbline-topology.cluster`, `plumbline-topology.<namespace>`), so it owns only
//! these labels, an apply without them releases them, and a label another instance applies
//! too stays until both have released it. They run in a task of their own, at most
//! [`MAX_WRITES`] per batch, [`CONCURRENT_WRITES`] at a time, and one batch at a time: the
//! readiness pass never waits for them.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::names::{TOPOLOGY_FIELD_MANAGER_PREFIX, TOPOLOGY_PROVIDER_LABEL};
use plumbline_policies::topology::{self as decide, Labels, NodePlacement, NodeTopology, Written};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{book::HealthBook, caches::Caches, graph};
use crate::{context::Context, metrics::health::OutcomeLabels};

/// Nodes written per batch; the rest wait for the next pass (a move is written first).
pub const MAX_WRITES: usize = 50;
/// Applies in flight within a batch: one at a time, 1,000 new nodes took 7 minutes to label.
const CONCURRENT_WRITES: usize = 8;
/// How long one node's apply may take before the batch gives up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What this instance applied to each node, and when.
type Memory = BTreeMap<String, (Labels, Instant)>;

pub struct Topology {
    field_manager: String,
    written: Arc<Mutex<Memory>>,
    batch: Option<JoinHandle<()>>,
}

impl Topology {
    pub fn new(namespace: Option<&str>) -> Self {
        Self {
            field_manager: field_manager(namespace),
            written: Arc::default(),
            batch: None,
        }
    }

    /// Decides which nodes to label and starts writing them, unless the last batch is still
    /// being written (then the next pass decides again).
    pub fn pass(&mut self, ctx: &Arc<Context>, caches: &Caches, book: &Arc<Mutex<HealthBook>>) {
        if self.batch.as_ref().is_some_and(|b| !b.is_finished()) {
            return;
        }
        let synced = [
            caches.nodes.wait_until_ready().now_or_never(),
            caches.providers.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))));
        if !synced {
            return;
        }
        let nodes = caches.nodes.state();
        let providers: BTreeSet<String> = caches
            .providers
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        let observed: Vec<NodeTopology> = {
            let b = crate::locks::lock(book);
            nodes
                .iter()
                .map(|node| node_topology(&b, &providers, node))
                .collect()
        };
        let writes = {
            let mut memory = crate::locks::lock(&self.written);
            let present: BTreeSet<&str> = observed.iter().map(|n| n.node.as_str()).collect();
            memory.retain(|node, _| present.contains(node.as_str()));
            ctx.metrics
                .health
                .topology_labelled_nodes
                .set(memory.values().filter(|(l, _)| !l.is_empty()).count() as i64);
            let written: BTreeMap<String, Written> = memory
                .iter()
                .map(|(node, (labels, at))| {
                    (
                        node.clone(),
                        Written {
                            labels: labels.clone(),
                            age: at.elapsed(),
                        },
                    )
                })
                .collect();
            decide::writes(&observed, &written, MAX_WRITES)
        };
        if writes.is_empty() {
            return;
        }
        let (ctx, memory, manager) = (
            ctx.clone(),
            self.written.clone(),
            self.field_manager.clone(),
        );
        self.batch = Some(tokio::spawn(
            futures::stream::iter(writes).for_each_concurrent(CONCURRENT_WRITES, move |w| {
                let (ctx, memory, manager) = (ctx.clone(), memory.clone(), manager.clone());
                async move {
                    let ok = apply(&ctx, &manager, &w.node, &w.labels).await;
                    let outcome = if ok { "applied" } else { "failed" };
                    ctx.metrics
                        .health
                        .topology_writes
                        .get_or_create(&OutcomeLabels {
                            outcome: outcome.into(),
                        })
                        .inc();
                    if ok {
                        info!(node = %w.node, labels = ?w.labels, reason = ?w.reason, "topology labels written");
                        crate::locks::lock(&memory).insert(w.node, (w.labels, Instant::now()));
                    }
                }
            }),
        ));
    }

    /// Stops a batch in flight (the term ended). Nothing is released: labels describe where
    /// VMs run whoever leads, and the next leader applies under the same field manager.
    pub fn stop(&mut self) {
        if let Some(b) = self.batch.take() {
            b.abort();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The field manager of this instance's topology labels.
pub fn field_manager(namespace: Option<&str>) -> String {
    format!(
        "{TOPOLOGY_FIELD_MANAGER_PREFIX}.{}",
        crate::ledger::instance_label(namespace)
    )
}

/// One node: what it carries, and what it should carry. Unknown (`None`) while the provider
/// its labels name exists but has not reported its VMs yet (just after a start, or while it
/// cannot connect): a restart must not take labels off and put them back.
fn node_topology(book: &HealthBook, providers: &BTreeSet<String>, node: &Node) -> NodeTopology {
    let observed = decide::topology_labels(node.labels());
    let desired = match graph::backing_for_node(book, node) {
        Some(place) => Some(decide::node_labels(Some(&NodePlacement {
            provider: &place.provider.name,
            host: &place.vm.host,
            cluster: place.vm.cluster.as_deref(),
        }))),
        None => {
            let waiting = observed.get(TOPOLOGY_PROVIDER_LABEL).is_some_and(|p| {
                providers.contains(p)
                    && book
                        .providers()
                        .get(p)
                        .is_none_or(|view| view.inventory().is_empty())
            });
            (!waiting).then(Labels::new)
        }
    };
    NodeTopology {
        node: node.name_any(),
        desired,
        observed,
    }
}

/// Applies exactly `labels` as this field manager's topology labels of the node (none:
/// releases them). Never creates a node: the cache showed it, and the operator may not
/// create nodes (an apply that would is refused as Forbidden).
async fn apply(ctx: &Context, manager: &str, node: &str, labels: &Labels) -> bool {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": labels},
    });
    let params = PatchParams::apply(manager).force();
    let api = Api::<Node>::all(ctx.client.clone());
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        api.patch(node, &params, &Patch::Apply(&body)),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let error =
                crate::Error::kube(format!("applying the topology labels of node {node}"), e);
            warn!(%node, error = %error, kind = error.kind(), "writing topology labels failed");
            false
        }
        Err(_) => {
            debug!(%node, "writing topology labels: no answer within {WRITE_TIMEOUT:?}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::book::ProviderView;
    use plumbline_adapters::{BackingVm, VmId, VmPlacement};
    use plumbline_crds::{
        names::{TOPOLOGY_CLUSTER_LABEL, TOPOLOGY_HOST_LABEL},
        NodeMappingStrategy,
    };

    const UUID: &str = "5f1d3c0a-1b2c-4d5e-8f90-123456789abc";

    fn node(labels: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
            "spec": {"providerID": format!("vsphere://{UUID}")},
        }))
        .unwrap()
    }

    fn provider(name: &str, vms: Vec<BackingVm>) -> ProviderView {
        ProviderView::new(
            name,
            Duration::from_secs(1),
            NodeMappingStrategy::ProviderId,
            None,
        )
        .with_inventory(vms)
    }

    fn vm(host: &str, cluster: Option<&str>) -> BackingVm {
        BackingVm {
            id: VmId::new(UUID),
            name: "vm1".into(),
            provider_id: format!("vsphere://{UUID}"),
            host: host.into(),
            cluster: cluster.map(str::to_string),
            datastores: vec![],
            disks: vec![],
            running: true,
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_is_labelled_where_its_vm_runs_and_follows_a_move_seen_while_sampling() {
        let mut book = HealthBook::default();
        book.insert_provider(provider("vc", vec![vm("esx 1", Some("C1"))]));
        let t = node_topology(&book, &names(&["vc"]), &node(&[]));
        let want: Labels = [
            (TOPOLOGY_HOST_LABEL, "esx-1"),
            (TOPOLOGY_PROVIDER_LABEL, "vc"),
            (TOPOLOGY_CLUSTER_LABEL, "C1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(t.desired, Some(want));
        // A vMotion to a standalone host, as one sampling cycle reports it.
        let moved = book.record_placements(
            "vc",
            &[VmPlacement {
                vm: VmId::new(UUID),
                host: "esx-9".into(),
                cluster: None,
            }],
        );
        assert_eq!(moved, 1);
        let t = node_topology(&book, &names(&["vc"]), &node(&[]));
        let desired = t.desired.unwrap();
        assert_eq!(desired.get(TOPOLOGY_HOST_LABEL).unwrap(), "esx-9");
        assert!(!desired.contains_key(TOPOLOGY_CLUSTER_LABEL));
    }

    #[test]
    fn labels_of_a_provider_not_reported_yet_are_left_alone_and_of_a_gone_one_released() {
        let labelled = node(&[
            (TOPOLOGY_HOST_LABEL, "esx-1"),
            (TOPOLOGY_PROVIDER_LABEL, "vc"),
        ]);
        // Just started: the provider exists but has listed no VMs yet.
        let mut book = HealthBook::default();
        book.insert_provider(provider("vc", vec![]));
        assert_eq!(
            node_topology(&book, &names(&["vc"]), &labelled).desired,
            None
        );
        // Not even in the book yet.
        let empty = HealthBook::default();
        assert_eq!(
            node_topology(&empty, &names(&["vc"]), &labelled).desired,
            None
        );
        // The provider is gone: release.
        assert_eq!(
            node_topology(&empty, &names(&[]), &labelled).desired,
            Some(Labels::new())
        );
        // It reported, and the VM is not among its VMs: release.
        book.insert_provider(provider(
            "vc",
            vec![BackingVm {
                id: VmId::new("other"),
                ..vm("esx-1", None)
            }],
        ));
        assert_eq!(
            node_topology(&book, &names(&["vc"]), &labelled).desired,
            Some(Labels::new())
        );
    }

    #[test]
    fn each_instance_has_its_own_field_manager() {
        assert_eq!(field_manager(None), "plumbline-topology.cluster");
        assert_eq!(field_manager(Some("shop")), "plumbline-topology.shop");
    }
}
