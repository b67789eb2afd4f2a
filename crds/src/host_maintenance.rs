//! `HostMaintenance`: a hypervisor host is about to go down, so the Kubernetes nodes that are
//! VMs on it are cordoned and drained first, one at a time, without taking any workload below
//! what its intent or PodDisruptionBudget allows. Cordons go through the change ledger
//! (`InfraChange`s of purpose `MaintenanceCordon`), so deleting the object (or an operator
//! restart) never leaves a node cordoned by accident.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// The nodes on one hypervisor host, drained before the host goes into maintenance.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "plumbline.dev",
    version = "v1alpha1",
    kind = "HostMaintenance",
    shortname = "hm",
    category = "plumbline",
    status = "HostMaintenanceStatus",
    derive = "PartialEq",
    doc = "A hypervisor host going into maintenance: the Kubernetes nodes that are VMs on it are cordoned and drained first, respecting intents and PodDisruptionBudgets. Deleting it ends the maintenance: the nodes are uncordoned.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "In maintenance",
        type_ = "boolean",
        json_path = ".status.hostInMaintenance",
        description = "The hypervisor reports the host in (or entering) maintenance mode"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pendingPods",
        description = "Pods still to leave the host's nodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HostMaintenanceSpec {
    /// The HypervisorProvider that reports the host.
    #[schemars(length(min = 1, max = 253))]
    pub provider: String,
    /// The host's name as the provider reports it (a libvirt provider is one host: its name is
    /// the one in the provider's status, usually the hypervisor's hostname).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Why, for people reading `kubectl get` and the Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// How long the drain may take before `onTimeout` applies, e.g. `10m`, `90s`, `1h`.
    /// Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = schema::DURATION))]
    pub drain_timeout: Option<String>,
    /// What happens after `drainTimeout`: `Wait` (keep trying, and say why), `Force` (delete
    /// the remaining pods, except those of critical intents inside their window) or `Abort`
    /// (uncordon and end). Default `Wait`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Only show what would happen: the pre-flight in status, nothing cordoned or evicted.
    /// Set it to false (or remove it) to start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Nodes cordoned and drained at once. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable_nodes: Option<i32>,
    /// vSphere: once drained, put the host into maintenance mode (`EnterMaintenanceMode_Task`)
    /// through the change ledger; deleting the object takes it out again
    /// (`ExitMaintenanceMode_Task`). A libvirt host has no maintenance mode: reported, and the
    /// drain is unaffected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enter_maintenance: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum OnTimeout {
    #[default]
    Wait,
    Force,
    Abort,
}

/// How the maintenance stands.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostMaintenanceStatus {
    /// `Pending`, `Draining`, `Drained`, `Blocked`, `TimedOut` or `Ended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `DrainBlocked` (what blocks the drain: a PodDisruptionBudget, an intent's replica
    /// floor, the spec) and `ReadyForMaintenance` (every node on the host is drained).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When the drain started; `drainTimeout` counts from here, across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Pods still to leave the host's nodes.
    #[serde(default)]
    pub pending_pods: i32,
    /// The host's nodes and how far each is.
    #[serde(default)]
    pub nodes: Vec<MaintenanceNode>,
    /// The pre-flight: each workload with pods on the host, whether eviction is possible now,
    /// and what Plumbline does about it.
    #[serde(default)]
    pub workloads: Vec<MaintenanceWorkload>,
    /// Whether the hypervisor reports the host in maintenance mode (or entering it), as last
    /// read; absent when the provider cannot say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_in_maintenance: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One node on the host.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceNode {
    pub name: String,
    /// The VM the node is.
    pub vm: String,
    /// `Waiting`, `Draining` or `Drained`.
    pub state: String,
    /// Pods that still have to leave it (DaemonSet and mirror pods stay, as with
    /// `kubectl drain`).
    pub pending_pods: i32,
}

/// One workload with pods on the host.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWorkload {
    /// `namespace/Kind/name`, or `namespace/Pod/name` for a pod no workload owns.
    pub workload: String,
    /// `namespace/name` of the WorkloadIntent governing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Its pods on the host's nodes.
    pub pods_on_host: i32,
    /// Its ready pods in the whole cluster.
    pub ready: i32,
    /// Whether one of its pods can be evicted now.
    pub evictable: bool,
    /// Why (or why not).
    pub message: String,
}
