//! Condition types and reasons, in one place (compare linkerd2 `k8s/status`).
//!
//! Reasons are CamelCase as Kubernetes expects; messages are free text written where the
//! condition is set.

/// Condition types on a `WorkloadIntent`.
pub mod intent {
    /// Everything the current plan asks for is applied.
    pub const READY: &str = "Ready";
    /// The intent's schedule says it applies now.
    pub const ACTIVE: &str = "Active";
    /// Something is wrong: invalid spec, missing target, conflict, failed apply, unhealthy storage.
    pub const DEGRADED: &str = "Degraded";
    /// Every Prometheus signal of `spec.activation` was evaluated with data (only on intents
    /// with signals).
    pub const SIGNALS_HEALTHY: &str = "SignalsHealthy";
}

/// The `SpreadAcrossHosts` condition on a `WorkloadIntent` with `placement.spreadAcrossHosts`,
/// and its reasons (written by the storage-health loop, which knows each pod's host).
pub mod placement {
    pub const SPREAD_ACROSS_HOSTS: &str = "SpreadAcrossHosts";
    /// The pods run on VMs on two or more hosts.
    pub const SPREAD: &str = "Spread";
    /// Two or more pods, every one of them on one host: one host failure stops the service.
    pub const ONE_HOST: &str = "OneHost";
    /// One pod: nothing to spread.
    pub const SINGLE_POD: &str = "SinglePod";
    /// No pod's host is known (no provider reaches their nodes' VMs yet): unknown, not False.
    pub const HOSTS_UNKNOWN: &str = "HostsUnknown";
}

/// Condition types on a `HypervisorProvider`.
pub mod provider {
    /// A session to the hypervisor is open.
    pub const CONNECTED: &str = "Connected";
    /// Inventory is known and samples are arriving.
    pub const READY: &str = "Ready";
    /// vSphere only: the server's TLS certificate is verified (False with
    /// `InsecureSkipVerify` when `insecureSkipVerify` is set).
    pub const TLS_VERIFIED: &str = "TlsVerified";
    /// vSphere only: the credentials Secret names this provider's server in the annotation
    /// `plumbline.dev/vsphere-server` (False with `Unpinned`: allowed, but the password follows
    /// the provider's `server` wherever it points; `PinnedElsewhere`: refused, nothing sent).
    pub const CREDENTIALS_PINNED: &str = "CredentialsPinned";
}

/// Reasons, shared by both kinds where the meaning is the same.
pub mod reason {
    // Ready
    /// Every action of the plan is applied.
    pub const APPLIED: &str = "Applied";
    /// Some actions are still being applied.
    pub const APPLYING: &str = "Applying";
    /// The window closed (or the intent is going away) and every change was reverted.
    pub const REVERTED: &str = "Reverted";
    /// An action could not be applied; the message names it.
    pub const APPLY_FAILED: &str = "ApplyFailed";

    // Active
    /// The intent has no schedule: it always applies.
    pub const ALWAYS_ACTIVE: &str = "NoSchedule";
    /// Now is inside one of the schedule's windows.
    pub const WINDOW_OPEN: &str = "WindowOpen";
    /// Now is outside every window of the schedule.
    pub const WINDOW_CLOSED: &str = "WindowClosed";
    /// A Prometheus signal is active (`anyOf`); the message names it and its value.
    pub const SIGNAL_ACTIVE: &str = "SignalActive";
    /// No signal is active (and no window open, or no schedule).
    pub const SIGNALS_INACTIVE: &str = "SignalsInactive";
    /// `allOf`: the window (if any) is open and every signal is active.
    pub const ALL_ACTIVE: &str = "AllActive";

    // SignalsHealthy
    /// Every signal returned a value at its last evaluation.
    pub const SIGNALS_EVALUATED: &str = "SignalsEvaluated";
    /// A signal's data is missing: empty result, error, or stale (the message says which).
    pub const SIGNAL_DATA_MISSING: &str = "SignalDataMissing";
    /// Prometheus rejected a signal's query (also a `Degraded` reason; the rest of the intent
    /// still applies).
    pub const INVALID_SIGNAL: &str = "InvalidSignal";

    // Degraded
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The spec passed admission but is still invalid (field path in the message).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The target Deployment/StatefulSet does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Another intent targets the same workload.
    pub const CONFLICTING_INTENT: &str = "ConflictingIntent";
    /// The intent asks for a tier or infrastructure action that no TenantPolicy naming its
    /// namespace allows (the message names the namespace, the tier or action and the policy).
    pub const NOT_ALLOWED: &str = "NotAllowed";

