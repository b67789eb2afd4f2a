//! The pod condition `plumbline.dev/storage-healthy`: what a VM verdict means for the pods it
//! backs, and what *unknown* does to readiness.

use super::{
    format_latency, guard::GuardBudget, sample::LatencyBudget, UnknownCause, Verdict, VmVerdict,
};

/// Reasons on the pod condition (defined with every other reason in `plumbline_crds`).
pub use plumbline_crds::conditions::pod as reason;

/// What an unknown verdict does to readiness.
///
/// The default is [`UnknownReadiness::FailOpen`]: losing the hypervisor connection must not
/// take healthy workloads out of service, so a monitoring outage never becomes an outage.
/// [`UnknownReadiness::FailClosed`] suits workloads that would rather stop serving than serve
/// from storage nobody can vouch for; such pods still count against the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownReadiness {
    #[default]
    FailOpen,
    FailClosed,
}

impl UnknownReadiness {
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownReadiness::FailOpen => "fail-open",
            UnknownReadiness::FailClosed => "fail-closed",
        }
    }
}

impl std::str::FromStr for UnknownReadiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail-open" | "FailOpen" => Ok(Self::FailOpen),
            "fail-closed" | "FailClosed" => Ok(Self::FailClosed),
            other => Err(format!(
                "unknown readiness policy {other:?}: expected fail-open or fail-closed"
            )),
        }
    }
}

/// The value of the pod condition, before or after the guard.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessVerdict {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    /// How bad it is, for the guard to put the worst pods first: latency / budget when over
    /// budget, 0 for unknown.
    pub severity: f64,
}

/// What the storage under one pod says about its readiness, before the guard.
pub fn pod_readiness(
    vm_name: Option<&str>,
    vm: &VmVerdict,
    budget: LatencyBudget,
    unknown: UnknownReadiness,
) -> ReadinessVerdict {
    let budget_text = format_latency(budget.0);
    let where_ = match (vm_name, vm.disk.as_deref()) {
        (Some(name), Some(disk)) => format!("VM {name} disk {disk}"),
        (Some(name), None) => format!("VM {name}"),
        (None, _) => "the backing VM".to_string(),
    };
    match vm.verdict {
        Verdict::Healthy { latest } => ReadinessVerdict {
            ready: true,
            reason: reason::WITHIN_BUDGET,
            message: match latest {
                Some(l) => format!("{where_}: {} per operation, within budget {budget_text}", format_latency(l)),
                None => format!("{where_}: idle, within budget {budget_text}"),
            },
            severity: 0.0,
        },
        Verdict::Degraded {
            latest,
            over_budget,
            window,
            ..
        } => ReadinessVerdict {
            ready: false,
            reason: reason::OVER_BUDGET,
            message: format!(
                "{where_}: {} per operation, over budget {budget_text} in {over_budget} of the last {window} samples",
                latest.map(format_latency).unwrap_or_else(|| "idle".into()),
            ),
            severity: latest.map(|l| budget.ratio(l)).unwrap_or(1.0).max(1.0),
        },
        Verdict::Unknown { cause } => {
            let reason = if cause == UnknownCause::NotBacked {
                reason::NOT_BACKED
            } else {
                reason::UNKNOWN
            };
            ReadinessVerdict {
                ready: unknown == UnknownReadiness::FailOpen,
                reason,
                message: format!("{where_}: {}; readiness is {}", cause.describe(), unknown.as_str()),
                severity: 0.0,
            }
        }
    }
}

