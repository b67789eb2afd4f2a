//! Cross-layer storage health: hypervisor storage latency fed back into pod readiness, node
//! conditions, and noisy-neighbour throttling. The decisions are `plumbline_policies::health`;
//! this module observes and writes.
//!
//! - [`caches`]: the pod cache (of [`pod::CachedPod`]), Nodes, HypervisorProviders;
//! - [`providers`]: one sampling loop per provider (adapter, inventory, samples, status);
//! - [`book`]: what the samplers learnt, with the hysteresis trackers;
//! - [`graph`]: Pod → Node → VM → host/datastore, rebuilt each pass;
//! - [`decide`]: one pass decided, with no I/O: verdicts, guard, pod/node conditions, intent
//!   status, throttles and taints wanted, metric series;
//! - [`feedback`]: one pass carried out: the writes, Events and metrics [`decide`] asks for;
//! - [`statuses`]: intent statuses written in the background, latest wins;
//! - [`taint`]: the optional `NoSchedule` taint on degraded nodes, as ledger entries;
//! - [`throttle`]: noisy-neighbour I/O limits, as ledger entries;
//! - [`relocate`]: moving a noisy neighbour throttling cannot tame, as ledger entries;
//! - [`protect`]: CPU shares for the VMs backing protected intents, as ledger entries;
//! - [`topology`]: the `topology.plumbline.dev/` host, provider and cluster labels on
//!   VM-backed nodes, written in a task of their own.
//!
//! Every change to shared infrastructure goes through the ledger (`crate::ledger`): this loop
//! decides which `InfraChange`s should exist and writes them; the actuators carry them out.
//! The loop itself never calls a hypervisor.
//!
//! Everything here runs inside a leadership term (see `crate::run`).

pub mod book;
pub mod caches;
pub mod decide;
pub mod feedback;
pub mod graph;
mod intern;
pub mod pod;
pub mod protect;
pub mod providers;
pub mod relocate;
mod settings;
pub mod statuses;
pub mod taint;
pub mod throttle;
pub mod topology;

pub use settings::{HealthFault, HealthSettings};

use futures::FutureExt;
use kube::ResourceExt;
use plumbline_crds::{conditions::infra_change as ic_state, ChangePurpose, InfraChange};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::Notify;
use tracing::info;

use crate::{
    context::Context,
    ledger::{actuator::Actuators, writer::Writer},
    metrics::InfraChangeLabels,
    term::TermEnd,
};

/// How long after the loop starts the ledger waits, at most, for every provider its entries
/// target to report an inventory: until then a VM that is merely not listed yet would look
/// gone, and its throttles and shares released.
const LEDGER_WARMUP: Duration = Duration::from_secs(60);

