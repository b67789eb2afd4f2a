//! The WorkloadIntent controller: watches intents and the Deployments/StatefulSets they
//! target, and reconciles each intent into the Kubernetes half of its plan.

mod announce;
pub mod apply;
pub(crate) mod conditions;
mod execute;
pub mod fields;
pub mod lenient;
pub mod observe;
mod plan;
mod reconcile;
mod revert;
pub mod signals;
mod status;

pub use observe::{conflicting_intent, list_intents, observe, IntentObservation, LiveWorkload};
pub use plan::plan_for;
pub use reconcile::{reconcile, CONTROLLER};

use futures::{stream::BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::{
    api::PartialObjectMeta,
    runtime::{
        controller::{Action, Config as ControllerConfig},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher, Controller, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use plumbline_crds::{conditions::status as cond_status, TargetKind, TenantPolicy, WorkloadIntent};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    clock::Clock,
    context::{Adapters, Context},
    discovery::ServedApis,
    metrics::Metrics,
    term::TermEnd,
    Error,
};

/// The parts of a term's controller that are created with its `Context`.
pub struct TermInputs {
    intents: BoxStream<'static, Result<WorkloadIntent, watcher::Error>>,
    tenant_policies: BoxStream<'static, Result<TenantPolicy, watcher::Error>>,
    reconcile_requests: mpsc::UnboundedReceiver<ObjectRef<WorkloadIntent>>,
    concurrency: u16,
    namespace: Option<String>,
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Creates the shared context of one leadership term, with the intent cache it fills.
// Each argument is one field of the Context; a builder would only move the list elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn term_context(
    client: Client,
    identity: String,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    apis: ServedApis,
    adapters: Arc<Adapters>,
    concurrency: u16,
    namespace: Option<String>,
    prometheus: crate::prometheus::Source,
) -> (Arc<Context>, TermInputs) {
    let (reader, writer) = reflector::store();
    // Decoded one by one: an intent the types cannot read never stops the others' watch.
    let intents = lenient::watch(client.clone(), namespace.as_deref())
        .default_backoff()
        .modify(observe::prune_backing)
        .reflect(writer)
        .applied_objects()
        .boxed();
    // Cluster-scoped, and watched even by a namespace-scoped operator: a policy may name its
    // namespace.
    let (tenants, tenants_writer) = reflector::store();
    let tenant_policies = watcher(
        Api::<TenantPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(tenants_writer)
    .touched_objects()
    .boxed();
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            Context::reporter(&identity),
        ),
        client,
        metrics,
        clock,
        apis,
        adapters,
        intents: reader,
        tenants,
        reconcile: tx,
        retries: Default::default(),
        identity,
        prometheus,
        event_namespace_in_reference: Default::default(),
    });
    (
        ctx,
        TermInputs {
            intents,
            tenant_policies,
            reconcile_requests: rx,
            concurrency,
            namespace,
        },
    )
}

/// Intents in `namespace` that target `kind`/`name`.
fn intents_targeting(
    store: &Store<WorkloadIntent>,
    kind: TargetKind,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<WorkloadIntent>> {
    store
        .state()
        .iter()
        .filter(|wi| wi.namespace().as_deref() == Some(namespace))
        .filter(|wi| wi.spec.target.kind == kind && wi.spec.target.name == name)
        .map(|wi| ObjectRef::from_obj(wi.as_ref()))
        .collect()
}

/// Spec changes of workloads (metadata only, filtered by generation so status churn during
/// rollouts does not requeue anything), mapped to the intents that target them.
fn workload_changes<K>(
    client: &Client,
    namespace: Option<&str>,
) -> BoxStream<'static, Result<PartialObjectMeta<K>, watcher::Error>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(
        scoped_api::<PartialObjectMeta<K>>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default())
    .boxed()
}

/// Runs the controller until the term ends.
pub async fn run(ctx: Arc<Context>, inputs: TermInputs, end: TermEnd) {
    let TermInputs {
        intents,
        tenant_policies,
        reconcile_requests,
        concurrency,
        namespace,
    } = inputs;
    let by_deployment = ctx.intents.clone();
    let by_statefulset = ctx.intents.clone();
    let by_policy = ctx.intents.clone();
    Controller::for_stream(intents, ctx.intents.clone())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .watches_stream(
            workload_changes::<Deployment>(&ctx.client, namespace.as_deref()),
            move |d| {
                intents_targeting(
                    &by_deployment,
                    TargetKind::Deployment,
                    &d.namespace().unwrap_or_default(),
                    &d.name_any(),
                )
            },
        )
        .watches_stream(
            workload_changes::<StatefulSet>(&ctx.client, namespace.as_deref()),
            move |s| {
                intents_targeting(
                    &by_statefulset,
                    TargetKind::StatefulSet,
                    &s.namespace().unwrap_or_default(),
                    &s.name_any(),
                )
            },
        )
        // Any policy change may allow or refuse any intent.
        .watches_stream(tenant_policies, move |_| {
            by_policy
                .state()
                .iter()
                .map(|wi| ObjectRef::from_obj(wi.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(ctx.clock.jumps())
        .reconcile_on(futures::stream::unfold(
            reconcile_requests,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        ))
        .graceful_shutdown_on(end.wait())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            count_intents(&ctx);
            async move {
                match result {
                    Ok((obj, action)) => debug!(intent = %obj, ?action, "reconciled"),
                    Err(e) => debug!(error = %e, "reconcile failed"),
                }
            }
        })
        .await;
}

/// Updates the `plumbline_intents{state}` gauge from the intent cache: degraded, else active
/// or inactive per the Active condition.
fn count_intents(ctx: &Context) {
    let (mut active, mut inactive, mut degraded) = (0, 0, 0);
    for wi in ctx.intents.state() {
        let conditions = wi
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let is = |t: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == t && c.status == cond_status::TRUE)
        };
        if is(plumbline_crds::conditions::intent::DEGRADED) {
            degraded += 1;
        } else if is(plumbline_crds::conditions::intent::ACTIVE) {
            active += 1;
        } else {
            inactive += 1;
        }
    }
    for (state, n) in [
        ("active", active),
        ("inactive", inactive),
        ("degraded", degraded),
    ] {
        ctx.metrics
            .intents
            .get_or_create(&crate::metrics::IntentStateLabels {
                state: state.to_string(),
            })
            .set(n);
    }
}

/// Counts the failure and retries with a backoff that doubles with each consecutive failure
/// of the same intent (1 s … 5 min); a successful reconcile resets it.
pub fn error_policy(wi: Arc<WorkloadIntent>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(wi.as_ref());
    let delay = ctx.retries.failed(&key);
    warn!(intent = %key, error = %error, retry_in = ?delay, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.kind());
    Action::requeue(delay)
}
