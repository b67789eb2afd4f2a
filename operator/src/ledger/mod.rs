//! The change ledger: every change Plumbline makes to shared infrastructure (a VM's IOPS limit
//! or CPU shares, a node's taint) is an `InfraChange` object, written before anything changes
//! and reverted by its finalizer. The decisions are `plumbline_policies::ledger`; this module
//! writes the objects and carries them out.
//!
//! - [`writer`]: makes the objects say what the health pass wants (create, update, delete), and
//!   keeps the provider finalizer while changes target a provider;
//! - [`actuator`]: one task per provider (and one for nodes) that records originals, applies,
//!   reads back, corrects drift and reverts, with bounded concurrency and a deadline per call;
//! - [`target`]: reading, setting and restoring one setting on a VM or a node;
//! - [`report`]: the object's status and Events.
//!
//! Only the leader runs any of it: losing the lease stops every write at once, and the next
//! leader continues from the objects.

pub mod actuator;
pub mod report;
pub mod target;
pub mod writer;

use plumbline_crds::{ChangePurpose, InfraChange};
use plumbline_policies::ledger::ActuationPolicy;
use std::{sync::Arc, time::Duration};

/// How the actuators behave; the defaults are documented in docs/ledger.md.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub policy: ActuationPolicy,
    /// Every call to a hypervisor or the API for one change gives up after this long.
    pub call_deadline: Duration,
    /// Calls in flight per provider at once.
    pub concurrency: usize,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            policy: ActuationPolicy::default(),
            call_deadline: Duration::from_secs(20),
            concurrency: 4,
        }
    }
}

/// The operator instance's name in `spec.operator`: `cluster`, or `namespace/NAME`.
pub fn instance(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("namespace/{ns}"),
        None => "cluster".to_string(),
    }
}

/// The instance as a label value (`cluster` or the namespace name).
pub fn instance_label(namespace: Option<&str>) -> String {
    namespace.unwrap_or("cluster").to_string()
}

/// This instance's entries of one purpose that are in force or wanted (not being deleted).
pub fn entries<'a>(
    changes: &'a [Arc<InfraChange>],
    operator: &'a str,
    purpose: ChangePurpose,
) -> impl Iterator<Item = &'a Arc<InfraChange>> {
    changes.iter().filter(move |ic| {
        ic.spec.operator == operator
            && ic.spec.purpose == purpose
            && ic.metadata.deletion_timestamp.is_none()
    })
}
