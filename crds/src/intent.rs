//! `WorkloadIntent`: what matters about one workload, in business terms.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, Time},
    util::intstr::IntOrString,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{plan::PlannedAction, schema};

/// What matters about one workload: how important it is, when, how available it must stay,
/// how fast its storage must be, and which hypervisor actions Plumbline may take for it.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "plumbline.dev",
    version = "v1alpha1",
    kind = "WorkloadIntent",
    namespaced,
    shortname = "wi",
    category = "plumbline",
    status = "WorkloadIntentStatus",
    derive = "PartialEq",
    doc = "What matters about one workload; Plumbline turns it into coordinated, reversible changes on Kubernetes and on the hypervisors beneath it.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.name",
        description = "The Deployment or StatefulSet"
    ),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".spec.target.kind",
        priority = "1"
    ),
    printcolumn(name = "Priority", type_ = "string", json_path = ".spec.priority"),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Active\")].status",
        description = "Active now: by a schedule window or a Prometheus signal"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The plan is fully applied"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "Why the intent is degraded (AsExpected if it is not)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIntentSpec {
    /// The workload this intent is about, in the intent's namespace.
    pub target: WorkloadTarget,

    /// How important the workload is: critical, high, standard or best-effort. Each tier
    /// maps to a PriorityClass and to what Plumbline may do on the hypervisors.
    pub priority: Priority,

    /// When the intent applies. Absent: always. Overnight spans are two windows, e.g.
    /// Mon 22:00-24:00 and Tue 00:00-06:00. At most 32 windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = schema::MAX_WINDOWS))]
    pub schedule: Option<Vec<TimeWindow>>,

    /// How available the workload must stay while the intent is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,

    /// Storage latency budget and how storage health feeds pod readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// Which hypervisor actions Plumbline may take for this workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<Infrastructure>,

    /// Where the workload's pods run, across the physical hosts under the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Activation by live metrics from Prometheus, combined with `schedule` (docs/activation.md).
    /// Absent: the schedule alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
}

/// How windows and Prometheus signals combine into "active".
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    /// `anyOf` (default): active while a schedule window is open or any signal is active.
    /// `allOf`: active only while a window is open (when there is a schedule) and every signal
    /// is active.
    #[serde(default)]
    pub combine: Combine,
    /// Named Prometheus signals, each with its band. At most 8.
    #[schemars(length(min = 1, max = schema::MAX_SIGNALS))]
    pub signals: Vec<Signal>,
    /// What a query returning no series means: `keepLast` (default: hold the last state, as for
    /// an error), `inactive` (as a value below the band) or `active` (as a value above it).
    /// Empty is never zero.
    #[serde(default)]
    pub on_empty: OnEmpty,
    /// How long the last state holds while a signal's data is missing (error, stale, or empty
    /// with `keepLast`), e.g. `10m` (default). After it, protective Kubernetes actions stay,
    /// disruptive hypervisor actions (neighbour throttles) are released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = schema::DURATION))]
    pub max_keep_last: Option<String>,
}

/// How windows and signals combine.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Combine {
    #[default]
    AnyOf,
    AllOf,
}

/// What an empty query result means.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnEmpty {
    #[default]
    KeepLast,
    Inactive,
    Active,
}

/// One Prometheus signal with a band: it activates once its value stays above `activateAbove`
/// for `for`, and deactivates when it falls below `deactivateBelow`, but not before it has been
/// active for `keepActiveFor`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    /// Name in status, metrics and explain (a DNS-1123 label), unique within the intent.
    #[schemars(length(min = 1, max = 63), pattern(schema::NAMESPACE_NAME))]
    pub name: String,
    /// PromQL instant query returning one sample.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Upper edge of the band: above it (for `for`) the signal activates.
    pub activate_above: f64,
    /// Lower edge of the band, at most `activateAbove`: below it the signal deactivates.
    pub deactivate_below: f64,
    /// How long the value must stay above `activateAbove` before activating, e.g. `1m`.
    /// Default 0s.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = schema::DURATION))]
    pub for_: Option<String>,
    /// Minimum time active once activated, e.g. `10m` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = schema::DURATION))]
    pub keep_active_for: Option<String>,
    /// How often the query runs, e.g. `30s` (default); at least 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = schema::DURATION))]
    pub interval: Option<String>,
}

