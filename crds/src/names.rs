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
