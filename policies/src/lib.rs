//! plumbline-policies
//! Plumbline's decisions, with no I/O: plain data in (intent, observed cluster, observed
//! hypervisors, the time), plans and readiness verdicts out.
//!
//! The entry points:
//! - [`plan()`]: an intent, what was observed and the time → a [`Plan`] (or [`Invalid`]);
//! - [`revert()`]: what was applied before → the actions that restore the previous values;
//! - [`explain()`]: a plan → the text `plumbline explain` prints;
//! - [`validate_intent()`] / [`validate_provider()`]: what the 1.20 schema cannot check;
//! - [`status`]: plans to and from `WorkloadIntent.status.plan`;
//! - [`tenancy`]: which namespaces may use which tiers and infrastructure actions;
//! - [`tiers`]: what each priority tier means, in one table;
//! - [`schedule`]: time windows, zones and DST;
//! - [`activation`]: Prometheus signals with a band, combined with the windows;
//! - [`health`]: storage verdicts, the readiness guard and noisy-neighbour choice;
//! - [`topology`]: the host, provider and cluster labels on VM-backed nodes.

pub mod activation;
pub mod credentials;
pub mod explain;
pub mod health;
pub mod invalid;
pub mod ledger;
pub mod maintenance;
pub mod observed;
pub mod placement;
pub mod plan;
pub mod planner;
pub mod quantity;
pub mod revert;
pub mod schedule;
pub mod status;
pub mod tenancy;
pub mod tiers;
pub mod topology;
pub mod validate;

pub use explain::{describe, explain, explain_invalid};
pub use invalid::{FieldError, Invalid};
pub use observed::{
    Observed, ObservedBackingVm, ObservedDisruptionBudget, ObservedInfra, ObservedWorkload,
};
pub use plan::{
    Action, Activity, Change, CountOrPercent, Note, Plan, Preemption, PriorityClassSpec,
    ValueChange, VmRef, WorkloadRef,
};
pub use planner::{disruption_budget_name, plan};
pub use revert::{revert, Undo};
pub use schedule::activity;
pub use schedule::Schedule;
pub use status::{action_to_status, actions_from_status, plan_to_status, StatusError};
pub use tenancy::{admit, NamedPolicy, NotAllowed, TenantRequest, TenantVerdict};
pub use tiers::{tier, TierSemantics, TIERS};
pub use validate::{
    validate_intent, validate_provider, vsphere_url, ValidIntent, ValidProvider, ValidStorage,
};
