//! Turning cumulative per-disk counters into per-operation latency: Δtimes / Δreqs between
//! two readings, with counter resets detected instead of reported as nonsense.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use crate::{DiskLatency, NotReady, OpLatency, UnreadyDisk, VmId};

/// Cumulative count of completed operations of one kind and the total time they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounters {
    pub reqs: u64,
    pub times_ns: u64,
}

/// Cumulative counters of one disk, as libvirt's `block.N.{rd,wr,fl}.{reqs,times}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub read: OpCounters,
    pub write: OpCounters,
    pub flush: Option<OpCounters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reset;

fn op_latency(prev: OpCounters, cur: OpCounters) -> Result<Option<OpLatency>, Reset> {
    let reqs = cur.reqs.checked_sub(prev.reqs).ok_or(Reset)?;
    let times = cur.times_ns.checked_sub(prev.times_ns).ok_or(Reset)?;
    if reqs == 0 {
        // Idle: no latency to report. Time without requests means counters moved
        // inconsistently, which only happens across a reset.
        return if times == 0 { Ok(None) } else { Err(Reset) };
    }
    Ok(Some(OpLatency {
        mean: Duration::from_nanos(times / reqs),
        ops: Some(reqs),
    }))
}

/// The key a reading is remembered under. `generation` changes when the VM restarts
/// (libvirt's domain id), so a restarted guest whose counters already grew past the old
/// values is still seen as a reset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DiskKey {
    vm: VmId,
    disk: String,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    generation: u64,
    counters: DiskCounters,
    at: Instant,
}

/// The previous reading of every disk on one endpoint.
#[derive(Debug, Default)]
pub struct CounterHistory {
    last: HashMap<DiskKey, Reading>,
}

/// One disk's counters as read in this cycle.
#[derive(Debug, Clone)]
pub struct DiskReading {
    pub vm: VmId,
    pub disk: String,
    pub generation: u64,
    pub counters: DiskCounters,
}

impl CounterHistory {
    /// Forgets everything, e.g. after a reconnect, so the next cycle only reports windows
    /// measured entirely on the new connection.
    pub fn clear(&mut self) {
        self.last.clear();
    }

    /// Records this cycle's readings and returns the latency over each disk's window since
    /// its previous reading. Disks not seen this cycle are forgotten (hot-unplug, VM gone).
    pub fn observe(
        &mut self,
        readings: Vec<DiskReading>,
        at: Instant,
        observed_at: SystemTime,
    ) -> (Vec<DiskLatency>, Vec<UnreadyDisk>) {
        let mut latencies = Vec::new();
        let mut unready = Vec::new();
        let mut next = HashMap::with_capacity(readings.len());
        for r in readings {
            let key = DiskKey {
                vm: r.vm.clone(),
                disk: r.disk.clone(),
            };
            let verdict = match self.last.get(&key) {
                None => Err(NotReady::Baseline),
                Some(prev) if prev.generation != r.generation => Err(NotReady::CounterReset),
                Some(prev) => window(prev, &r.counters, at).ok_or(NotReady::CounterReset),
            };
            match verdict {
                Ok((read, write, flush, window)) => latencies.push(DiskLatency {
                    vm: r.vm,
                    disk: r.disk,
                    read,
                    write,
                    flush,
                    window,
                    observed_at,
                }),
                Err(reason) => unready.push(UnreadyDisk {
                    vm: r.vm,
                    disk: r.disk,
                    reason,
                }),
            }
            next.insert(
                key,
                Reading {
                    generation: r.generation,
                    counters: r.counters,
                    at,
                },
            );
        }
        self.last = next;
        (latencies, unready)
    }
}

type Window = (
    Option<OpLatency>,
    Option<OpLatency>,
    Option<OpLatency>,
    Duration,
);

