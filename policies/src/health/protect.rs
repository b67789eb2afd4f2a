//! Protecting backing VMs: while an intent with `infrastructure.protectBackingVms` is active,
//! every VM under its pods gets its tier's CPU shares; a VM under several such intents gets the
//! highest. When a VM stops being wanted (it no longer backs the pods, the window closed, the
//! intent went away or turned protection off) the original shares are restored.
//!
//! The operator carries the actions out through the adapters (which record the original on the
//! VM) and feeds back what is in force and what failed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    time::{Duration, SystemTime},
};

use plumbline_crds::Priority;

/// One intent's claim on the VMs under its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionClaim<K> {
    /// `namespace/name`, for messages and status.
    pub intent: String,
    /// The CPU shares it asks for now, or why it asks for none.
    pub shares: Result<u64, &'static str>,
    pub vms: BTreeSet<K>,
}

impl<K> ProtectionClaim<K> {
    /// The claim of an intent of `priority`: its tier's protected shares while
    /// `protectBackingVms` is set and the intent is active (window open, not being deleted).
    pub fn new(
        intent: impl Into<String>,
        priority: Priority,
        protect: bool,
        active: bool,
        vms: BTreeSet<K>,
    ) -> Self {
        let shares = match (protect, crate::tier(priority).protected_cpu_shares, active) {
            (false, _, _) => Err("infrastructure.protectBackingVms is off"),
            (true, None, _) => Err("its tier does not protect VMs"),
            (true, Some(_), false) => Err("it is not active (window closed or being deleted)"),
            (true, Some(s), true) => Ok(s),
        };
        Self {
            intent: intent.into(),
            shares,
            vms,
        }
    }
}

/// Whether a VM's provider can set CPU shares now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharesSupport {
    Supported,
    /// Never on this provider (e.g. no cgroup CPU controller): reported, not retried.
    Unsupported(String),
    /// Not known yet, or the provider is disconnected: wait.
    Unknown,
}

/// CPU shares in force on one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    pub shares: u64,
    /// The shares before Plumbline first changed them (what a release restores), as recorded
    /// on the VM.
    pub original: Option<u64>,
    /// When `shares` was set.
    pub since: SystemTime,
}

/// Failed attempts on one VM since the last success, for backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectFailure {
    pub attempts: u32,
    pub at: SystemTime,
}

impl ProtectFailure {
    /// First retry after 5 s, doubling up to 5 minutes: a failing hypervisor is not hammered
    /// every pass.
    pub fn retry_at(&self) -> SystemTime {
        let exp = self.attempts.saturating_sub(1).min(6);
        let delay = (Duration::from_secs(5) * (1u32 << exp)).min(Duration::from_secs(300));
        self.at + delay
    }
}

/// What one VM should have: the highest claim's shares and every intent asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub shares: u64,
    /// The intents protecting the VM, `namespace/name`.
    pub intents: BTreeSet<String>,
    /// The intent whose claim sets the value.
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectAction<K> {
    /// Set the VM's CPU shares (first time, or a different value than in force).
    Apply { vm: K, shares: u64, reason: String },
    /// Restore the VM's original CPU shares.
    Release { vm: K, reason: String },
}

