//! The guard: never mark more than an intent's allowed share of a workload's pods unready for
//! infrastructure reasons, so a storage incident degrades capacity instead of causing an outage.
//! Like a PodDisruptionBudget it budgets against the pods that are ready now: pods already
//! unready for their own reasons (slow storage often fails the application's probes too) use
//! up the budget first, and the last ready pod of a workload is never taken, whatever
//! `maxUnready` says.

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

/// A workload's pods as the guard counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardPods {
    pub total: usize,
    /// Pods that are not Ready for reasons of their own: not marked unready by Plumbline.
    pub unready_elsewhere: usize,
}

/// How many pods Plumbline may hold out of rotation, and why that many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardBudget {
    pub total: usize,
    pub unready_elsewhere: usize,
    /// `maxUnready` minus the pods unready elsewhere, and never the last ready pod.
    pub allowed: usize,
}

impl GuardBudget {
    pub fn new(pods: GuardPods, limit: GuardLimit) -> Self {
        let elsewhere = pods.unready_elsewhere.min(pods.total);
        let ready_otherwise = pods.total - elsewhere;
        Self {
            total: pods.total,
            unready_elsewhere: elsewhere,
            allowed: limit
                .allowed(pods.total)
                .saturating_sub(elsewhere)
                .min(ready_otherwise.saturating_sub(1)),
        }
    }

    /// For messages: "at most 1 of 3 pods ... (1 already unready for other reasons)".
    pub fn describe(&self) -> String {
        let elsewhere = match self.unready_elsewhere {
            0 => String::new(),
            n => format!(", {n} already unready for other reasons"),
        };
        format!(
            "at most {} of {} pods may be unready for infrastructure reasons{elsewhere}; the last ready pod is never taken",
            self.allowed, self.total
        )
    }
}

/// Which candidates may be marked unready and which the guard held back. Goes into the
/// intent's status as the guard report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardDecision<K> {
    pub budget: GuardBudget,
    /// Worst first.
    pub marked: Vec<K>,
    /// Worst first.
    pub held_back: Vec<K>,
}

/// A pod already out of rotation keeps its slot unless a newcomer is this much worse, so two
/// similarly slow pods do not swap places every cycle.
const INCUMBENT_ADVANTAGE: f64 = 1.5;

/// Picks, worst first, at most [`GuardBudget::allowed`] candidates to mark unready.
pub fn guard<K: Ord + Clone>(
    pods: GuardPods,
    limit: GuardLimit,
    candidates: Vec<GuardCandidate<K>>,
) -> GuardDecision<K> {
    let budget = GuardBudget::new(pods, limit);
    let allowed = budget.allowed;
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
        budget,
        marked: ranked.into_iter().map(|c| c.pod).collect(),
        held_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn pods(total: usize, unready_elsewhere: usize) -> GuardPods {
        GuardPods {
            total,
            unready_elsewhere,
        }
    }

    #[test]
    fn pods_unready_elsewhere_use_up_the_budget_first() {
        let all: Vec<_> = (0..4).map(|i| c(&format!("p{i}"), 3.0, false)).collect();
        let d = guard(pods(4, 1), GuardLimit::Count(2), all.clone());
        assert_eq!(d.budget.allowed, 1, "2 allowed, 1 already unready");
        assert_eq!(d.marked.len(), 1);
        let d = guard(pods(4, 2), GuardLimit::Count(2), all);
        assert_eq!(d.budget.allowed, 0);
        assert!(d.marked.is_empty());
        assert!(d.budget.describe().contains("2 already unready"));
    }

    #[test]
    fn the_last_ready_pod_is_never_taken() {
        let all: Vec<_> = (0..3).map(|i| c(&format!("p{i}"), 3.0, false)).collect();
        let d = guard(pods(3, 0), GuardLimit::Percent(100), all.clone());
        assert_eq!(d.marked.len(), 2, "100% of 3, but one stays");
        let d = guard(pods(3, 2), GuardLimit::Percent(100), all.clone());
        assert!(d.marked.is_empty(), "the only ready pod stays");
        let d = guard(pods(1, 0), GuardLimit::Count(5), all[..1].to_vec());
        assert!(d.marked.is_empty(), "a single replica is never taken");
    }

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
            pods(4, 0),
            GuardLimit::Percent(50),
            vec![c("a", 1.2, false), c("b", 5.0, false), c("c", 2.0, false)],
        );
        assert_eq!(d.budget.allowed, 2);
        assert_eq!(d.marked, vec!["b", "c"]);
        assert_eq!(d.held_back, vec!["a"]);
    }

    #[test]
    fn all_degraded_keeps_the_floor() {
        let all: Vec<_> = (0..3).map(|i| c(&format!("p{i}"), 3.0, false)).collect();
        let d = guard(pods(3, 0), GuardLimit::Percent(34), all);
        assert_eq!(d.marked, vec!["p0"]);
        assert_eq!(d.held_back, vec!["p1", "p2"]);
    }

    #[test]
    fn incumbents_keep_their_slot_against_slightly_worse_newcomers() {
        let d = guard(
            pods(3, 0),
            GuardLimit::Count(1),
            vec![c("old", 2.0, true), c("new", 2.5, false)],
        );
        assert_eq!(d.marked, vec!["old"]);
        let d = guard(
            pods(3, 0),
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
        fn never_more_than_allowed(total in 0usize..40, elsewhere in 0usize..45, pct in 0u32..=120, count in 0u32..40, use_pct in any::<bool>(), cands in candidates()) {
            let limit = if use_pct { GuardLimit::Percent(pct) } else { GuardLimit::Count(count) };
            let names: BTreeSet<String> = cands.iter().map(|c| c.pod.clone()).collect();
            let d = guard(pods(total, elsewhere), limit, cands);
            let allowed = d.budget.allowed;
            prop_assert!(d.marked.len() <= allowed);
            prop_assert!(allowed <= total);
            // PDB-style: what is unready elsewhere counts, and one pod always stays ready.
            prop_assert!(allowed + elsewhere.min(total) <= limit.allowed(total).max(elsewhere.min(total)));
            prop_assert!(allowed == 0 || allowed + elsewhere.min(total) < total);
            // Nothing invented, nothing lost, nothing twice.
            let marked: BTreeSet<_> = d.marked.iter().cloned().collect();
            let held: BTreeSet<_> = d.held_back.iter().cloned().collect();
            prop_assert_eq!(marked.len(), d.marked.len());
            prop_assert!(marked.is_disjoint(&held));
            prop_assert_eq!(marked.union(&held).cloned().collect::<BTreeSet<_>>(), names.clone());
            // As many as allowed are used.
            prop_assert_eq!(d.marked.len(), allowed.min(names.len()));
        }

        #[test]
        fn without_incumbents_marked_are_the_worst(total in 0usize..40, count in 0u32..40, sev in prop::collection::btree_map(0u8..30, 0.0f64..100.0, 0..30)) {
            let cands = sev.iter().map(|(p, s)| c(&format!("pod-{p}"), *s, false)).collect();
            let d = guard(pods(total, 0), GuardLimit::Count(count), cands);
            let of = |p: &String| sev[&p.trim_start_matches("pod-").parse::<u8>().unwrap()];
            let min_marked = d.marked.iter().map(of).fold(f64::INFINITY, f64::min);
            for h in &d.held_back {
                prop_assert!(of(h) <= min_marked);
            }
        }
    }
}
