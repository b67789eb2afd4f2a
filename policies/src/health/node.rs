//! The node condition `StorageLatencyHigh`, in the style of node-problem-detector: a problem
//! condition, so `True` is bad; and the optional `NoSchedule` taint that goes with it.

use k8s_openapi::api::core::v1::Taint;
use plumbline_crds::{conditions::status, names::NODE_STORAGE_TAINT};

use super::{format_latency, sample::LatencyBudget, Verdict, VmVerdict};

/// The effect of the storage taint: keep new pods off, leave running ones alone.
pub const TAINT_EFFECT: &str = "NoSchedule";

/// Reasons on the node condition (defined with every other reason in `plumbline_crds`).
pub use plumbline_crds::conditions::node as reason;

/// The value of the node condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// Whether a `NoSchedule` taint is warranted (only when the problem is confirmed, never on
    /// unknown, so a monitoring outage cannot cordon the cluster).
    pub taint: bool,
}

/// The condition for a node backed by `vm_name`, judged against `budget` (the strictest budget
/// among the intents whose pods it runs, or the operator's default for nodes without any).
pub fn node_condition(vm_name: &str, vm: &VmVerdict, budget: LatencyBudget) -> NodeCondition {
    let disk = vm
        .disk
        .as_deref()
        .map(|d| format!(" disk {d}"))
        .unwrap_or_default();
    let budget_text = format_latency(budget.0);
    match vm.verdict {
        Verdict::Degraded { latest, .. } => NodeCondition {
            status: status::TRUE,
            reason: reason::OVER_BUDGET,
            message: format!(
                "VM {vm_name}{disk}: {} per storage operation, over budget {budget_text}",
                latest.map(format_latency).unwrap_or_else(|| "idle".into())
            ),
            taint: true,
        },
        Verdict::Healthy { latest } => NodeCondition {
            status: status::FALSE,
            reason: reason::WITHIN_BUDGET,
            message: format!(
                "VM {vm_name}{disk}: {} per storage operation, within budget {budget_text}",
                latest.map(format_latency).unwrap_or_else(|| "idle".into())
            ),
            taint: false,
        },
        Verdict::Unknown { cause } => NodeCondition {
            status: status::UNKNOWN,
            reason: reason::UNKNOWN,
            message: format!("VM {vm_name}: {}", cause.describe()),
            taint: false,
        },
    }
}

fn is_storage_taint(t: &Taint) -> bool {
    t.key == NODE_STORAGE_TAINT && t.effect == TAINT_EFFECT
}

/// The node's taints with the storage taint present (`taint`) or absent, every other taint
/// kept as it is and in its order; `None` when the node already says so. `spec.taints` is an
/// atomic list (no merge key, not even in server-side apply), so the caller writes the whole
/// list back, guarded by the resourceVersion it read.
pub fn node_taints(current: &[Taint], taint: bool) -> Option<Vec<Taint>> {
    let has = current.iter().any(is_storage_taint);
    match (has, taint) {
        (false, true) => {
            let mut next = current.to_vec();
            next.push(Taint {
                key: NODE_STORAGE_TAINT.to_string(),
                effect: TAINT_EFFECT.to_string(),
                value: None,
                time_added: None,
            });
            Some(next)
        }
        (true, false) => Some(
            current
                .iter()
                .filter(|t| !is_storage_taint(t))
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::UnknownCause;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn degraded_sets_the_problem_condition() {
        let vm = VmVerdict {
            verdict: Verdict::Degraded {
                latest: Some(Duration::from_millis(12)),
                over_budget: 2,
                window: 3,
                since: UNIX_EPOCH,
                onset: UNIX_EPOCH,
            },
            disk: Some("vda".into()),
        };
        let c = node_condition("pl-worker-1", &vm, LatencyBudget::from_millis(5));
        assert_eq!(c.status, "True");
        assert_eq!(c.reason, reason::OVER_BUDGET);
        assert!(c.taint);
        assert_eq!(
            c.message,
            "VM pl-worker-1 disk vda: 12.0ms per storage operation, over budget 5.0ms"
        );
    }

    #[test]
    fn healthy_and_unknown_never_taint() {
        let healthy = VmVerdict {
            verdict: Verdict::Healthy { latest: None },
            disk: Some("vda".into()),
        };
        let c = node_condition("n", &healthy, LatencyBudget::from_millis(5));
        assert_eq!((c.status, c.taint), ("False", false));
        let c = node_condition(
            "n",
            &VmVerdict::unknown(UnknownCause::NoSamples),
            LatencyBudget::from_millis(5),
        );
        assert_eq!(
            (c.status, c.reason, c.taint),
            ("Unknown", reason::UNKNOWN, false)
        );
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn the_storage_taint_is_added_and_removed_without_touching_others() {
        let others = vec![
            taint("node.kubernetes.io/unreachable", "NoExecute"),
            Taint {
                value: Some("gpu".into()),
                ..taint("dedicated", "NoSchedule")
            },
        ];
        let tainted = node_taints(&others, true).expect("added");
        assert_eq!(&tainted[..2], &others[..], "others kept, in order");
        assert_eq!(tainted[2], taint(NODE_STORAGE_TAINT, TAINT_EFFECT));
        assert_eq!(node_taints(&tainted, true), None, "already there");
        assert_eq!(node_taints(&tainted, false), Some(others.clone()));
        assert_eq!(node_taints(&others, false), None, "nothing to remove");
        assert_eq!(node_taints(&[], false), None);
    }

    #[test]
    fn only_the_storage_key_with_its_effect_is_ours() {
        // Someone else's taint with our key but another effect is not ours to remove.
        let theirs = vec![taint(NODE_STORAGE_TAINT, "NoExecute")];
        assert_eq!(node_taints(&theirs, false), None);
        let both = node_taints(&theirs, true).expect("ours added beside it");
        assert_eq!(both.len(), 2);
        assert_eq!(node_taints(&both, false), Some(theirs));
    }
}
