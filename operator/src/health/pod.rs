//! The pod as the health caches keep it: only what the passes read, and one shared copy of
//! what pods hold alike.
//!
//! A `k8s_openapi` `Pod` is about 2.5 KB before any of its strings (every field of its spec
//! and status is inline); even decoded with only what the passes read, in `k8s_openapi`'s
//! shapes, a pod took 2.4 KB and 10,000 of them 24 MB, the largest part of the operator's live
//! heap (heaptrack, docs/scale.md). The watch decodes each pod into a [`WirePod`] (containers,
//! volumes and the rest of the spec and status are skipped by the decoder, never built), and
//! the cache keeps a [`CachedPod`] made from it: the namespace, labels, owners, node name and
//! placement shared through [`Pools`] with the other pods of the same workload or node, the
//! two conditions the passes read and little else.

use k8s_openapi::{
    api::core::v1::{NodeAffinity, NodeSelectorTerm, PodCondition, Toleration},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::{reflector::Lookup, watcher};
use plumbline_crds::{conditions::status, names::STORAGE_READINESS_GATE};
use serde::{Deserialize, Serialize};
use std::{
    borrow::Cow,
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::intern::Pool;

/// A pod as the API serves it, with only the fields the cache keeps: what the watch and the
/// condition writes' answers decode into.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WirePod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<WirePodSpec>,
    pub status: Option<WirePodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePodSpec {
    pub node_name: Option<String>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<Toleration>>,
    pub affinity: Option<WireAffinity>,
}

/// Of the pod's affinity, only the node affinity (the taint guard's).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAffinity {
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WirePodStatus {
    pub conditions: Option<Vec<PodCondition>>,
}

impl k8s_openapi::Resource for WirePod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for WirePod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What of a pod the passes read.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "WirePod")]
pub struct CachedPod {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub owners: Arc<Vec<Owner>>,
    /// Its deletion has begun.
    pub deleting: bool,
    pub node_name: Option<Arc<str>>,
    /// Where it may be scheduled, for the taint guard.
    pub placement: Arc<Placement>,
    /// Its `Ready` condition.
    pub ready: Option<Condition>,
    /// The storage gate's condition.
    pub storage: Option<Condition>,
}

/// One of the pod's owner references.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub controller: bool,
}

/// Where a pod may be scheduled: its node selector, tolerations and required node affinity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub required_terms: Vec<NodeSelectorTerm>,
}

impl Eq for Placement {}

impl Hash for Placement {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.node_selector.hash(h);
        for t in &self.tolerations {
            (
                &t.key,
                &t.operator,
                &t.value,
                &t.effect,
                t.toleration_seconds,
            )
                .hash(h);
        }
        for term in &self.required_terms {
            for r in term
                .match_expressions
                .iter()
                .chain(&term.match_fields)
                .flatten()
            {
                (&r.key, &r.operator, &r.values).hash(h);
            }
        }
    }
}

/// A pod condition as the passes read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// `True`, `False` or `Unknown` (anything else reads as `Unknown`).
    pub status: &'static str,
    pub reason: Option<Arc<str>>,
    pub message: Option<Arc<str>>,
}

/// The shared copies the pods of one cache hold.
#[derive(Debug, Default)]
pub struct Pools {
    strings: Pool<str>,
    labels: Pool<BTreeMap<String, String>>,
    owners: Pool<Vec<Owner>>,
    placements: Pool<Placement>,
}

impl CachedPod {
    /// The cache's pod of `wire`, sharing what other pods hold alike through `pools`.
    pub fn from_wire(wire: WirePod, pools: &mut Pools) -> Self {
        let meta = wire.metadata;
        let spec = wire.spec.unwrap_or_default();
        let owners: Vec<Owner> = meta
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|o| Owner {
                kind: o.kind,
                name: o.name,
                controller: o.controller == Some(true),
            })
            .collect();
        let placement = Placement {
            node_selector: spec.node_selector.unwrap_or_default(),
            tolerations: spec.tolerations.unwrap_or_default(),
            required_terms: spec
                .affinity
                .and_then(|a| a.node_affinity)
                .and_then(|a| a.required_during_scheduling_ignored_during_execution)
                .map(|r| r.node_selector_terms)
                .unwrap_or_default(),
        };
        let conditions = wire.status.and_then(|s| s.conditions).unwrap_or_default();
        let mut condition = |type_: &str| {
            let c = conditions.iter().find(|c| c.type_ == type_)?;
            Some(Condition {
                status: match c.status.as_str() {
                    status::TRUE => status::TRUE,
                    status::FALSE => status::FALSE,
                    _ => status::UNKNOWN,
                },
                reason: c.reason.as_deref().map(|r| pools.strings.share(r)),
                message: c.message.as_deref().map(|m| pools.strings.share(m)),
            })
        };
        let (ready, storage) = (condition("Ready"), condition(STORAGE_READINESS_GATE));
        Self {
            name: meta.name.unwrap_or_default().into(),
            namespace: pools
                .strings
                .share(meta.namespace.as_deref().unwrap_or_default()),
            labels: pools.labels.share_owned(meta.labels.unwrap_or_default()),
            owners: pools.owners.share_owned(owners),
            deleting: meta.deletion_timestamp.is_some(),
            node_name: spec.node_name.as_deref().map(|n| pools.strings.share(n)),
            placement: pools.placements.share_owned(placement),
            ready,
            storage,
        }
    }

    /// The condition of `type_`, if the pod has one (only `Ready` and the storage gate's are
    /// kept).
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        match type_ {
            "Ready" => self.ready.as_ref(),
            STORAGE_READINESS_GATE => self.storage.as_ref(),
            _ => None,
        }
    }

    /// The controller among its owners.
    pub fn controller(&self) -> Option<&Owner> {
        self.owners.iter().find(|o| o.controller)
    }
}

