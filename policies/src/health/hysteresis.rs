//! Per-disk verdicts with hysteresis: degraded after K of the last N samples were over budget,
//! healthy again after M consecutive good samples, unknown when the data is missing or stale.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use super::{HealthPolicyError, HealthState, LatencyBudget, StorageSample, UnknownCause};

/// How quickly a disk enters and leaves *degraded*, and when its data is too old to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HysteresisPolicy {
    /// K: over-budget samples within the window that make a disk degraded.
    pub degrade_after: usize,
    /// N: how many of the most recent samples are considered.
    pub window: usize,
    /// M: consecutive within-budget samples that make a degraded disk healthy again.
    pub recover_after: usize,
    /// A sample older than this is no evidence of anything: the verdict becomes unknown, and
    /// the samples before such a gap are forgotten.
    pub stale_after: Duration,
}

impl HysteresisPolicy {
    /// Defaults for a given sample interval: 2 of 3 over budget to degrade (one spike is
    /// ignored, a real problem is caught on the second sample), 3 good in a row to recover
    /// (a throttled disk that briefly catches up does not flip back), and stale after three
    /// missed intervals.
    pub fn for_interval(interval: Duration) -> Self {
        Self {
            degrade_after: 2,
            window: 3,
            recover_after: 3,
            stale_after: interval * 3,
        }
    }

    pub fn validate(&self) -> Result<(), HealthPolicyError> {
        let invalid = |field, problem: String| Err(HealthPolicyError::Invalid { field, problem });
        if self.window == 0 {
            return invalid("window", "must be at least 1 sample".into());
        }
        if self.degrade_after == 0 || self.degrade_after > self.window {
            return invalid(
                "degradeAfter",
                format!(
                    "must be between 1 and the window ({}), got {}",
                    self.window, self.degrade_after
                ),
            );
        }
        if self.recover_after == 0 {
            return invalid("recoverAfter", "must be at least 1 sample".into());
        }
        if self.stale_after.is_zero() {
            return invalid("staleAfter", "must be longer than zero".into());
        }
        Ok(())
    }
}

impl Default for HysteresisPolicy {
    fn default() -> Self {
        Self::for_interval(Duration::from_secs(1))
    }
}

/// The verdict for one disk (or, folded, one VM) against one budget at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Healthy {
        latest: Option<Duration>,
    },
    Degraded {
        latest: Option<Duration>,
        /// Over-budget samples in the window when the verdict was taken.
        over_budget: usize,
        window: usize,
        /// The sample that tipped the verdict.
        since: SystemTime,
        /// The first over-budget sample of this episode: detection latency is measured from
        /// here (minus one sample window).
        onset: SystemTime,
    },
    Unknown {
        cause: UnknownCause,
    },
}

impl Verdict {
    pub fn state(&self) -> HealthState {
        match self {
            Verdict::Healthy { .. } => HealthState::Healthy,
            Verdict::Degraded { .. } => HealthState::Degraded,
            Verdict::Unknown { .. } => HealthState::Unknown,
        }
    }

    /// The newest measured per-operation latency behind the verdict, if any.
    pub fn latest(&self) -> Option<Duration> {
        match self {
            Verdict::Healthy { latest } | Verdict::Degraded { latest, .. } => *latest,
            Verdict::Unknown { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No settled verdict since the tracker started (or since a gap in the data).
    Settling,
    Healthy,
    Degraded {
        since: SystemTime,
        onset: SystemTime,
    },
}

/// Hysteresis state of one disk against one budget. Feed it every sample; ask it for a verdict
/// whenever needed. Pure: it holds data and does no I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskHealth {
    budget: LatencyBudget,
    phase: Phase,
    /// `true` = over budget, newest at the back, at most `window` entries.
    recent: VecDeque<bool>,
    consecutive_good: usize,
    last: Option<StorageSample>,
    /// The oldest over-budget sample still in the window.
    first_over_at: Option<SystemTime>,
}

/// What [`DiskHealth::observe`] did with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleUse {
    /// The sample was new and counted.
    Counted,
    /// The sample was not newer than the last one (a cached value handed out again) and was
    /// ignored, so stale data is never presented as fresh.
    NotNewer,
}

impl DiskHealth {
    pub fn new(budget: LatencyBudget) -> Self {
        Self {
            budget,
            phase: Phase::Settling,
            recent: VecDeque::new(),
            consecutive_good: 0,
            last: None,
            first_over_at: None,
        }
    }

    pub fn budget(&self) -> LatencyBudget {
        self.budget
    }

    pub fn last_sample(&self) -> Option<StorageSample> {
        self.last
    }

