//! One libvirt connection with keepalive, loss detection and reconnection with backoff.
//! Every method blocks; callers run them on the blocking pool.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use virt::connect::Connect;

use super::ffi;
use crate::ConnectionState;

/// Keepalive probes every 5 s; 3 unanswered probes close the connection (≈20 s to notice a
/// dead remote daemon; a local daemon's exit is noticed at once by the socket closing).
const KEEPALIVE_INTERVAL_S: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

struct Slot {
    conn: Option<Arc<Connect>>,
    /// Bumped on every successful (re)connect; work tagged with an older epoch is stale.
    epoch: u64,
    state: ConnectionState,
    backoff: Duration,
    retry_at: Instant,
}

pub struct Connection {
    uri: String,
    slot: Mutex<Slot>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

fn open(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT) {
        // Local (non-remote) drivers have no keepalive; loss is still seen via is_alive.
        tracing::debug!(%uri, error = %e, "libvirt keepalive not enabled");
    }
    Ok(conn)
}

impl Connection {
    /// Connects now; fails if the daemon cannot be reached.
    pub fn open(uri: &str) -> Result<Self, virt::error::Error> {
        ffi::route_errors_to_tracing();
        // Keepalive needs the event loop, which must exist before the connection opens.
        let _ = ffi::start_event_loop();
        let conn = open(uri)?;
        Ok(Self {
            uri: uri.to_string(),
            slot: Mutex::new(Slot {
                conn: Some(Arc::new(conn)),
                epoch: 1,
                state: ConnectionState::Connected {
                    since: SystemTime::now(),
                },
                backoff: BACKOFF_MIN,
                retry_at: Instant::now(),
            }),
        })
    }

    /// The epoch of the current (or last) connection.
    pub fn epoch(&self) -> u64 {
        self.slot.lock().expect("libvirt connection lock").epoch
    }

    pub fn state(&self) -> ConnectionState {
        self.slot
            .lock()
            .expect("libvirt connection lock")
            .state
            .clone()
    }

    /// The live connection and its epoch; reconnects when the previous one was lost and the
    /// backoff has passed. Fails fast with the reason while disconnected.
    pub fn get(&self) -> Result<(Arc<Connect>, u64), String> {
        let mut slot = self.slot.lock().expect("libvirt connection lock");
        if let Some(conn) = &slot.conn {
            if conn.is_alive().unwrap_or(false) {
                return Ok((conn.clone(), slot.epoch));
            }
            let epoch = slot.epoch;
            drop(slot);
            self.lost(
                epoch,
                "the connection was closed (daemon restarted or unreachable)",
            );
            slot = self.slot.lock().expect("libvirt connection lock");
        }
        let now = Instant::now();
        if now < slot.retry_at {
            return Err(self.describe(&slot, now));
        }
        match open(&self.uri) {
            Ok(conn) => {
                let conn = Arc::new(conn);
                slot.conn = Some(conn.clone());
                slot.epoch += 1;
                slot.backoff = BACKOFF_MIN;
                slot.state = ConnectionState::Connected {
                    since: SystemTime::now(),
                };
                tracing::info!(uri = %self.uri, "reconnected to libvirt");
                Ok((conn, slot.epoch))
            }
            Err(e) => {
                let wait = slot.backoff;
                slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
                slot.retry_at = now + wait;
                let since = match &slot.state {
                    ConnectionState::Disconnected { since, .. } => *since,
                    ConnectionState::Connected { .. } => SystemTime::now(),
                };
                slot.state = ConnectionState::Disconnected {
                    since,
                    reason: format!("reconnecting: {e}"),
                    retry_at: SystemTime::now() + wait,
                };
                Err(self.describe(&slot, now))
            }
        }
    }

    fn describe(&self, slot: &Slot, now: Instant) -> String {
        let reason = match &slot.state {
            ConnectionState::Disconnected { reason, .. } => reason.clone(),
            ConnectionState::Connected { .. } => "not connected".into(),
        };
        format!(
            "{reason}; next attempt in {:?}",
            slot.retry_at.saturating_duration_since(now)
        )
    }

    /// Marks the connection of `epoch` as lost (a later epoch is left alone).
    pub fn lost(&self, epoch: u64, reason: &str) {
        let mut slot = self.slot.lock().expect("libvirt connection lock");
        if slot.epoch != epoch || slot.conn.is_none() {
            return;
        }
        tracing::warn!(uri = %self.uri, %reason, "lost the libvirt connection");
        slot.conn = None;
        slot.backoff = BACKOFF_MIN;
        slot.retry_at = Instant::now();
        slot.state = ConnectionState::Disconnected {
            since: SystemTime::now(),
            reason: reason.to_string(),
            retry_at: SystemTime::now(),
        };
    }

    /// Drops the connection; the next call reconnects.
    pub fn close(&self) {
        let epoch = self.slot.lock().expect("libvirt connection lock").epoch;
        self.lost(epoch, "closed by the adapter");
    }
}

/// Closing a connection to a daemon that no longer answers (a cut link) blocks in
/// `virConnectClose` until the socket closes. The adapter is dropped wherever its last user
/// lets go of it, often on an async runtime's thread, and possibly while that runtime shuts
/// down (when the blocking pool takes no more work, and waits for what it holds): the close
/// gets a thread of its own, which nothing waits for.
impl Drop for Connection {
    fn drop(&mut self) {
        let conn = self
            .slot
            .get_mut()
            .map(|slot| slot.conn.take())
            .unwrap_or_else(|poisoned| poisoned.into_inner().conn.take());
        if let Some(conn) = conn {
            let closing = std::thread::Builder::new()
                .name("libvirt-close".into())
                .spawn(move || drop(conn));
            if let Err(e) = closing {
                tracing::warn!(uri = %self.uri, error = %e, "no thread to close the libvirt connection on; it was closed in place");
            }
        }
    }
}
