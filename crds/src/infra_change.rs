//! `InfraChange`: one change Plumbline made to shared infrastructure — a VM disk's IOPS limit, a
//! VM's CPU shares, a Node's taint — recorded as an API object. It names the target and the
//! setting, the value wanted and who wants it, and (in status) the original recorded before the
//! first change. Its finalizer restores that original before the object goes away, so a change
//! is never held only in an operator's memory.
//!
//! The ledger has one object per (target, setting): its name is derived from both
//! ([`InfraChange::name_for`]), so creating it is also the lock that keeps two operator
//! instances from changing (and recording the original of) the same setting.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// One change to shared infrastructure, its original value, its owners, and how it is undone.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "plumbline.dev",
    version = "v1alpha1",
    kind = "InfraChange",
    shortname = "ic",
    category = "plumbline",
    status = "InfraChangeStatus",
    derive = "PartialEq",
    doc = "One change Plumbline made to shared infrastructure (a VM setting, a node taint): the value wanted, by whom and why, the original recorded before the change, and a finalizer that restores it.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.name",
        description = "The VM or Node changed"
    ),
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.target.provider",
        description = "HypervisorProvider of the VM",
        priority = "1"
    ),
    printcolumn(name = "Setting", type_ = "string", json_path = ".spec.setting"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desired"),
    printcolumn(
        name = "Original",
        type_ = "string",
        json_path = ".status.original",
        description = "The value before Plumbline changed it; restored on delete"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Owners",
        type_ = "string",
        json_path = ".status.ownerSummary",
        description = "The intents that want the change"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InfraChangeSpec {
    /// What is changed.
    pub target: ChangeTarget,
    /// The setting: a hypervisor tunable (`disk.vda.total_iops_sec`, `cpu_shares`), a node
    /// taint (`taint/plumbline.dev/storage-latency-high:NoSchedule`), a node's cordon
    /// (`unschedulable`), a workload's `replicas`, a host's `maintenanceMode` or a cluster's
    /// DRS rule (`drsRule/NAME`).
    #[schemars(length(min = 1))]
    pub setting: String,
    /// The value wanted: a whole number for a tunable (0 = unlimited) or replicas, `present`
    /// for a taint, cordon or maintenance mode, `should:UUID,UUID…` or `must:UUID,UUID…` for
    /// a DRS anti-affinity rule over those VMs (`absent`: no rule).
    #[schemars(length(min = 1))]
    pub desired: String,
    /// Why the change exists; also decides how owners that disagree are combined.
    pub purpose: ChangePurpose,
    /// The intents that want the change (`namespace/name`), each with its reason.
    #[serde(default)]
    pub owners: Vec<ChangeOwner>,
    /// The operator instance that makes and reverts the change: `cluster`, or
    /// `namespace/NAME` for an operator scoped to one namespace. Other instances leave it alone.
    #[schemars(length(min = 1))]
    pub operator: String,
    /// For a noisy-neighbour throttle: its step on the ladder, so a new leader continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleStep>,
    /// For a noisy neighbour's relocation: the host it leaves and when the VM was moved, for
    /// the budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation: Option<RelocationRecord>,
}

/// A VM, host or compute cluster of a HypervisorProvider, a Node, or a workload (Deployment or
/// StatefulSet).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeTarget {
    pub kind: ChangeTargetKind,
    /// The VM's name on its hypervisor, the Node's name, or the workload's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// HypervisorProvider of the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The VM's UUID (what Nodes' providerIDs carry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

impl ChangeTarget {
    pub fn vm(provider: &str, id: &str, name: &str) -> Self {
        Self {
            kind: ChangeTargetKind::VirtualMachine,
            name: name.to_string(),
            namespace: None,
            provider: Some(provider.to_string()),
            vm_id: Some(id.to_string()),
        }
    }

    pub fn node(name: &str) -> Self {
        Self {
            kind: ChangeTargetKind::Node,
            name: name.to_string(),
            namespace: None,
            provider: None,
            vm_id: None,
        }
    }

    pub fn host(provider: &str, name: &str) -> Self {
        Self {
            kind: ChangeTargetKind::Host,
            name: name.to_string(),
            namespace: None,
            provider: Some(provider.to_string()),
            vm_id: None,
        }
    }

    /// A compute cluster of a provider (its DRS rules).
    pub fn cluster(provider: &str, name: &str) -> Self {
        Self {
            kind: ChangeTargetKind::Cluster,
            ..Self::host(provider, name)
        }
    }

    pub fn workload(kind: crate::TargetKind, namespace: &str, name: &str) -> Self {
        Self {
            kind: match kind {
                crate::TargetKind::Deployment => ChangeTargetKind::Deployment,
                crate::TargetKind::StatefulSet => ChangeTargetKind::StatefulSet,
            },
            name: name.to_string(),
            namespace: Some(namespace.to_string()),
            provider: None,
            vm_id: None,
        }
    }

    /// The workload kind, for a Deployment or StatefulSet target.
    pub fn workload_kind(&self) -> Option<crate::TargetKind> {
        match self.kind {
            ChangeTargetKind::Deployment => Some(crate::TargetKind::Deployment),
            ChangeTargetKind::StatefulSet => Some(crate::TargetKind::StatefulSet),
            ChangeTargetKind::VirtualMachine
            | ChangeTargetKind::Node
            | ChangeTargetKind::Host
            | ChangeTargetKind::Cluster => None,
        }
    }
}

impl std::fmt::Display for ChangeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.kind, &self.provider) {
            (ChangeTargetKind::VirtualMachine, Some(p)) => write!(f, "VM {} ({p})", self.name),
            (ChangeTargetKind::VirtualMachine, None) => write!(f, "VM {}", self.name),
            (ChangeTargetKind::Node, _) => write!(f, "Node {}", self.name),
            (ChangeTargetKind::Host, p) => {
                write!(
                    f,
                    "host {} ({})",
                    self.name,
                    p.as_deref().unwrap_or_default()
                )
            }
            (ChangeTargetKind::Cluster, p) => {
                write!(
                    f,
                    "cluster {} ({})",
                    self.name,
                    p.as_deref().unwrap_or_default()
                )
            }
            (kind, _) => write!(
                f,
                "{kind:?} {}/{}",
                self.namespace.as_deref().unwrap_or_default(),
                self.name
            ),
        }
    }
}

