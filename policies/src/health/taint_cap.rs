//! The guard of the storage taint: which of the nodes that deserve the `NoSchedule` taint may
//! carry it now. A storage incident that spans a datastore must not make the cluster
//! unschedulable, so:
//! - at most `max_nodes_percent` of all nodes (rounded down; default a third) carry the taint
//!   at once;
//! - a node is never tainted when it is the last schedulable node of a workload that has an
//!   intent: a node its pods' `nodeSelector`, required node affinity and tolerations admit,
//!   that is Ready and not cordoned.
//!
//! Nodes that carry the taint already keep it first, so the set does not churn from pass to
//! pass; then nodes are taken by name. What is held back is reported with the reason.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

/// How many nodes the storage taint may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaintCap {
    /// Percent of all nodes, rounded down.
    pub max_nodes_percent: u8,
}

impl Default for TaintCap {
    fn default() -> Self {
        Self {
            max_nodes_percent: 33,
        }
    }
}

impl TaintCap {
    /// How many of `total` nodes may be tainted.
    pub fn allowed(self, total: usize) -> usize {
        total * usize::from(self.max_nodes_percent.min(100)) / 100
    }
}

/// A node as the taint guard sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Ready and not cordoned.
    pub schedulable: bool,
    /// Its taints other than the storage taint.
    pub taints: Vec<Taint>,
    /// It carries the storage taint now.
    pub storage_tainted: bool,
}

/// Where a workload with an intent may be scheduled, from one of its pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadPlacement {
    /// `namespace/name` of the intent.
    pub intent: String,
    pub node_selector: BTreeMap<String, String>,
    /// `requiredDuringSchedulingIgnoredDuringExecution` terms (any one must match); empty = any.
    pub required_terms: Vec<NodeSelectorTerm>,
    pub tolerations: Vec<Toleration>,
}

impl WorkloadPlacement {
    /// Whether a pod of the workload could be scheduled on `node` (the storage taint aside).
    pub fn admits(&self, node: &NodeFacts) -> bool {
        node.schedulable
            && self
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            && (self.required_terms.is_empty()
                || self
                    .required_terms
                    .iter()
                    .any(|t| term_matches(t, &node.labels)))
            && node
                .taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| self.tolerations.iter().any(|tol| tolerates(tol, t)))
    }
}

/// Why a node that deserves the taint does not get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintHeld {
    /// The cap is reached: `max` of `total` nodes.
    Cap { max: usize, total: usize },
    /// It is the last schedulable node of the intent's workload.
    LastSchedulable { intent: String },
}

impl TaintHeld {
    pub fn describe(&self) -> String {
        match self {
            TaintHeld::Cap { max, total } => format!(
                "at most {max} of {total} nodes may carry the storage taint at once, and that many already do"
            ),
            TaintHeld::LastSchedulable { intent } => format!(
                "it is the last schedulable node for the workload of intent {intent}"
            ),
        }
    }
}

/// The nodes to taint, and those held back with the reason.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaintDecision {
    pub taint: BTreeSet<String>,
    pub held: BTreeMap<String, TaintHeld>,
}

/// Chooses which of the `deserving` nodes carry the storage taint.
pub fn cap_taints(
    deserving: &BTreeSet<String>,
    nodes: &[NodeFacts],
    workloads: &[WorkloadPlacement],
    cap: TaintCap,
) -> TaintDecision {
    let max = cap.allowed(nodes.len());
    // Each workload's schedulable nodes, ignoring the storage taint.
    let mut room: Vec<(&str, BTreeSet<&str>)> = workloads
        .iter()
        .map(|w| {
            let admitted = nodes
                .iter()
                .filter(|n| w.admits(n))
                .map(|n| n.name.as_str())
                .collect();
            (w.intent.as_str(), admitted)
        })
        .collect();
    let mut order: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| deserving.contains(&n.name))
        .collect();
    order.sort_by_key(|n| (!n.storage_tainted, n.name.as_str()));

    let mut decision = TaintDecision::default();
    for node in order {
        let name = node.name.as_str();
        if let Some((intent, _)) = room
            .iter()
            .find(|(_, admitted)| admitted.len() == 1 && admitted.contains(name))
        {
            decision.held.insert(
                name.to_string(),
                TaintHeld::LastSchedulable {
                    intent: intent.to_string(),
                },
            );
            continue;
        }
        if decision.taint.len() >= max {
            decision.held.insert(
                name.to_string(),
                TaintHeld::Cap {
                    max,
                    total: nodes.len(),
                },
            );
            continue;
        }
        for (_, admitted) in &mut room {
            admitted.remove(name);
        }
        decision.taint.insert(name.to_string());
    }
    // Nodes that deserve it but are not in the node list (gone) are neither tainted nor held.
    decision
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = tol.key.as_deref().unwrap_or_default();
    let exists = tol.operator.as_deref() == Some("Exists");
    let key_ok = if key.is_empty() {
        exists
    } else {
        key == taint.key
    };
    let value_ok = exists
        || tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
    effect_ok && key_ok && value_ok
}

fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    // matchFields (metadata.name) is not evaluated: a term with only fields admits any node,
    // so such a workload counts more nodes than it has and is protected less, never wrongly
    // more; an empty term matches nothing, as in Kubernetes.
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    if exprs.is_empty() {
        return term.match_fields.as_ref().is_some_and(|f| !f.is_empty());
    }
    exprs.iter().all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (
            value.and_then(|v| number(v)),
            values.first().and_then(|v| number(v)),
        ) {
            (Some(have), Some(bound)) if r.operator == "Gt" => have > bound,
            (Some(have), Some(bound)) => have < bound,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            schedulable: true,
            ..NodeFacts::default()
        }
    }

    fn nodes(n: usize) -> Vec<NodeFacts> {
        (0..n).map(|i| node(&format!("n{i}"))).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn anywhere(intent: &str) -> WorkloadPlacement {
        WorkloadPlacement {
            intent: intent.into(),
            ..WorkloadPlacement::default()
        }
    }

    fn on_host(intent: &str, host: &str) -> WorkloadPlacement {
        WorkloadPlacement {
            intent: intent.into(),
            node_selector: [("kubernetes.io/hostname".to_string(), host.to_string())].into(),
            ..WorkloadPlacement::default()
        }
    }

    #[test]
    fn a_third_of_the_nodes_at_most_rounded_down() {
        assert_eq!(TaintCap::default().allowed(8), 2);
        assert_eq!(TaintCap::default().allowed(3), 0);
        assert_eq!(TaintCap::default().allowed(10), 3);
        let d = cap_taints(
            &set(&["n0", "n1", "n2", "n3"]),
            &nodes(8),
            &[],
            TaintCap::default(),
        );
        assert_eq!(d.taint, set(&["n0", "n1"]));
        assert_eq!(d.held["n2"], TaintHeld::Cap { max: 2, total: 8 });
        assert!(d.held["n3"].describe().contains("at most 2 of 8 nodes"));
    }

    #[test]
    fn the_last_schedulable_node_is_named_as_such_even_past_the_cap() {
        let d = cap_taints(
            &set(&["n0", "n1", "n2", "n3"]),
            &nodes(8),
            &[on_host("shop/pinned", "n3")],
            TaintCap::default(),
        );
        assert_eq!(d.taint, set(&["n0", "n1"]));
        assert!(matches!(d.held["n2"], TaintHeld::Cap { .. }));
        assert!(matches!(d.held["n3"], TaintHeld::LastSchedulable { .. }));
    }

    #[test]
    fn nodes_tainted_already_keep_it() {
        let mut all = nodes(8);
        all[3].storage_tainted = true;
        let d = cap_taints(&set(&["n0", "n1", "n3"]), &all, &[], TaintCap::default());
        assert_eq!(d.taint, set(&["n0", "n3"]));
        assert!(d.held.contains_key("n1"));
    }

    #[test]
    fn never_the_last_schedulable_node_of_a_workload() {
        let d = cap_taints(
            &set(&["n1"]),
            &nodes(9),
            &[on_host("shop/pinned", "n1"), anywhere("shop/free")],
            TaintCap::default(),
        );
        assert!(d.taint.is_empty());
        assert_eq!(
            d.held["n1"],
            TaintHeld::LastSchedulable {
                intent: "shop/pinned".into()
            }
        );
    }

    #[test]
    fn two_nodes_for_a_workload_means_only_one_is_tainted() {
        let mut all = nodes(9);
        for n in &mut all[..2] {
            n.labels.insert("zone".into(), "a".into());
        }
        let zone_a = WorkloadPlacement {
            intent: "shop/a".into(),
            node_selector: [("zone".to_string(), "a".to_string())].into(),
            ..WorkloadPlacement::default()
        };
        let d = cap_taints(&set(&["n0", "n1"]), &all, &[zone_a], TaintCap::default());
        assert_eq!(d.taint, set(&["n0"]));
        assert!(matches!(d.held["n1"], TaintHeld::LastSchedulable { .. }));
    }

    #[test]
    fn cordoned_unready_and_untolerated_nodes_are_not_room() {
        let mut all = nodes(12);
        all[0].schedulable = false;
        all[1].taints.push(Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        });
        let mut w = WorkloadPlacement {
            intent: "shop/a".into(),
            required_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "kubernetes.io/hostname".into(),
                    operator: "In".into(),
                    values: Some(vec!["n0".into(), "n1".into(), "n2".into()]),
                }]),
                ..NodeSelectorTerm::default()
            }],
            ..WorkloadPlacement::default()
        };
        // n0 is cordoned and n1 tainted: n2 is the last room.
        let d = cap_taints(&set(&["n2"]), &all, &[w.clone()], TaintCap::default());
        assert!(d.taint.is_empty(), "{d:?}");
        // Tolerating the gpu taint makes n1 room again.
        w.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
        let d = cap_taints(&set(&["n2"]), &all, &[w], TaintCap::default());
        assert_eq!(d.taint, set(&["n2"]));
    }

    #[test]
    fn toleration_rules_follow_kubernetes() {
        let t = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let tol = |key: Option<&str>,
                   op: Option<&str>,
                   value: Option<&str>,
                   effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Toleration::default()
        };
        assert!(tolerates(&tol(None, Some("Exists"), None, None), &t));
        assert!(tolerates(&tol(Some("k"), Some("Exists"), None, None), &t));
        assert!(tolerates(
            &tol(Some("k"), None, Some("v"), Some("NoSchedule")),
            &t
        ));
        assert!(!tolerates(&tol(Some("k"), None, Some("w"), None), &t));
        assert!(!tolerates(
            &tol(Some("k"), Some("Exists"), None, Some("NoExecute")),
            &t
        ));
        assert!(!tolerates(&tol(None, None, None, None), &t));
    }

    #[test]
    fn affinity_operators() {
        let labels: BTreeMap<String, String> = [("cpu".to_string(), "8".to_string())].into();
        let req = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "cpu".into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        assert!(requirement_matches(&req("Gt", &["4"]), &labels));
        assert!(!requirement_matches(&req("Lt", &["4"]), &labels));
        assert!(requirement_matches(&req("NotIn", &["4"]), &labels));
        assert!(requirement_matches(&req("Exists", &[]), &labels));
        assert!(!requirement_matches(&req("DoesNotExist", &[]), &labels));
        assert!(!requirement_matches(&req("Sideways", &[]), &labels));
    }

    proptest! {
        /// Whatever deserves the taint: within the cap, and every workload that had room
        /// keeps some.
        #[test]
        fn within_the_cap_and_never_the_last_room(
            total in 1usize..20,
            deserving in proptest::collection::btree_set(0usize..20, 0..20),
            tainted in proptest::collection::btree_set(0usize..20, 0..20),
            pins in proptest::collection::vec(proptest::collection::btree_set(0usize..20, 1..4), 0..5),
            percent in 0u8..=100,
        ) {
            let mut all = nodes(total);
            for i in &tainted {
                if let Some(n) = all.get_mut(*i) {
                    n.storage_tainted = true;
                }
            }
            let zone = |i: usize| format!("w{i}");
            let mut workloads = Vec::new();
            for (w, pin) in pins.iter().enumerate() {
                for i in pin {
                    if let Some(n) = all.get_mut(*i) {
                        n.labels.insert(zone(w), "yes".into());
                    }
                }
                workloads.push(WorkloadPlacement {
                    intent: format!("ns/{w}"),
                    node_selector: [(zone(w), "yes".to_string())].into(),
                    ..WorkloadPlacement::default()
                });
            }
            let deserving: BTreeSet<String> = deserving.iter().map(|i| format!("n{i}")).collect();
            let cap = TaintCap { max_nodes_percent: percent };
            let d = cap_taints(&deserving, &all, &workloads, cap);
            prop_assert!(d.taint.len() <= cap.allowed(total));
            prop_assert!(d.taint.is_subset(&deserving));
            for w in &workloads {
                let room: Vec<&NodeFacts> = all.iter().filter(|n| w.admits(n)).collect();
                if !room.is_empty() {
                    prop_assert!(room.iter().any(|n| !d.taint.contains(&n.name)));
                }
            }
            for n in &deserving {
                let known = all.iter().any(|x| &x.name == n);
                prop_assert_eq!(known, d.taint.contains(n) || d.held.contains_key(n));
            }
        }
    }
}
