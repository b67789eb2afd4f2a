//! What `/healthz` answers. The process is alive when every loop it depends on is: no leader
//! loop has ended on its own, and, while this replica leads, the storage-health pass has
//! completed within the last [`MISSED_PASSES`] intervals. A standby runs no health pass and
//! is judged only by the first rule.
//!
//! The supervisor (`crate::run`) records a dead loop; the health loop reports each pass.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::locks::lock;

/// How many health intervals may pass without a completed pass before `/healthz` fails.
pub const MISSED_PASSES: u32 = 5;

#[derive(Debug, Clone, Copy)]
struct Passes {
    interval: Duration,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct Liveness {
    dead: Mutex<Option<String>>,
    passes: Mutex<Option<Passes>>,
}

impl Liveness {
    /// A loop ended while it should have run: `/healthz` fails from now on.
    pub fn loop_died(&self, name: &str) {
        lock(&self.dead).get_or_insert_with(|| name.to_string());
    }

    /// A health loop starts (a term begins); it passes every `interval`.
    pub fn health_loop_starts(&self, interval: Duration) {
        *lock(&self.passes) = Some(Passes {
            interval,
            last: Instant::now(),
        });
    }

    /// One pass completed.
    pub fn health_pass_done(&self) {
        if let Some(p) = lock(&self.passes).as_mut() {
            p.last = Instant::now();
        }
    }

    /// The term ended: no pass is expected until the next one.
    pub fn health_loop_stops(&self) {
        *lock(&self.passes) = None;
    }

    /// Ok, or why not.
    pub fn check(&self) -> Result<(), String> {
        if let Some(name) = lock(&self.dead).as_ref() {
            return Err(format!(
                "leader loop {name} ended unexpectedly; the process steps down and exits"
            ));
        }
        if let Some(p) = *lock(&self.passes) {
            let limit = p.interval * MISSED_PASSES;
            let since = p.last.elapsed();
            if since > limit {
                return Err(format!(
                    "the storage-health pass has not completed for {since:.1?} (limit {MISSED_PASSES} intervals of {:?})",
                    p.interval
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_loop_fails_for_good() {
        let l = Liveness::default();
        assert!(l.check().is_ok());
        l.loop_died("storage-health");
        l.loop_died("workloadintent-controller");
        let why = l.check().unwrap_err();
        assert!(why.contains("storage-health"), "{why}");
    }

    #[test]
    fn a_stalled_health_pass_fails_only_while_a_loop_runs() {
        let l = Liveness::default();
        l.health_loop_starts(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.check().unwrap_err().contains("has not completed"));
        l.health_pass_done();
        l.health_loop_starts(Duration::from_secs(60));
        assert!(l.check().is_ok());
        l.health_loop_starts(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(20));
        l.health_loop_stops();
        assert!(l.check().is_ok(), "a standby runs no pass");
    }
}