#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ChangeTargetKind {
    VirtualMachine,
    Node,
    Deployment,
    StatefulSet,
    /// A hypervisor host of a provider.
    Host,
    /// A compute cluster of a provider (vSphere: a ClusterComputeResource, for its DRS rules).
    Cluster,
}

/// Why a change exists.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ChangePurpose {
    /// An I/O limit on a VM that competes with a degraded critical workload's VM.
    NeighbourThrottle,
    /// More CPU shares for a VM backing a protected intent (the highest tier wins).
    BackingVmProtection,
    /// The `NoSchedule` taint on a Node whose storage is over budget.
    StorageTaint,
    /// A Node cordoned (`spec.unschedulable`) because its VM's host goes into maintenance.
    MaintenanceCordon,
    /// More replicas for a workload of an active critical or high intent while a host it runs
    /// on is drained, so it never drops below its floor or budget; removed when the
    /// maintenance ends.
    MaintenanceSurge,
    /// A hypervisor host put into maintenance mode once its nodes are drained
    /// (`spec.enterMaintenance` of a HostMaintenance).
    HostMaintenanceMode,
    /// A DRS VM-VM anti-affinity rule over the VMs backing a workload whose intent asks for
    /// `placement.spreadAcrossHosts`, kept as the pods move.
    HostAntiAffinity,
    /// A noisy neighbour moved to another host (setting `host`, desired the host it goes to)
    /// because throttling could not tame it (`infrastructure.relocateNoisyNeighbours`). A move
    /// is made once: never corrected when the VM moves on, and never moved back; the entry is
    /// kept 24 hours for the budgets, and its deletion leaves the VM where it is.
    NeighbourRelocation,
}

impl ChangePurpose {
    /// A change made once (a relocation): never read back for drift, never undone on delete.
    pub fn is_one_shot(self) -> bool {
        self == Self::NeighbourRelocation
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeighbourThrottle => "NeighbourThrottle",
            Self::BackingVmProtection => "BackingVmProtection",
            Self::StorageTaint => "StorageTaint",
            Self::MaintenanceCordon => "MaintenanceCordon",
            Self::MaintenanceSurge => "MaintenanceSurge",
            Self::HostMaintenanceMode => "HostMaintenanceMode",
            Self::HostAntiAffinity => "HostAntiAffinity",
            Self::NeighbourRelocation => "NeighbourRelocation",
        }
    }
}

/// One intent that wants a change, and why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeOwner {
    /// `namespace/name` of the WorkloadIntent, or `HostMaintenance/NAME` for a cordon or surge.
    pub intent: String,
    pub reason: String,
}

/// A noisy neighbour's relocation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelocationRecord {
    /// The host the VM was moved away from.
    #[schemars(length(min = 1))]
    pub from: String,
    /// When each relocation of this VM within the last 24 hours was decided, oldest first;
    /// the last is this one.
    #[schemars(length(min = 1, max = 32))]
    pub decided: Vec<Time>,
}

/// Where a noisy-neighbour throttle stands on its ladder.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleStep {
    /// Step on the ladder, 1 = gentlest.
    pub step: i32,
    /// The VM's IOPS before its first step; every step is a fraction of it.
    pub baseline_iops: i64,
    /// When this step was decided.
    pub stepped_at: Time,
    /// The degraded VMs the throttle is for; it is released when none needs it any more.
    #[serde(default)]
    pub victims: Vec<VmRef>,
    /// The storage latency (microseconds) of the victim this step was for, when it was taken:
    /// a step that does not lower it is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub victim_latency_micros: Option<i64>,
}

