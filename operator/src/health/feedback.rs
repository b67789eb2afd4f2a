//! One feedback pass carried out: read the caches and the book, let [`super::decide`] decide,
//! then write what it decided — pod conditions, then node conditions; intent statuses go to
//! [`super::statuses`], which writes them in the background — publish the throttle and taint
//! Events and set the metrics. Returns the infrastructure changes wanted in the ledger
//! (throttles through [`super::throttle`], taints through [`super::taint`]).

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    Api,
};
use plumbline_crds::{names::HEALTH_FIELD_MANAGER, InfraChangeSpec};
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Instant, SystemTime},
};
use tracing::{debug, info, warn};

use super::{
    book::HealthBook,
    caches::Caches,
    decide::{self, NodeWrite, PassInput, PassMemory, PassSeries, PodWrite},
    graph,
    pod::WirePod,
    relocate,
    settings::HealthSettings,
    statuses::StatusWriter,
    taint, throttle,
};
use crate::{
    context::Context,
    metrics::health::{DiskLabels, IntentLabels, TransitionLabels, VerdictLabels, VmLabels},
    term::TermEnd,
};

/// Pod and node condition writes in flight at once (see [`concurrently`]).
const WRITE_CONCURRENCY: usize = 16;

/// What a pass remembers for the next one.
pub struct Feedback {
    memory: PassMemory,
    series: Series,
    statuses: StatusWriter,
    /// Scoped to a namespace: see [`PassInput::scoped`].
    scoped: bool,
}

/// The per-VM and per-intent series set last pass with their values: only changed values are
/// set again, and series of VMs and intents that went away are removed. (The per-pod series are
/// the pass's lists, encoded on scrape: `metrics::pod_series`.)
#[derive(Default)]
struct Series {
    verdicts: SeriesMap<VerdictLabels, i64>,
    disks: SeriesMap<DiskLabels, u64>,
    iops: SeriesMap<VmLabels, u64>,
    hosts: SeriesMap<IntentLabels, i64>,
}

/// Hashed with foldhash, not SipHash: hashing the label sets of every series twice a pass was
/// most of the series' cost.
type SeriesMap<L, V> = HashMap<L, V, foldhash::fast::RandomState>;

impl Feedback {
    pub fn new(ctx: &Arc<Context>, end: TermEnd, scoped: bool) -> Self {
        Self {
            memory: PassMemory::default(),
            series: Series::default(),
            statuses: StatusWriter::start(ctx.clone(), end),
            scoped,
        }
    }

    /// Decides and writes everything for one pass; returns the infrastructure changes it
    /// wants in force (noisy-neighbour throttles, node taints, DRS rules) for the ledger, and
    /// the pass's graph for the rest of the pass.
    pub async fn pass(
        &mut self,
        ctx: &Arc<Context>,
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        settings: &HealthSettings,
        operator: &str,
        now: SystemTime,
    ) -> (Vec<InfraChangeSpec>, Vec<graph::IntentView>) {
        // Only intents their tenant policies allow may trigger infrastructure actions.
        let tenancy = crate::tenancy::InfrastructureIntents::read(ctx);
        let changes = caches.changes.state();
        let nodes = caches.nodes.state();
        let providers = caches.providers.state();
        for (intent, fingerprint) in self.statuses.failed() {
            if self
                .memory
                .intent_status
                .get(&intent)
                .is_some_and(|(f, _)| *f == fingerprint)
            {
                self.memory.intent_status.remove(&intent);
            }
        }
        let (views, decision) = {
            let mut b = match book.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            let views = graph::build(caches, &b, now.into(), &tenancy.intents);
            let input = PassInput {
                views: &views,
                nodes: &nodes,
                providers: &providers,
                changes: &changes,
                may_judge_nodes: &|ns, name| tenancy.may_judge_nodes(ns, name),
                settings,
                operator,
                scoped: self.scoped,
                now,
                instant: Instant::now(),
            };
            let decision = decide::decide(&input, &mut b, &mut self.memory);
            (views, decision)
        };
        self.set_series(ctx, decision.series);
        if !(decision.pods.is_empty() && decision.nodes.is_empty()) {
            let _first = self.statuses.hold().await;
            self.write_pods(ctx, decision.pods, now).await;
            self.write_nodes(ctx, decision.nodes).await;
        }
        for w in decision.statuses {
            // Recorded as written when handed over; forgotten again if the write fails.
            self.memory
                .intent_status
                .insert(w.intent.clone(), (w.fingerprint, Instant::now()));
            self.statuses.hand_over(w);
        }
        let (throttles, taints) = (decision.throttles, decision.taints);
        throttle::publish(
            ctx,
            &views,
            &changes,
            &throttles,
            operator,
            &decision.actions,
        )
        .await;
        taint::publish(ctx, taints.newly_held).await;
        relocate::publish(ctx, &views, &decision.relocations).await;
        let mut wanted = throttles;
        wanted.extend(taints.wanted);
        wanted.extend(decision.rules);
        wanted.extend(decision.moves);
        (wanted, views)
    }

    async fn write_pods(&mut self, ctx: &Context, writes: Vec<PodWrite>, now: SystemTime) {
        let params = PatchParams::apply(HEALTH_FIELD_MANAGER).force();
        let outcomes = concurrently(writes, |w: &PodWrite| {
            // The answer decodes into the cache's pod: the rest of it is skipped, not built.
            let api: Api<WirePod> = Api::namespaced(ctx.client.clone(), &w.namespace);
            let (pod, body, params) = (w.pod.clone(), w.body(now), &params);
            async move { api.patch_status(&pod, params, &Patch::Apply(&body)).await }
        })
        .await;
        for (w, outcome) in outcomes {
            self.pod_written(ctx, w, outcome);
        }
    }

