//! One storage latency sample for one disk, and the budget it is judged against.

use std::time::{Duration, SystemTime};

/// Mean per-operation latency of one disk over one sampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageSample {
    /// When the hypervisor's counters were read (not when the operator processed them), so
    /// a cached sample handed out twice is recognised as the same sample.
    pub at: SystemTime,
    /// `None` when no operation completed in the interval. An idle disk delays no one, so it
    /// counts as within budget.
    pub per_op: Option<Duration>,
}

impl StorageSample {
    pub fn new(at: SystemTime, per_op: Option<Duration>) -> Self {
        Self { at, per_op }
    }

    /// The figure judged against the budget: the slower of reads and writes. Flushes are left
    /// out on purpose: a flush waits for everything queued before it, so its latency is high on
    /// healthy storage and would make every budget meaningless.
    pub fn from_read_write(
        at: SystemTime,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> Self {
        Self::new(at, read.max(write))
    }

    pub fn is_over(&self, budget: LatencyBudget) -> bool {
        self.per_op.is_some_and(|l| l > budget.0)
    }
}

/// The per-operation storage latency an intent tolerates, e.g. `20ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LatencyBudget(pub Duration);

impl LatencyBudget {
    pub fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// How many times over budget `latency` is (1.0 = exactly at budget). Used to put the
    /// worst pods first.
    pub fn ratio(self, latency: Duration) -> f64 {
        if self.0.is_zero() {
            return if latency.is_zero() {
                1.0
            } else {
                f64::INFINITY
            };
        }
        latency.as_secs_f64() / self.0.as_secs_f64()
    }
}

/// Formats a latency the way the messages show it: `12.3ms`, `850µs`.
pub fn format_latency(latency: Duration) -> String {
    let micros = latency.as_micros();
    if micros < 1000 {
        format!("{micros}µs")
    } else {
        format!("{:.1}ms", latency.as_secs_f64() * 1000.0)
    }
}
