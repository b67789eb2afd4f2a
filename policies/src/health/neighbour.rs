//! Noisy neighbours: when a VM backing a critical workload is degraded, throttle the busiest VMs
//! sharing its host or datastore, one step at a time, and let go when the victim has recovered,
//! its intent's window ends or the intent goes away.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    time::{Duration, SystemTime},
};

use super::{HealthState, Tier};

/// How hard each step throttles, how long to wait between steps, when to let go.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleLadder {
    /// The IOPS limit at each step as a fraction of the aggressor's rate before its first step,
    /// gentlest first. Relative, because an absolute limit that is harsh for one VM does nothing
    /// to another.
    pub steps: Vec<f64>,
    /// No step limits a VM below this many IOPS, so it keeps making progress.
    pub floor_iops: u64,
    /// Time between two steps for the same victim or the same aggressor: long enough for the
    /// last step to show in several samples.
    pub cooldown: Duration,
    /// A victim must stay healthy this long before its throttles are released, so release does
    /// not immediately re-create the problem.
    pub release_after: Duration,
    /// VMs doing fewer IOPS than this are not anybody's noisy neighbour.
    pub min_aggressor_iops: f64,
    /// At most this many aggressors are throttled for one victim.
    pub max_per_victim: usize,
    /// At most this many VMs sharing one host or one datastore are throttled at once.
    pub max_per_domain: usize,
    /// A step is judged this many of the victim's samples after it: when the victim's latency
    /// has not dropped by [`Self::min_improvement`], the step is undone and the ladder stops
    /// for that victim. The victim's next step waits for the judgement. 0 never judges.
    pub judge_after_samples: u32,
    /// The share by which a step must lower the victim's latency to count as helping.
    pub min_improvement: f64,
    /// How long the ladder stays stopped for a victim after a step that did not help (or
    /// until the victim recovers).
    pub hold_after_no_help: Duration,
    /// A throttle whose victims have all been unknown this long is released: nobody can
    /// tell whether it still helps.
    pub release_after_unknown: Duration,
    /// Throttling a VM again within this long of its release waits, doubling each time,
    /// instead of cycling throttle → release → throttle.
    pub rethrottle_window: Duration,
    /// The first of those waits.
    pub rethrottle_backoff: Duration,
}

impl Default for ThrottleLadder {
    fn default() -> Self {
        Self {
            steps: vec![0.5, 0.25, 0.1],
            floor_iops: 20,
            cooldown: Duration::from_secs(5),
            release_after: Duration::from_secs(10),
            min_aggressor_iops: 10.0,
            max_per_victim: 2,
            max_per_domain: 4,
            judge_after_samples: 3,
            min_improvement: 0.1,
            hold_after_no_help: Duration::from_secs(600),
            release_after_unknown: Duration::from_secs(300),
            rethrottle_window: Duration::from_secs(600),
            rethrottle_backoff: Duration::from_secs(30),
        }
    }
}

/// A VM that backs an intent allowed to throttle neighbours (in practice: critical).
#[derive(Debug, Clone, PartialEq)]
pub struct Victim<K> {
    pub vm: K,
    pub tier: Tier,
    /// Intent(s) behind it, for messages: `payments/payment-api`.
    pub intent: String,
    pub state: HealthState,
    /// How long the VM has been continuously healthy (zero when it is not).
    pub healthy_for: Duration,
    /// How long the VM's health has been continuously unknown (zero when it is not).
    pub unknown_for: Duration,
    /// How long the VM has been continuously degraded (zero when it is not).
    pub degraded_for: Duration,
    /// The intent may have a neighbour that throttling cannot tame moved to another host
    /// (`infrastructure.relocateNoisyNeighbours`; see `crate::placement::relocate`).
    pub may_relocate: bool,
    /// Its latest storage latency, to judge whether a step helped.
    pub latency: Option<Duration>,
    /// How often its provider samples it.
    pub sample_interval: Duration,
    /// The intent is inside its window and allows throttling neighbours.
    pub active: bool,
    pub host: Option<String>,
    pub datastores: BTreeSet<String>,
}

/// Any VM the providers know, as a possible aggressor.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourCandidate<K> {
    pub vm: K,
    pub host: Option<String>,
    pub datastores: BTreeSet<String>,
    /// Current I/O rate (operations per second, all disks).
    pub iops: f64,
    /// The highest tier among the workloads whose pods it runs, if any.
    pub protected_by: Option<Tier>,
    /// The provider can set an I/O limit on it.
    pub can_limit_io: bool,
}

/// A throttle in force. Kept by the operator (and mirrored in intent status) between cycles.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle<K> {
    pub vm: K,
    /// 1-based index into [`ThrottleLadder::steps`].
    pub level: usize,
    /// The aggressor's IOPS before its first step; every step is relative to it.
    pub baseline_iops: f64,
    pub limit_iops: u64,
    pub stepped_at: SystemTime,
    /// The victims this throttle is for; released when none still needs it.
    pub victims: BTreeSet<K>,
    /// The latency of the victim this step was for, when it was taken.
    pub victim_latency: Option<Duration>,
}

/// What the ladder remembers between passes beyond the throttles in force (kept in memory:
/// after a restart the worst case is one more step, judged and undone again).
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourHistory<K: Ord> {
    /// VMs released recently: when, and how many releases in a row came within
    /// [`ThrottleLadder::rethrottle_window`] of each other.
    pub released: BTreeMap<K, (SystemTime, u32)>,
    /// Victims whose last step did not help, since when.
    pub held: BTreeMap<K, SystemTime>,
}

