//! A VM-VM anti-affinity rule of a compute cluster (vSphere DRS), as Plumbline keeps one.

use serde::{Deserialize, Serialize};

use crate::VmId;

/// "Keep these VMs on different hosts": a DRS VM-VM anti-affinity rule, named in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiAffinityRule {
    /// The rule's name, unique in its cluster.
    pub name: String,
    /// `true`: DRS and HA must never place two of the VMs on one host ("must"); `false`: DRS
    /// keeps them apart when it can ("should").
    pub mandatory: bool,
    /// Whether DRS applies the rule.
    pub enabled: bool,
    /// The VMs to keep apart, sorted.
    pub vms: Vec<VmId>,
}
