//! Well-known names other components share: the field manager, the finalizer, the pod
//! readiness gate, the node condition and taint. One place, so they cannot drift apart.

/// Field manager for every server-side apply Plumbline makes.
pub const FIELD_MANAGER: &str = "plumbline";

/// Finalizer on a `WorkloadIntent`: its changes are reverted before it goes away.
pub const INTENT_FINALIZER: &str = "plumbline.dev/revert";

/// Readiness gate (and pod condition type) fed by hypervisor storage health.
pub const STORAGE_READINESS_GATE: &str = "plumbline.dev/storage-healthy";

/// Node condition type set when a VM backing the node is over its latency budget
/// (node-problem-detector style).
pub const NODE_STORAGE_CONDITION: &str = "StorageLatencyHigh";

/// Taint key (effect `NoSchedule`) on nodes whose storage is confirmed over budget, when the
/// operator runs with `--taint-degraded-nodes`.
pub const NODE_STORAGE_TAINT: &str = "plumbline.dev/storage-latency-high";

/// Prefix of the PriorityClass Plumbline keeps for each tier, e.g. `plumbline-critical`.
pub const PRIORITY_CLASS_PREFIX: &str = "plumbline-";

/// Label on every object Plumbline creates (PriorityClasses, PodDisruptionBudgets).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "plumbline";

/// Label on objects created for one intent: `<namespace>.<name>` is not a valid label value
/// in general, so the intent name alone (the namespace is the object's own).
pub const INTENT_LABEL: &str = "plumbline.dev/intent";

/// Finalizer on an `InfraChange`: the recorded original is restored before it goes away.
pub const INFRA_CHANGE_FINALIZER: &str = "plumbline.dev/restore-original";

/// Annotation on an `InfraChange`: `"true"` drops the change without restoring the original,
/// for a hypervisor or node that is gone for good.
pub const ABANDON_ANNOTATION: &str = "plumbline.dev/abandon";

/// Finalizer on a `HypervisorProvider` while `InfraChange`s target it: the provider (and the
/// connection that restores their originals) stays until none is left.
pub const PROVIDER_FINALIZER: &str = "plumbline.dev/infra-changes";

/// Label on every `InfraChange`: the operator instance that owns it (`cluster`, or the
/// namespace of a namespace-scoped operator), so each instance watches only its own.
pub const OPERATOR_LABEL: &str = "plumbline.dev/operator";

/// Label on a VM's `InfraChange`: its HypervisorProvider.
pub const PROVIDER_LABEL: &str = "plumbline.dev/provider";

/// Field manager of everything the health loop writes (pod and node conditions, the intent's
/// `backing`/`guard`/`neighbourThrottles`, provider status). Separate from [`FIELD_MANAGER`],
/// so neither apply removes the other's fields.
pub const HEALTH_FIELD_MANAGER: &str = "plumbline-health";

/// Field manager of the intent's `status.protectedVms`. Not [`HEALTH_FIELD_MANAGER`]: that
/// manager's apply of the backing map and guard would otherwise remove the list, and this
/// one's would remove theirs.
pub const PROTECT_FIELD_MANAGER: &str = "plumbline-protect";

/// Node label: the hypervisor host running the node's VM (docs/placement.md).
pub const TOPOLOGY_HOST_LABEL: &str = "topology.plumbline.dev/host";
/// Node label: the HypervisorProvider through which the node's VM is known.
pub const TOPOLOGY_PROVIDER_LABEL: &str = "topology.plumbline.dev/provider";
/// Node label: the compute cluster of the host (vSphere), where it has one.
pub const TOPOLOGY_CLUSTER_LABEL: &str = "topology.plumbline.dev/cluster";
/// Every topology label, in the order above.
pub const TOPOLOGY_LABELS: [&str; 3] = [
    TOPOLOGY_HOST_LABEL,
    TOPOLOGY_PROVIDER_LABEL,
    TOPOLOGY_CLUSTER_LABEL,
];

/// Field manager of the topology labels, followed by `.` and the operator instance
/// (`plumbline-topology.cluster`, `plumbline-topology.<namespace>`): it owns only these
/// labels, and each instance releases only what it applied itself.
pub const TOPOLOGY_FIELD_MANAGER_PREFIX: &str = "plumbline-topology";

/// Field manager of `InfraChange` specs (the ledger) and of their status (the actuators).
pub const LEDGER_FIELD_MANAGER: &str = "plumbline-ledger";
pub const ACTUATOR_FIELD_MANAGER: &str = "plumbline-actuator";

/// Annotation on a workload Plumbline changes: the values it found before, as JSON, which the
/// finalizer restores.
pub const BASELINE_ANNOTATION: &str = "plumbline.dev/baseline";

/// Annotation naming the intent whose settings Plumbline holds on the workload. All intents
/// share one field manager, so this is how a second intent on the same workload (a conflict)
/// knows that the fields are not its own to apply or revert.
pub const HOLDER_ANNOTATION: &str = "plumbline.dev/held-by";

/// Annotation on a vSphere credentials Secret: the one server (as a provider's `server` names
/// it, e.g. `vcenter.example.com` or `https://10.0.0.5/sdk`) its password may be sent to.
pub const VSPHERE_SERVER_ANNOTATION: &str = "plumbline.dev/vsphere-server";

/// Annotation Plumbline sets *in memory only* on an object that could not be decoded as
/// written: the fields that could not be read, one `path: reason` per line. It is never
/// written to the API server, and whatever a user writes there is replaced on decoding.
pub const DECODE_ERRORS_ANNOTATION: &str = "plumbline.dev/decode-errors";

/// Label on a HostMaintenance the operator created because the hypervisor reported the host
/// entering (or in) maintenance mode; it is deleted again when the host leaves it.
pub const DETECTED_LABEL: &str = "plumbline.dev/detected";
