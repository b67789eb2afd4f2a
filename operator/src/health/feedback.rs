//! One feedback pass carried out: read the caches and the book, let [`super::decide`] decide,
//! then write what it decided — pod conditions, node conditions, intent statuses, in that
//! order — publish the throttle and taint Events and set the metrics. Returns the
//! infrastructure changes wanted in the ledger (throttles through [`super::throttle`], taints
//! through [`super::taint`]).

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    Api,
};
use plumbline_crds::{names::HEALTH_FIELD_MANAGER, InfraChangeSpec, WorkloadIntent};
use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};
use tracing::{debug, info, warn};

use super::{
    book::HealthBook,
    caches::Caches,
    decide::{self, NodeWrite, PassInput, PassMemory, PassSeries, PodWrite, StatusWrite},
    graph,
    pod::CachedPod,
    relocate,
    settings::HealthSettings,
    taint, throttle,
};
use crate::{
    context::Context,
    metrics::health::{
        BackingLabels, DiskLabels, IntentLabels, PodLabels, TransitionLabels, VerdictLabels,
        VmLabels,
    },
};

/// Pod and node condition writes in flight at once (see [`concurrently`]).
const WRITE_CONCURRENCY: usize = 16;

/// What a pass remembers for the next one.
#[derive(Default)]
pub struct Feedback {
    memory: PassMemory,
    series: Series,
    /// Scoped to a namespace: see [`PassInput::scoped`].
    scoped: bool,
}

/// Label sets written last pass, so series of pods and VMs that went away are removed.
#[derive(Default)]
struct Series {
    backing: HashSet<BackingLabels>,
    pods: HashSet<PodLabels>,
    verdicts: HashSet<VerdictLabels>,
    disks: HashSet<DiskLabels>,
    iops: HashSet<VmLabels>,
    hosts: HashSet<IntentLabels>,
}

impl Feedback {
    pub fn new(scoped: bool) -> Self {
        Self {
            scoped,
            ..Self::default()
        }
    }

    /// Decides and writes everything for one pass; returns the infrastructure changes it
    /// wants in force (noisy-neighbour throttles, node taints, DRS rules) for the ledger.
    pub async fn pass(
        &mut self,
        ctx: &Arc<Context>,
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        settings: &HealthSettings,
        operator: &str,
        now: SystemTime,
    ) -> Vec<InfraChangeSpec> {
        // Only intents their tenant policies allow may trigger infrastructure actions.
        let tenancy = crate::tenancy::InfrastructureIntents::read(ctx);
        let changes = caches.changes.state();
        let nodes = caches.nodes.state();
        let providers = caches.providers.state();
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

        self.write_pods(ctx, decision.pods, now).await;
        self.write_nodes(ctx, decision.nodes).await;
        for w in decision.statuses {
            self.write_intent_status(ctx, w).await;
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
        wanted
    }

    async fn write_pods(&mut self, ctx: &Context, writes: Vec<PodWrite>, now: SystemTime) {
        let params = PatchParams::apply(HEALTH_FIELD_MANAGER).force();
        let outcomes = concurrently(writes, |w: &PodWrite| {
            // The answer decodes into the cache's pod: the rest of it is skipped, not built.
            let api: Api<CachedPod> = Api::namespaced(ctx.client.clone(), &w.namespace);
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

    async fn write_intent_status(&mut self, ctx: &Context, w: StatusWrite) {
        let StatusWrite {
            intent,
            body,
            fingerprint,
        } = w;
        let (namespace, name) = &intent;
        let patch = plumbline_crds::apply::status::<WorkloadIntent>(body);
        let params = PatchParams::apply(HEALTH_FIELD_MANAGER).force();
        match Api::<WorkloadIntent>::namespaced(ctx.client.clone(), namespace)
            .patch_status(name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                self.memory
                    .intent_status
                    .insert(intent, (fingerprint, Instant::now()));
            }
            Err(e) => {
                warn!(intent = %format!("{namespace}/{name}"), error = %e, "writing backing map and guard to status failed")
            }
        }
    }

    /// Sets this pass's series and removes those of the last pass that are gone.
    fn set_series(&mut self, ctx: &Context, s: PassSeries) {
        let m = &ctx.metrics.health;
        m.taints_held.set(s.taints_held);
        let new = Series {
            verdicts: set_all(s.verdicts, |l, v| {
                m.vm_verdict.get_or_create(l).set(v);
            }),
            iops: set_all(s.iops, |l, v| {
                m.vm_iops.get_or_create(l).set(v);
            }),
            disks: set_all(s.disks, |l, v| {
                m.disk_latency.get_or_create(l).set(v);
            }),
            backing: set_all(s.backing.into_iter().map(|l| (l, 1)), |l, v| {
                m.backing_info.get_or_create(l).set(v);
            }),
            pods: set_all(s.pods, |l, v| {
                m.pod_storage_healthy.get_or_create(l).set(v);
            }),
            hosts: set_all(s.hosts, |l, v| {
                m.workload_hosts.get_or_create(l).set(v);
            }),
        };
        for l in self.series.hosts.difference(&new.hosts) {
            m.workload_hosts.remove(l);
        }
        for l in self.series.backing.difference(&new.backing) {
            m.backing_info.remove(l);
        }
        for l in self.series.pods.difference(&new.pods) {
            m.pod_storage_healthy.remove(l);
        }
        for l in self.series.verdicts.difference(&new.verdicts) {
            m.vm_verdict.remove(l);
        }
        for l in self.series.disks.difference(&new.disks) {
            m.disk_latency.remove(l);
        }
        for l in self.series.iops.difference(&new.iops) {
            m.vm_iops.remove(l);
        }
        self.series = new;
    }
}

/// Sets each series with `set`, and returns their labels.
fn set_all<L: Eq + Hash, V>(
    series: impl IntoIterator<Item = (L, V)>,
    set: impl Fn(&L, V),
) -> HashSet<L> {
    series
        .into_iter()
        .map(|(l, v)| {
            set(&l, v);
            l
        })
        .collect()
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