/// The last evaluation of one signal, and what the activation decision remembers of it (kept
/// in status so a restart or a new leader continues where the last one stopped).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalStatus {
    pub name: String,
    /// `Value`, `Empty`, `Error` or `Stale` (no successful evaluation for 3 intervals).
    pub state: String,
    /// Since when the signal is in `state`.
    pub since: Time,
    /// The last value read (absent until one was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The last error, as Prometheus or the connection reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Prometheus rejected the query as invalid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    /// Whether the signal itself is active.
    #[serde(default)]
    pub active: bool,
    /// When it last became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<Time>,
    /// Since when the value is above `activateAbove` (the `for` clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_since: Option<Time>,
    /// The last successful evaluation (a value or an empty result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// The last evaluation, successful or not (the next is due an `interval` later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<Time>,
    /// Since when data is missing (error, stale, or empty with `keepLast`): the `maxKeepLast`
    /// clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<Time>,
}

/// Placement across hypervisor hosts (docs/placement.md).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Spread the pods across hypervisor hosts: a topology spread constraint on the node label
    /// `topology.plumbline.dev/host` with `maxSkew: 1`, `ScheduleAnyway` for `preferred`,
    /// `DoNotSchedule` for `required`. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_across_hosts: Option<HostSpread>,
}

/// How strictly pods are spread across hosts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostSpread {
    /// The scheduler prefers spreading (`whenUnsatisfiable: ScheduleAnyway`).
    Preferred,
    /// A pod that would make the skew larger than 1 stays pending (`DoNotSchedule`).
    Required,
}

impl HostSpread {
    /// The constraint's `whenUnsatisfiable`.
    pub fn when_unsatisfiable(self) -> &'static str {
        match self {
            HostSpread::Preferred => "ScheduleAnyway",
            HostSpread::Required => "DoNotSchedule",
        }
    }
}

/// A Deployment or StatefulSet in the intent's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTarget {
    /// Deployment or StatefulSet.
    pub kind: TargetKind,
    /// Name of the workload (a DNS-1123 subdomain).
    #[schemars(length(min = 1, max = 253), pattern(schema::OBJECT_NAME))]
    pub name: String,
}

/// The kinds of workload an intent can target.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
}

/// Business priority tiers, most important first.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Critical,
    High,
    Standard,
    BestEffort,
}

impl Priority {
    /// Every tier, most important first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Standard,
        Priority::BestEffort,
    ];

    /// The name users write (`best-effort`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Standard => "standard",
            Priority::BestEffort => "best-effort",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Days of the week, as written in a window.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// One recurring window, e.g. Mon-Fri 08:00-20:00 Europe/Berlin. `start` and `end` are wall-clock
/// times in `timeZone` on each of `days`; `end` must be after `start` (use `24:00` for the end
/// of the day). On a DST change the window covers the wall-clock times that exist that day.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeWindow {
    /// Days the window opens on, e.g. [Mon, Tue, Wed, Thu, Fri]. Absent: every day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 7))]
    pub days: Option<Vec<Weekday>>,
    /// Opening time, HH:MM (00:00-23:59).
    #[schemars(pattern(schema::CLOCK_TIME))]
    pub start: String,
    /// Closing time, HH:MM (00:01-24:00), after start.
    #[schemars(pattern(schema::CLOCK_TIME_OR_MIDNIGHT))]
    pub end: String,
    /// IANA time zone of start and end, e.g. Europe/Berlin or UTC.
    #[schemars(length(min = 1, max = 64), pattern(schema::TIME_ZONE))]
    pub time_zone: String,
}

/// Availability while the intent is active.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    /// Replica floor: while active, the workload runs at least this many replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = schema::MAX_COUNT))]
    pub replica_floor: Option<i32>,
    /// Minimum available pods during voluntary disruptions (becomes a PodDisruptionBudget):
    /// a count such as 2 or a percentage such as "50%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::count_or_percentage")]
    pub min_available: Option<IntOrString>,
}

/// Storage latency budget and readiness feedback.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Per-operation storage latency budget on the backing VMs, e.g. 20ms, 500us, 1.5s; above
    /// zero and at most 60s.
    #[schemars(length(max = 24), pattern(schema::LATENCY))]
    pub latency_budget: String,
    /// Add the readiness gate plumbline.dev/storage-healthy to the workload's pods, so pods on
    /// VMs over budget leave Service endpoints.
    #[serde(default)]
    pub readiness_gate: bool,
    /// Guard: the most pods that may be marked unready for storage reasons at once, a count such
    /// as 1 or a percentage such as "34%". Default "34%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::count_or_percentage")]
    pub max_unready: Option<IntOrString>,
}

