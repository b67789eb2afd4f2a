//! Topology labels on nodes: which hypervisor host (and provider, and vSphere cluster) runs
//! each node's VM, as node labels that `topologySpreadConstraints` can use
//! (docs/placement.md).
//!
//! Two decisions, both on plain data: [`node_labels`] (what one node should carry) and
//! [`writes`] (which nodes to write this pass, given what this operator instance wrote
//! before). The operator applies each write by server-side apply under its own field
//! manager, so an apply names every topology label the node should carry and an empty one
//! releases them.

use plumbline_crds::names::{
    TOPOLOGY_CLUSTER_LABEL, TOPOLOGY_HOST_LABEL, TOPOLOGY_LABELS, TOPOLOGY_PROVIDER_LABEL,
};
use std::{collections::BTreeMap, time::Duration};

/// Label key → value.
pub type Labels = BTreeMap<String, String>;

/// The longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;

/// How long after writing a node this instance waits before writing it again because its
/// labels differ from what it wants (someone removed or changed them). Changes of what it
/// wants are written at once; this only bounds corrections, so that two instances that
/// briefly disagree (one has seen a move, the other not yet) never write in turns.
pub const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// Where the VM backing a node runs, as the provider that maps the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePlacement<'a> {
    /// The HypervisorProvider's name.
    pub provider: &'a str,
    pub host: &'a str,
    /// vSphere: the compute cluster of the host; `None` for a standalone host and libvirt.
    pub cluster: Option<&'a str>,
}

/// The topology labels a node should carry: none when it maps to no provider's VM. A name
/// that makes no valid label value (empty, or nothing alphanumeric in it) is left out.
pub fn node_labels(placement: Option<&NodePlacement<'_>>) -> Labels {
    let Some(p) = placement else {
        return Labels::new();
    };
    [
        (TOPOLOGY_HOST_LABEL, Some(p.host)),
        (TOPOLOGY_PROVIDER_LABEL, Some(p.provider)),
        (TOPOLOGY_CLUSTER_LABEL, p.cluster),
    ]
    .into_iter()
    .filter_map(|(key, raw)| Some((key.to_string(), label_value(raw?)?)))
    .collect()
}

/// `raw` as a valid label value: at most 63 characters of ASCII alphanumerics, `-`, `_` and
/// `.`, beginning and ending with an alphanumeric. Any other character becomes `-` (a host
/// named `esx 01/rack#3` is `esx-01-rack-3`), and what is left is cut to 63 characters.
/// `None` when nothing alphanumeric remains.
pub fn label_value(raw: &str) -> Option<String> {
    let mapped: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut: String = trimmed.chars().take(MAX_LABEL_VALUE).collect();
    let cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    (!cut.is_empty()).then(|| cut.to_string())
}

