//! The optional `NoSchedule` taint on nodes whose storage is confirmed over budget
//! (`--taint-degraded-nodes`), as ledger entries: a node that should carry the taint gets an
//! `InfraChange`, and the taint goes when the entry does — on recovery, when the node's health
//! turns unknown, when this operator's pods leave the node, or when the flag is switched off.
//! The node actuator carries it out (see `crate::ledger::target`).
//!
//! Which deserving nodes get it is [`cap_taints`]'s decision: at most a share of the nodes, and
//! never a workload's last schedulable node. A node held back gets a Warning Event saying why.

use k8s_openapi::api::core::v1::Node;
use kube::{
    runtime::events::{Event, EventType},
    ResourceExt,
};
use plumbline_crds::{
    conditions::{event, status},
    names::NODE_STORAGE_TAINT,
    ChangeOwner, InfraChangeSpec,
};
use plumbline_policies::{
    health::{cap_taints, NodeFacts, TaintCap, TaintHeld, WorkloadPlacement, TAINT_EFFECT},
    ledger::{taint_setting, taint_spec},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};
use tracing::info;

use super::graph::IntentView;
use crate::context::Context;

/// A node that should carry the storage taint now.
pub struct TaintWant {
    pub node: String,
    /// The intents whose pods run on the node (`namespace/name`).
    pub intents: Vec<String>,
    /// Why, stable while the node stays degraded (no latency figures).
    pub because: String,
}

/// What the taint guard remembers between passes: the nodes it holds back, so each hold is
/// told once.
#[derive(Default)]
pub struct TaintGuard {
    held: BTreeMap<String, TaintHeld>,
}

/// The taint changes wanted this pass, and the nodes newly held back.
pub struct TaintPlan {
    pub wanted: Vec<InfraChangeSpec>,
    pub newly_held: Vec<(Arc<Node>, TaintHeld)>,
}

impl TaintGuard {
    /// Caps `wants` and turns what is left into ledger entries.
    pub fn plan(
        &mut self,
        wants: &[TaintWant],
        nodes: &[Arc<Node>],
        views: &[IntentView],
        cap: TaintCap,
        operator: &str,
    ) -> TaintPlan {
        let deserving: BTreeSet<String> = wants.iter().map(|w| w.node.clone()).collect();
        let facts: Vec<NodeFacts> = nodes.iter().map(|n| node_facts(n)).collect();
        let workloads: Vec<WorkloadPlacement> = views.iter().filter_map(placement).collect();
        let decision = cap_taints(&deserving, &facts, &workloads, cap);

        let newly_held = decision
            .held
            .iter()
            .filter(|(node, why)| self.held.get(*node) != Some(why))
            .filter_map(|(node, why)| {
                let n = nodes.iter().find(|n| n.name_any() == *node)?;
                info!(node = %node, why = %why.describe(), "storage taint held back");
                Some((n.clone(), why.clone()))
            })
            .collect();
        self.held = decision.held;

        let setting = taint_setting(NODE_STORAGE_TAINT, TAINT_EFFECT);
        let wanted = wants
            .iter()
            .filter(|w| decision.taint.contains(&w.node))
            .map(|w| {
                let owners = w
                    .intents
                    .iter()
                    .map(|intent| ChangeOwner {
                        intent: intent.clone(),
                        reason: w.because.clone(),
                    })
                    .collect();
                taint_spec(&w.node, &setting, owners, operator)
            })
            .collect();
        TaintPlan { wanted, newly_held }
    }

    /// How many deserving nodes are held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// A Warning Event on each node newly held back.
pub async fn publish(ctx: &Context, newly_held: Vec<(Arc<Node>, TaintHeld)>) {
    for (node, why) in newly_held {
        let event = Event {
            type_: EventType::Warning,
            reason: event::STORAGE_TAINT_HELD.into(),
            note: Some(format!(
                "storage latency is over budget, but the {NODE_STORAGE_TAINT} taint is held back: {}",
                why.describe()
            )),
            action: "Taint".into(),
            secondary: None,
        };
        ctx.publish_cluster_scoped(node.as_ref(), event).await;
    }
}

fn node_facts(node: &Node) -> NodeFacts {
    let spec = node.spec.as_ref();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == status::TRUE);
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let (storage, taints): (Vec<_>, Vec<_>) = spec
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|t| t.key == NODE_STORAGE_TAINT && t.effect == TAINT_EFFECT);
    NodeFacts {
        name: node.name_any(),
        labels: node.labels().clone(),
        schedulable: ready && !cordoned,
        taints,
        storage_tainted: !storage.is_empty(),
    }
}

/// Where the intent's workload may be scheduled, read from one of its pods (the pods of a
/// workload share their template); `None` for a workload without pods.
fn placement(view: &IntentView) -> Option<WorkloadPlacement> {
    let placement = &view.pods.first()?.pod.placement;
    Some(WorkloadPlacement {
        intent: view.label(),
        node_selector: placement.node_selector.clone(),
        required_terms: placement.required_terms.clone(),
        tolerations: placement.tolerations.clone(),
    })
}
