//! Plumbline's API: the custom resources users write (group `plumbline.dev`, version `v1alpha1`).
//!
//! Only types live here. The CRD YAML under `crds/generated/` is produced from them by
//! `cargo run -p plumbline-operator --bin crdgen` and must never be edited by hand; a test in
//! this crate fails when it drifts from the code.
//!
//! What the Kubernetes 1.20 schema cannot check (a window that ends before it starts, an
//! unknown time zone, …) is checked by `plumbline-policies` and reported in status with the
//! field path.

// kube-derive repeats `type_` across printcolumn attributes, which this lint mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod apply;
pub mod conditions;
pub mod generate;
pub mod host_maintenance;
pub mod infra_change;
pub mod intent;
pub mod lenient;
pub mod names;
pub mod plan;
pub mod provider;
pub mod schema;
pub mod tenant_policy;

pub use host_maintenance::{
    HostMaintenance, HostMaintenanceSpec, HostMaintenanceStatus, MaintenanceNode,
    MaintenanceWorkload, OnTimeout,
};
pub use infra_change::{
    fnv1a, ChangeOwner, ChangePurpose, ChangeTarget, ChangeTargetKind, InfraChange,
    InfraChangeSpec, InfraChangeStatus, RelocationRecord, ThrottleStep, VmRef,
};
pub use intent::{
    Activation, Availability, BackingPod, Combine, DrsRuleStatus, GuardReport, HostPods,
    HostSpread, Infrastructure, NeighbourCandidateStatus, NeighbourThrottleStatus, OnEmpty,
    Placement, PlacementStatus, Priority, ProtectedVmStatus, RelocationStatus,
    RelocationTargetStatus, Signal, SignalStatus, SpreadVerdictStatus, Storage, TargetKind,
    TimeWindow, Weekday, WorkloadIntent, WorkloadIntentSpec, WorkloadIntentStatus, WorkloadTarget,
};
pub use plan::{ActionKind, ActionState, Layer, PlannedAction, PlannedTarget};
pub use provider::{
    Connection, HypervisorProvider, HypervisorProviderSpec, HypervisorProviderStatus,
    LibvirtConnection, NodeMapping, NodeMappingStrategy, SecretRef, VsphereConnection,
};

pub use tenant_policy::{TenantAction, TenantPolicy, TenantPolicySpec};

/// The API group of every Plumbline resource.
pub const GROUP: &str = "plumbline.dev";
/// The one served (and stored) version.
pub const VERSION: &str = "v1alpha1";