    // Connected / Ready on providers
    /// The session is open.
    pub const CONNECTED: &str = "Connected";
    /// Connecting failed; the message says to what and why.
    pub const CONNECTION_FAILED: &str = "ConnectionFailed";
    /// The referenced credentials Secret is missing or incomplete.
    pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
    /// The server refused the username or password; logins back off (30 s doubling to 1 h)
    /// so a wrong password does not lock the account. A changed Secret is tried at once.
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    /// The Secret is pinned to another server: no credentials are sent.
    pub const PINNED_ELSEWHERE: &str = "PinnedElsewhere";
    /// The Secret names this provider's server.
    pub const PINNED: &str = "Pinned";
    /// The Secret names no server (allowed for compatibility; pin it).
    pub const UNPINNED: &str = "Unpinned";
    /// TLS verified with the provider's `caBundle`.
    pub const CA_BUNDLE: &str = "CaBundle";
    /// TLS verified with the built-in public roots.
    pub const PUBLIC_ROOTS: &str = "PublicRoots";
    /// `insecureSkipVerify: true`: any certificate is accepted.
    pub const INSECURE_SKIP_VERIFY: &str = "InsecureSkipVerify";
    /// Samples arrive on schedule.
    pub const SAMPLING: &str = "Sampling";
    /// No sample arrived within a few intervals.
    pub const SAMPLES_STALE: &str = "SamplesStale";
}

/// Reasons of the entries in a `WorkloadIntent`'s `status.protectedVms`.
pub mod protection {
    /// The VM has the tier's CPU shares.
    pub const PROTECTED: &str = "Protected";
    /// The VM's provider cannot set CPU shares (e.g. no cgroup CPU controller); not retried.
    pub const CPU_SHARES_UNSUPPORTED: &str = "CpuSharesUnsupported";
    /// Setting the shares failed; retried with backoff.
    pub const PROTECT_FAILED: &str = "ProtectFailed";
}

/// Reasons on the pod condition `plumbline.dev/storage-healthy`.
pub mod pod {
    /// The backing VM's storage is within the intent's latency budget.
    pub const WITHIN_BUDGET: &str = "LatencyWithinBudget";
    /// The backing VM's storage is over budget: the pod is taken out of rotation.
    pub const OVER_BUDGET: &str = "LatencyOverBudget";
    /// Over budget, but the guard kept the pod ready so the workload keeps enough capacity.
    pub const HELD_BY_GUARD: &str = "OverBudgetHeldByGuard";
    /// Unknown and failing closed, but the guard kept the pod ready.
    pub const UNKNOWN_HELD_BY_GUARD: &str = "LatencyUnknownHeldByGuard";
    /// No fresh samples; readiness follows the unknown policy.
    pub const UNKNOWN: &str = "LatencyUnknown";
    /// The pod's node is not backed by a VM any provider knows; readiness follows the unknown
    /// policy.
    pub const NOT_BACKED: &str = "NoBackingVm";
}

/// Reasons on the node condition `StorageLatencyHigh` (a problem condition: `True` is bad).
pub mod node {
    pub const OVER_BUDGET: &str = "StorageLatencyOverBudget";
    pub const WITHIN_BUDGET: &str = "StorageLatencyWithinBudget";
    pub const UNKNOWN: &str = "StorageLatencyUnknown";
}

/// Event reasons that are not also condition reasons (those are in [`reason`] and
/// [`infra_change`]).
pub mod event {
    /// A degraded intent is no longer degraded.
    pub const RECOVERED: &str = "Recovered";
    /// A noisy neighbour got its first I/O limit.
    pub const NOISY_NEIGHBOUR_THROTTLED: &str = "NoisyNeighbourThrottled";
    /// A noisy neighbour's limit went one step further.
    pub const NOISY_NEIGHBOUR_STEPPED: &str = "NoisyNeighbourStepped";
    /// A step that did not lower the victim's latency was undone.
    pub const NOISY_NEIGHBOUR_STEP_UNDONE: &str = "NoisyNeighbourStepUndone";
    /// A noisy neighbour's limit was released.
    pub const NOISY_NEIGHBOUR_RELEASED: &str = "NoisyNeighbourReleased";
    /// A noisy neighbour throttling could not tame is moved to another host.
    pub const NOISY_NEIGHBOUR_RELOCATED: &str = "NoisyNeighbourRelocated";
    /// A VM backing a protected intent got the tier's CPU shares.
    pub const BACKING_VM_PROTECTED: &str = "BackingVmProtected";
    /// A VM no longer backs a protected intent: its shares are restored.
    pub const BACKING_VM_RELEASED: &str = "BackingVmReleased";
    /// The node got the storage taint.
    pub const STORAGE_TAINT_ADDED: &str = "StorageTaintAdded";
    /// The node's storage taint was removed.
    pub const STORAGE_TAINT_REMOVED: &str = "StorageTaintRemoved";
    /// An intent with signals is active only on signal data missing for longer than
    /// `maxKeepLast`: its disruptive hypervisor actions (neighbour throttles) are released.
    pub const HYPERVISOR_ACTIONS_RELEASED: &str = "HypervisorActionsReleased";
    /// Every signal of an intent has data again.
    pub const SIGNALS_RECOVERED: &str = "SignalsRecovered";
    /// The node deserves the storage taint, but the taint cap holds it back.
    pub const STORAGE_TAINT_HELD: &str = "StorageTaintHeld";
}

