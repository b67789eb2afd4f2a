//! The change ledger, decided without I/O: every change Plumbline makes to shared
//! infrastructure is an `InfraChange` object.
//!
//! - [`desired`]: the throttles, CPU shares and taints the health decisions want, as the
//!   `InfraChange` specs that say so, and the diff against the objects that exist;
//! - [`actuation`]: what an actuator does next with one object (record the original, apply,
//!   read back, correct drift or stop fighting, revert), and how it judges what it read back.
//!
//! Values are strings as the objects carry them: whole numbers for hypervisor tunables,
//! `present`/`absent` for taints, `should:…`/`must:…` for DRS rules
//! ([`crate::placement::RuleValue`]), a host's name for a relocation.

pub mod actuation;
pub mod desired;
pub mod lost;

pub use actuation::{after_readback, next_work, ActuationPolicy, Readback, Work};
pub use desired::{
    diff, owner_summary, protection_spec, relocation_from_spec, relocation_spec, rule_spec,
    taint_setting, taint_spec, throttle_from_spec, throttle_spec, LedgerDiff, ABSENT,
    DRS_RULE_PREFIX, HOST, MAINTENANCE_MODE, PRESENT, REPLICAS, UNSCHEDULABLE,
};

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A Kubernetes timestamp, whole seconds (what the API server keeps).
pub fn to_time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

pub fn from_time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}
