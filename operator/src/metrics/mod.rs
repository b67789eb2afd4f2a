//! The operator's Prometheus metrics. One registry, prefixed `plumbline`; other loops (the
//! health sampler) register their own metrics into the same registry before it is served.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::Registry,
};
use std::time::Instant;

pub mod health;
pub mod pod_series;
pub mod signals;

pub const REGISTRY_PREFIX: &str = "plumbline";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: String,
    pub error: String,
}

/// Which layer an action touched. The hypervisor layer is used by the health loop.
// Variant names are the label values.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ActionLayer {
    kubernetes,
    hypervisor,
}

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ActionResult {
    applied,
    reverted,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub layer: ActionLayer,
    /// The kind of action, e.g. `priority_class`, `replica_floor`, `pdb`, `readiness_gate`.
    pub action: String,
    pub result: ActionResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub lease: String,
    pub identity: String,
}

/// `plumbline_infra_drift_total`: by why the change exists.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub purpose: String,
}

const MAINTENANCE_PHASES: [&str; 6] = {
    use plumbline_crds::conditions::maintenance as m;
    [
        m::PENDING,
        m::DRAINING,
        m::DRAINED,
        m::BLOCKED,
        m::TIMED_OUT,
        m::ENDED,
    ]
};
const MAINTENANCE_NODE_STATES: [&str; 3] = {
    use plumbline_crds::conditions::maintenance as m;
    [m::NODE_WAITING, m::NODE_DRAINING, m::NODE_DRAINED]
};

/// `plumbline_maintenance_phase`: 1 for a HostMaintenance's current phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceLabels {
    pub maintenance: String,
    pub phase: String,
}

/// `plumbline_maintenance_nodes`: a HostMaintenance's nodes by state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceNodeLabels {
    pub maintenance: String,
    pub state: String,
}

/// `plumbline_maintenance_pending_pods`: by HostMaintenance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceNameLabels {
    pub maintenance: String,
}

/// `plumbline_maintenance_pods_moved_total`: by result (`evicted`, `deleted`, `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MovedLabels {
    pub result: String,
}

/// `plumbline_infra_changes`: the ledger by purpose and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfraChangeLabels {
    pub purpose: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntentStateLabels {
    pub state: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s: a reconcile is a handful of API calls.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone)]
pub struct Metrics {
    pub reconcile_runs: Family<ControllerLabels, Counter>,
    pub reconcile_failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub actions: Family<ActionLabels, Counter>,
    pub leader: Family<LeaseLabels, Gauge>,
    pub intents: Family<IntentStateLabels, Gauge>,
    pub infra_drift: Family<DriftLabels, Counter>,
    pub infra_changes: Family<InfraChangeLabels, Gauge>,
    pub maintenance_phase: Family<MaintenanceLabels, Gauge>,
    pub maintenance_moved: Family<MovedLabels, Counter>,
    pub maintenance_nodes: Family<MaintenanceNodeLabels, Gauge>,
    pub maintenance_pending: Family<MaintenanceNameLabels, Gauge>,
    pub maintenance_blocked: Family<MaintenanceNameLabels, Gauge>,
    /// `plumbline_provider_tls_insecure{provider}`: 1 while a vSphere provider skips TLS
    /// verification.
    pub provider_tls_insecure: Family<health::ProviderLabels, Gauge>,
    /// `plumbline_provider_auth_failures_total{provider}`: logins the server refused.
    pub provider_auth_failures: Family<health::ProviderLabels, Counter>,
    /// The storage-health loop's metrics (`health`), in the same registry.
    pub health: health::HealthMetrics,
    /// Activation signals (`signals`).
    pub signals: signals::SignalMetrics,
}