/// A VM's storage verdict, as `status.backing[].verdict` shows it.
pub mod verdict {
    pub const HEALTHY: &str = "Healthy";
    pub const DEGRADED: &str = "Degraded";
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition status values.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// `InfraChange` states (`status.state`), condition types and reasons.
pub mod infra_change {
    // status.state
    /// Recorded in the ledger, not carried out yet.
    pub const PENDING: &str = "Pending";
    /// The target has the desired value (read back).
    pub const APPLIED: &str = "Applied";
    /// The value was found changed behind Plumbline's back; it is being corrected.
    pub const DRIFTED: &str = "Drifted";
    /// Someone else keeps changing the value: Plumbline stopped correcting it.
    pub const CONTESTED: &str = "Contested";
    /// The last attempt failed; retried with backoff.
    pub const FAILED: &str = "Failed";
    /// The target cannot take this setting (capability missing); nothing was changed.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// Being deleted: the original is being restored.
    pub const REVERTING: &str = "Reverting";

    // Condition types.
    pub const COND_APPLIED: &str = "Applied";
    pub const COND_DRIFTED: &str = "Drifted";
    pub const COND_REVERTING: &str = "Reverting";

    // Reasons (also Event reasons on the InfraChange).
    pub const APPLIED_REASON: &str = "Applied";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const NOT_APPLIED: &str = "NotApplied";
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    pub const NO_DRIFT: &str = "NoDrift";
    pub const REVERTED: &str = "Reverted";
    pub const REVERT_FAILED: &str = "RevertFailed";
    pub const ABANDONED: &str = "Abandoned";
    pub const NOT_REVERTING: &str = "NotReverting";
    /// A one-shot change (a relocation) deleted: nothing is undone.
    pub const LEFT_IN_PLACE: &str = "LeftInPlace";
}

/// `HostMaintenance` phases (`status.phase`), condition types, reasons and Event reasons.
pub mod maintenance {
    // status.phase
    /// Accepted; nothing cordoned yet.
    pub const PENDING: &str = "Pending";
    /// Nodes are cordoned and their pods evicted.
    pub const DRAINING: &str = "Draining";
    /// Every node on the host is empty (DaemonSet and mirror pods aside).
    pub const DRAINED: &str = "Drained";
    /// Nothing can move now: `DrainBlocked` says what blocks it.
    pub const BLOCKED: &str = "Blocked";
    /// The drain timeout passed with `onTimeout: Wait`; still trying.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Over: aborted after the timeout, or the spec cannot be acted on. Nothing is cordoned.
    pub const ENDED: &str = "Ended";

    // status.nodes[].state
    pub const NODE_WAITING: &str = "Waiting";
    pub const NODE_DRAINING: &str = "Draining";
    pub const NODE_DRAINED: &str = "Drained";

    // Condition types.
    pub const DRAIN_BLOCKED: &str = "DrainBlocked";
    pub const READY_FOR_MAINTENANCE: &str = "ReadyForMaintenance";

    // Reasons (also Event reasons on the HostMaintenance).
    /// A PodDisruptionBudget allows no more disruptions.
    pub const DISRUPTION_BUDGET: &str = "DisruptionBudget";
    /// Evicting would take an active intent's workload below its replica floor.
    pub const REPLICA_FLOOR: &str = "ReplicaFloor";
    /// Evicting would take the workload's last ready pod.
    pub const LAST_READY_POD: &str = "LastReadyPod";
    /// A surged workload's extra pods are not all ready yet: its pods wait for them.
    pub const SURGE_PENDING: &str = "SurgePending";
    /// A workload was surged (also an Event reason).
    pub const SURGED: &str = "Surged";
    /// The hypervisor reported the host entering or in maintenance mode, and the operator
    /// created the HostMaintenance (Event reason).
    pub const DETECTED: &str = "Detected";
    pub const NOT_BLOCKED: &str = "NotBlocked";
    pub const UNKNOWN_PROVIDER: &str = "UnknownProvider";
    pub const UNKNOWN_HOST: &str = "UnknownHost";
    /// Another HostMaintenance for the same host came first.
    pub const CONFLICTING_MAINTENANCE: &str = "ConflictingMaintenance";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const ABORTED: &str = "Aborted";
    pub const DRAINED_REASON: &str = "Drained";
    pub const NOT_DRAINED: &str = "NotDrained";
    /// A pod was evicted through the Eviction API.
    pub const POD_EVICTED: &str = "PodEvicted";
    /// After the timeout with `onTimeout: Force`, a pod was deleted.
    pub const POD_DELETED: &str = "PodDeleted";
}
