//! What the Kubernetes 1.20 schema cannot check, with field paths. The operator reports these
//! in the `Degraded` condition; `explain -f` prints them before anything else.

use std::time::Duration;

use plumbline_crds::{
    schema::{
        MAX_CA_BUNDLE_LEN, MAX_LABEL_KEY_LEN, MAX_LATENCY_BUDGET_SECS, MAX_URL_LEN, MAX_WINDOWS,
    },
    HypervisorProviderSpec, NodeMappingStrategy, SecretRef, WorkloadIntentSpec,
};

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
    /// `spec.placement.spreadAcrossHosts`.
    pub spread: Option<plumbline_crds::HostSpread>,
    /// `spec.activation`; `None`: the schedule alone decides.
    pub activation: Option<crate::activation::ValidActivation>,
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

    if let Some(e) = object_name(&spec.target.name, 253) {
        errors.push(FieldError::new("spec.target.name", e));
    }
    let schedule = match &spec.schedule {
        Some(windows) if windows.len() > MAX_WINDOWS as usize => {
            errors.push(FieldError::new(
                "spec.schedule",
                format!("has {} windows; at most {MAX_WINDOWS}", windows.len()),
            ));
            None
        }
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

    if let Some(infra) = spec
        .infrastructure
        .as_ref()
        .filter(|i| i.relocate_noisy_neighbours)
    {
        if !infra.throttle_noisy_neighbours {
            errors.push(FieldError::new(
                "spec.infrastructure.relocateNoisyNeighbours",
                "needs infrastructure.throttleNoisyNeighbours: a neighbour is moved only after throttling it did not help",
            ));
        } else if spec.priority != plumbline_crds::Priority::Critical {
            errors.push(FieldError::new(
                "spec.infrastructure.relocateNoisyNeighbours",
                format!(
                    "only a critical intent may move other VMs (priority is {})",
                    spec.priority
                ),
            ));
        }
    }

    let storage = spec.storage.as_ref().and_then(|s| {
        let budget = parse_latency(&s.latency_budget)
            .and_then(|d| {
                if d > Duration::from_secs(MAX_LATENCY_BUDGET_SECS) {
                    Err(format!(
                        "{:?} is more than {MAX_LATENCY_BUDGET_SECS}s; a storage latency budget is milliseconds",
                        s.latency_budget
                    ))
                } else {
                    Ok(d)
                }
            })
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

    let activation = spec.activation.as_ref().and_then(|a| {
        crate::activation::parse(a, "spec.activation")
            .map_err(|e| errors.extend(e))
            .ok()
    });

    if errors.is_empty() {
        Ok(ValidIntent {
            activation,
            schedule,
            replica_floor,
            min_available,
            storage,
            spread: spec.placement.as_ref().and_then(|p| p.spread_across_hosts),
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
        if let Err(e) = vsphere_url(&v.server) {
            errors.push(FieldError::new("spec.vsphere.server", e));
        }
        secret_ref(&v.credentials_secret_ref, &mut errors);
        if v.ca_bundle
            .as_ref()
            .is_some_and(|pem| pem.len() > MAX_CA_BUNDLE_LEN as usize)
        {
            errors.push(FieldError::new(
                "spec.vsphere.caBundle",
                format!("is longer than {MAX_CA_BUNDLE_LEN} bytes"),
            ));
        }
        if v.insecure_skip_verify && v.ca_bundle.is_some() {
            errors.push(FieldError::new(
                "spec.vsphere.insecureSkipVerify",
                "is true while caBundle is set; verify with the CA bundle or skip verification, not both",
            ));
        }
    }
    if let Some(l) = &spec.libvirt {
        if l.uri.len() > MAX_URL_LEN as usize {
            errors.push(FieldError::new(
                "spec.libvirt.uri",
                format!("is longer than {MAX_URL_LEN} characters"),
            ));
        } else if !l.uri.contains(":/") {
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
        (NodeMappingStrategy::Label, Some(label))
            if label.is_empty() || label.len() > MAX_LABEL_KEY_LEN as usize =>
        {
            errors.push(FieldError::new(
                "spec.nodeMapping.label",
                format!("must be 1 to {MAX_LABEL_KEY_LEN} characters"),
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

/// The SDK URL a provider's `server` names: a host (`vcenter.example.com`, `10.0.0.5:8989`)
/// becomes `https://host/sdk`; an `https://` URL is taken as written. Plain `http://` and
/// other schemes are refused: the password would cross the network in clear text.
pub fn vsphere_url(server: &str) -> Result<String, String> {
    if server.is_empty() {
        return Err("is empty; name a host such as vcenter.example.com or an https:// URL".into());
    }
    if server.len() > MAX_URL_LEN as usize {
        return Err(format!("is longer than {MAX_URL_LEN} characters"));
    }
    if server.chars().any(char::is_whitespace) {
        return Err(format!("{server:?} contains whitespace"));
    }
    if let Some(rest) = server.strip_prefix("https://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{server:?} names no host"));
        }
        return Ok(server.to_string());
    }
    if let Some((scheme, _)) = server.split_once("://") {
        return Err(format!(
            "{server:?} uses {scheme}://; only https:// is allowed, so the password never crosses the network in clear text"
        ));
    }
    if server.starts_with('/') || server.contains(':') && !host_port(server) {
        return Err(format!(
            "{server:?} is not a host name or https:// URL such as vcenter.example.com"
        ));
    }
    Ok(format!("https://{server}/sdk"))
}

/// `host:port` with a numeric port (and no other colon).
fn host_port(server: &str) -> bool {
    let host_part = server.split('/').next().unwrap_or_default();
    match host_part.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => true,
    }
}

fn secret_ref(r: &SecretRef, errors: &mut Vec<FieldError>) {
    if let Some(e) = object_name(&r.name, 253) {
        errors.push(FieldError::new("spec.vsphere.credentialsSecretRef.name", e));
    }
    if let Some(e) = object_name(&r.namespace, 63).or_else(|| {
        r.namespace
            .contains('.')
            .then(|| format!("{:?} is not a namespace name (no dots)", r.namespace))
    }) {
        errors.push(FieldError::new(
            "spec.vsphere.credentialsSecretRef.namespace",
            e,
        ));
    }
}

/// Why `name` is not a DNS-1123 subdomain of at most `max` characters, if it is not.
fn object_name(name: &str, max: usize) -> Option<String> {
    let bad_char =
        |c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if name.is_empty() {
        Some("is empty".into())
    } else if name.len() > max {
        Some(format!("is longer than {max} characters"))
    } else if name.chars().any(bad_char)
        || name
            .split('.')
            .any(|part| part.is_empty() || part.starts_with('-') || part.ends_with('-'))
    {
        Some(format!(
            "{name:?} is not a DNS-1123 name (lower-case letters, digits, '-' and '.')"
        ))
    } else {
        None
    }
}