/// A VM of a provider.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmRef {
    pub name: String,
    pub id: String,
    pub provider: String,
}

impl std::fmt::Display for VmRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// What is in force, as last read back, and how the last attempt went.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfraChangeStatus {
    /// The value before Plumbline first changed it, recorded before the first apply (and
    /// mirrored on the VM itself); what the finalizer restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The value as last read back from the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// When `observed` was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// Pending, Applied, Drifted, Contested, Failed, Unsupported or Reverting (see
    /// `plumbline_crds::conditions::infra_change`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The owners in one line, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_summary: Option<String>,
    /// Applied, Drifted and Reverting, with reasons.
    #[serde(default)]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The last error from the target, with what was being done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub attempts: i32,
    /// When drift was corrected recently: the oscillation guard stops correcting (Contested)
    /// when someone else keeps changing the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<Time>,
    /// The spec generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl InfraChange {
    /// The object name for a setting of a target: readable (`pl-noisy.disk.vda.total-iops-sec`)
    /// plus a hash of the VM's UUID (or the node's name) and the setting, so two VMs with one
    /// name differ and two providers of one hypervisor meet on the same object.
    pub fn name_for(target: &ChangeTarget, setting: &str) -> String {
        // Not the provider: two providers reaching one hypervisor must meet on one object.
        let name = match &target.namespace {
            Some(ns) => format!("{ns}/{}", target.name),
            None => target.name.clone(),
        };
        let identity = format!(
            "{:?}|{}|{setting}",
            target.kind,
            target.vm_id.as_deref().unwrap_or(&name),
        );
        let readable = format!("{}.{}", dns_part(&name), dns_part(setting));
        let mut labels: Vec<String> = Vec::new();
        let mut length = 0;
        for label in readable.split('.') {
            // DNS labels are at most 63 characters; the whole name stays well under 253.
            let label: String = label.chars().take(63).collect();
            let label = label.trim_matches('-');
            if label.is_empty() || length + label.len() > 200 {
                continue;
            }
            length += label.len() + 1;
            labels.push(label.to_string());
        }
        labels.push(format!("{:08x}", fnv1a(identity.as_bytes())));
        labels.join(".")
    }

    /// Whether the object has the finalizer that restores the original.
    pub fn has_finalizer(&self) -> bool {
        self.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == crate::names::INFRA_CHANGE_FINALIZER))
    }

    /// Whether someone asked to drop the change without restoring the original.
    pub fn abandoned(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::names::ABANDON_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// Lowercase letters, digits, `-` and `.`; anything else becomes `-`.
fn dns_part(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let mut out = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        // No empty labels ("..") and no label that starts or ends with '-'.
        let last = out.chars().last();
        match (last, c) {
            (None | Some('.'), '.' | '-') => {}
            (Some('-'), '.') => {
                out.pop();
                out.push('.');
            }
            _ => out.push(c),
        }
    }
    out.trim_matches(['-', '.']).to_string()
}

/// FNV-1a, 32 bits: a short, stable hash for names derived from longer ones.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_subdomain(s: &str) -> bool {
        s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn names_are_readable_valid_and_distinct_per_identity() {
        let a = ChangeTarget::vm("local-kvm", "8c1e-0001", "pl-noisy");
        let b = ChangeTarget::vm("local-kvm", "8c1e-0002", "pl-noisy");
        let same_vm_other_provider = ChangeTarget::vm("other-kvm", "8c1e-0001", "pl-noisy");
        let n = InfraChange::name_for(&a, "disk.vda.total_iops_sec");
        assert!(n.starts_with("pl-noisy.disk.vda.total-iops-sec."), "{n}");
        assert!(valid_subdomain(&n), "{n}");
        assert_ne!(n, InfraChange::name_for(&b, "disk.vda.total_iops_sec"));
        assert_eq!(n, InfraChange::name_for(&a, "disk.vda.total_iops_sec"));
        assert_eq!(
            n,
            InfraChange::name_for(&same_vm_other_provider, "disk.vda.total_iops_sec")
        );
        let taint = InfraChange::name_for(
            &ChangeTarget::node("pl-vm2"),
            "taint/plumbline.dev/storage-latency-high:NoSchedule",
        );
        assert!(valid_subdomain(&taint), "{taint}");
        for odd in [
            "DC0_H0_VM0",
            "..x--",
            "scsi0:0",
            "-a.-b-.c-",
            &"x".repeat(400),
        ] {
            let n = InfraChange::name_for(&ChangeTarget::vm("p", "i", odd), "disk.scsi0:0.shares");
            assert!(valid_subdomain(&n), "{odd:?} -> {n}");
        }
    }
}
