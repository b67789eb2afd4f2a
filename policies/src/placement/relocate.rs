//! Moving a noisy neighbour that throttling cannot tame (`infrastructure.relocateNoisyNeighbours`,
//! vSphere): when a VM of a critical intent stays degraded for [`RelocationPolicy::dwell`]
//! after a neighbour on its host reached the bottom of the throttle ladder, the neighbour —
//! never the protected VM — goes to the host of its cluster with the least I/O that backs no
//! critical workload. Budgets keep it rare: one relocation per host per
//! [`RelocationPolicy::per_host`], and the same VM again only after a cooldown that doubles
//! per repeat within [`RelocationPolicy::repeat_window`], at most
//! [`RelocationPolicy::max_cooldown`].
//!
//! The health loop and `plumbline explain` both pick the target with [`pick_host`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    time::{Duration, SystemTime},
};

use crate::health::{HealthState, NeighbourCandidate, Throttle, ThrottleLadder, Tier, Victim};

#[derive(Debug, Clone, PartialEq)]
pub struct RelocationPolicy {
    /// How long the victim stays degraded after its neighbour reached the bottom of the
    /// ladder before the neighbour is moved.
    pub dwell: Duration,
    /// At most one relocation from or to a host within this long.
    pub per_host: Duration,
    /// The wait before the same VM is moved again; doubles per repeat within
    /// `repeat_window`.
    pub cooldown: Duration,
    pub repeat_window: Duration,
    pub max_cooldown: Duration,
}

impl Default for RelocationPolicy {
    fn default() -> Self {
        Self {
            dwell: Duration::from_secs(120),
            per_host: Duration::from_secs(15 * 60),
            cooldown: Duration::from_secs(15 * 60),
            repeat_window: Duration::from_secs(24 * 3600),
            max_cooldown: Duration::from_secs(6 * 3600),
        }
    }
}

impl RelocationPolicy {
    /// How long after its last relocation a VM moved `times` times within the repeat window
    /// must wait before the next one.
    pub fn cooldown_after(&self, times: usize) -> Duration {
        let doublings = times.saturating_sub(1).min(16) as u32;
        self.cooldown
            .saturating_mul(1u32 << doublings)
            .min(self.max_cooldown)
    }
}

/// A relocation made earlier, as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct PastRelocation<K> {
    pub vm: K,
    pub from: String,
    pub to: String,
    /// When each relocation of the VM within the repeat window was decided, oldest first.
    pub decided: Vec<SystemTime>,
}

/// A host a VM could be moved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChoice {
    pub name: String,
    pub cluster: Option<String>,
    /// In or entering maintenance mode.
    pub in_maintenance: bool,
}

/// A relocation to make, with the reason for the ledger and the Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Relocation<K> {
    pub vm: K,
    pub victim: K,
    pub from: String,
    pub to: String,
    /// The VM's relocations within the repeat window, this one last.
    pub decided: Vec<SystemTime>,
    pub reason: String,
}

/// The target host for `vm` (on host `from` of `cluster`), or why there is none: the host of
/// the cluster, other than `from`, that is not in maintenance, backs no critical workload and
/// had no relocation within the per-host budget, with the least I/O (ties by name).
pub fn pick_host<K: Ord + Display>(
    now: SystemTime,
    from: &str,
    cluster: Option<&str>,
    hosts: &[HostChoice],
    candidates: &[NeighbourCandidate<K>],
    past: &[PastRelocation<K>],
    policy: &RelocationPolicy,
) -> Result<(String, String), String> {
    let Some(cluster) = cluster else {
        return Err(format!(
            "host {from} is in no compute cluster: there is nowhere to move it (libvirt and standalone hosts cannot relocate)"
        ));
    };
    let busy = busy_hosts(now, past, policy);
    if let Some(at) = busy.get(from) {
        return Err(format!(
            "host {from} had a relocation {} ago; at most one per host per {}",
            minutes(now.duration_since(*at).unwrap_or_default()),
            minutes(policy.per_host)
        ));
    }
    let io = |host: &str| -> f64 {
        candidates
            .iter()
            .filter(|c| c.host.as_deref() == Some(host))
            // From +0.0: an empty f64 sum is -0.0, which prints as "-0".
            .fold(0.0, |sum, c| sum + c.iops)
    };
    let critical = |host: &str| {
        candidates
            .iter()
            .any(|c| c.host.as_deref() == Some(host) && c.protected_by == Some(Tier::Critical))
    };
    let mut refused: Vec<String> = Vec::new();
    let mut eligible: Vec<(&HostChoice, f64)> = Vec::new();
    for h in hosts
        .iter()
        .filter(|h| h.cluster.as_deref() == Some(cluster) && h.name != from)
    {
        if h.in_maintenance {
            refused.push(format!("{} is in maintenance", h.name));
        } else if critical(&h.name) {
            refused.push(format!("{} backs a critical workload", h.name));
        } else if busy.contains_key(h.name.as_str()) {
            refused.push(format!(
                "{} had a relocation within {}",
                h.name,
                minutes(policy.per_host)
            ));
        } else {
            eligible.push((h, io(&h.name)));
        }
    }
    eligible.sort_by(|(a, x), (b, y)| x.total_cmp(y).then_with(|| a.name.cmp(&b.name)));
    match eligible.first() {
        Some((h, iops)) => Ok((
            h.name.clone(),
            format!(
                "{} has the least I/O in cluster {cluster} ({iops:.0} IOPS) of the hosts backing no critical workload",
                h.name
            ),
        )),
        None if refused.is_empty() => Err(format!("cluster {cluster} has no other host")),
        None => Err(format!(
            "no host of cluster {cluster} can take it: {}",
            refused.join(", ")
        )),
    }
}

