//! What each priority tier means, in one table.
//!
//! | tier        | PriorityClass        | value     | preempts | CPU shares when protected | may throttle neighbours | throttled by |
//! |-------------|----------------------|-----------|----------|---------------------------|-------------------------|--------------|
//! | critical    | plumbline-critical   | 1000000   | yes      | 4096                      | yes                     | nobody       |
//! | high        | plumbline-high       | 100000    | yes      | 2048                      | yes                     | critical     |
//! | standard    | plumbline-standard   | 10000     | no       | — (default 1024)          | no                      | critical, high |
//! | best-effort | plumbline-best-effort| 0         | no       | —                         | no                      | critical, high |
//!
//! The values stay far below the system classes (2000000000) so cluster components always win.
//! 1024 is the hypervisor default for CPU shares (libvirt `cpu_shares`, vSphere "normal"), so
//! "protect" only means something for the top two tiers.

use plumbline_crds::{names::PRIORITY_CLASS_PREFIX, Priority};

use crate::{
    health::Tier,
    plan::{Preemption, PriorityClassSpec},
};

/// The semantics of one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSemantics {
    pub priority: Priority,
    /// `PriorityClass.value`.
    pub priority_value: i32,
    pub preemption: Preemption,
    /// CPU shares given to backing VMs when `infrastructure.protectBackingVms`; `None`: the
    /// tier is not protected.
    pub protected_cpu_shares: Option<u64>,
    /// May throttle noisy neighbours when `infrastructure.throttleNoisyNeighbours`.
    pub may_throttle_neighbours: bool,
    /// One line for the PriorityClass description and `explain`.
    pub summary: &'static str,
}

/// The table, most important first. Keep in sync with the module documentation.
pub const TIERS: [TierSemantics; 4] = [
    TierSemantics {
        priority: Priority::Critical,
        priority_value: 1_000_000,
        preemption: Preemption::PreemptLowerPriority,
        protected_cpu_shares: Some(4096),
        may_throttle_neighbours: true,
        summary:
            "business-critical: scheduled first, may preempt lower tiers, backing VMs protected",
    },
    TierSemantics {
        priority: Priority::High,
        priority_value: 100_000,
        preemption: Preemption::PreemptLowerPriority,
        protected_cpu_shares: Some(2048),
        may_throttle_neighbours: true,
        summary: "important: scheduled before standard work, may preempt lower tiers",
    },
    TierSemantics {
        priority: Priority::Standard,
        priority_value: 10_000,
        preemption: Preemption::Never,
        protected_cpu_shares: None,
        may_throttle_neighbours: false,
        summary: "ordinary: above unclassified pods, never preempts",
    },
    TierSemantics {
        priority: Priority::BestEffort,
        priority_value: 0,
        preemption: Preemption::Never,
        protected_cpu_shares: None,
        may_throttle_neighbours: false,
        summary: "best effort: first to yield, never preempts",
    },
];

/// The semantics of a tier.
pub fn tier(priority: Priority) -> &'static TierSemantics {
    TIERS
        .iter()
        .find(|t| t.priority == priority)
        .expect("TIERS lists every Priority")
}

impl TierSemantics {
    /// Name of the tier's PriorityClass, e.g. `plumbline-critical`.
    pub fn priority_class_name(&self) -> String {
        format!("{PRIORITY_CLASS_PREFIX}{}", self.priority.as_str())
    }

    /// The PriorityClass Plumbline keeps for the tier.
    pub fn priority_class(&self) -> PriorityClassSpec {
        PriorityClassSpec {
            value: self.priority_value,
            preemption: self.preemption,
            description: format!("Plumbline tier {}: {}", self.priority, self.summary),
        }
    }
}

/// The tier whose PriorityClass has this name, e.g. `plumbline-high` → high.
pub fn tier_of_priority_class(name: &str) -> Option<&'static TierSemantics> {
    let tier_name = name.strip_prefix(PRIORITY_CLASS_PREFIX)?;
    TIERS.iter().find(|t| t.priority.as_str() == tier_name)
}

impl From<Priority> for Tier {
    fn from(p: Priority) -> Tier {
        match p {
            Priority::Critical => Tier::Critical,
            Priority::High => Tier::High,
            Priority::Standard => Tier::Standard,
            Priority::BestEffort => Tier::BestEffort,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_tier_once_in_order() {
        assert_eq!(TIERS.map(|t| t.priority), Priority::ALL);
    }

    #[test]
    fn priority_values_strictly_decrease_with_the_tier() {
        for pair in TIERS.windows(2) {
            assert!(
                pair[0].priority_value > pair[1].priority_value,
                "{:?} vs {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn user_priority_values_stay_below_system_classes() {
        // system-cluster-critical is 2000000000; user classes must stay at or below 1000000000.
        assert!(TIERS
            .iter()
            .all(|t| (0..=1_000_000_000).contains(&t.priority_value)));
    }

    #[test]
    fn protection_and_throttling_only_for_the_top_two_tiers() {
        for t in TIERS {
            let top = matches!(t.priority, Priority::Critical | Priority::High);
            assert_eq!(t.protected_cpu_shares.is_some(), top, "{}", t.priority);
            assert_eq!(t.may_throttle_neighbours, top, "{}", t.priority);
            assert!(
                t.protected_cpu_shares.is_none_or(|s| s > 1024),
                "protection must exceed the default"
            );
        }
    }

    #[test]
    fn priority_class_names_round_trip() {
        for t in TIERS {
            assert_eq!(
                tier_of_priority_class(&t.priority_class_name()),
                Some(&TIERS[TIERS.iter().position(|x| x == &t).unwrap()])
            );
        }
        assert_eq!(tier_of_priority_class("system-cluster-critical"), None);
        assert_eq!(tier_of_priority_class("plumbline-urgent"), None);
    }

    #[test]
    fn tier_order_matches_health_tier_order() {
        for pair in TIERS.windows(2) {
            assert!(Tier::from(pair[0].priority) > Tier::from(pair[1].priority));
        }
    }
}
