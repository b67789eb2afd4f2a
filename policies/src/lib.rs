//! plumbline-policies
//! Plumbline's decisions, with no I/O: plain data in (intent, observed cluster, observed
//! hypervisors, the time), plans and readiness verdicts out.
//!
//! The entry points:
//! - [`plan()`]: an intent spec, what was observed and the time → a [`Plan`] (or [`Invalid`]);
//! - [`revert()`]: what was applied before → the plan that restores the previous values;
//! - [`explain()`]: a plan → the text `plumbline explain` prints;
//! - [`validate_intent()`] / [`validate_provider()`]: what the 1.20 schema cannot check;
//! - [`status`]: plans to and from `WorkloadIntent.status.plan`;
//! - [`health`]: storage verdicts, the readiness guard and noisy-neighbour choice.

pub mod health;
pub mod observed;
pub mod plan;

pub use observed::{BackingVm, NeighbourThrottle, Observed, ObservedDisruptionBudget, ObservedInfra, ObservedWorkload};
pub use plan::{Action, Activity, Change, CountOrPercent, Note, Plan, Preemption, PriorityClassSpec, Setting, VmRef, WorkloadRef};