fn window(prev: &Reading, cur: &DiskCounters, at: Instant) -> Option<Window> {
    let read = op_latency(prev.counters.read, cur.read).ok()?;
    let write = op_latency(prev.counters.write, cur.write).ok()?;
    let flush = match (prev.counters.flush, cur.flush) {
        (Some(p), Some(c)) => op_latency(p, c).ok()?,
        _ => None,
    };
    Some((read, write, flush, at.saturating_duration_since(prev.at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(gen: u64, rd: (u64, u64), wr: (u64, u64)) -> DiskReading {
        DiskReading {
            vm: VmId::new("00000000-0000-0000-0000-000000000001"),
            disk: "vda".into(),
            generation: gen,
            counters: DiskCounters {
                read: OpCounters {
                    reqs: rd.0,
                    times_ns: rd.1,
                },
                write: OpCounters {
                    reqs: wr.0,
                    times_ns: wr.1,
                },
                flush: Some(OpCounters::default()),
            },
        }
    }

    #[test]
    fn latency_is_delta_times_over_delta_reqs() {
        let mut h = CounterHistory::default();
        let t0 = Instant::now();
        let (l, u) = h.observe(
            vec![reading(1, (100, 4_000_000), (10, 1_000_000))],
            t0,
            SystemTime::now(),
        );
        assert!(l.is_empty());
        assert_eq!(u[0].reason, NotReady::Baseline);

        let t1 = t0 + Duration::from_secs(5);
        let (l, u) = h.observe(
            vec![reading(1, (300, 24_000_000), (10, 1_000_000))],
            t1,
            SystemTime::now(),
        );
        assert!(u.is_empty());
        let d = &l[0];
        assert_eq!(d.read.unwrap().mean, Duration::from_micros(100));
        assert_eq!(d.read.unwrap().ops, Some(200));
        assert_eq!(d.write, None, "an idle op kind has no latency, not zero");
        assert_eq!(d.window, Duration::from_secs(5));
    }

    #[test]
    fn counters_going_backwards_are_a_reset_not_a_huge_latency() {
        let mut h = CounterHistory::default();
        let t0 = Instant::now();
        h.observe(
            vec![reading(1, (1000, 9_000_000), (5, 5))],
            t0,
            SystemTime::now(),
        );
        let (l, u) = h.observe(
            vec![reading(1, (10, 90_000), (5, 5))],
            t0 + Duration::from_secs(1),
            SystemTime::now(),
        );
        assert!(l.is_empty());
        assert_eq!(u[0].reason, NotReady::CounterReset);
        // The reset reading is the new baseline.
        let (l, _) = h.observe(
            vec![reading(1, (20, 190_000), (5, 5))],
            t0 + Duration::from_secs(2),
            SystemTime::now(),
        );
        assert_eq!(l[0].read.unwrap().mean, Duration::from_micros(10));
    }

    #[test]
    fn a_restarted_vm_is_a_reset_even_when_its_counters_grew() {
        let mut h = CounterHistory::default();
        let t0 = Instant::now();
        h.observe(vec![reading(1, (10, 100), (0, 0))], t0, SystemTime::now());
        let (l, u) = h.observe(
            vec![reading(2, (5000, 9_999_999), (0, 0))],
            t0,
            SystemTime::now(),
        );
        assert!(l.is_empty());
        assert_eq!(u[0].reason, NotReady::CounterReset);
    }

    #[test]
    fn time_without_requests_is_treated_as_a_reset() {
        assert_eq!(
            op_latency(
                OpCounters {
                    reqs: 5,
                    times_ns: 10
                },
                OpCounters {
                    reqs: 5,
                    times_ns: 20
                }
            ),
            Err(Reset)
        );
    }

    #[test]
    fn unplugged_disks_are_forgotten_and_start_from_a_baseline_when_back() {
        let mut h = CounterHistory::default();
        let t0 = Instant::now();
        h.observe(vec![reading(1, (10, 100), (0, 0))], t0, SystemTime::now());
        h.observe(vec![], t0, SystemTime::now());
        let (_, u) = h.observe(vec![reading(1, (20, 200), (0, 0))], t0, SystemTime::now());
        assert_eq!(u[0].reason, NotReady::Baseline);
    }

    #[test]
    fn clear_forgets_previous_readings() {
        let mut h = CounterHistory::default();
        let t0 = Instant::now();
        h.observe(vec![reading(1, (10, 100), (0, 0))], t0, SystemTime::now());
        h.clear();
        let (l, u) = h.observe(vec![reading(1, (20, 200), (0, 0))], t0, SystemTime::now());
        assert!(l.is_empty());
        assert_eq!(u[0].reason, NotReady::Baseline);
    }
}
