//! The time the operator decides with. Schedules are evaluated against a `Clock` rather than
//! `Utc::now()` so tests can move time across window boundaries without sleeping.

use chrono::{DateTime, Utc};
use futures::{stream::BoxStream, StreamExt};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Yields whenever time moves other than by passing, so every intent is re-evaluated
    /// at once instead of at its next scheduled requeue (which is measured in real time).
    fn jumps(&self) -> BoxStream<'static, ()> {
        futures::stream::pending().boxed()
    }
}

/// Wall-clock time; what the operator uses in production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    jumped: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (jumped, _) = watch::channel(0);
        Self {
            now: Arc::new(Mutex::new(start)),
            jumped: Arc::new(jumped),
        }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().expect("clock mutex poisoned") = to;
        self.jumped.send_modify(|n| *n += 1);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock mutex poisoned")
    }

    fn jumps(&self) -> BoxStream<'static, ()> {
        let mut rx = self.jumped.subscribe();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn manual_clock_moves_only_when_set_and_announces_the_jump() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 7, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let mut jumps = clock.jumps();
        assert_eq!(clock.now(), start);
        let later = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        clock.set(later);
        assert_eq!(clock.now(), later);
        assert_eq!(jumps.next().await, Some(()));
    }
}
