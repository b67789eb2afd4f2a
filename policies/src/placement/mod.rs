//! Placement across hypervisor hosts, decided without I/O:
//!
//! - [`spread`]: how a workload's pods are spread over hosts, and the `SpreadAcrossHosts`
//!   verdict;
//! - [`rule`]: the DRS VM-VM anti-affinity rule that keeps the VMs under the pods apart, and
//!   its value as a ledger entry carries it;
//! - [`relocate`]: moving a noisy neighbour throttling cannot tame, within its budgets.

pub mod relocate;
pub mod rule;
pub mod spread;

pub use relocate::{
    pick_host, plan_relocations, HostChoice, PastRelocation, Relocation, RelocationPolicy,
};
pub use rule::{anti_affinity_rules, RuleValue, RuleVm, RuleWish};
pub use spread::{host_spread, HostKind, SpreadVerdict};