/// One change to make on the hypervisor, with the reason to record in status and Events.
#[derive(Debug, Clone, PartialEq)]
pub enum NeighbourAction<K> {
    Step {
        vm: K,
        victim: K,
        level: usize,
        limit_iops: u64,
        baseline_iops: f64,
        /// The victim's latency when the step was decided.
        victim_latency: Option<Duration>,
        reason: String,
    },
    /// The last step for `victim` did not help: back to `level` (0 = released), and the
    /// ladder stops for `victim`.
    Undo {
        vm: K,
        victim: K,
        level: usize,
        limit_iops: u64,
        reason: String,
    },
    Release {
        vm: K,
        reason: String,
    },
}

impl<K> NeighbourAction<K> {
    pub fn vm(&self) -> &K {
        match self {
            NeighbourAction::Step { vm, .. }
            | NeighbourAction::Undo { vm, .. }
            | NeighbourAction::Release { vm, .. } => vm,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            NeighbourAction::Step { reason, .. }
            | NeighbourAction::Undo { reason, .. }
            | NeighbourAction::Release { reason, .. } => reason,
        }
    }
}

/// What a victim and an aggressor share: the domain the per-domain cap counts in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shared {
    Host(String),
    Datastore(String),
}

impl Shared {
    fn contains<K>(&self, c: &NeighbourCandidate<K>) -> bool {
        match self {
            Shared::Host(h) => c.host.as_ref() == Some(h),
            Shared::Datastore(d) => c.datastores.contains(d),
        }
    }
}

impl Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shared::Host(h) => write!(f, "host {h}"),
            Shared::Datastore(d) => write!(f, "datastore {d}"),
        }
    }
}

fn shares_infrastructure<K>(
    victim: &Victim<K>,
    candidate: &NeighbourCandidate<K>,
) -> Option<Shared> {
    if let (Some(a), Some(b)) = (&victim.host, &candidate.host) {
        if a == b {
            return Some(Shared::Host(a.clone()));
        }
    }
    victim
        .datastores
        .intersection(&candidate.datastores)
        .next()
        .map(|d| Shared::Datastore(d.clone()))
}

/// A VM backing a critical workload is never throttled; any other VM is protected from victims
/// of its own tier or lower.
fn protected_from(candidate_tier: Option<Tier>, victim_tier: Tier) -> bool {
    matches!(candidate_tier, Some(t) if t == Tier::Critical || t >= victim_tier)
}

/// The VMs that could be throttled for `victim`: sharing its host or a datastore, busy enough,
/// limitable, and not protected from its tier; with what they share. Whether a step is due
/// (cooldowns, ladder position) is [`plan_neighbour_throttles`]' business.
pub fn neighbours_of<'a, K: Ord>(
    victim: &Victim<K>,
    candidates: &'a [NeighbourCandidate<K>],
    ladder: &ThrottleLadder,
) -> Vec<(&'a NeighbourCandidate<K>, Shared)> {
    candidates
        .iter()
        .filter(|c| c.vm != victim.vm && c.can_limit_io)
        .filter(|c| !protected_from(c.protected_by, victim.tier))
        .filter(|c| c.iops >= ladder.min_aggressor_iops)
        .filter_map(|c| shares_infrastructure(victim, c).map(|shared| (c, shared)))
        .collect()
}

/// How long after a step for `victim` it is judged, and the victim's next step may come.
fn judge_window<K>(victim: &Victim<K>, ladder: &ThrottleLadder) -> Duration {
    ladder
        .cooldown
        .max(victim.sample_interval * ladder.judge_after_samples)
}

/// The IOPS limit at `level` for a VM that did `baseline_iops` before its first step.
fn limit_at(ladder: &ThrottleLadder, baseline_iops: f64, level: usize) -> u64 {
    let fraction = ladder.steps[(level.max(1) - 1).min(ladder.steps.len() - 1)];
    ((baseline_iops * fraction).round() as u64).max(ladder.floor_iops)
}

/// The victim still wants its throttles: active, and neither recovered for long enough nor
/// unknown for too long.
fn still_wanted<K>(victim: &Victim<K>, ladder: &ThrottleLadder) -> bool {
    victim.active
        && !(victim.state == HealthState::Healthy && victim.healthy_for >= ladder.release_after)
        && !(victim.state == HealthState::Unknown
            && victim.unknown_for >= ladder.release_after_unknown)
}

