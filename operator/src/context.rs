//! What every loop of a leadership term shares: the client, the served API versions, the
//! event recorder, the metrics, the clock, the intent cache and the hypervisor adapters.

use kube::{
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
    Client, Resource,
};
use plumbline_adapters::Hypervisor;
use plumbline_crds::{TenantPolicy, WorkloadIntent};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{clock::Clock, discovery::ServedApis, metrics::Metrics};

/// An Event: Warning or Normal, its reason, the note (cut to the 1000 characters the API
/// keeps) and the action.
pub fn event(warning: bool, reason: &str, note: &str, action: &str) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    }
}

/// Reporter name on Events (`kubectl describe` shows it as "From").
pub const CONTROLLER_NAME: &str = "plumbline";

/// Hypervisor adapters, keyed by HypervisorProvider name. Filled by the provider/health side
/// (issue 5) as providers come and go; outlives leadership terms so sessions are reused.
#[derive(Default)]
pub struct Adapters {
    pub hypervisors: RwLock<BTreeMap<String, Arc<dyn Hypervisor>>>,
}

impl Adapters {
    pub fn get(&self, provider: &str) -> Option<Arc<dyn Hypervisor>> {
        crate::locks::read(&self.hypervisors).get(provider).cloned()
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub apis: ServedApis,
    pub adapters: Arc<Adapters>,
    /// Every WorkloadIntent, kept current by the intent controller's watch. Read-only.
    pub intents: Store<WorkloadIntent>,
    /// Every TenantPolicy, kept current by a watch the intent controller drives. Read-only.
    pub tenants: Store<TenantPolicy>,
    /// Ask the intent controller to reconcile one intent now (e.g. after a storage verdict
    /// changed and its status should say so).
    pub reconcile: mpsc::UnboundedSender<ObjectRef<WorkloadIntent>>,
    /// This replica's name in the Lease and on Events.
    pub identity: String,
    /// Where the signals of `spec.activation` are read.
    pub prometheus: crate::prometheus::Source,
    /// Consecutive reconcile failures per intent, for error_policy's backoff.
    pub retries: RetryBackoff,
    /// The server wants Events about cluster-scoped objects to name the Event's namespace in
    /// the reference (Kubernetes 1.20); learnt from the first rejection.
    pub event_namespace_in_reference: AtomicBool,
}

/// Where Events about cluster-scoped objects (Nodes, InfraChanges) go.
const CLUSTER_EVENT_NAMESPACE: &str = "default";

/// Exponential backoff per object: 1 s after the first failure, doubling up to 5 minutes.
#[derive(Default)]
pub struct RetryBackoff(Mutex<HashMap<ObjectRef<WorkloadIntent>, u32>>);

impl RetryBackoff {
    const MAX: Duration = Duration::from_secs(300);

    pub fn failed(&self, key: &ObjectRef<WorkloadIntent>) -> Duration {
        let mut failures = crate::locks::lock(&self.0);
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Self::MAX)
    }

    pub fn succeeded(&self, key: &ObjectRef<WorkloadIntent>) {
        crate::locks::lock(&self.0).remove(key);
    }
}

impl Context {
    pub fn reporter(identity: &str) -> Reporter {
        Reporter {
            controller: CONTROLLER_NAME.to_string(),
            instance: Some(identity.to_string()),
        }
    }

    /// Publishes an Event about `obj`. Events are best effort: a failure is logged, never
    /// fails the reconcile that emitted it.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, event: Event) {
        let reference = obj.object_ref(&());
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(
                error = %e,
                reason = %event.reason,
                object = ?reference.name,
                "publishing an Event failed"
            );
        }
    }

    /// Publishes an Event about a cluster-scoped object (best effort). Kubernetes 1.20's
    /// events.k8s.io/v1 rejects such an Event unless the reference carries the Event's
    /// namespace (`default`); on such a server the reference gets it, and the Event is still
    /// found by `kubectl get events --field-selector involvedObject.name=NAME`.
    pub async fn publish_cluster_scoped<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        event: Event,
    ) {
        let mut reference = obj.object_ref(&());
        if self.event_namespace_in_reference.load(Ordering::Relaxed) {
            reference.namespace = Some(CLUSTER_EVENT_NAMESPACE.into());
        }
        let mut result = self.recorder.publish(&event, &reference).await;
        if let Err(kube::Error::Api(s)) = &result {
            if s.code == 422 && reference.namespace.is_none() {
                self.event_namespace_in_reference
                    .store(true, Ordering::Relaxed);
                reference.namespace = Some(CLUSTER_EVENT_NAMESPACE.into());
                result = self.recorder.publish(&event, &reference).await;
            }
        }
        if let Err(e) = result {
            warn!(error = %e, reason = %event.reason, object = ?reference.name, "publishing an Event failed");
        }
    }
}