impl<K> ProtectAction<K> {
    pub fn vm(&self) -> &K {
        match self {
            Self::Apply { vm, .. } | Self::Release { vm, .. } => vm,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Apply { reason, .. } | Self::Release { reason, .. } => reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionPlan<K> {
    /// Every VM that should be protected now (including those whose provider cannot).
    pub wanted: BTreeMap<K, Wanted>,
    /// Wanted, but the provider cannot set CPU shares: why.
    pub unsupported: BTreeMap<K, String>,
    pub actions: Vec<ProtectAction<K>>,
}

/// Decides which VMs get which CPU shares now and which are released. VMs inside their
/// failure backoff and VMs of providers whose support is unknown are left as they are.
pub fn plan_protection<K: Ord + Clone + Display>(
    now: SystemTime,
    claims: &[ProtectionClaim<K>],
    support: impl Fn(&K) -> SharesSupport,
    in_force: &BTreeMap<K, Protection>,
    failures: &BTreeMap<K, ProtectFailure>,
) -> ProtectionPlan<K> {
    let mut wanted: BTreeMap<K, Wanted> = BTreeMap::new();
    for claim in claims {
        let Ok(shares) = claim.shares else { continue };
        for vm in &claim.vms {
            let w = wanted.entry(vm.clone()).or_insert_with(|| Wanted {
                shares,
                intents: BTreeSet::new(),
                by: claim.intent.clone(),
            });
            w.intents.insert(claim.intent.clone());
            // Highest wins; on a tie the first by name, so the message does not flip.
            if shares > w.shares || (shares == w.shares && claim.intent < w.by) {
                w.shares = shares;
                w.by = claim.intent.clone();
            }
        }
    }
    let backing_off = |vm: &K| failures.get(vm).is_some_and(|f| now < f.retry_at());

    let mut unsupported = BTreeMap::new();
    let mut actions = Vec::new();
    for (vm, w) in &wanted {
        match support(vm) {
            SharesSupport::Supported => {}
            SharesSupport::Unsupported(why) => {
                unsupported.insert(vm.clone(), why);
                continue;
            }
            SharesSupport::Unknown => continue,
        }
        if in_force.get(vm).is_some_and(|p| p.shares == w.shares) || backing_off(vm) {
            continue;
        }
        let others = w.intents.len() - 1;
        actions.push(ProtectAction::Apply {
            vm: vm.clone(),
            shares: w.shares,
            reason: format!(
                "VM {vm} backs pods of {}{}: CPU shares {}",
                w.by,
                match others {
                    0 => String::new(),
                    n => format!(" (and {n} other protected intent(s))"),
                },
                w.shares
            ),
        });
    }
    for vm in in_force.keys() {
        if wanted.contains_key(vm) || backing_off(vm) || support(vm) == SharesSupport::Unknown {
            continue;
        }
        let why = claims
            .iter()
            .find_map(|c| match c.shares {
                Err(why) if c.vms.contains(vm) => Some(format!("{}: {why}", c.intent)),
                _ => None,
            })
            .unwrap_or_else(|| "it no longer backs pods of a protected intent".to_string());
        actions.push(ProtectAction::Release {
            vm: vm.clone(),
            reason: format!("VM {vm} released: {why}"),
        });
    }
    ProtectionPlan {
        wanted,
        unsupported,
        actions,
    }
}

/// CPU shares an earlier run left on a VM (an original is recorded on it) are kept when the VM
/// is wanted now (a later apply corrects the value) and restored otherwise.
pub fn restore_leftover<K: Ord>(vm: &K, wanted: &BTreeMap<K, Wanted>) -> bool {
    !wanted.contains_key(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn vms(names: &[&'static str]) -> BTreeSet<&'static str> {
        names.iter().copied().collect()
    }

    fn claim(
        intent: &str,
        priority: Priority,
        active: bool,
        on: &[&'static str],
    ) -> ProtectionClaim<&'static str> {
        ProtectionClaim::new(intent, priority, true, active, vms(on))
    }

    fn supported(_: &&'static str) -> SharesSupport {
        SharesSupport::Supported
    }

    fn in_force(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, Protection> {
        pairs
            .iter()
            .map(|(vm, shares)| {
                (
                    *vm,
                    Protection {
                        shares: *shares,
                        original: Some(1000),
                        since: at(0),
                    },
                )
            })
            .collect()
    }

    fn applies(plan: &ProtectionPlan<&'static str>) -> Vec<(&'static str, u64)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                ProtectAction::Apply { vm, shares, .. } => Some((*vm, *shares)),
                _ => None,
            })
            .collect()
    }

    fn releases(plan: &ProtectionPlan<&'static str>) -> Vec<&'static str> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                ProtectAction::Release { vm, .. } => Some(*vm),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_tier_sets_the_value_only_when_protection_is_on_and_active() {
        let c = |p, protect, active| {
            ProtectionClaim::<&str>::new("ns/a", p, protect, active, BTreeSet::new()).shares
        };
        assert_eq!(c(Priority::Critical, true, true), Ok(4096));
        assert_eq!(c(Priority::High, true, true), Ok(2048));
        assert!(c(Priority::Standard, true, true).is_err());
        assert!(c(Priority::BestEffort, true, true).is_err());
        assert!(c(Priority::Critical, false, true).is_err());
        assert!(c(Priority::Critical, true, false).is_err());
    }

    #[test]
    fn every_backing_vm_of_an_active_intent_is_protected() {
        let plan = plan_protection(
            at(10),
            &[claim("ns/pay", Priority::Critical, true, &["vm1", "vm2"])],
            supported,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(applies(&plan), vec![("vm1", 4096), ("vm2", 4096)]);
        assert!(plan.actions[0].reason().contains("ns/pay"));
    }

    #[test]
    fn a_vm_under_several_intents_gets_the_highest_and_drops_back_when_it_goes() {
        let both = [
            claim("ns/high", Priority::High, true, &["vm1"]),
            claim("ns/crit", Priority::Critical, true, &["vm1"]),
        ];
        let plan = plan_protection(at(10), &both, supported, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(applies(&plan), vec![("vm1", 4096)]);
        assert_eq!(plan.wanted["vm1"].intents.len(), 2);
        assert_eq!(plan.wanted["vm1"].by, "ns/crit");

        // Already in force: nothing to do.
        let plan = plan_protection(
            at(10),
            &both,
            supported,
            &in_force(&[("vm1", 4096)]),
            &BTreeMap::new(),
        );
        assert!(plan.actions.is_empty());

        // The critical intent's window closes: the high one remains, at its value.
        let plan = plan_protection(
            at(10),
            &[
                claim("ns/high", Priority::High, true, &["vm1"]),
                claim("ns/crit", Priority::Critical, false, &["vm1"]),
            ],
            supported,
            &in_force(&[("vm1", 4096)]),
            &BTreeMap::new(),
        );
        assert_eq!(applies(&plan), vec![("vm1", 2048)]);
        assert!(releases(&plan).is_empty());
    }

    #[test]
    fn released_when_the_window_closes_the_vm_stops_backing_or_the_intent_goes() {
        let force = in_force(&[("vm1", 4096)]);
        // Window closed.
        let plan = plan_protection(
            at(10),
            &[claim("ns/pay", Priority::Critical, false, &["vm1"])],
            supported,
            &force,
            &BTreeMap::new(),
        );
        assert_eq!(releases(&plan), vec!["vm1"]);
        assert!(plan.actions[0].reason().contains("not active"));
        // Protection turned off.
        let off = ProtectionClaim::new("ns/pay", Priority::Critical, false, true, vms(&["vm1"]));
        let plan = plan_protection(at(10), &[off], supported, &force, &BTreeMap::new());
        assert_eq!(releases(&plan), vec!["vm1"]);
        assert!(plan.actions[0]
            .reason()
            .contains("protectBackingVms is off"));
        // The pods moved to another VM.
        let plan = plan_protection(
            at(10),
            &[claim("ns/pay", Priority::Critical, true, &["vm2"])],
            supported,
            &force,
            &BTreeMap::new(),
        );
        assert_eq!(releases(&plan), vec!["vm1"]);
        assert_eq!(applies(&plan), vec![("vm2", 4096)]);
        // The intent is gone.
        let plan = plan_protection(at(10), &[], supported, &force, &BTreeMap::new());
        assert_eq!(releases(&plan), vec!["vm1"]);
    }

    #[test]
    fn unsupported_providers_are_reported_not_acted_on_and_unknown_ones_wait() {
        let claims = [claim("ns/pay", Priority::Critical, true, &["kvm1", "vc1"])];
        let plan = plan_protection(
            at(10),
            &claims,
            |vm: &&str| {
                if vm.starts_with("kvm") {
                    SharesSupport::Unsupported("no cgroup CPU controller".into())
                } else {
                    SharesSupport::Unknown
                }
            },
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(plan.actions.is_empty());
        assert_eq!(plan.unsupported.len(), 1);
        assert!(plan.unsupported["kvm1"].contains("cgroup"));
        // A VM in force whose provider is unreachable is not released yet either.
        let plan = plan_protection(
            at(10),
            &[],
            |_: &&str| SharesSupport::Unknown,
            &in_force(&[("vc1", 4096)]),
            &BTreeMap::new(),
        );
        assert!(plan.actions.is_empty());
    }

    #[test]
    fn failures_back_off_exponentially() {
        let claims = [claim("ns/pay", Priority::Critical, true, &["vm1"])];
        let failed = |attempts| {
            BTreeMap::from([(
                "vm1",
                ProtectFailure {
                    attempts,
                    at: at(100),
                },
            )])
        };
        let run = |now, attempts| {
            applies(&plan_protection(
                at(now),
                &claims,
                supported,
                &BTreeMap::new(),
                &failed(attempts),
            ))
            .len()
        };
        assert_eq!(run(104, 1), 0);
        assert_eq!(run(105, 1), 1);
        assert_eq!(run(109, 2), 0);
        assert_eq!(run(110, 2), 1);
        assert_eq!(run(399, 30), 0);
        assert_eq!(run(400, 30), 1, "never more than 5 minutes");
    }

    #[test]
    fn leftovers_are_restored_unless_the_vm_is_wanted_now() {
        let plan = plan_protection(
            at(10),
            &[claim("ns/pay", Priority::Critical, true, &["vm1"])],
            supported,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(!restore_leftover(&"vm1", &plan.wanted));
        assert!(restore_leftover(&"vm2", &plan.wanted));
    }
}