/// Hypervisor actions Plumbline may take for this workload. Everything is off by default.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Infrastructure {
    /// Raise the CPU shares of the VMs backing the workload's pods while active.
    #[serde(default)]
    pub protect_backing_vms: bool,
    /// Limit the I/O of other VMs on the same host or datastore when this workload's storage
    /// is over budget (never VMs backing a workload of an equal or higher tier).
    #[serde(default)]
    pub throttle_noisy_neighbours: bool,
    /// vSphere: when throttling cannot tame a noisy neighbour (this workload's VM stays
    /// degraded for 2 minutes after the neighbour reached the bottom of the throttle ladder),
    /// move the neighbour (never this workload's VM) to the host of its cluster with the least
    /// I/O that backs no critical workload, by vMotion. At most one relocation per host per
    /// 15 minutes; the same VM again only after a cooldown that doubles per repeat within 24 h
    /// (at most 6 h). Needs `throttleNoisyNeighbours` and the `critical` priority.
    #[serde(default)]
    pub relocate_noisy_neighbours: bool,
}

/// What Plumbline observed and did for the intent.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIntentStatus {
    /// Ready, Active and Degraded, with reasons (see `plumbline_crds::conditions`).
    #[serde(default)]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The current plan: each action per layer, with target, desired and previous value and why.
    /// Previous values are what a revert restores.
    #[serde(default)]
    pub plan: Vec<PlannedAction>,
    /// When the schedule next opens or closes; absent without a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition: Option<Time>,
    /// The Prometheus signals of `spec.activation`: last value, data state, since when, last
    /// error, and the band's memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub signals: Vec<SignalStatus>,
    /// The workload's pods and what backs them: pod, node, VM, provider and last latency.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub backing: Vec<BackingPod>,
    /// The readiness guard: how many pods may be unready for storage reasons and which were held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardReport>,
    /// I/O limits on noisy neighbours in force for this intent's VMs, with the last step's
    /// reason (written by the storage-health loop; every step is also an Event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["vm"]))]
    pub neighbour_throttles: Vec<NeighbourThrottleStatus>,
    /// For an intent that may throttle noisy neighbours: the busiest VMs sharing a host or
    /// datastore with its VMs, with their I/O rates, i.e. what the throttle ladder would pick
    /// from if a backing VM degraded (`plumbline explain` shows the first step). Refreshed by
    /// the storage-health loop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["vm"]))]
    pub neighbour_candidates: Vec<NeighbourCandidateStatus>,
    /// VMs backing the workload whose CPU shares Plumbline raised for
    /// `infrastructure.protectBackingVms`, or could not (written by the storage-health loop
    /// under its own field manager; every change is also an Event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["vm"]))]
    pub protected_vms: Vec<ProtectedVmStatus>,
    /// How the workload's pods are spread over hypervisor hosts; `SpreadAcrossHosts` says
    /// whether that is enough when `placement.spreadAcrossHosts` asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementStatus>,
}

/// How the workload's pods are spread over hypervisor hosts (written by the storage-health
/// loop).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// Pods per host, most first.
    #[serde(default)]
    pub hosts: Vec<HostPods>,
    /// Distinct hosts running the workload's pods.
    pub distinct_hosts: i32,
    /// Pods whose host is not known (their node maps to no provider's VM).
    #[serde(default)]
    pub pods_on_unknown_hosts: i32,
    /// With `spreadAcrossHosts`: the verdict of the storage-health loop, which the controller
    /// shows as the `SpreadAcrossHosts` condition (one writer for all conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<SpreadVerdictStatus>,
    /// vSphere: the DRS VM-VM anti-affinity rule kept for `spreadAcrossHosts`, one per
    /// compute cluster holding two or more of the VMs under the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drs_rules: Vec<DrsRuleStatus>,
    /// With `infrastructure.relocateNoisyNeighbours`: for each host under the pods, where a
    /// noisy neighbour throttling cannot tame would be moved now, or why nowhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relocation_targets: Vec<RelocationTargetStatus>,
    /// Noisy neighbours moved for this intent within the last 24 hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relocations: Vec<RelocationStatus>,
}

