//! The optional `NoSchedule` taint on nodes whose storage is confirmed over budget
//! (`--taint-degraded-nodes`), removed again when the node recovers or its health becomes
//! unknown.
//!
//! `spec.taints` is shared with the node lifecycle controller, cluster admins and other tools,
//! and it is an atomic list: no merge key for a strategic merge patch, and server-side apply
//! would make one manager own (and replace) all of it. So every change is a read-modify-write:
//! the node is read fresh, only the storage taint is added or removed
//! ([`node_taints`]), and the whole list goes back in a merge patch carrying the
//! resourceVersion that was read. A concurrent change makes the write fail with a conflict
//! instead of being overwritten, and it is retried on fresh data.

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
    Api, Resource, ResourceExt,
};
use plumbline_crds::names::NODE_STORAGE_TAINT;
use plumbline_policies::health::{node_taints, TAINT_EFFECT};
use serde_json::json;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    context::Context,
    metrics::{ActionResult, Layer},
};

const METRIC_ACTION: &str = "node_taint";
/// Attempts per change when others write the node at the same moment.
const ATTEMPTS: usize = 3;
/// After a failed change (e.g. Forbidden without `patch` on nodes), leave the node alone this
/// long rather than retrying every pass.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// Where Events about cluster-scoped objects go.
const EVENT_NAMESPACE: &str = "default";

/// What one pass wants for one node.
pub struct TaintWant {
    pub node: Arc<Node>,
    pub taint: bool,
    /// Why, for the Event: the node condition's message.
    pub because: String,
}

#[derive(Default)]
pub struct NodeTaints {
    failed: HashMap<String, Instant>,
    /// Nodes this operator tainted, so a namespace-scoped one untaints them when its pods leave.
    tainted: HashSet<String>,
    /// The server wants Events about nodes to name the Event's namespace in the reference.
    event_namespace_in_reference: bool,
}

fn taints_of(node: &Node) -> &[k8s_openapi::api::core::v1::Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

impl NodeTaints {
    pub fn tainted(&self, node: &str) -> bool {
        self.tainted.contains(node)
    }

    /// Adds or removes the storage taint where the cached node differs from what is wanted.
    pub async fn carry_out(&mut self, ctx: &Context, wants: Vec<TaintWant>) {
        for w in wants {
            if node_taints(taints_of(&w.node), w.taint).is_none() {
                continue;
            }
            let name = w.node.name_any();
            if self
                .failed
                .get(&name)
                .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
            {
                continue;
            }
            let result = match set_taint(ctx, &name, w.taint).await {
                Ok(None) => {
                    debug!(node = %name, taint = w.taint, "storage taint already as wanted (cache behind)");
                    continue;
                }
                Ok(Some(node)) => Ok(node),
                Err(e) => Err(e),
            };
            let (result_label, type_, reason, note) = match &result {
                Ok(_) if w.taint => (
                    ActionResult::applied,
                    EventType::Normal,
                    "StorageTaintAdded",
                    format!("{NODE_STORAGE_TAINT}:{TAINT_EFFECT} added: {}", w.because),
                ),
                Ok(_) => (
                    ActionResult::reverted,
                    EventType::Normal,
                    "StorageTaintRemoved",
                    format!("{NODE_STORAGE_TAINT}:{TAINT_EFFECT} removed: {}", w.because),
                ),
                Err(e) => (
                    ActionResult::failed,
                    EventType::Warning,
                    "StorageTaintFailed",
                    format!(
                        "{} {NODE_STORAGE_TAINT}:{TAINT_EFFECT} failed: {e}",
                        if w.taint { "adding" } else { "removing" }
                    ),
                ),
            };
            ctx.metrics
                .action(Layer::kubernetes, METRIC_ACTION, result_label);
            match &result {
                Ok(_) => {
                    self.failed.remove(&name);
                    if w.taint {
                        self.tainted.insert(name.clone());
                    } else {
                        self.tainted.remove(&name);
                    }
                    info!(node = %name, taint = w.taint, because = %w.because, "storage taint changed");
                }
                Err(e) => {
                    self.failed.insert(name.clone(), Instant::now());
                    warn!(node = %name, taint = w.taint, error = %e, "changing the storage taint failed");
                }
            }
            let event = Event {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "TaintNode".into(),
                secondary: None,
            };
            let regarding = result.as_ref().unwrap_or(w.node.as_ref());
            self.publish(ctx, regarding, event).await;
        }
    }

    /// Publishes an Event about the node (best effort). Kubernetes 1.20's events.k8s.io/v1
    /// rejects an Event about a cluster-scoped object unless the reference carries the Event's
    /// namespace (`default`); on such a server the reference gets it, and the Event is still
    /// found by `kubectl get events --field-selector involvedObject.name=NODE`.
    async fn publish(&mut self, ctx: &Context, node: &Node, event: Event) {
        let mut reference = node.object_ref(&());
        if self.event_namespace_in_reference {
            reference.namespace = Some(EVENT_NAMESPACE.into());
        }
        let mut result = ctx.recorder.publish(&event, &reference).await;
        if let Err(kube::Error::Api(s)) = &result {
            if s.code == 422 && !self.event_namespace_in_reference {
                self.event_namespace_in_reference = true;
                reference.namespace = Some(EVENT_NAMESPACE.into());
                result = ctx.recorder.publish(&event, &reference).await;
            }
        }
        if let Err(e) = result {
            warn!(node = %node.name_any(), reason = %event.reason, error = %e, "publishing an Event failed");
        }
    }
}

/// Reads the node, adds or removes the storage taint, and writes the list back guarded by
/// the resourceVersion read; retried on a conflict. `None` when the node already says so.
async fn set_taint(ctx: &Context, name: &str, taint: bool) -> Result<Option<Node>, kube::Error> {
    let api = Api::<Node>::all(ctx.client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = api.get(name).await?;
        let Some(next) = node_taints(taints_of(&node), taint) else {
            return Ok(None);
        };
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": if next.is_empty() { json!(null) } else { json!(next) } },
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(node) => return Ok(Some(node)),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < ATTEMPTS => {
                debug!(node = %name, attempt, "node changed while tainting; retrying on fresh data");
            }
            Err(e) => return Err(e),
        }
    }
}