/// Made with pools of its own (tests and one-off decodes; the cache shares its pools).
impl From<WirePod> for CachedPod {
    fn from(wire: WirePod) -> Self {
        Self::from_wire(wire, &mut Pools::default())
    }
}

/// The watch's event for the cache: each pod made a [`CachedPod`].
pub fn cached_event(
    event: watcher::Event<WirePod>,
    pools: &mut Pools,
) -> watcher::Event<CachedPod> {
    use watcher::Event;
    let mut cached = |p| CachedPod::from_wire(p, pools);
    match event {
        Event::Apply(p) => Event::Apply(cached(p)),
        Event::Delete(p) => Event::Delete(cached(p)),
        Event::InitApply(p) => Event::InitApply(cached(p)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// The store keys a cached pod by its namespace and name, as the Pod it was made from.
impl Lookup for CachedPod {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <WirePod as k8s_openapi::Resource>::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        <WirePod as k8s_openapi::Resource>::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        <WirePod as k8s_openapi::Resource>::VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        <WirePod as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(name: &str, node: &str, ready: &str) -> WirePod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "ns", "labels": {"pod-template-hash": "5d4f"},
                "uid": "0b7c", "resourceVersion": "42", "generateName": "payments-5d4f-",
                "annotations": {"a": "b"},
                "managedFields": [{"manager": "x"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payments-5d4f", "uid": "u", "controller": true}]
            },
            "spec": {
                "nodeName": node,
                "readinessGates": [{"conditionType": "plumbline.dev/storage-healthy"}],
                "containers": [{"name": "app", "image": "i", "env": [{"name": "BIG", "value": "x"}]}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}},
                    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                }
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": ready},
                {"type": STORAGE_READINESS_GATE, "status": "False", "reason": "LatencyOverBudget", "message": "slow"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_pod_keeps_what_the_passes_read() {
        let p = CachedPod::from(wire("p", "n1", "True"));
        assert_eq!((&*p.name, &*p.namespace), ("p", "ns"));
        assert_eq!(p.labels["pod-template-hash"], "5d4f");
        let owner = p.controller().unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", "payments-5d4f")
        );
        assert_eq!(p.node_name.as_deref(), Some("n1"));
        assert_eq!(p.placement.tolerations[0].key.as_deref(), Some("k"));
        assert_eq!(p.placement.required_terms.len(), 1);
        assert_eq!(p.condition("Ready").map(|c| c.status), Some(status::TRUE));
        let storage = p.condition(STORAGE_READINESS_GATE).unwrap();
        assert_eq!(storage.status, status::FALSE);
        assert_eq!(storage.reason.as_deref(), Some("LatencyOverBudget"));
        assert_eq!(storage.message.as_deref(), Some("slow"));
        assert!(p.condition("PodScheduled").is_none());
        assert!(!p.deleting);
    }

    #[test]
    fn pods_of_one_workload_share_what_they_hold_alike() {
        let mut pools = Pools::default();
        let a = CachedPod::from_wire(wire("a", "n1", "True"), &mut pools);
        let b = CachedPod::from_wire(wire("b", "n1", "False"), &mut pools);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(Arc::ptr_eq(&a.owners, &b.owners));
        assert!(Arc::ptr_eq(&a.placement, &b.placement));
        assert!(Arc::ptr_eq(
            a.node_name.as_ref().unwrap(),
            b.node_name.as_ref().unwrap()
        ));
        assert_eq!(b.condition("Ready").map(|c| c.status), Some(status::FALSE));
    }

    #[test]
    fn a_pod_without_spec_or_status_decodes_and_has_no_conditions() {
        let p: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert!(p.node_name.is_none() && p.owners.is_empty());
        assert!(p.condition("Ready").is_none());
    }

    #[test]
    fn the_kept_pod_is_far_smaller_than_a_pod() {
        let kept = std::mem::size_of::<CachedPod>();
        let pod = std::mem::size_of::<k8s_openapi::api::core::v1::Pod>();
        assert!(kept * 8 < pod, "CachedPod {kept} B, Pod {pod} B");
    }
}
