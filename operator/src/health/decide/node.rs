//! The nodes' share of a feedback pass: the storage condition of each node backed by a known
//! VM, and the nodes that deserve the storage taint.

use kube::ResourceExt;
use plumbline_crds::names::NODE_STORAGE_CONDITION;
use plumbline_policies::health::{format_latency, node_condition, LatencyBudget};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};

use super::{
    memory::{refresh_due, PassInput, PassMemory},
    writes::{node_condition_of, rfc3339, NodeWrite},
};
use crate::health::{
    book::HealthBook,
    graph::{self, IntentView},
    taint::TaintWant,
};

/// The storage condition of each node backed by a known VM (for a scoped operator, only nodes
/// running its pods), and the nodes that deserve the taint.
pub(super) fn decide_nodes(
    memory: &PassMemory,
    input: &PassInput<'_>,
    b: &mut HealthBook,
    strictest: &BTreeMap<plumbline_adapters::VmId, LatencyBudget>,
) -> (Vec<NodeWrite>, Vec<TaintWant>) {
    let (views, settings, now) = (input.views, input.settings, input.now);
    let mut writes = Vec::new();
    let mut taint_wants = Vec::new();
    // Only intents with a storage budget have a say in a node's storage condition.
    let nodes_with_pods: HashSet<&str> = views
        .iter()
        .filter(|v| v.storage.is_some())
        .flat_map(|v| v.pods.iter())
        .filter_map(|p| p.node.as_deref())
        .collect();
    for node in input.nodes {
        // A scoped operator leaves nodes without pods of its storage intents alone (and a
        // taint it put there goes: no entry is wanted for it).
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
