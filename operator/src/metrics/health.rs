//! Storage-health metrics. Names and labels are what the Grafana dashboards query
//! (`charts/generate-dashboards`): change both together.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use std::sync::atomic::AtomicU64;

use super::pod_series::PodSeries;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiskLabels {
    pub provider: String,
    pub vm: String,
    pub disk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub provider: String,
    pub vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub provider: String,
    pub vm: String,
    /// healthy, degraded or unknown; the series of the current state is 1, the others 0.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntentLabels {
    pub namespace: String,
    pub intent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub namespace: String,
    pub intent: String,
    /// The new status of the pod condition: "True" or "False".
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

fn sample_histogram() -> Histogram {
    // 1 ms … ~16 s: one bulk stats call, or one SOAP round trip.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn pass_histogram() -> Histogram {
    // 0.5 ms … ~5 s in steps of 1.5×, fine enough for p50/p99 around the 200 ms target.
    Histogram::new(exponential_buckets(0.0005, 1.5, 24))
}

fn detection_histogram() -> Histogram {
    // 0.25 s … ~2 min around the 3 s target.
    Histogram::new(exponential_buckets(0.25, 1.5, 16))
}

#[derive(Clone)]
pub struct HealthMetrics {
    pub disk_latency: Family<DiskLabels, Gauge<f64, AtomicU64>>,
    pub vm_iops: Family<VmLabels, Gauge<f64, AtomicU64>>,
    pub vm_verdict: Family<VerdictLabels, Gauge>,
    /// `backing_info` and `pod_storage_healthy`.
    pub pod_series: PodSeries,
    pub readiness_transitions: Family<TransitionLabels, Counter>,
    pub provider_connected: Family<ProviderLabels, Gauge>,
    pub sample_duration: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    pub detection_latency: Histogram,
    /// One storage-health pass: graph, verdicts, guard, and the status writes it waits for.
    pub pass_duration: Histogram,
    pub taints_held: Gauge,
    /// Distinct hypervisor hosts running each intent's pods.
    pub workload_hosts: Family<IntentLabels, Gauge>,
    /// Nodes carrying the topology labels this instance applied (health/topology.rs).
    pub topology_labelled_nodes: Gauge,
    /// Topology label writes, by outcome.
    pub topology_writes: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `applied` or `failed`.
    pub outcome: String,
}

impl HealthMetrics {
    /// Registers into the operator's registry (prefixed `plumbline`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            disk_latency: Family::default(),
            vm_iops: Family::default(),
            vm_verdict: Family::default(),
            pod_series: PodSeries::default(),
            readiness_transitions: Family::default(),
            provider_connected: Family::default(),
            sample_duration: Family::new_with_constructor(sample_histogram),
            detection_latency: detection_histogram(),
            pass_duration: pass_histogram(),
            taints_held: Gauge::default(),
            workload_hosts: Family::default(),
            topology_labelled_nodes: Gauge::default(),
            topology_writes: Family::default(),
        };
        registry.register_with_unit(
            "vm_storage_latency",
            "Per-operation storage latency (slower of reads and writes) of each VM disk over the last sample",
            Unit::Seconds,
            m.disk_latency.clone(),
        );
        registry.register(
            "vm_storage_iops",
            "Storage operations per second of each VM, all disks, over the last sample",
            m.vm_iops.clone(),
        );
        registry.register(
            "vm_verdict",
            "Storage verdict of each VM against the strictest budget it serves: 1 for the current state",
            m.vm_verdict.clone(),
        );
        registry.register_collector(Box::new(m.pod_series.clone()));
        registry.register(
            "readiness_transitions",
            "Changes of the plumbline.dev/storage-healthy pod condition, by intent and new status",
            m.readiness_transitions.clone(),
        );
        registry.register(
            "provider_connected",
            "1 while the hypervisor provider's adapter is connected",
            m.provider_connected.clone(),
        );
        registry.register_with_unit(
            "sample_duration",
            "Time one sampling cycle (bulk storage stats) took, per provider",
            Unit::Seconds,
            m.sample_duration.clone(),
        );
        registry.register_with_unit(
            "detection_latency",
            "From the first over-budget sample window to the pod condition turning False",
            Unit::Seconds,
            m.detection_latency.clone(),
        );
        registry.register_with_unit(
            "health_pass_duration",
            "Time one storage-health pass took: the graph, the verdicts, the guard and the writes it waits for",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        registry.register(
            "storage_taints_held",
            "Nodes whose storage is over budget but that do not get the storage taint: the cap is reached, or a workload has no other node",
            m.taints_held.clone(),
        );
        registry.register(
            "workload_hosts",
            "Distinct hypervisor hosts running the pods of each intent's workload (1: one host failure stops it)",
            m.workload_hosts.clone(),
        );
        registry.register(
            "topology_labelled_nodes",
            "Nodes carrying the topology.plumbline.dev labels this operator instance applied",
            m.topology_labelled_nodes.clone(),
        );
        registry.register(
            "topology_label_writes",
            "Server-side applies of nodes' topology labels, by outcome (applied, failed)",
            m.topology_writes.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_dashboards() {
        let mut registry = Registry::with_prefix("plumbline");
        let m = HealthMetrics::register(&mut registry);
        let disk = DiskLabels {
            provider: "kvm".into(),
            vm: "pl-vm1".into(),
            disk: "vda".into(),
        };
        m.disk_latency.get_or_create(&disk).set(0.012);
        let vm = VmLabels {
            provider: "kvm".into(),
            vm: "pl-vm1".into(),
        };
        m.vm_iops.get_or_create(&vm).set(120.0);
        m.vm_verdict
            .get_or_create(&VerdictLabels {
                provider: "kvm".into(),
                vm: "pl-vm1".into(),
                state: "degraded".into(),
            })
            .set(1);
        m.readiness_transitions
            .get_or_create(&TransitionLabels {
                namespace: "ns".into(),
                intent: "i".into(),
                to: "False".into(),
            })
            .inc();
        m.provider_connected
            .get_or_create(&ProviderLabels {
                provider: "kvm".into(),
            })
            .set(1);
        m.sample_duration
            .get_or_create(&ProviderLabels {
                provider: "kvm".into(),
            })
            .observe(0.004);
        m.detection_latency.observe(2.5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "plumbline_vm_storage_latency_seconds{provider=\"kvm\",vm=\"pl-vm1\",disk=\"vda\"} 0.012",
            "plumbline_vm_storage_iops{provider=\"kvm\",vm=\"pl-vm1\"} 120.0",
            "plumbline_vm_verdict{provider=\"kvm\",vm=\"pl-vm1\",state=\"degraded\"} 1",
            "# TYPE plumbline_backing_info gauge",
            "# TYPE plumbline_pod_storage_healthy gauge",
            "plumbline_readiness_transitions_total{namespace=\"ns\",intent=\"i\",to=\"False\"} 1",
            "plumbline_provider_connected{provider=\"kvm\"} 1",
            "plumbline_sample_duration_seconds_count{provider=\"kvm\"} 1",
            "plumbline_detection_latency_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