/// Decides this cycle's throttle steps, undos and releases. Pure: the operator applies the
/// actions and then records the ones that succeeded with [`apply_neighbour_actions`].
///
/// Bounds: at most [`ThrottleLadder::max_per_victim`] aggressors per victim and
/// [`ThrottleLadder::max_per_domain`] throttled VMs per host or datastore; each step is judged
/// after [`ThrottleLadder::judge_after_samples`] samples and undone when it did not help,
/// which stops the ladder for that victim; a VM released recently is throttled again only
/// after a doubling wait.
pub fn plan_neighbour_throttles<K: Ord + Clone + Display>(
    now: SystemTime,
    victims: &[Victim<K>],
    candidates: &[NeighbourCandidate<K>],
    throttles: &BTreeMap<K, Throttle<K>>,
    history: &NeighbourHistory<K>,
    ladder: &ThrottleLadder,
) -> Vec<NeighbourAction<K>> {
    let mut actions = Vec::new();
    let victim_by_vm: BTreeMap<&K, &Victim<K>> = victims.iter().map(|v| (&v.vm, v)).collect();
    let candidate_by_vm: BTreeMap<&K, &NeighbourCandidate<K>> =
        candidates.iter().map(|c| (&c.vm, c)).collect();
    let since = |at: SystemTime| now.duration_since(at).unwrap_or_default();
    let mut touched: BTreeSet<K> = BTreeSet::new();
    // Released (or undone to nothing) in this pass.
    let mut gone: BTreeSet<K> = BTreeSet::new();

    for throttle in throttles.values() {
        let still_needed = throttle.victims.iter().any(|v| {
            victim_by_vm
                .get(v)
                .is_some_and(|victim| still_wanted(victim, ladder))
        });
        let newly_protected = candidate_by_vm
            .get(&throttle.vm)
            .and_then(|c| c.protected_by)
            .filter(|tier| {
                *tier == Tier::Critical
                    || throttle
                        .victims
                        .iter()
                        .filter_map(|v| victim_by_vm.get(v))
                        .all(|victim| protected_from(Some(*tier), victim.tier))
            });
        let reason = if let Some(tier) = newly_protected {
            Some(format!("VM {} now backs a {tier} workload", throttle.vm))
        } else if !still_needed {
            Some(release_reason(throttle, &victim_by_vm, ladder))
        } else {
            None
        };
        if let Some(reason) = reason {
            touched.insert(throttle.vm.clone());
            gone.insert(throttle.vm.clone());
            actions.push(NeighbourAction::Release {
                vm: throttle.vm.clone(),
                reason,
            });
        }
    }

    let mut degraded: Vec<&Victim<K>> = victims
        .iter()
        .filter(|v| v.active && v.state == HealthState::Degraded)
        .filter(|v| {
            history
                .held
                .get(&v.vm)
                .is_none_or(|at| since(*at) >= ladder.hold_after_no_help)
        })
        .collect();
    // Higher tiers pick their aggressor first when two victims compete for one step.
    degraded.sort_by(|a, b| b.tier.cmp(&a.tier).then_with(|| a.vm.cmp(&b.vm)));

    // Judge each victim's last step once its samples are in: undo it when it did not help.
    let mut judged_badly: BTreeSet<&K> = BTreeSet::new();
    let judging = ladder.judge_after_samples > 0;
    for victim in degraded.iter().filter(|_| judging) {
        let Some(last) = throttles
            .values()
            .filter(|t| t.victims.contains(&victim.vm) && !touched.contains(&t.vm))
            .max_by_key(|t| t.stepped_at)
        else {
            continue;
        };
        let (Some(before), Some(latest)) = (last.victim_latency, victim.latency) else {
            continue;
        };
        if since(last.stepped_at) < judge_window(victim, ladder)
            || latest.as_secs_f64() < before.as_secs_f64() * (1.0 - ladder.min_improvement)
        {
            continue;
        }
        let level = last.level - 1;
        let back_to = match level {
            0 => "released".to_string(),
            l => format!("back to step {l}"),
        };
        touched.insert(last.vm.clone());
        if level == 0 {
            gone.insert(last.vm.clone());
        }
        judged_badly.insert(&victim.vm);
        actions.push(NeighbourAction::Undo {
            vm: last.vm.clone(),
            victim: victim.vm.clone(),
            level,
            limit_iops: if level == 0 {
                0
            } else {
                limit_at(ladder, last.baseline_iops, level)
            },
            reason: format!(
                "step {} on VM {} did not lower the latency of VM {} ({} before, {} {} samples later): undone ({back_to}); no further steps for VM {} for {} min unless it recovers",
                last.level,
                last.vm,
                victim.vm,
                super::format_latency(before),
                super::format_latency(latest),
                ladder.judge_after_samples,
                victim.vm,
                ladder.hold_after_no_help.as_secs() / 60
            ),
        });
    }

    // Throttled VMs after this pass's releases and undos to zero, for the caps.
    let mut throttled: BTreeMap<K, BTreeSet<K>> = throttles
        .values()
        .filter(|t| !gone.contains(&t.vm))
        .map(|t| (t.vm.clone(), t.victims.clone()))
        .collect();
    // The next step for a candidate: (level, IOPS before its first step, limit).
    let next_step = |c: &NeighbourCandidate<K>| {
        let (level, baseline_iops) = match throttles.get(&c.vm) {
            Some(t) => (t.level + 1, t.baseline_iops),
            None => (1, c.iops),
        };
        (level, baseline_iops, limit_at(ladder, baseline_iops, level))
    };
    for victim in degraded {
        if judged_badly.contains(&victim.vm) {
            continue;
        }
        let last_step = throttles
            .values()
            .filter(|t| t.victims.contains(&victim.vm))
            .map(|t| t.stepped_at)
            .max();
        if last_step.is_some_and(|at| since(at) < judge_window(victim, ladder)) {
            continue;
        }
        let mine = throttled
            .values()
            .filter(|victims| victims.contains(&victim.vm))
            .count();
        let mut eligible: Vec<(&NeighbourCandidate<K>, Shared)> =
            neighbours_of(victim, candidates, ladder)
                .into_iter()
                .filter(|(c, _)| !touched.contains(&c.vm))
                .filter(|(c, shared)| match throttles.get(&c.vm) {
                    Some(t) => {
                        t.level < ladder.steps.len() && since(t.stepped_at) >= ladder.cooldown
                    }
                    None => {
                        let in_domain = throttled
                            .keys()
                            .filter_map(|vm| candidate_by_vm.get(vm))
                            .filter(|other| shared.contains(other))
                            .count();
                        let backoff = history.released.get(&c.vm).is_some_and(|(at, cycles)| {
                            since(*at)
                                < (ladder.rethrottle_backoff
                                    * 2u32.saturating_pow(cycles.saturating_sub(1)))
                                .min(ladder.rethrottle_window)
                        });
                        mine < ladder.max_per_victim
                            && in_domain < ladder.max_per_domain
                            && !backoff
                    }
                })
                // A step whose limit is not below what the VM does now would throttle nothing.
                .filter(|(c, _)| (next_step(c).2 as f64) < c.iops)
                .collect();
        eligible.sort_by(|(a, _), (b, _)| b.iops.total_cmp(&a.iops).then_with(|| a.vm.cmp(&b.vm)));
        let Some((aggressor, shared)) = eligible.into_iter().next() else {
            continue;
        };
        let (level, baseline_iops, limit_iops) = next_step(aggressor);
        touched.insert(aggressor.vm.clone());
        throttled
            .entry(aggressor.vm.clone())
            .or_default()
            .insert(victim.vm.clone());
        actions.push(NeighbourAction::Step {
            vm: aggressor.vm.clone(),
            victim: victim.vm.clone(),
            level,
            limit_iops,
            baseline_iops,
            victim_latency: victim.latency,
            reason: format!(
                "VM {} ({:.0} IOPS) shares {shared} with VM {}, which backs {} ({}) and is over its storage latency budget: limiting to {limit_iops} IOPS, step {level} of {}",
                aggressor.vm,
                aggressor.iops,
                victim.vm,
                victim.intent,
                victim.tier,
                ladder.steps.len()
            ),
        });
    }
    actions
}

