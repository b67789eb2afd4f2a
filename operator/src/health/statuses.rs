//! Intent statuses written in the background: a pass hands over each status body that is due
//! and never waits for the write. At 10,000 pods a body lists 1,000 backing pods and one
//! write took the apiserver about 220 ms; written in the pass, the ten intents' refreshes made
//! a pass of 1–2 s every 30 s (docs/scale.md). Latest wins: a body still waiting when the
//! next one for its intent arrives is replaced by it. Pod and node conditions go first: while
//! the pass writes them (a thousand pods flipping), no status write starts. Writes stop when
//! the term ends.

use kube::{
    api::{Patch, PatchParams},
    Api,
};
use plumbline_crds::{names::HEALTH_FIELD_MANAGER, WorkloadIntent};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};
use tokio::sync::{Notify, OwnedRwLockWriteGuard, RwLock};
use tracing::warn;

use super::decide::{Fingerprint, StatusWrite};
use crate::{context::Context, term::TermEnd};

/// An intent, as `(namespace, name)`.
type IntentKey = (String, String);

/// The handle a pass holds: hands bodies over, and hears which writes failed.
pub struct StatusWriter {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Held exclusively by the pass while it writes conditions, shared by each status write.
    conditions_first: Arc<RwLock<()>>,
}

#[derive(Default)]
struct Queue {
    /// The latest body due per intent, not yet taken by the writer.
    pending: BTreeMap<IntentKey, StatusWrite>,
    /// Writes that failed, with the fingerprint of the body that failed.
    failed: Vec<(IntentKey, Fingerprint)>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl StatusWriter {
    /// Starts the writer; it stops when the handle is dropped or the term ends.
    pub fn start(ctx: Arc<Context>, end: TermEnd) -> Self {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(write_all(ctx, end, shared.clone())).abort_handle();
        Self { shared, task }
    }

    /// Queues `w`, replacing a body for the same intent still waiting.
    pub fn hand_over(&self, w: StatusWrite) {
        self.shared.queue().pending.insert(w.intent.clone(), w);
        self.shared.wake.notify_one();
    }

    /// Holds status writes back until the guard is dropped (one already started finishes).
    pub async fn hold(&self) -> OwnedRwLockWriteGuard<()> {
        self.shared.conditions_first.clone().write_owned().await
    }

    /// The writes that failed since the last call: the pass is to write those intents again.
    pub fn failed(&self) -> Vec<(IntentKey, Fingerprint)> {
        std::mem::take(&mut self.shared.queue().failed)
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes what is queued, one body at a time, until the term ends.
async fn write_all(ctx: Arc<Context>, end: TermEnd, shared: Arc<Shared>) {
    let params = PatchParams::apply(HEALTH_FIELD_MANAGER).force();
    loop {
        shared.wake.notified().await;
        loop {
            let Some((_, w)) = shared.queue().pending.pop_first() else {
                break;
            };
            let StatusWrite {
                intent,
                body,
                fingerprint,
            } = w;
            let (namespace, name) = &intent;
            let _turn = shared.conditions_first.read().await;
            // Checked once its turn came: the term may have ended while it waited.
            if end.has_ended() {
                return;
            }
            let patch = plumbline_crds::apply::status::<WorkloadIntent>(body);
            let written = Api::<WorkloadIntent>::namespaced(ctx.client.clone(), namespace)
                .patch_status(name, &params, &Patch::Apply(&patch))
                .await;
            if let Err(e) = written {
                warn!(intent = %format!("{namespace}/{name}"), error = %e, "writing backing map and guard to status failed");
                shared.queue().failed.push((intent, fingerprint));
            }
        }
    }
}
