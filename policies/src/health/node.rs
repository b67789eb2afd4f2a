//! The node condition `StorageLatencyHigh`, in the style of node-problem-detector: a problem
//! condition, so `True` is bad.

use super::{format_latency, sample::LatencyBudget, Verdict, VmVerdict};

/// Reasons on the node condition.
pub mod reason {
    pub const OVER_BUDGET: &str = "StorageLatencyOverBudget";
    pub const WITHIN_BUDGET: &str = "StorageLatencyWithinBudget";
    pub const UNKNOWN: &str = "StorageLatencyUnknown";
}

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
            status: "True",
            reason: reason::OVER_BUDGET,
            message: format!(
                "VM {vm_name}{disk}: {} per storage operation, over budget {budget_text}",
                latest.map(format_latency).unwrap_or_else(|| "idle".into())
            ),
            taint: true,
        },
        Verdict::Healthy { latest } => NodeCondition {
            status: "False",
            reason: reason::WITHIN_BUDGET,
            message: format!(
                "VM {vm_name}{disk}: {} per storage operation, within budget {budget_text}",
                latest.map(format_latency).unwrap_or_else(|| "idle".into())
            ),
            taint: false,
        },
        Verdict::Unknown { cause } => NodeCondition {
            status: "Unknown",
            reason: reason::UNKNOWN,
            message: format!("VM {vm_name}: {}", cause.describe()),
            taint: false,
        },
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
}