/// Only the topology labels of a node's labels.
pub fn topology_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Labels {
    labels
        .into_iter()
        .filter(|(k, _)| TOPOLOGY_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One node as the writer sees it this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTopology {
    pub node: String,
    /// What it should carry; `None` when that is unknown (the provider its labels name has
    /// not reported its VMs yet, e.g. just after a restart): it is left as it is.
    pub desired: Option<Labels>,
    /// Its topology labels now, whoever set them.
    pub observed: Labels,
}

/// What this instance last applied to a node, and how long ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub labels: Labels,
    pub age: Duration,
}

/// Why a node is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteReason {
    /// What it should carry changed (a VM moved, a provider came or went).
    Changed,
    /// First sight since this instance started: apply once, so that its ownership is shared
    /// with any other instance applying the same labels (or its earlier self's is released).
    FirstSight,
    /// Its labels differ from what this instance applied (removed or changed by someone).
    Drifted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelWrite {
    pub node: String,
    /// Every topology label the node should carry (empty: release them all).
    pub labels: Labels,
    pub reason: WriteReason,
}

/// The nodes to write this pass, at most `limit`, changes first, then first sights, then
/// corrections (each by node name); the rest wait for a later pass.
///
/// - A node whose wanted labels differ from what this instance last applied is written.
/// - A node this instance has not written since it started is written, unless it should
///   carry nothing and carries nothing.
/// - A node whose labels differ from what it should carry is written again, but only
///   [`RECHECK_AFTER`] after the last write and never to release: a label another instance
///   still applies stays, and this instance's own were released already.
pub fn writes(
    nodes: &[NodeTopology],
    written: &BTreeMap<String, Written>,
    limit: usize,
) -> Vec<LabelWrite> {
    let mut out: Vec<LabelWrite> = nodes
        .iter()
        .filter_map(|n| {
            let desired = n.desired.as_ref()?;
            let reason = match written.get(&n.node) {
                None if desired.is_empty() && n.observed.is_empty() => return None,
                None => WriteReason::FirstSight,
                Some(w) if &w.labels != desired => WriteReason::Changed,
                Some(w)
                    if !desired.is_empty() && &n.observed != desired && w.age >= RECHECK_AFTER =>
                {
                    WriteReason::Drifted
                }
                Some(_) => return None,
            };
            Some(LabelWrite {
                node: n.node.clone(),
                labels: desired.clone(),
                reason,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.reason, &a.node).cmp(&(b.reason, &b.node)));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn node(name: &str, desired: Option<Labels>, observed: Labels) -> NodeTopology {
        NodeTopology {
            node: name.into(),
            desired,
            observed,
        }
    }

    fn written(labels: Labels, secs: u64) -> Written {
        Written {
            labels,
            age: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_vm_backed_node_gets_host_provider_and_cluster() {
        let vsphere = NodePlacement {
            provider: "vc",
            host: "DC0_C0_H1",
            cluster: Some("DC0_C0"),
        };
        assert_eq!(
            node_labels(Some(&vsphere)),
            labels(&[
                (TOPOLOGY_HOST_LABEL, "DC0_C0_H1"),
                (TOPOLOGY_PROVIDER_LABEL, "vc"),
                (TOPOLOGY_CLUSTER_LABEL, "DC0_C0"),
            ])
        );
        let libvirt = NodePlacement {
            provider: "kvm",
            host: "kvm-01.example.com",
            cluster: None,
        };
        assert_eq!(
            node_labels(Some(&libvirt)),
            labels(&[
                (TOPOLOGY_HOST_LABEL, "kvm-01.example.com"),
                (TOPOLOGY_PROVIDER_LABEL, "kvm"),
            ])
        );
        assert!(node_labels(None).is_empty());
        // A host the hypervisor did not name gets no host label, not an invalid one.
        let unnamed = NodePlacement {
            host: "",
            ..libvirt
        };
        assert_eq!(
            node_labels(Some(&unnamed)),
            labels(&[(TOPOLOGY_PROVIDER_LABEL, "kvm")])
        );
    }

    #[test]
    fn label_values_are_sanitized() {
        assert_eq!(label_value("esx-01.lab").as_deref(), Some("esx-01.lab"));
        assert_eq!(label_value("DC0_C0_H1").as_deref(), Some("DC0_C0_H1"));
        assert_eq!(
            label_value("esx 01/rack#3").as_deref(),
            Some("esx-01-rack-3")
        );
        assert_eq!(label_value("  -host-  ").as_deref(), Some("host"));
        assert_eq!(label_value("ü-host").as_deref(), Some("host"));
        assert_eq!(label_value(""), None);
        assert_eq!(label_value("--__.."), None);
        // Cut to 63, and never ending on a separator after the cut.
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(label_value(&long), Some("a".repeat(62)));
        assert_eq!(label_value(&"h".repeat(100)).unwrap().len(), 63);
    }

    /// Every output is a valid label value (the apiserver's rule), whatever the input.
    #[test]
    fn label_values_are_always_valid() {
        use proptest::prelude::*;
        proptest!(|(raw in "\\PC{0,100}")| {
            if let Some(v) = label_value(&raw) {
                prop_assert!(!v.is_empty() && v.len() <= MAX_LABEL_VALUE);
                prop_assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
                prop_assert!(v.starts_with(|c: char| c.is_ascii_alphanumeric()));
                prop_assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()));
            }
        });
    }

    #[test]
    fn only_changes_are_written_and_moves_go_first() {
        let on_h0 = labels(&[(TOPOLOGY_HOST_LABEL, "h0"), (TOPOLOGY_PROVIDER_LABEL, "vc")]);
        let on_h1 = labels(&[(TOPOLOGY_HOST_LABEL, "h1"), (TOPOLOGY_PROVIDER_LABEL, "vc")]);
        let nodes = [
            node("a", Some(on_h0.clone()), on_h0.clone()),
            node("b", Some(on_h1.clone()), on_h0.clone()),
            node("c", Some(on_h0.clone()), Labels::new()),
        ];
        let before: BTreeMap<String, Written> = [
            ("a".to_string(), written(on_h0.clone(), 1)),
            ("b".to_string(), written(on_h0.clone(), 1)),
        ]
        .into();
        let w = writes(&nodes, &before, 10);
        let got: Vec<_> = w.iter().map(|w| (w.node.as_str(), w.reason)).collect();
        assert_eq!(
            got,
            [("b", WriteReason::Changed), ("c", WriteReason::FirstSight)]
        );
        assert_eq!(w[0].labels, on_h1);
        // Bounded: the move first.
        assert_eq!(writes(&nodes, &before, 1).len(), 1);
        assert_eq!(writes(&nodes, &before, 1)[0].node, "b");
    }

    #[test]
    fn a_node_no_longer_backed_is_released_once() {
        let on_h0 = labels(&[
            (TOPOLOGY_HOST_LABEL, "h0"),
            (TOPOLOGY_PROVIDER_LABEL, "kvm"),
        ]);
        let nodes = [node("a", Some(Labels::new()), on_h0.clone())];
        let before: BTreeMap<String, Written> =
            [("a".to_string(), written(on_h0.clone(), 1))].into();
        let w = writes(&nodes, &before, 10);
        assert_eq!(w.len(), 1);
        assert!(w[0].labels.is_empty());
        // Released; another instance still applies them, so they stay: no second release,
        // however long ago the first was.
        let after: BTreeMap<String, Written> =
            [("a".to_string(), written(Labels::new(), 3600))].into();
        assert!(writes(&nodes, &after, 10).is_empty());
        // Never seen and carrying nothing: nothing to do.
        let bare = [node("z", Some(Labels::new()), Labels::new())];
        assert!(writes(&bare, &BTreeMap::new(), 10).is_empty());
    }

    #[test]
    fn unknown_nodes_are_left_alone() {
        let on_h0 = labels(&[(TOPOLOGY_HOST_LABEL, "h0")]);
        let nodes = [node("a", None, on_h0)];
        assert!(writes(&nodes, &BTreeMap::new(), 10).is_empty());
    }

    #[test]
    fn drift_is_corrected_but_not_at_once() {
        let on_h0 = labels(&[(TOPOLOGY_HOST_LABEL, "h0"), (TOPOLOGY_PROVIDER_LABEL, "vc")]);
        let nodes = [node("a", Some(on_h0.clone()), Labels::new())];
        let recent: BTreeMap<String, Written> =
            [("a".to_string(), written(on_h0.clone(), 5))].into();
        assert!(writes(&nodes, &recent, 10).is_empty());
        let old: BTreeMap<String, Written> = [("a".to_string(), written(on_h0.clone(), 61))].into();
        let w = writes(&nodes, &old, 10);
        assert_eq!(w[0].reason, WriteReason::Drifted);
        assert_eq!(w[0].labels, on_h0);
    }

    #[test]
    fn topology_labels_are_picked_out_of_a_nodes_labels() {
        let all = labels(&[
            (TOPOLOGY_HOST_LABEL, "h0"),
            ("kubernetes.io/hostname", "n1"),
            ("topology.plumbline.dev/other", "x"),
        ]);
        assert_eq!(
            topology_labels(&all),
            labels(&[(TOPOLOGY_HOST_LABEL, "h0")])
        );
    }
}