fn release_reason<K: Ord + Display>(
    throttle: &Throttle<K>,
    victims: &BTreeMap<&K, &Victim<K>>,
    ladder: &ThrottleLadder,
) -> String {
    let why: Vec<String> = throttle
        .victims
        .iter()
        .map(|v| match victims.get(v) {
            None => format!("VM {v} no longer backs a protected workload"),
            Some(victim) if !victim.active => format!(
                "{} is no longer active (its window ended or its signals went quiet), or it is active only on signal data missing for longer than maxKeepLast",
                victim.intent
            ),
            Some(victim) if victim.state == HealthState::Unknown => format!(
                "the latency of VM {v} has been unknown for {} s",
                victim.unknown_for.as_secs()
            ),
            Some(_) => format!(
                "VM {v} has been within its latency budget for {} s",
                ladder.release_after.as_secs()
            ),
        })
        .collect();
    format!(
        "releasing the I/O limit on VM {}: {}",
        throttle.vm,
        why.join("; ")
    )
}

/// Records actions the operator applied successfully.
pub fn apply_neighbour_actions<K: Ord + Clone>(
    throttles: &mut BTreeMap<K, Throttle<K>>,
    applied: &[NeighbourAction<K>],
    now: SystemTime,
) {
    for action in applied {
        match action {
            NeighbourAction::Step {
                vm,
                victim,
                level,
                limit_iops,
                baseline_iops,
                victim_latency,
                ..
            } => {
                let t = throttles.entry(vm.clone()).or_insert_with(|| Throttle {
                    vm: vm.clone(),
                    level: 0,
                    baseline_iops: *baseline_iops,
                    limit_iops: *limit_iops,
                    stepped_at: now,
                    victims: BTreeSet::new(),
                    victim_latency: None,
                });
                t.level = *level;
                t.limit_iops = *limit_iops;
                t.stepped_at = now;
                t.victims.insert(victim.clone());
                t.victim_latency = *victim_latency;
            }
            NeighbourAction::Undo {
                vm,
                level,
                limit_iops,
                ..
            } => {
                if *level == 0 {
                    throttles.remove(vm);
                } else if let Some(t) = throttles.get_mut(vm) {
                    t.level = *level;
                    t.limit_iops = *limit_iops;
                    t.stepped_at = now;
                    // Judged already: not again.
                    t.victim_latency = None;
                }
            }
            NeighbourAction::Release { vm, .. } => {
                throttles.remove(vm);
            }
        }
    }
}

