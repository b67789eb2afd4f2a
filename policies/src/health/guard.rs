//! The guard: never mark more than an intent's allowed share of a workload's pods unready for
//! infrastructure reasons, so a storage incident degrades capacity instead of causing an outage.

/// The largest share of a workload's pods that may be marked unready for infrastructure reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardLimit {
    /// Percent of the workload's pods, rounded down like Kubernetes' `maxUnavailable`, so that
    /// "34%" of 3 pods is 1 pod and "25%" of 3 pods is none.
    Percent(u32),
    /// An absolute number of pods.
    Count(u32),
}

impl GuardLimit {
    /// How many of `total` pods may be unready.
    pub fn allowed(self, total: usize) -> usize {
        match self {
            GuardLimit::Percent(p) => (total as u128 * p.min(100) as u128 / 100) as usize,
            GuardLimit::Count(n) => (n as usize).min(total),
        }
    }
}

/// A pod whose storage verdict says "unready".
#[derive(Debug, Clone, PartialEq)]
pub struct GuardCandidate<K> {
    pub pod: K,
    /// How bad its storage is (latency / budget); larger goes first.
    pub severity: f64,
    /// The pod is already marked unready by us.
    pub currently_unready: bool,
}

/// Which candidates may be marked unready and which the guard held back. Goes into the
/// intent's status as the guard report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardDecision<K> {
    pub total: usize,
    pub allowed: usize,
    /// Worst first.
    pub marked: Vec<K>,
    /// Worst first.
    pub held_back: Vec<K>,
}

/// A pod already out of rotation keeps its slot unless a newcomer is this much worse, so two
/// similarly slow pods do not swap places every cycle.
const INCUMBENT_ADVANTAGE: f64 = 1.5;

/// Picks, worst first, at most `limit.allowed(total_pods)` candidates to mark unready.
pub fn guard<K: Ord + Clone>(
    total_pods: usize,
    limit: GuardLimit,
    candidates: Vec<GuardCandidate<K>>,
) -> GuardDecision<K> {
    let allowed = limit.allowed(total_pods);
    let mut ranked = candidates;
    let rank = |c: &GuardCandidate<K>| {
        let s = if c.severity.is_nan() { 0.0 } else { c.severity };
        if c.currently_unready {
            s * INCUMBENT_ADVANTAGE
        } else {
            s
        }
    };
    ranked.sort_by(|a, b| {
        rank(b)
            .total_cmp(&rank(a))
            .then(b.currently_unready.cmp(&a.currently_unready))
            .then_with(|| a.pod.cmp(&b.pod))
    });
    // A pod listed twice keeps its best-ranked entry.
    let mut seen = std::collections::BTreeSet::new();
    ranked.retain(|c| seen.insert(c.pod.clone()));
    let split = allowed.min(ranked.len());
    let held_back = ranked.split_off(split).into_iter().map(|c| c.pod).collect();
    GuardDecision {
        total: total_pods,
        allowed,
        marked: ranked.into_iter().map(|c| c.pod).collect(),
        held_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn c(pod: &str, severity: f64, currently_unready: bool) -> GuardCandidate<String> {
        GuardCandidate {
            pod: pod.into(),
            severity,
            currently_unready,
        }
    }

    #[test]
    fn percent_rounds_down() {
        assert_eq!(GuardLimit::Percent(34).allowed(3), 1);
        assert_eq!(GuardLimit::Percent(25).allowed(3), 0);
        assert_eq!(GuardLimit::Percent(50).allowed(4), 2);
        assert_eq!(GuardLimit::Percent(100).allowed(5), 5);
        assert_eq!(GuardLimit::Percent(250).allowed(5), 5);
        assert_eq!(GuardLimit::Count(2).allowed(1), 1);
        assert_eq!(GuardLimit::Count(0).allowed(10), 0);
    }

    #[test]
    fn worst_pods_go_first_and_the_rest_is_reported() {
        let d = guard(
            4,
            GuardLimit::Percent(50),
            vec![c("a", 1.2, false), c("b", 5.0, false), c("c", 2.0, false)],
        );
        assert_eq!(d.allowed, 2);
        assert_eq!(d.marked, vec!["b", "c"]);
        assert_eq!(d.held_back, vec!["a"]);
    }

    #[test]
    fn all_degraded_keeps_the_floor() {
        let all: Vec<_> = (0..3).map(|i| c(&format!("p{i}"), 3.0, false)).collect();
        let d = guard(3, GuardLimit::Percent(34), all);
        assert_eq!(d.marked, vec!["p0"]);
        assert_eq!(d.held_back, vec!["p1", "p2"]);
    }

    #[test]
    fn incumbents_keep_their_slot_against_slightly_worse_newcomers() {
        let d = guard(
            3,
            GuardLimit::Count(1),
            vec![c("old", 2.0, true), c("new", 2.5, false)],
        );
        assert_eq!(d.marked, vec!["old"]);
        let d = guard(
            3,
            GuardLimit::Count(1),
            vec![c("old", 2.0, true), c("new", 9.0, false)],
        );
        assert_eq!(d.marked, vec!["new"], "a much worse pod still goes first");
    }

    fn candidates() -> impl Strategy<Value = Vec<GuardCandidate<String>>> {
        prop::collection::vec(
            (
                0u8..30,
                prop_oneof![Just(f64::NAN), Just(f64::INFINITY), 0.0f64..100.0],
                any::<bool>(),
            )
                .prop_map(|(p, s, u)| c(&format!("pod-{p}"), s, u)),
            0..30,
        )
    }

    proptest! {
        #[test]
        fn never_more_than_allowed(total in 0usize..40, pct in 0u32..=120, count in 0u32..40, use_pct in any::<bool>(), cands in candidates()) {
            let limit = if use_pct { GuardLimit::Percent(pct) } else { GuardLimit::Count(count) };
            let names: BTreeSet<String> = cands.iter().map(|c| c.pod.clone()).collect();
            let d = guard(total, limit, cands);
            prop_assert!(d.marked.len() <= d.allowed);
            prop_assert!(d.allowed <= total);
            // Nothing invented, nothing lost, nothing twice.
            let marked: BTreeSet<_> = d.marked.iter().cloned().collect();
            let held: BTreeSet<_> = d.held_back.iter().cloned().collect();
            prop_assert_eq!(marked.len(), d.marked.len());
            prop_assert!(marked.is_disjoint(&held));
            prop_assert_eq!(marked.union(&held).cloned().collect::<BTreeSet<_>>(), names.clone());
            // As many as allowed are used.
            prop_assert_eq!(d.marked.len(), d.allowed.min(names.len()));
        }

        #[test]
        fn without_incumbents_marked_are_the_worst(total in 0usize..40, count in 0u32..40, sev in prop::collection::btree_map(0u8..30, 0.0f64..100.0, 0..30)) {
            let cands = sev.iter().map(|(p, s)| c(&format!("pod-{p}"), *s, false)).collect();
            let d = guard(total, GuardLimit::Count(count), cands);
            let of = |p: &String| sev[&p.trim_start_matches("pod-").parse::<u8>().unwrap()];
            let min_marked = d.marked.iter().map(of).fold(f64::INFINITY, f64::min);
            for h in &d.held_back {
                prop_assert!(of(h) <= min_marked);
            }
        }
    }
}