/// The relocations due now. A victim (active, critical, may relocate) that has stayed degraded
/// for the dwell time after its neighbour on the same host reached the bottom of the throttle
/// ladder has that neighbour moved, within the budgets. At most one per victim
/// per pass, and the per-host budget counts this pass's moves too.
#[allow(clippy::too_many_arguments)]
pub fn plan_relocations<K: Ord + Clone + Display>(
    now: SystemTime,
    victims: &[Victim<K>],
    candidates: &[NeighbourCandidate<K>],
    throttles: &BTreeMap<K, Throttle<K>>,
    ladder: &ThrottleLadder,
    hosts: &[HostChoice],
    past: &[PastRelocation<K>],
    policy: &RelocationPolicy,
) -> Vec<Relocation<K>> {
    let mut out: Vec<Relocation<K>> = Vec::new();
    let mut moving: BTreeSet<K> = BTreeSet::new();
    for victim in victims.iter().filter(|v| {
        v.active && v.may_relocate && v.tier == Tier::Critical && v.state == HealthState::Degraded
    }) {
        let Some(host) = &victim.host else { continue };
        // Its neighbours on its host at the bottom of the ladder long enough, longest first.
        let mut floored: Vec<(&Throttle<K>, &NeighbourCandidate<K>)> = throttles
            .values()
            .filter(|t| t.victims.contains(&victim.vm) && at_bottom(t, ladder))
            .filter(|t| !moving.contains(&t.vm))
            .filter_map(|t| {
                let c = candidates.iter().find(|c| c.vm == t.vm)?;
                (c.host.as_ref() == Some(host)).then_some((t, c))
            })
            // At the floor for the dwell, and the victim degraded all of the last dwell (so
            // since after the floor): a blip of unknown restarts the dwell, never blocks it.
            .filter(|(t, _)| {
                now.duration_since(t.stepped_at).unwrap_or_default() >= policy.dwell
                    && victim.degraded_for >= policy.dwell
            })
            .collect();
        floored.sort_by_key(|(t, _)| t.stepped_at);
        for (throttle, aggressor) in floored {
            let mut earlier: Vec<SystemTime> = past
                .iter()
                .filter(|p| p.vm == aggressor.vm)
                .flat_map(|p| p.decided.iter().copied())
                .filter(|at| now.duration_since(*at).unwrap_or_default() < policy.repeat_window)
                .collect();
            earlier.sort();
            if let Some(last) = earlier.last() {
                if now.duration_since(*last).unwrap_or_default()
                    < policy.cooldown_after(earlier.len())
                {
                    continue;
                }
            }
            // This pass's moves count against the per-host budget too.
            let planned: Vec<PastRelocation<K>> = out
                .iter()
                .map(|r| PastRelocation {
                    vm: r.vm.clone(),
                    from: r.from.clone(),
                    to: r.to.clone(),
                    decided: vec![now],
                })
                .chain(past.iter().cloned())
                .collect();
            let cluster = hosts
                .iter()
                .find(|h| &h.name == host)
                .and_then(|h| h.cluster.as_deref());
            let Ok((to, why)) = pick_host(now, host, cluster, hosts, candidates, &planned, policy)
            else {
                continue;
            };
            let held = now.duration_since(throttle.stepped_at).unwrap_or_default();
            moving.insert(aggressor.vm.clone());
            earlier.push(now);
            out.push(Relocation {
                vm: aggressor.vm.clone(),
                victim: victim.vm.clone(),
                from: host.clone(),
                to: to.clone(),
                reason: format!(
                    "VM {} of {} stayed over its storage latency budget for {} after VM {} was throttled to its floor ({} IOPS, step {}): moving VM {} from {host} to {to}; {why}",
                    victim.vm,
                    victim.intent,
                    minutes(held),
                    aggressor.vm,
                    throttle.limit_iops,
                    throttle.level,
                    aggressor.vm,
                ),
                decided: earlier,
            });
            break;
        }
    }
    out
}

/// Whether the throttle is at the bottom of the ladder: its last step, or at the floor.
pub fn at_bottom<K>(t: &Throttle<K>, ladder: &ThrottleLadder) -> bool {
    t.level >= ladder.steps.len() || t.limit_iops <= ladder.floor_iops
}

/// Hosts a relocation left or reached within the per-host window, with when.
fn busy_hosts<'a, K>(
    now: SystemTime,
    past: &'a [PastRelocation<K>],
    policy: &RelocationPolicy,
) -> BTreeMap<&'a str, SystemTime> {
    let mut busy = BTreeMap::new();
    for p in past {
        let Some(last) = p.decided.iter().max() else {
            continue;
        };
        if now.duration_since(*last).unwrap_or_default() < policy.per_host {
            for h in [p.from.as_str(), p.to.as_str()] {
                busy.insert(h, *last);
            }
        }
    }
    busy
}

fn minutes(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

#[cfg(test)]
mod tests;
