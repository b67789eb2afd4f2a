//! Placement across hypervisor hosts, decided without I/O:
//!
//! - [`spread`]: how a workload's pods are spread over hosts, and the `SpreadAcrossHosts`
//!   verdict;
//! - [`rule`]: the DRS VM-VM anti-affinity rule that keeps the VMs under the pods apart, and
//!   its value as a ledger entry carries it.

pub mod rule;
pub mod spread;

pub use rule::{anti_affinity_rules, RuleValue, RuleVm, RuleWish};
pub use spread::{host_spread, HostKind, SpreadVerdict};