impl<K: Ord> Default for NeighbourHistory<K> {
    fn default() -> Self {
        Self {
            released: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> NeighbourHistory<K> {
    /// Remembers this pass's releases (for the re-throttle backoff) and undos (the ladder
    /// stops for their victims), and forgets what no longer matters.
    pub fn record(
        &mut self,
        applied: &[NeighbourAction<K>],
        victims: &[Victim<K>],
        now: SystemTime,
        ladder: &ThrottleLadder,
    ) {
        let since = |at: SystemTime| now.duration_since(at).unwrap_or_default();
        for action in applied {
            let released = match action {
                NeighbourAction::Release { vm, .. } => Some(vm),
                NeighbourAction::Undo {
                    vm, victim, level, ..
                } => {
                    self.held.insert(victim.clone(), now);
                    (*level == 0).then_some(vm)
                }
                NeighbourAction::Step { .. } => None,
            };
            if let Some(vm) = released {
                let cycles = match self.released.get(vm) {
                    Some((at, n)) if since(*at) < ladder.rethrottle_window => n + 1,
                    _ => 1,
                };
                self.released.insert(vm.clone(), (now, cycles));
            }
        }
        self.released
            .retain(|_, (at, _)| since(*at) < ladder.rethrottle_window * 2);
        self.held.retain(|vm, at| {
            since(*at) < ladder.hold_after_no_help
                && victims
                    .iter()
                    .any(|v| &v.vm == vm && v.state != HealthState::Healthy)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    /// The planner without history (nothing released or held before).
    fn plan(
        now: SystemTime,
        victims: &[Victim<String>],
        candidates: &[NeighbourCandidate<String>],
        throttles: &BTreeMap<String, Throttle<String>>,
        ladder: &ThrottleLadder,
    ) -> Vec<NeighbourAction<String>> {
        plan_neighbour_throttles(
            now,
            victims,
            candidates,
            throttles,
            &NeighbourHistory::default(),
            ladder,
        )
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn victim(vm: &str, state: HealthState) -> Victim<String> {
        Victim {
            vm: vm.into(),
            tier: Tier::Critical,
            intent: "payments/payment-api".into(),
            state,
            healthy_for: Duration::ZERO,
            unknown_for: Duration::ZERO,
            degraded_for: Duration::ZERO,
            may_relocate: false,
            latency: None,
            sample_interval: Duration::from_secs(1),
            active: true,
            host: Some("h1".into()),
            datastores: ["default".to_string()].into(),
        }
    }

    fn cand(vm: &str, iops: f64, protected_by: Option<Tier>) -> NeighbourCandidate<String> {
        NeighbourCandidate {
            vm: vm.into(),
            host: Some("h1".into()),
            datastores: ["default".to_string()].into(),
            iops,
            protected_by,
            can_limit_io: true,
        }
    }

    fn steps(actions: &[NeighbourAction<String>]) -> Vec<(String, usize, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                NeighbourAction::Step {
                    vm,
                    level,
                    limit_iops,
                    ..
                } => Some((vm.clone(), *level, *limit_iops)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn busiest_unprotected_neighbour_is_throttled_first() {
        let ladder = ThrottleLadder::default();
        let cands = [
            cand("pl-worker-1", 50.0, Some(Tier::Critical)),
            cand("pl-noisy", 2000.0, None),
            cand("pl-batch", 900.0, Some(Tier::Standard)),
            cand("pl-db", 5000.0, Some(Tier::Critical)),
        ];
        let actions = plan(
            t(0),
            &[victim("pl-worker-1", HealthState::Degraded)],
            &cands,
            &BTreeMap::new(),
            &ladder,
        );
        assert_eq!(steps(&actions), vec![("pl-noisy".to_string(), 1, 1000)]);
        assert!(
            actions[0].reason().contains("shares host h1"),
            "{}",
            actions[0].reason()
        );
        assert!(actions[0].reason().contains("payments/payment-api"));
    }

    #[test]
    fn no_action_for_healthy_or_unknown_victims() {
        let ladder = ThrottleLadder::default();
        for state in [HealthState::Healthy, HealthState::Unknown] {
            let actions = plan(
                t(0),
                &[victim("v", state)],
                &[cand("pl-noisy", 2000.0, None)],
                &BTreeMap::new(),
                &ladder,
            );
            assert!(actions.is_empty(), "{state:?}");
        }
    }

    #[test]
    fn neighbours_elsewhere_are_left_alone() {
        let mut far = cand("far", 9000.0, None);
        far.host = Some("h2".into());
        far.datastores = ["other".to_string()].into();
        let mut same_ds = cand("same-ds", 100.0, None);
        same_ds.host = Some("h3".into());
        let actions = plan(
            t(0),
            &[victim("v", HealthState::Degraded)],
            &[far, same_ds],
            &BTreeMap::new(),
            &ThrottleLadder::default(),
        );
        assert_eq!(steps(&actions), vec![("same-ds".to_string(), 1, 50)]);
        assert!(actions[0].reason().contains("datastore default"));
    }

    #[test]
    fn ladder_walks_down_with_cooldown_then_stops() {
        let ladder = ThrottleLadder::default();
        let victims = [victim("v", HealthState::Degraded)];
        let mut throttles = BTreeMap::new();
        let mut seen = Vec::new();
        for sec in 0..40 {
            let now = t(sec);
            // While throttled, the aggressor runs at its limit.
            let iops = throttles
                .get("pl-noisy")
                .map(|t: &Throttle<String>| t.limit_iops as f64)
                .unwrap_or(2000.0);
            let actions = plan(
                now,
                &victims,
                &[cand("pl-noisy", iops, None)],
                &throttles,
                &ladder,
            );
            for s in steps(&actions) {
                seen.push((sec, s));
            }
            apply_neighbour_actions(&mut throttles, &actions, now);
        }
        assert_eq!(
            seen,
            vec![
                (0, ("pl-noisy".into(), 1, 1000)),
                (5, ("pl-noisy".into(), 2, 500)),
                (10, ("pl-noisy".into(), 3, 200)),
            ]
        );
    }

    #[test]
    fn floor_is_respected() {
        let actions = plan(
            t(0),
            &[victim("v", HealthState::Degraded)],
            &[cand("small", 30.0, None)],
            &BTreeMap::new(),
            &ThrottleLadder::default(),
        );
        assert_eq!(steps(&actions), vec![("small".to_string(), 1, 20)]);
    }

    #[test]
    fn a_vm_already_below_the_next_limit_is_left_alone() {
        // 15 IOPS: even the floor (20) would not cut it, so throttling it only looks busy.
        let actions = plan(
            t(0),
            &[victim("v", HealthState::Degraded)],
            &[cand("quiet", 15.0, None)],
            &BTreeMap::new(),
            &ThrottleLadder::default(),
        );
        assert!(steps(&actions).is_empty(), "{actions:?}");
    }

    fn throttled(vm: &str, victim: &str) -> BTreeMap<String, Throttle<String>> {
        [(
            vm.to_string(),
            Throttle {
                victim_latency: None,
                vm: vm.into(),
                level: 1,
                baseline_iops: 2000.0,
                limit_iops: 1000,
                stepped_at: t(0),
                victims: [victim.to_string()].into(),
            },
        )]
        .into()
    }

    /// Runs the ladder pass after pass as the operator does, with the victim's latency given
    /// by `latency(pass, throttles)`; returns every action taken.
    fn run(
        passes: u64,
        victims: &[Victim<String>],
        cands: &[NeighbourCandidate<String>],
        ladder: &ThrottleLadder,
        latency: impl Fn(&BTreeMap<String, Throttle<String>>) -> Duration,
    ) -> (
        Vec<NeighbourAction<String>>,
        BTreeMap<String, Throttle<String>>,
    ) {
        let mut throttles = BTreeMap::new();
        let mut history = NeighbourHistory::default();
        let mut all = Vec::new();
        for pass in 0..passes {
            let now = t(pass);
            let victims: Vec<_> = victims
                .iter()
                .cloned()
                .map(|mut v| {
                    v.latency = Some(latency(&throttles));
                    v
                })
                .collect();
            let actions =
                plan_neighbour_throttles(now, &victims, cands, &throttles, &history, ladder);
            apply_neighbour_actions(&mut throttles, &actions, now);
            history.record(&actions, &victims, now, ladder);
            all.extend(actions);
        }
        (all, throttles)
    }

    #[test]
    fn at_most_two_aggressors_per_victim_and_four_per_domain() {
        let ladder = ThrottleLadder {
            steps: vec![0.5],
            ..ThrottleLadder::default()
        };
        let cands: Vec<_> = (0..8)
            .map(|i| cand(&format!("n{i}"), 1000.0 + i as f64, None))
            .collect();
        // Every step helps a little, so only the caps stop the ladder.
        let (_, throttles) = run(
            60,
            &[victim("v", HealthState::Degraded)],
            &cands,
            &ladder,
            |t| Duration::from_millis(100 - 10 * t.len() as u64),
        );
        assert_eq!(throttles.len(), 2, "{throttles:?}");
        let victims: Vec<_> = (0..4)
            .map(|i| victim(&format!("v{i}"), HealthState::Degraded))
            .collect();
        let (_, throttles) = run(60, &victims, &cands, &ladder, |t| {
            Duration::from_millis(100 - 10 * t.len() as u64)
        });
        assert_eq!(
            throttles.len(),
            4,
            "4 per host, whatever the victims: {throttles:?}"
        );
    }

    #[test]
    fn with_two_aggressors_every_action_names_its_own_vm() {
        let ladder = ThrottleLadder {
            steps: vec![0.5, 0.25],
            ..ThrottleLadder::default()
        };
        let cands = [cand("loud", 2000.0, None), cand("louder", 3000.0, None)];
        // Each step (on either) helps, so the ladder goes on with both; then the victim
        // recovers.
        let (mut throttles, mut history, mut actions) =
            (BTreeMap::new(), NeighbourHistory::default(), Vec::new());
        for pass in 0..200 {
            let now = t(pass);
            let state = if pass < 100 {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            };
            let mut v = victim("v", state);
            let levels: usize = throttles.values().map(|t: &Throttle<String>| t.level).sum();
            v.latency = Some(Duration::from_millis(100 - 10 * levels as u64));
            v.healthy_for = Duration::from_secs(pass.saturating_sub(100));
            let victims = [v];
            let decided =
                plan_neighbour_throttles(now, &victims, &cands, &throttles, &history, &ladder);
            apply_neighbour_actions(&mut throttles, &decided, now);
            history.record(&decided, &victims, now, &ladder);
            actions.extend(decided);
        }
        let mut seen = BTreeSet::new();
        for a in &actions {
            let (mine, other) = match a.vm().as_str() {
                "loud" => ("loud", "louder"),
                _ => ("louder", "loud "),
            };
            assert!(
                a.reason().contains(&format!("VM {mine}")) && !a.reason().contains(other),
                "{a:?}"
            );
            seen.insert(match a {
                NeighbourAction::Step { vm, level, .. } => format!("step {vm} {level}"),
                NeighbourAction::Undo { vm, level, .. } => format!("undo {vm} {level}"),
                NeighbourAction::Release { vm, .. } => format!("release {vm}"),
            });
        }
        for expected in [
            "step loud 1",
            "step louder 1",
            "release loud",
            "release louder",
        ] {
            assert!(seen.contains(expected), "{expected} in {seen:?}");
        }
        assert!(throttles.is_empty(), "{throttles:?}");
    }

    #[test]
    fn a_step_that_does_not_help_is_undone_and_the_ladder_stops() {
        let ladder = ThrottleLadder::default();
        let cands = [cand("loud", 2000.0, None), cand("quiet", 35.0, None)];
        // The victim's own disk is slow: no throttle changes anything.
        let (actions, throttles) = run(
            120,
            &[victim("v", HealthState::Degraded)],
            &cands,
            &ladder,
            |_| Duration::from_millis(40),
        );
        assert!(throttles.is_empty(), "{throttles:?}");
        let kinds: Vec<_> = actions
            .iter()
            .map(|a| match a {
                NeighbourAction::Step { vm, level, .. } => format!("step {vm} {level}"),
                NeighbourAction::Undo { vm, level, .. } => format!("undo {vm} {level}"),
                NeighbourAction::Release { vm, .. } => format!("release {vm}"),
            })
            .collect();
        assert_eq!(kinds, vec!["step loud 1", "undo loud 0"]);
        assert!(
            actions[1].reason().contains("did not lower"),
            "{}",
            actions[1].reason()
        );
    }

    #[test]
    fn a_step_that_helps_is_kept_and_the_next_follows() {
        let ladder = ThrottleLadder::default();
        let cands = [cand("loud", 2000.0, None)];
        let (actions, throttles) = run(
            10,
            &[victim("v", HealthState::Degraded)],
            &cands,
            &ladder,
            |t| {
                Duration::from_millis(match t.get("loud").map(|t| t.level) {
                    None => 40,
                    Some(l) => 40 - 10 * l as u64,
                })
            },
        );
        assert!(actions
            .iter()
            .all(|a| matches!(a, NeighbourAction::Step { .. })));
        assert_eq!(
            throttles["loud"].level, 2,
            "judged after 3 samples (5 s cooldown), then step 2"
        );
    }

    #[test]
    fn a_victim_unknown_for_five_minutes_releases_its_throttles() {
        let ladder = ThrottleLadder::default();
        let throttles = throttled("pl-noisy", "v");
        let cands = [cand("pl-noisy", 1000.0, None)];
        let mut v = victim("v", HealthState::Unknown);
        v.unknown_for = Duration::from_secs(299);
        assert!(plan(t(400), &[v.clone()], &cands, &throttles, &ladder).is_empty());
        v.unknown_for = Duration::from_secs(300);
        let actions = plan(t(400), &[v], &cands, &throttles, &ladder);
        assert!(
            matches!(&actions[..], [NeighbourAction::Release { reason, .. }] if reason.contains("unknown for 300 s")),
            "{actions:?}"
        );
    }

    #[test]
    fn throttling_again_soon_after_a_release_backs_off_doubling() {
        let ladder = ThrottleLadder::default();
        let cands = [cand("loud", 2000.0, None)];
        let v = victim("v", HealthState::Degraded);
        let mut history = NeighbourHistory::default();
        let release = [NeighbourAction::Release {
            vm: "loud".to_string(),
            reason: String::new(),
        }];
        history.record(&release, std::slice::from_ref(&v), t(0), &ladder);
        let planned = |history: &NeighbourHistory<String>, at| {
            !plan_neighbour_throttles(
                t(at),
                std::slice::from_ref(&v),
                &cands,
                &BTreeMap::new(),
                history,
                &ladder,
            )
            .is_empty()
        };
        assert!(!planned(&history, 29));
        assert!(planned(&history, 30));
        history.record(&release, std::slice::from_ref(&v), t(40), &ladder);
        assert!(
            !planned(&history, 40 + 59),
            "the second release within 10 min waits 60 s"
        );
        assert!(planned(&history, 40 + 60));
    }

    #[test]
    fn release_after_the_victim_stays_healthy() {
        let ladder = ThrottleLadder::default();
        let throttles = throttled("pl-noisy", "v");
        let mut v = victim("v", HealthState::Healthy);
        v.healthy_for = Duration::from_secs(3);
        let cands = [cand("pl-noisy", 1000.0, None)];
        assert!(plan(t(20), &[v.clone()], &cands, &throttles, &ladder).is_empty());
        v.healthy_for = ladder.release_after;
        let actions = plan(t(20), &[v], &cands, &throttles, &ladder);
        assert!(
            matches!(&actions[..], [NeighbourAction::Release { vm, reason }] if vm == "pl-noisy" && reason.contains("within its latency budget"))
        );
    }

    #[test]
    fn unknown_victim_keeps_its_throttle() {
        let actions = plan(
            t(20),
            &[victim("v", HealthState::Unknown)],
            &[cand("pl-noisy", 1000.0, None)],
            &throttled("pl-noisy", "v"),
            &ThrottleLadder::default(),
        );
        assert!(actions.is_empty());
    }

    #[test]
    fn release_when_the_window_ends_or_the_intent_goes() {
        let ladder = ThrottleLadder::default();
        let mut v = victim("v", HealthState::Degraded);
        v.active = false;
        let cands = [cand("pl-noisy", 1000.0, None)];
        let actions = plan(t(20), &[v], &cands, &throttled("pl-noisy", "v"), &ladder);
        assert!(
            actions[0]
                .reason()
                .contains("payments/payment-api is no longer active (its window ended"),
            "{:?}",
            actions
        );
        let actions = plan(t(20), &[], &cands, &throttled("pl-noisy", "v"), &ladder);
        assert!(
            actions[0].reason().contains("no longer backs"),
            "{:?}",
            actions
        );
    }

    #[test]
    fn release_when_the_aggressor_starts_backing_a_critical_workload() {
        let actions = plan(
            t(20),
            &[victim("v", HealthState::Degraded)],
            &[cand("pl-noisy", 1000.0, Some(Tier::Critical))],
            &throttled("pl-noisy", "v"),
            &ThrottleLadder::default(),
        );
        assert!(
            matches!(&actions[..], [NeighbourAction::Release { reason, .. }] if reason.contains("critical"))
        );
    }

    #[test]
    fn high_victims_may_not_throttle_high_neighbours() {
        let mut v = victim("v", HealthState::Degraded);
        v.tier = Tier::High;
        let actions = plan(
            t(0),
            &[v],
            &[
                cand("peer", 3000.0, Some(Tier::High)),
                cand("batch", 100.0, Some(Tier::Standard)),
            ],
            &BTreeMap::new(),
            &ThrottleLadder::default(),
        );
        assert_eq!(steps(&actions), vec![("batch".to_string(), 1, 50)]);
    }

    fn tiers() -> impl Strategy<Value = Option<Tier>> {
        prop::option::of(prop::sample::select(Tier::ALL.to_vec()))
    }

    fn states() -> impl Strategy<Value = HealthState> {
        prop::sample::select(vec![
            HealthState::Healthy,
            HealthState::Unknown,
            HealthState::Degraded,
        ])
    }

    proptest! {
        /// Whatever the cluster looks like, over a run of cycles: a VM backing a critical
        /// workload is never stepped, no VM is stepped twice within the cooldown, levels stay on
        /// the ladder and limits never go below the floor or up between steps.
        #[test]
        fn throttling_invariants(
            cands in prop::collection::btree_map(0u8..8, (0u8..3, 0u8..3, 0.0f64..5000.0, tiers(), any::<bool>()), 0..8),
            vics in prop::collection::btree_map(0u8..8, (prop::sample::select(Tier::ALL.to_vec()), prop::collection::vec(states(), 30), any::<bool>(), 0u8..3), 0..4),
        ) {
            let ladder = ThrottleLadder::default();
            let candidates: Vec<_> = cands.iter().map(|(vm, (host, ds, iops, tier, lim))| NeighbourCandidate {
                vm: format!("vm{vm}"),
                host: Some(format!("h{host}")),
                datastores: [format!("ds{ds}")].into(),
                iops: *iops,
                protected_by: *tier,
                can_limit_io: *lim,
            }).collect();
            let mut throttles: BTreeMap<String, Throttle<String>> = BTreeMap::new();
            let mut last_step: BTreeMap<String, SystemTime> = BTreeMap::new();
            let mut last_limit: BTreeMap<String, u64> = BTreeMap::new();
            for cycle in 0..30u64 {
                let now = t(cycle);
                let victims: Vec<_> = vics.iter().map(|(vm, (tier, states, active, host))| Victim {
                    unknown_for: Duration::ZERO,
                    degraded_for: Duration::ZERO,
                    may_relocate: false,
                    latency: None,
                    sample_interval: Duration::from_secs(1),
                    vm: format!("vm{vm}"),
                    tier: *tier,
                    intent: "ns/i".into(),
                    state: states[cycle as usize],
                    // Continuously healthy since the last cycle that was not.
                    healthy_for: Duration::from_secs(
                        states[..=cycle as usize].iter().rev().take_while(|s| **s == HealthState::Healthy).count() as u64,
                    ).saturating_sub(Duration::from_secs(1)),
                    active: *active,
                    host: Some(format!("h{host}")),
                    datastores: BTreeSet::new(),
                }).collect();
                let actions = plan(now, &victims, &candidates, &throttles, &ladder);
                let mut stepped = BTreeSet::new();
                for a in &actions {
                    if let NeighbourAction::Step { vm, victim, level, limit_iops, .. } = a {
                        prop_assert!(stepped.insert(vm.clone()), "stepped twice in one cycle");
                        prop_assert!(vm != victim);
                        for c in candidates.iter().filter(|c| &c.vm == vm) {
                            prop_assert_ne!(c.protected_by, Some(Tier::Critical));
                            prop_assert!(c.can_limit_io);
                        }
                        let v = victims.iter().find(|v| &v.vm == victim).unwrap();
                        prop_assert_eq!(v.state, HealthState::Degraded);
                        prop_assert!(v.active);
                        prop_assert!((1..=ladder.steps.len()).contains(level));
                        prop_assert!(*limit_iops >= ladder.floor_iops);
                        if let Some(prev) = last_step.get(vm) {
                            prop_assert!(now.duration_since(*prev).unwrap() >= ladder.cooldown);
                        }
                        if let Some(prev) = last_limit.get(vm) {
                            prop_assert!(limit_iops <= prev);
                        }
                        last_step.insert(vm.clone(), now);
                        last_limit.insert(vm.clone(), *limit_iops);
                    }
                }
                apply_neighbour_actions(&mut throttles, &actions, now);
                for vm in throttles.keys() {
                    let c = candidates.iter().find(|c| &c.vm == vm);
                    prop_assert!(c.is_none_or(|c| c.protected_by != Some(Tier::Critical)));
                }
                for (vm, _) in last_limit.clone() {
                    if !throttles.contains_key(&vm) { last_limit.remove(&vm); }
                }
            }
            // When every victim is gone, everything is released in one cycle.
            let actions = plan(t(100), &[], &candidates, &throttles, &ladder);
            apply_neighbour_actions(&mut throttles, &actions, t(100));
            prop_assert!(throttles.is_empty());
        }
    }
}