/// Where a noisy neighbour on `host` would go.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelocationTargetStatus {
    pub host: String,
    /// The host it would be moved to; absent when none may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why that host, or why none.
    pub reason: String,
}

/// A noisy neighbour moved to another host, and how its ledger entry stands.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelocationStatus {
    pub vm: String,
    pub provider: String,
    pub from: String,
    pub to: String,
    /// When the move was decided.
    pub decided: Time,
    /// The ledger entry's state: Pending, Applied, Failed, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The last error from the hypervisor, when the move failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether the pods are spread enough: the `SpreadAcrossHosts` condition's content.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpreadVerdictStatus {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// `Spread`, `OneHost`, `SinglePod` or `HostsUnknown`.
    pub reason: String,
    pub message: String,
}

/// A DRS anti-affinity rule over the VMs backing the workload, and how its ledger entry
/// (`InfraChange`) stands.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrsRuleStatus {
    /// HypervisorProvider of the cluster.
    pub provider: String,
    /// The compute cluster.
    pub cluster: String,
    /// The rule's name in the cluster.
    pub rule: String,
    /// `should` (DRS keeps the VMs apart when it can) or `must` (never on one host).
    pub mode: String,
    /// The VMs the rule keeps apart.
    pub vms: Vec<String>,
    /// The ledger entry's state: Pending, Applied, Failed, … (see `kubectl get infrachanges`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The last error from the cluster, when the rule could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The workload's pods on one host.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostPods {
    pub host: String,
    pub pods: i32,
}

/// One VM backing the workload, protected with more CPU shares than its neighbours.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedVmStatus {
    /// The VM.
    pub vm: String,
    /// HypervisorProvider the VM belongs to.
    pub provider: String,
    /// `Protected`, `CpuSharesUnsupported` or `ProtectFailed` (see
    /// `plumbline_crds::conditions::protection`).
    pub reason: String,
    /// CPU shares in force (the highest of the intents the VM backs); absent unless protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<i64>,
    /// CPU shares before Plumbline changed them, restored on release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<i64>,
    /// When the shares were set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why not protected, in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One noisy neighbour throttled on behalf of the intent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeighbourThrottleStatus {
    /// The throttled VM.
    pub vm: String,
    /// HypervisorProvider the VM belongs to.
    pub provider: String,
    /// Disks carrying the limit.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Step on the throttle ladder, 1 = gentlest.
    pub step: i32,
    /// Total IOPS limit in force (read back from the VM), or wanted while not applied yet.
    pub limit_iops: i64,
    /// The VM's IOPS before its first step; each step is a fraction of it.
    pub baseline_iops: i64,
    /// When the last step was taken.
    pub since: Time,
    /// Why, in plain words.
    pub reason: String,
    /// The InfraChange state of the limit (Applied, Pending, Failed, Drifted, ...): `limitIops`
    /// is the value read back from the VM when Applied, the wanted one otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A VM that could be throttled for this intent's VMs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeighbourCandidateStatus {
    pub vm: String,
    /// Its UUID, as the ledger names it.
    pub vm_id: String,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<String>,
    /// Operations per second over the last sample.
    pub iops: i64,
}

/// One pod of the workload and the infrastructure under it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackingPod {
    /// Pod name.
    pub pod: String,
    /// Node the pod runs on; absent while unscheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// VM backing the node (hypervisor name or UUID); absent when unmapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// HypervisorProvider the VM belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The physical host running the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Datastores (vSphere) or storage directories (libvirt) holding the VM's disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<String>,
    /// Last per-operation storage latency seen on the VM, e.g. 3.2ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Storage verdict for the VM: Healthy, Degraded or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// When the latency was sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_at: Option<Time>,
}

/// The readiness guard's last decision (issue 5): degraded pods beyond the allowed number stay
/// ready, worst first marked unready.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardReport {
    /// Most pods that may be unready for storage reasons: storage.maxUnready minus the pods
    /// unready for other reasons, and never the last ready pod.
    pub allowed_unready: i32,
    /// Pods not Ready for reasons of their own (not marked by Plumbline); they use up the
    /// budget first.
    #[serde(default)]
    pub unready_elsewhere: i32,
    /// Pods currently marked unready for storage reasons.
    #[serde(default)]
    pub marked_unready: Vec<String>,
    /// Pods on degraded VMs kept ready because the guard was reached.
    #[serde(default)]
    pub held_ready: Vec<String>,
}