impl ReadinessVerdict {
    /// The verdict for a pod the guard kept ready although its storage says otherwise.
    pub fn held_by_guard(self, budget: &GuardBudget) -> Self {
        if self.ready {
            return self;
        }
        Self {
            ready: true,
            reason: if self.reason == reason::OVER_BUDGET {
                reason::HELD_BY_GUARD
            } else {
                reason::UNKNOWN_HELD_BY_GUARD
            },
            message: format!(
                "{}; kept ready by the guard: {}",
                self.message,
                budget.describe()
            ),
            severity: self.severity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const BUDGET: LatencyBudget = LatencyBudget(Duration::from_millis(20));

    fn vm(verdict: Verdict) -> VmVerdict {
        VmVerdict {
            verdict,
            disk: Some("vda".into()),
        }
    }

    #[test]
    fn healthy_is_ready_with_the_figure() {
        let v = pod_readiness(
            Some("pl-worker-1"),
            &vm(Verdict::Healthy {
                latest: Some(Duration::from_micros(40)),
            }),
            BUDGET,
            UnknownReadiness::default(),
        );
        assert!(v.ready);
        assert_eq!(v.reason, reason::WITHIN_BUDGET);
        assert_eq!(
            v.message,
            "VM pl-worker-1 disk vda: 40µs per operation, within budget 20.0ms"
        );
    }

    #[test]
    fn degraded_is_unready_with_latency_and_evidence() {
        let v = pod_readiness(
            Some("pl-worker-1"),
            &vm(Verdict::Degraded {
                latest: Some(Duration::from_micros(9_870)),
                over_budget: 2,
                window: 3,
                since: UNIX_EPOCH,
                onset: UNIX_EPOCH,
            }),
            LatencyBudget::from_millis(5),
            UnknownReadiness::default(),
        );
        assert!(!v.ready);
        assert_eq!(v.reason, reason::OVER_BUDGET);
        assert_eq!(
            v.message,
            "VM pl-worker-1 disk vda: 9.9ms per operation, over budget 5.0ms in 2 of the last 3 samples"
        );
        assert!((v.severity - 1.974).abs() < 1e-9);
    }

    #[test]
    fn unknown_follows_the_policy() {
        let unknown = vm(Verdict::Unknown {
            cause: UnknownCause::Stale {
                last_sample_at: UNIX_EPOCH,
            },
        });
        let open = pod_readiness(Some("a"), &unknown, BUDGET, UnknownReadiness::FailOpen);
        assert!(open.ready);
        assert_eq!(open.reason, reason::UNKNOWN);
        assert!(
            open.message.contains("stale") && open.message.contains("fail-open"),
            "{}",
            open.message
        );
        let closed = pod_readiness(Some("a"), &unknown, BUDGET, UnknownReadiness::FailClosed);
        assert!(!closed.ready);
        assert_eq!(closed.reason, reason::UNKNOWN);
    }

    #[test]
    fn unbacked_node_has_its_own_reason() {
        let v = pod_readiness(
            None,
            &VmVerdict::unknown(UnknownCause::NotBacked),
            BUDGET,
            UnknownReadiness::FailOpen,
        );
        assert!(v.ready);
        assert_eq!(v.reason, reason::NOT_BACKED);
    }

    #[test]
    fn guard_hold_keeps_the_measurement_in_the_message() {
        let v = pod_readiness(
            Some("a"),
            &vm(Verdict::Degraded {
                latest: Some(Duration::from_millis(30)),
                over_budget: 3,
                window: 3,
                since: UNIX_EPOCH,
                onset: UNIX_EPOCH,
            }),
            BUDGET,
            UnknownReadiness::FailOpen,
        )
        .held_by_guard(&GuardBudget {
            total: 3,
            unready_elsewhere: 0,
            allowed: 1,
        });
        assert!(v.ready);
        assert_eq!(v.reason, reason::HELD_BY_GUARD);
        assert!(
            v.message.contains("30.0ms") && v.message.contains("at most 1 of 3"),
            "{}",
            v.message
        );
    }

    #[test]
    fn policy_parses_from_flags() {
        assert_eq!("fail-open".parse(), Ok(UnknownReadiness::FailOpen));
        assert_eq!("fail-closed".parse(), Ok(UnknownReadiness::FailClosed));
        assert!("maybe".parse::<UnknownReadiness>().is_err());
    }
}