    pub fn observe(&mut self, sample: StorageSample, policy: &HysteresisPolicy) -> SampleUse {
        if let Some(last) = self.last {
            if sample.at <= last.at {
                return SampleUse::NotNewer;
            }
            let gap = sample.at.duration_since(last.at).unwrap_or_default();
            if gap > policy.stale_after {
                // Evidence from before a gap says nothing about now: start over.
                *self = Self::new(self.budget);
            }
        }
        self.last = Some(sample);

        let over = sample.is_over(self.budget);
        if over && !self.recent.iter().any(|o| *o) {
            self.first_over_at = Some(sample.at);
        }
        self.recent.push_back(over);
        while self.recent.len() > policy.window.max(1) {
            self.recent.pop_front();
        }
        self.consecutive_good = if over { 0 } else { self.consecutive_good + 1 };
        let over_in_window = self.recent.iter().filter(|o| **o).count();

        self.phase = match self.phase {
            Phase::Settling | Phase::Healthy if over_in_window >= policy.degrade_after => {
                Phase::Degraded {
                    since: sample.at,
                    onset: self.first_over_at.unwrap_or(sample.at),
                }
            }
            Phase::Settling if !over => Phase::Healthy,
            Phase::Degraded { .. } if self.consecutive_good >= policy.recover_after => {
                // Forget the episode, or old over-budget samples would re-degrade at once when
                // M < N.
                self.recent.clear();
                self.recent.push_back(false);
                Phase::Healthy
            }
            unchanged => unchanged,
        };
        SampleUse::Counted
    }