    fn pod_written(&mut self, ctx: &Context, w: PodWrite, outcome: kube::Result<()>) {
        match outcome {
            Ok(_) => {
                self.memory
                    .pod_written
                    .insert((w.namespace.clone(), w.pod.clone()), Instant::now());
                if w.transition {
                    ctx.metrics
                        .health
                        .readiness_transitions
                        .get_or_create(&TransitionLabels {
                            namespace: w.namespace.clone(),
                            intent: w.intent.clone(),
                            to: w.status().into(),
                        })
                        .inc();
                    info!(pod = %format!("{}/{}", w.namespace, w.pod), ready = w.verdict.ready, reason = w.verdict.reason, message = %w.verdict.message, "storage readiness changed");
                }
                if let Some(d) = w.detection {
                    ctx.metrics
                        .health
                        .detection_latency
                        .observe(d.as_secs_f64());
                }
            }
            Err(e) => {
                warn!(pod = %format!("{}/{}", w.namespace, w.pod), error = %e, "writing the storage readiness condition failed")
            }
        }
    }

    async fn write_nodes(&mut self, ctx: &Context, writes: Vec<NodeWrite>) {
        let params = PatchParams::apply(HEALTH_FIELD_MANAGER).force();
        let api: Api<Node> = Api::all(ctx.client.clone());
        let outcomes = concurrently(writes, |w: &NodeWrite| {
            let (api, node, body, params) = (&api, w.node.clone(), w.body(), &params);
            async move { api.patch_status(&node, params, &Patch::Apply(&body)).await }
        })
        .await;
        for (w, outcome) in outcomes {
            match outcome {
                Ok(_) => {
                    debug!(node = %w.node, "node storage condition written");
                    self.memory.node_written.insert(w.node, Instant::now());
                }
                Err(e) => {
                    warn!(node = %w.node, error = %e, "writing the node storage condition failed")
                }
            }
        }
    }

    /// Sets this pass's series that are new or changed, and removes those of the last pass
    /// that are gone. At 10,000 pods, setting every series again each pass was a tenth of it.
    fn set_series(&mut self, ctx: &Context, s: PassSeries) {
        let m = &ctx.metrics.health;
        m.taints_held.set(s.taints_held);
        let last = std::mem::take(&mut self.series);
        let f64s = |g: &Gauge<f64, AtomicU64>, v: u64| {
            g.set(f64::from_bits(v));
        };
        let i64s = |g: &Gauge, v: i64| {
            g.set(v);
        };
        // The per-pod series, unless they are as last pass.
        if let Some(backing) = s.backing {
            m.pod_series.set_backing(backing);
        }
        if let Some(pods) = s.pods {
            m.pod_series.set_healthy(pods);
        }
        self.series = Series {
            verdicts: update(last.verdicts, s.verdicts, &m.vm_verdict, i64s),
            iops: update(last.iops, bits(s.iops), &m.vm_iops, f64s),
            disks: update(last.disks, bits(s.disks), &m.disk_latency, f64s),
            hosts: update(last.hosts, s.hosts, &m.workload_hosts, i64s),
        };
    }
}

/// Gauges of f64 by their bits, so that a value is set again only when it changed.
fn bits<L>(series: Vec<(L, f64)>) -> impl Iterator<Item = (L, u64)> {
    series.into_iter().map(|(l, v)| (l, v.to_bits()))
}

/// This pass's `series` against the `last` pass's: sets those new or changed, removes those
/// gone, and returns this pass's.
fn update<L: Clone + Eq + Hash, V: PartialEq + Copy, M: Default>(
    mut last: SeriesMap<L, V>,
    series: impl IntoIterator<Item = (L, V)>,
    family: &Family<L, M>,
    set: impl Fn(&M, V),
) -> SeriesMap<L, V> {
    let now: SeriesMap<L, V> = series
        .into_iter()
        .map(|(l, v)| {
            if last.remove(&l) != Some(v) {
                set(&family.get_or_create(&l), v);
            }
            (l, v)
        })
        .collect();
    for l in last.keys() {
        family.remove(l);
    }
    now
}

/// Runs `write` for each of `writes`, [`WRITE_CONCURRENCY`] at a time, and waits for all of
/// them (the next pass decides on what was written); the outcomes come in completion order.
/// One after another, a thousand pods flipping at once took a thousand apiserver round trips
/// in a row (docs/scale.md). The bound is the client-side limit that keeps the operator well
/// under the apiserver's 200 mutating requests in flight, so it gets no 429s.
/// The object each write returns is dropped as soon as it arrives: kept until the last write,
/// a first pass over 10,000 pods held 10,000 whole pods with their managed fields (250 MB).
async fn concurrently<W, T, F>(
    writes: Vec<W>,
    write: impl Fn(&W) -> F,
) -> Vec<(W, kube::Result<()>)>
where
    F: std::future::Future<Output = kube::Result<T>>,
{
    use futures::StreamExt;
    futures::stream::iter(writes)
        .map(|w| {
            let written = write(&w);
            async move { (w, written.await.map(drop)) }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await
}
