//! What the Kubernetes 1.20 schema cannot check, with field paths. The operator reports these
//! in the `Degraded` condition; `explain -f` prints them before anything else.

use std::time::Duration;

use plumbline_crds::{HypervisorProviderSpec, NodeMappingStrategy, WorkloadIntentSpec};

use crate::{
    invalid::{FieldError, Invalid},
    plan::CountOrPercent,
    quantity::{parse_count_or_percent, parse_interval, parse_latency},
    schedule::Schedule,
};

/// The guard when `storage.maxUnready` is left out: a third of the pods (1 of 3).
pub const DEFAULT_MAX_UNREADY: CountOrPercent = CountOrPercent::Percent(34);
/// The sample interval when `sampleInterval` is left out.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// An intent spec with every string parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidIntent {
    /// `None`: always active.
    pub schedule: Option<Schedule>,
    pub replica_floor: Option<i32>,
    pub min_available: Option<CountOrPercent>,
    /// `None` without a `storage` section.
    pub storage: Option<ValidStorage>,
}

/// `spec.storage`, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidStorage {
    pub latency_budget: Duration,
    pub readiness_gate: bool,
    pub max_unready: CountOrPercent,
}

/// Checks and parses an intent spec; every problem is reported, not just the first.
pub fn validate_intent(spec: &WorkloadIntentSpec) -> Result<ValidIntent, Invalid> {
    let mut errors: Vec<FieldError> = Vec::new();

    let schedule = match &spec.schedule {
        None => None,
        Some(windows) => Schedule::parse(windows, "spec.schedule")
            .map_err(|e| errors.extend(e))
            .ok(),
    };

    let availability = spec.availability.as_ref();
    let replica_floor = availability.and_then(|a| a.replica_floor);
    if let Some(floor) = replica_floor.filter(|f| *f < 1) {
        errors.push(FieldError::new(
            "spec.availability.replicaFloor",
            format!("{floor} is less than 1"),
        ));
    }
    let min_available = availability
        .and_then(|a| a.min_available.as_ref())
        .and_then(|v| {
            parse_count_or_percent(v)
                .map_err(|e| errors.push(FieldError::new("spec.availability.minAvailable", e)))
                .ok()
        });
    if let (Some(CountOrPercent::Count(n)), Some(floor)) = (min_available, replica_floor) {
        if n as i64 > floor as i64 {
            errors.push(FieldError::new(
                "spec.availability.minAvailable",
                format!("{n} is more than replicaFloor {floor}; no pod could ever be evicted"),
            ));
        }
    }

    let storage = spec.storage.as_ref().and_then(|s| {
        let budget = parse_latency(&s.latency_budget)
            .map_err(|e| errors.push(FieldError::new("spec.storage.latencyBudget", e)))
            .ok();
        let max_unready = match &s.max_unready {
            None => Some(DEFAULT_MAX_UNREADY),
            Some(v) => parse_count_or_percent(v)
                .map_err(|e| errors.push(FieldError::new("spec.storage.maxUnready", e)))
                .ok(),
        };
        Some(ValidStorage {
            latency_budget: budget?,
            readiness_gate: s.readiness_gate,
            max_unready: max_unready?,
        })
    });

    if errors.is_empty() {
        Ok(ValidIntent {
            schedule,
            replica_floor,
            min_available,
            storage,
        })
    } else {
        Err(Invalid::Spec(errors))
    }
}

/// A provider spec with every string parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidProvider {
    pub sample_interval: Duration,
    pub node_mapping: NodeMappingStrategy,
    /// The Node label holding the VM name, for [`NodeMappingStrategy::Label`].
    pub node_label: Option<String>,
}

/// Checks a HypervisorProvider spec beyond its schema.
pub fn validate_provider(spec: &HypervisorProviderSpec) -> Result<ValidProvider, Invalid> {
    let mut errors = Vec::new();
    match (&spec.libvirt, &spec.vsphere) {
        (Some(_), Some(_)) => errors.push(FieldError::new(
            "spec",
            "sets both libvirt and vsphere; set exactly one",
        )),
        (None, None) => errors.push(FieldError::new(
            "spec",
            "sets neither libvirt nor vsphere; set exactly one",
        )),
        _ => {}
    }
    if let Some(v) = &spec.vsphere {
        if v.insecure_skip_verify && v.ca_bundle.is_some() {
            errors.push(FieldError::new(
                "spec.vsphere.insecureSkipVerify",
                "is true while caBundle is set; verify with the CA bundle or skip verification, not both",
            ));
        }
    }
    if let Some(l) = &spec.libvirt {
        if !l.uri.contains(":/") {
            errors.push(FieldError::new(
                "spec.libvirt.uri",
                format!("{:?} is not a libvirt URI such as qemu:///system", l.uri),
            ));
        }
    }
    let sample_interval = match &spec.sample_interval {
        None => DEFAULT_SAMPLE_INTERVAL,
        Some(text) => parse_interval(text)
            .map_err(|e| errors.push(FieldError::new("spec.sampleInterval", e)))
            .unwrap_or(DEFAULT_SAMPLE_INTERVAL),
    };
    let mapping = spec
        .node_mapping
        .clone()
        .unwrap_or(plumbline_crds::NodeMapping {
            by: NodeMappingStrategy::ProviderId,
            label: None,
        });
    match (mapping.by, &mapping.label) {
        (NodeMappingStrategy::Label, None) => errors.push(FieldError::new(
            "spec.nodeMapping.label",
            "is required when nodeMapping.by is label",
        )),
        (NodeMappingStrategy::ProviderId | NodeMappingStrategy::NodeName, Some(_)) => {
            errors.push(FieldError::new(
                "spec.nodeMapping.label",
                "is only used when nodeMapping.by is label",
            ))
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(ValidProvider {
            sample_interval,
            node_mapping: mapping.by,
            node_label: mapping.label,
        })
    } else {
        Err(Invalid::Spec(errors))
    }
}