/// Runs the health loop until the term ends.
pub async fn run(
    ctx: Arc<Context>,
    settings: HealthSettings,
    namespace: Option<String>,
    end: TermEnd,
    liveness: Arc<crate::liveness::Liveness>,
) {
    let changed = Arc::new(Notify::new());
    let (caches, drive) = caches::start(
        &ctx.client,
        namespace.as_deref(),
        settings.host_maintenance,
        changed.clone(),
    );
    let watches = tokio::spawn(drive);
    // Aborted with the loop, too.
    let _watches = AbortOnDrop(watches.abort_handle());
    let book = Arc::new(Mutex::new(book::HealthBook::default()));
    let mut samplers = providers::Samplers::default();
    let mut feedback = feedback::Feedback::new(&ctx, end.clone(), namespace.is_some());
    let mut protections = protect::Protections::default();
    let mut maintenances = crate::maintenance::Maintenances::default();
    let mut writer = Writer::new(namespace.as_deref());
    let mut topology = topology::Topology::new(namespace.as_deref());
    let mut actuators = Actuators::new(end.clone());
    let operator = writer.operator().to_string();
    let started = Instant::now();
    info!(
        unknown = settings.unknown.as_str(),
        taint_degraded_nodes = settings.taint_degraded_nodes,
        topology_labels = settings.topology_labels,
        %operator,
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
        let pass_started = Instant::now();
        let providers = caches.providers.state();
        samplers.sync(&ctx, &providers, &book, &changed);
        // Also providers that are gone but still named by an entry: it can still be abandoned.
        let targeted: BTreeSet<String> = providers
            .iter()
            .map(|p| p.name_any())
            .chain(
                caches
                    .changes
                    .state()
                    .iter()
                    .filter(|ic| ic.spec.operator == operator)
                    .filter_map(|ic| ic.spec.target.provider.clone()),
            )
            .collect();
        actuators.sync(&ctx, &caches.changes, targeted, &settings.ledger, &operator);
        // One pass, one clock, read once: schedules, verdicts, the throttle ladder and the
        // protections all judge the same instant (the operator's clock; wall time in production).
        let now: SystemTime = ctx.clock.now().into();
        // Decided before the pass reads the book: a provider's inventory arriving during the
        // pass must not make the ledger diff against views built without it (a new leader
        // released a throttle it had just inherited, its victim's pod not yet mapped to a VM).
        let ready = ledger_ready(&ctx, &caches, &book, &operator, started);
        let (mut wanted, views) = feedback
            .pass(&ctx, &caches, &book, &settings, &operator, now)
            .await;
        wanted.extend(
            protections
                .pass(&ctx, &caches, &views, &book, &operator, now)
                .await,
        );
        if settings.host_maintenance {
            wanted.extend(
                maintenances
                    .pass(&ctx, &caches, &book, &operator, now)
                    .await,
            );
        }
        if ready {
            writer
                .sync(&ctx, &caches.changes, &caches.providers, wanted)
                .await;
        }
        count_changes(&ctx, &caches.changes.state(), &operator);
        if settings.topology_labels {
            // Spawns its writes: never waits for them.
            topology.pass(&ctx, &caches, &book);
        }
        ctx.metrics
            .health
            .pass_duration
            .observe(pass_started.elapsed().as_secs_f64());
        liveness.health_pass_done();
        match settings.fault {
            Some(HealthFault::HealthLoopExit) => {
                tracing::error!("test fault: the storage-health loop exits");
                break;
            }
            Some(HealthFault::HealthLoopHang) => {
                tracing::error!("test fault: the storage-health loop hangs");
                end.clone().wait().await;
                break;
            }
            None => {}
        }
    }
    // No release on the way out: the ledger keeps every change, and the next leader continues
    // from it.
    actuators.stop_all();
    samplers.stop_all();
    topology.stop();
    watches.abort();
    info!("storage-health loop stopped");
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The ledger is only diffed against a complete picture: every cache listed, and every
/// provider that this instance's entries target has reported its VMs (or the warm-up is over).
fn ledger_ready(
    ctx: &Context,
    caches: &caches::Caches,
    book: &Arc<Mutex<book::HealthBook>>,
    operator: &str,
    started: Instant,
) -> bool {
    let synced = [
        ctx.intents.wait_until_ready().now_or_never(),
        caches.pods.wait_until_ready().now_or_never(),
        caches.nodes.wait_until_ready().now_or_never(),
        caches.providers.wait_until_ready().now_or_never(),
        caches.changes.wait_until_ready().now_or_never(),
    ]
    .iter()
    .all(|r| matches!(r, Some(Ok(()))))
        && crate::tenancy::synced(&ctx.tenants);
    if !synced {
        return false;
    }
    if started.elapsed() >= LEDGER_WARMUP {
        return true;
    }
    let b = match book.lock() {
        Ok(b) => b,
        Err(poisoned) => poisoned.into_inner(),
    };
    caches
        .changes
        .state()
        .iter()
        .filter(|ic| ic.spec.operator == operator)
        .filter_map(|ic| ic.spec.target.provider.as_deref())
        .all(|p| {
            b.providers()
                .get(p)
                .is_some_and(|v| !v.inventory().is_empty())
        })
}

/// `plumbline_infra_changes`: this instance's entries by purpose and state.
fn count_changes(ctx: &Context, changes: &[Arc<InfraChange>], operator: &str) {
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for purpose in [
        ChangePurpose::NeighbourThrottle,
        ChangePurpose::BackingVmProtection,
        ChangePurpose::StorageTaint,
        ChangePurpose::HostAntiAffinity,
        ChangePurpose::NeighbourRelocation,
    ] {
        for state in [
            ic_state::PENDING,
            ic_state::APPLIED,
            ic_state::DRIFTED,
            ic_state::CONTESTED,
            ic_state::FAILED,
            ic_state::UNSUPPORTED,
            ic_state::REVERTING,
        ] {
            counts.insert((purpose.as_str().into(), state.into()), 0);
        }
    }
    for ic in changes.iter().filter(|ic| ic.spec.operator == operator) {
        let state = if ic.metadata.deletion_timestamp.is_some() {
            ic_state::REVERTING.to_string()
        } else {
            ic.status
                .as_ref()
                .and_then(|s| s.state.clone())
                .unwrap_or_else(|| ic_state::PENDING.into())
        };
        *counts
            .entry((ic.spec.purpose.as_str().into(), state))
            .or_default() += 1;
    }
    for ((purpose, state), n) in counts {
        ctx.metrics
            .infra_changes
            .get_or_create(&InfraChangeLabels { purpose, state })
            .set(n);
    }
}