impl Metrics {
    /// Creates the operator metrics and registers them in `registry` (which should carry the
    /// `plumbline` prefix, see [`new_registry`]).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconcile_runs: Family::default(),
            reconcile_failures: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            actions: Family::default(),
            leader: Family::default(),
            intents: Family::default(),
            infra_drift: Family::default(),
            infra_changes: Family::default(),
            maintenance_phase: Family::default(),
            maintenance_moved: Family::default(),
            maintenance_nodes: Family::default(),
            maintenance_pending: Family::default(),
            maintenance_blocked: Family::default(),
            provider_tls_insecure: Family::default(),
            provider_auth_failures: Family::default(),
            health: health::HealthMetrics::register(registry),
            signals: signals::SignalMetrics::register(registry),
        };
        registry.register(
            "provider_tls_insecure",
            "1 while a vSphere HypervisorProvider skips TLS certificate verification (insecureSkipVerify), else 0",
            metrics.provider_tls_insecure.clone(),
        );
        registry.register(
            "provider_auth_failures",
            "Logins a vSphere server refused (wrong username or password), by provider; logins back off",
            metrics.provider_auth_failures.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Reconciliations started, by controller",
            metrics.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by controller and error kind",
            metrics.reconcile_failures.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconciliation",
            prometheus_client::registry::Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "actions",
            "Changes made to the cluster or to hypervisors, by layer, action kind and result",
            metrics.actions.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease, else 0",
            metrics.leader.clone(),
        );
        registry.register(
            "intents",
            "WorkloadIntents seen by this replica, by state (active, inactive, degraded)",
            metrics.intents.clone(),
        );
        registry.register(
            "infra_drift",
            "InfraChanges found changed behind Plumbline's back (corrected, or Contested), by purpose",
            metrics.infra_drift.clone(),
        );
        registry.register(
            "infra_changes",
            "InfraChanges of this operator instance, by purpose and state (Applied, Drifted, Contested, Failed, Reverting, ...)",
            metrics.infra_changes.clone(),
        );
        registry.register(
            "maintenance_phase",
            "1 for each HostMaintenance's current phase (Pending, Draining, Drained, Blocked, TimedOut, Ended), else 0",
            metrics.maintenance_phase.clone(),
        );
        registry.register(
            "maintenance_nodes",
            "A HostMaintenance's nodes by state (Waiting, Draining, Drained)",
            metrics.maintenance_nodes.clone(),
        );
        registry.register(
            "maintenance_pending_pods",
            "Pods still to leave a HostMaintenance's nodes",
            metrics.maintenance_pending.clone(),
        );
        registry.register(
            "maintenance_blocked_seconds",
            "How long a HostMaintenance's drain has been blocked (DrainBlocked=True), 0 while it is not",
            metrics.maintenance_blocked.clone(),
        );
        registry.register(
            "maintenance_pods_moved",
            "Pods a HostMaintenance moved off its host's nodes, by result (evicted, deleted after the timeout, refused by a budget)",
            metrics.maintenance_moved.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        metrics
    }

    /// Counts a reconcile run and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconcile_runs.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.get_or_create_owned(&labels),
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &str, error_kind: &str) {
        self.reconcile_failures
            .get_or_create(&FailureLabels {
                controller: controller.to_string(),
                error: error_kind.to_string(),
            })
            .inc();
    }

    /// A HostMaintenance's gauges: 1 for its `phase` (0 for the others), its pods still to
    /// move, and its nodes by state.
    pub fn maintenance(
        &self,
        maintenance: &str,
        phase: &str,
        pending: usize,
        nodes: &[&str],
        blocked: std::time::Duration,
    ) {
        self.maintenance_blocked
            .get_or_create(&MaintenanceNameLabels {
                maintenance: maintenance.to_string(),
            })
            .set(blocked.as_secs() as i64);
        for p in MAINTENANCE_PHASES {
            self.maintenance_phase
                .get_or_create(&MaintenanceLabels {
                    maintenance: maintenance.to_string(),
                    phase: p.to_string(),
                })
                .set(i64::from(p == phase));
        }
        self.maintenance_pending
            .get_or_create(&MaintenanceNameLabels {
                maintenance: maintenance.to_string(),
            })
            .set(pending as i64);
        for state in MAINTENANCE_NODE_STATES {
            self.maintenance_nodes
                .get_or_create(&MaintenanceNodeLabels {
                    maintenance: maintenance.to_string(),
                    state: state.to_string(),
                })
                .set(nodes.iter().filter(|s| **s == state).count() as i64);
        }
    }

    /// Drops the series of a HostMaintenance that is gone.
    pub fn forget_maintenance(&self, maintenance: &str) {
        for p in MAINTENANCE_PHASES {
            self.maintenance_phase.remove(&MaintenanceLabels {
                maintenance: maintenance.to_string(),
                phase: p.to_string(),
            });
        }
        for family in [&self.maintenance_pending, &self.maintenance_blocked] {
            family.remove(&MaintenanceNameLabels {
                maintenance: maintenance.to_string(),
            });
        }
        for state in MAINTENANCE_NODE_STATES {
            self.maintenance_nodes.remove(&MaintenanceNodeLabels {
                maintenance: maintenance.to_string(),
                state: state.to_string(),
            });
        }
    }

    pub fn maintenance_moved(&self, result: &str) {
        self.maintenance_moved
            .get_or_create(&MovedLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn infra_drift(&self, purpose: &str) {
        self.infra_drift
            .get_or_create(&DriftLabels {
                purpose: purpose.to_string(),
            })
            .inc();
    }

    pub fn action(&self, layer: ActionLayer, action: &str, result: ActionResult) {
        self.actions
            .get_or_create(&ActionLabels {
                layer,
                action: action.to_string(),
                result,
            })
            .inc();
    }

    pub fn runs(&self, controller: &str) -> u64 {
        self.reconcile_runs
            .get_or_create(&ControllerLabels {
                controller: controller.to_string(),
            })
            .get()
    }
}

/// A registry whose metric names all start with `plumbline_`.
pub fn new_registry() -> Registry {
    Registry::with_prefix(REGISTRY_PREFIX)
}

/// Records the time since its creation into the reconcile-duration histogram when dropped,
/// so early returns and errors are timed too.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_timed_on_drop() {
        let mut registry = new_registry();
        let metrics = Metrics::register(&mut registry);
        drop(metrics.reconcile_started("workloadintent"));
        metrics.reconcile_failed("workloadintent", "kube");
        metrics.action(ActionLayer::kubernetes, "pdb", ActionResult::applied);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("plumbline_reconcile_runs_total{controller=\"workloadintent\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "plumbline_reconcile_duration_seconds_count{controller=\"workloadintent\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("plumbline_reconcile_failures_total{controller=\"workloadintent\",error=\"kube\"} 1"), "{text}");
        assert!(
            text.contains(
                "plumbline_actions_total{layer=\"kubernetes\",action=\"pdb\",result=\"applied\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
