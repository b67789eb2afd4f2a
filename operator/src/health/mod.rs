//! Cross-layer storage health: hypervisor storage latency fed back into pod readiness, node
//! conditions, and noisy-neighbour throttling. The decisions are `plumbline_policies::health`;
//! this module observes and writes.
//!
//! - [`caches`]: pruned pod cache, Nodes, HypervisorProviders;
//! - [`providers`]: one sampling loop per provider (adapter, inventory, samples, status);
//! - [`book`]: what the samplers learnt, with the hysteresis trackers;
//! - [`graph`]: Pod → Node → VM → host/datastore, rebuilt each pass;
//! - [`feedback`]: verdicts, guard, pod/node conditions, intent status, metrics;
//! - [`taint`]: the optional `NoSchedule` taint on degraded nodes;
//! - [`throttle`]: noisy-neighbour I/O limits through the adapters;
//! - [`protect`]: CPU shares for the VMs backing protected intents.
//!
//! Everything here runs inside a leadership term (see `crate::run`).

pub mod book;
pub mod caches;
pub mod feedback;
pub mod graph;
pub mod metrics;
pub mod protect;
pub mod providers;
pub mod taint;
pub mod throttle;

pub use metrics::HealthMetrics;

use plumbline_policies::health::{LatencyBudget, ThrottleLadder, UnknownReadiness};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::Notify;
use tracing::info;

use crate::{context::Context, run::TermEnd};

/// The field manager of everything the health loop writes (pod and node conditions, the
/// intent's `backing`/`guard`/`neighbourThrottles`, provider status). Separate from the
/// controller's, so neither apply removes the other's fields.
pub const HEALTH_FIELD_MANAGER: &str = "plumbline-health";

/// How the health loop behaves; the defaults are documented in docs/health.md.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// What an unknown verdict does to the pod condition (default: fail open).
    pub unknown: UnknownReadiness,
    /// Budget for node conditions of nodes running no pod of a storage intent.
    pub default_node_budget: LatencyBudget,
    pub ladder: ThrottleLadder,
    /// A pass runs at least this often even without news (staleness turns into unknown).
    pub resync: Duration,
    /// Taint nodes whose storage is degraded (`NoSchedule`), and untaint them on recovery.
    /// Off by default: it needs `patch` on nodes.
    pub taint_degraded_nodes: bool,
    /// At startup, restore the I/O limits and CPU shares found on VMs with a recorded original
    /// that no intent wants now (left by an earlier run that stopped before releasing them).
    /// Only safe when this operator is the only one changing these VMs: the CLI turns it off
    /// for a namespace-scoped operator, which cannot tell its leftovers from another's.
    pub recover_leftovers: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            unknown: UnknownReadiness::FailOpen,
            default_node_budget: LatencyBudget::from_millis(100),
            ladder: ThrottleLadder::default(),
            resync: Duration::from_secs(1),
            taint_degraded_nodes: false,
            recover_leftovers: true,
        }
    }
}

/// Runs the health loop until the term ends.
pub async fn run(
    ctx: Arc<Context>,
    settings: HealthSettings,
    namespace: Option<String>,
    end: TermEnd,
) {
    let changed = Arc::new(Notify::new());
    let (caches, drive) = caches::start(&ctx.client, namespace.as_deref(), changed.clone());
    let watches = tokio::spawn(drive);
    let book = Arc::new(Mutex::new(book::HealthBook::default()));
    let mut samplers = providers::Samplers::default();
    let mut feedback = feedback::Feedback::new(namespace.is_some());
    let mut protections = protect::Protections::default();
    info!(
        unknown = settings.unknown.as_str(),
        taint_degraded_nodes = settings.taint_degraded_nodes,
        recover_leftovers = settings.recover_leftovers,
        "storage-health loop starts"
    );
    let ended = end.clone().wait();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = &mut ended => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(settings.resync) => {}
        }
        if end.has_ended() {
            break;
        }
        samplers.sync(&ctx, &caches.providers.state(), &book, &changed);
        feedback.pass(&ctx, &caches, &book, &settings).await;
        protections
            .pass(&ctx, &caches, &book, settings.recover_leftovers)
            .await;
    }
    feedback.throttles.release_all(&ctx, &book).await;
    samplers.stop_all();
    watches.abort();
    info!("storage-health loop stopped");
}