    /// The verdict at `now`. Missing or stale data gives *unknown*, whatever came before.
    pub fn verdict(&self, now: SystemTime, policy: &HysteresisPolicy) -> Verdict {
        let Some(last) = self.last else {
            return Verdict::Unknown {
                cause: UnknownCause::NoSamples,
            };
        };
        let age = now.duration_since(last.at).unwrap_or_default();
        if age > policy.stale_after {
            return Verdict::Unknown {
                cause: UnknownCause::Stale {
                    last_sample_at: last.at,
                },
            };
        }
        match self.phase {
            Phase::Settling => Verdict::Unknown {
                cause: UnknownCause::Confirming,
            },
            Phase::Healthy => Verdict::Healthy {
                latest: last.per_op,
            },
            Phase::Degraded { since, onset } => Verdict::Degraded {
                latest: last.per_op,
                over_budget: self.recent.iter().filter(|o| **o).count(),
                window: self.recent.len(),
                since,
                onset,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    const BUDGET: LatencyBudget = LatencyBudget(Duration::from_millis(20));

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    /// Feeds one sample per second starting at t(1) and returns the verdict state after each.
    fn run(latencies: &[Option<Duration>], policy: &HysteresisPolicy) -> Vec<HealthState> {
        let mut disk = DiskHealth::new(BUDGET);
        latencies
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let at = t(i as u64 + 1);
                disk.observe(StorageSample::new(at, *l), policy);
                disk.verdict(at, policy).state()
            })
            .collect()
    }

    use HealthState::{Degraded as D, Healthy as H, Unknown as U};

    #[test]
    fn no_samples_is_unknown() {
        let p = HysteresisPolicy::default();
        let v = DiskHealth::new(BUDGET).verdict(t(0), &p);
        assert_eq!(
            v,
            Verdict::Unknown {
                cause: UnknownCause::NoSamples
            }
        );
    }

    #[test]
    fn good_first_sample_is_healthy_at_once() {
        // New pods must get their condition promptly so rollouts do not stall.
        assert_eq!(run(&[ms(1)], &HysteresisPolicy::default()), vec![H]);
    }

    #[test]
    fn bad_first_sample_is_confirmed_before_degrading() {
        assert_eq!(
            run(&[ms(50), ms(50)], &HysteresisPolicy::default()),
            vec![U, D]
        );
        assert_eq!(
            run(&[ms(50), ms(1)], &HysteresisPolicy::default()),
            vec![U, H]
        );
    }

    #[test]
    fn two_of_three_over_budget_degrades() {
        let p = HysteresisPolicy::default();
        assert_eq!(run(&[ms(1), ms(50), ms(1), ms(50)], &p), vec![H, H, H, D]);
        assert_eq!(run(&[ms(1), ms(50), ms(50)], &p), vec![H, H, D]);
    }

    #[test]
    fn isolated_spikes_never_degrade() {
        let p = HysteresisPolicy::default();
        let input = [ms(1), ms(90), ms(1), ms(1), ms(90), ms(1), ms(1), ms(90)];
        assert!(run(&input, &p).iter().all(|s| *s == H));
    }

    #[test]
    fn recovery_needs_three_good_in_a_row() {
        let p = HysteresisPolicy::default();
        let input = [
            ms(1),
            ms(50),
            ms(50),
            ms(1),
            ms(1),
            ms(50),
            ms(1),
            ms(1),
            ms(1),
        ];
        assert_eq!(run(&input, &p), vec![H, H, D, D, D, D, D, D, H]);
    }

    #[test]
    fn exactly_at_budget_is_within_budget() {
        assert_eq!(
            run(&[ms(20), ms(20), ms(20)], &HysteresisPolicy::default()),
            vec![H, H, H]
        );
    }

    #[test]
    fn idle_disk_is_within_budget() {
        let p = HysteresisPolicy::default();
        assert_eq!(
            run(&[ms(50), ms(50), None, None, None], &p),
            vec![U, D, D, D, H]
        );
    }

    #[test]
    fn stale_data_is_unknown_not_degraded() {
        let p = HysteresisPolicy::default();
        let mut disk = DiskHealth::new(BUDGET);
        disk.observe(StorageSample::new(t(1), ms(50)), &p);
        disk.observe(StorageSample::new(t(2), ms(50)), &p);
        assert_eq!(disk.verdict(t(2), &p).state(), D);
        assert_eq!(
            disk.verdict(t(5), &p).state(),
            D,
            "3 s old is still fresh at 1 s interval"
        );
        assert_eq!(
            disk.verdict(t(6), &p),
            Verdict::Unknown {
                cause: UnknownCause::Stale {
                    last_sample_at: t(2)
                }
            }
        );
    }

    #[test]
    fn evidence_before_a_gap_is_forgotten() {
        let p = HysteresisPolicy::default();
        let mut disk = DiskHealth::new(BUDGET);
        disk.observe(StorageSample::new(t(1), ms(50)), &p);
        disk.observe(StorageSample::new(t(2), ms(50)), &p);
        disk.observe(StorageSample::new(t(20), ms(50)), &p);
        assert_eq!(
            disk.verdict(t(20), &p).state(),
            U,
            "one sample after a gap is not enough"
        );
    }

    #[test]
    fn a_repeated_sample_is_not_counted_twice() {
        let p = HysteresisPolicy::default();
        let mut disk = DiskHealth::new(BUDGET);
        let s = StorageSample::new(t(1), ms(50));
        assert_eq!(disk.observe(s, &p), SampleUse::Counted);
        assert_eq!(disk.observe(s, &p), SampleUse::NotNewer);
        assert_eq!(
            disk.observe(StorageSample::new(t(0), ms(50)), &p),
            SampleUse::NotNewer
        );
        assert_eq!(disk.verdict(t(1), &p).state(), U);
    }

    #[test]
    fn degraded_verdict_reports_evidence() {
        let p = HysteresisPolicy::default();
        let mut disk = DiskHealth::new(BUDGET);
        for (i, l) in [1, 50, 60].into_iter().enumerate() {
            disk.observe(StorageSample::new(t(i as u64), ms(l)), &p);
        }
        assert_eq!(
            disk.verdict(t(2), &p),
            Verdict::Degraded {
                latest: ms(60),
                over_budget: 2,
                window: 3,
                since: t(2),
                onset: t(1)
            }
        );
    }

    #[test]
    fn invalid_policies_are_rejected_with_the_field() {
        let d = HysteresisPolicy::default();
        let err = HysteresisPolicy {
            degrade_after: 4,
            ..d
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("degradeAfter"), "{err}");
        assert!(HysteresisPolicy {
            degrade_after: 0,
            ..d
        }
        .validate()
        .is_err());
        assert!(HysteresisPolicy {
            recover_after: 0,
            ..d
        }
        .validate()
        .is_err());
        assert!(HysteresisPolicy { window: 0, ..d }.validate().is_err());
        assert!(HysteresisPolicy {
            stale_after: Duration::ZERO,
            ..d
        }
        .validate()
        .is_err());
        assert!(HysteresisPolicy::default().validate().is_ok());
    }

    fn policies() -> impl Strategy<Value = HysteresisPolicy> {
        (1usize..6, 0usize..4, 1usize..6, 1u64..10).prop_map(|(n, extra, m, stale)| {
            HysteresisPolicy {
                degrade_after: n.saturating_sub(extra).max(1),
                window: n,
                recover_after: m,
                stale_after: Duration::from_secs(stale),
            }
        })
    }

    /// A sample stream: (gap in seconds before the sample, latency or idle), with or without a
    /// missing cycle (`None` outer) in between.
    fn streams() -> impl Strategy<Value = Vec<Option<(u64, Option<u64>)>>> {
        prop::collection::vec(
            prop::option::weighted(0.9, (1u64..4, prop::option::of(0u64..100))),
            0..80,
        )
    }

    proptest! {
        /// Degraded is only ever reached with K over-budget samples among the last N, all
        /// fresh: missing data, stale data or a gap never produce it.
        #[test]
        fn degraded_always_has_fresh_evidence(policy in policies(), stream in streams()) {
            let mut disk = DiskHealth::new(BUDGET);
            let mut now = t(0);
            let mut fresh: Vec<(SystemTime, bool)> = Vec::new();
            for step in stream {
                now += Duration::from_secs(1);
                if let Some((gap, latency)) = step {
                    now += Duration::from_secs(gap - 1);
                    let s = StorageSample::new(now, latency.map(Duration::from_millis));
                    disk.observe(s, &policy);
                    fresh.push((now, s.is_over(BUDGET)));
                }
                let v = disk.verdict(now, &policy);
                if let Verdict::Degraded { .. } = v {
                    let (last_at, _) = *fresh.last().unwrap();
                    prop_assert!(now.duration_since(last_at).unwrap() <= policy.stale_after);
                    // Some run of at most N consecutive fresh samples, with no stale gap inside,
                    // held K over-budget samples.
                    let ok = (0..fresh.len()).any(|end| {
                        let mut start = end;
                        while start > 0
                            && end - start + 1 < policy.window
                            && fresh[start].0.duration_since(fresh[start - 1].0).unwrap() <= policy.stale_after
                        {
                            start -= 1;
                        }
                        fresh[start..=end].iter().filter(|(_, o)| *o).count() >= policy.degrade_after
                    });
                    prop_assert!(ok, "degraded without K of N fresh over-budget samples");
                }
            }
        }

        /// Noisy but healthy: if over-budget samples are never closer together than the window,
        /// a K >= 2 policy never degrades, so pods never flap.
        #[test]
        fn isolated_spikes_never_flap(spike_every in 3usize..10, len in 0usize..200, offset in 0usize..10, noise in 0u64..20) {
            let p = HysteresisPolicy::default();
            let input: Vec<_> = (0..len)
                .map(|i| if (i + offset) % spike_every == 0 { ms(21 + noise * 10) } else { ms(noise) })
                .collect();
            let states = run(&input, &p);
            prop_assert!(states.iter().all(|s| *s != D));
            // And after the first sample the state never changes: zero flaps.
            if let Some(i) = states.iter().position(|s| *s == H) {
                prop_assert!(states[i..].iter().all(|s| *s == H));
            }
        }

        /// Sustained overload is always detected within K samples, and sustained health always
        /// recovers within M samples.
        #[test]
        fn sustained_conditions_are_detected_in_bounded_samples(policy in policies(), prefix in prop::collection::vec(0u64..100, 0..20), hold in 0usize..10) {
            let mut disk = DiskHealth::new(BUDGET);
            let mut now = t(0);
            let feed = |disk: &mut DiskHealth, l: u64, now: &mut SystemTime| {
                *now += Duration::from_secs(1);
                disk.observe(StorageSample::new(*now, ms(l)), &policy);
                disk.verdict(*now, &policy).state()
            };
            for l in prefix { feed(&mut disk, l, &mut now); }
            let mut states = Vec::new();
            for _ in 0..policy.degrade_after + hold { states.push(feed(&mut disk, 500, &mut now)); }
            prop_assert_eq!(states[policy.degrade_after - 1], D);
            prop_assert!(states[policy.degrade_after - 1..].iter().all(|s| *s == D));
            let mut states = Vec::new();
            for _ in 0..policy.recover_after + hold { states.push(feed(&mut disk, 1, &mut now)); }
            prop_assert_eq!(states[policy.recover_after - 1], H);
            prop_assert!(states[policy.recover_after - 1..].iter().all(|s| *s == H));
        }

        /// Once healthy, a healthy verdict never turns degraded without an over-budget sample,
        /// and degraded never turns healthy without a good one.
        #[test]
        fn transitions_follow_the_sample(policy in policies(), stream in prop::collection::vec(0u64..60, 0..100)) {
            let mut disk = DiskHealth::new(BUDGET);
            let mut prev = HealthState::Unknown;
            for (i, l) in stream.into_iter().enumerate() {
                let at = t(i as u64 + 1);
                disk.observe(StorageSample::new(at, ms(l)), &policy);
                let now = disk.verdict(at, &policy).state();
                if prev != D && now == D { prop_assert!(l > 20); }
                if prev == D && now != D { prop_assert!(l <= 20); }
                prev = now;
            }
        }
    }
}
