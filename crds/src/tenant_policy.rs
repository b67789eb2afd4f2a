//! `TenantPolicy`: which namespaces may use which priority tiers and infrastructure actions.
//!
//! Cluster-scoped, so only whoever may write cluster-wide objects (the platform team) can
//! grant anything; a tenant who may create WorkloadIntents in its namespace cannot widen
//! what that namespace is allowed. The decision itself is `plumbline_policies::tenancy`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{schema, Priority};

/// Which namespaces may use which priority tiers and infrastructure actions. A namespace no
/// TenantPolicy names is unrestricted (as NetworkPolicies leave unselected pods alone); a
/// namespace one or more policies name may use only what one of them allows as a whole. A
/// policy naming "*" restricts every namespace.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "plumbline.dev",
    version = "v1alpha1",
    kind = "TenantPolicy",
    shortname = "tp",
    category = "plumbline",
    derive = "PartialEq",
    doc = "Which namespaces may use which WorkloadIntent priority tiers and infrastructure actions; an intent outside every policy naming its namespace is Degraded with reason NotAllowed and nothing of it is applied.",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(name = "Tiers", type_ = "string", json_path = ".spec.tiers"),
    printcolumn(name = "Actions", type_ = "string", json_path = ".spec.actions"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicySpec {
    /// Namespaces this policy covers: exact names, prefixes ending in `*` (e.g. `team-a-*`),
    /// or `*` for every namespace.
    #[schemars(
        length(min = 1, max = 256),
        inner(length(min = 1, max = 64), pattern(schema::NAMESPACE_PATTERN))
    )]
    pub namespaces: Vec<String>,
    /// Priority tiers intents in these namespaces may ask for (each tier is a PriorityClass;
    /// `critical` preempts). Empty: none.
    #[serde(default)]
    #[schemars(length(max = 4))]
    pub tiers: Vec<Priority>,
    /// Infrastructure actions intents in these namespaces may ask for. Empty: none.
    #[serde(default)]
    #[schemars(length(max = 4))]
    pub actions: Vec<TenantAction>,
}

/// The infrastructure actions a TenantPolicy grants.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TenantAction {
    /// `storage.readinessGate`: take pods out of Service endpoints while their storage is
    /// over budget.
    ReadinessGate,
    /// `infrastructure.throttleNoisyNeighbours`: limit the I/O of other VMs, which may back
    /// other tenants' pods.
    ThrottleNoisyNeighbours,
    /// `infrastructure.protectBackingVms`: raise the CPU shares of the VMs under the
    /// workload's pods, at the expense of their neighbours.
    ProtectBackingVms,
    /// The intent's storage latency budget may put the storage taint on the nodes its pods run
    /// on (only when the operator runs with `--taint-degraded-nodes`). Without it the intent
    /// is still allowed, but those nodes are judged by the operator's default budget.
    NodeTaints,
}

impl TenantAction {
    /// Every action, in the order messages list them.
    pub const ALL: [TenantAction; 4] = [
        TenantAction::ReadinessGate,
        TenantAction::ThrottleNoisyNeighbours,
        TenantAction::ProtectBackingVms,
        TenantAction::NodeTaints,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantAction::ReadinessGate => "ReadinessGate",
            TenantAction::ThrottleNoisyNeighbours => "ThrottleNoisyNeighbours",
            TenantAction::ProtectBackingVms => "ProtectBackingVms",
            TenantAction::NodeTaints => "NodeTaints",
        }
    }
}

impl std::fmt::Display for TenantAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
