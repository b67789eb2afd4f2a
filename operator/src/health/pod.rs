//! The pod as the health caches keep it: only what the passes read.
//!
//! A `k8s_openapi` `Pod` is about 2.5 KB before any of its strings (every field of its spec
//! and status is inline), so even pruned, 10,000 pods cost 40 to 50 MB: half the operator's
//! live heap at that size (heaptrack, docs/scale.md). [`CachedPod`] has the same field names
//! for what it keeps, and the watch decodes pods straight into it: containers, volumes and
//! the rest of the spec and status are skipped by the decoder, never built.

use k8s_openapi::{
    api::core::v1::{NodeAffinity, PodCondition, PodReadinessGate, Toleration},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use plumbline_crds::names::STORAGE_READINESS_GATE;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Pod: its metadata (without managed fields and annotations, see [`prune`]), where it
/// runs and may run, its readiness gates and its conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<CachedPodSpec>,
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    pub node_name: Option<String>,
    pub readiness_gates: Option<Vec<PodReadinessGate>>,
    /// Where the pod may be scheduled, for the taint guard.
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<Toleration>>,
    pub affinity: Option<CachedAffinity>,
}

/// Of the pod's affinity, only the node affinity (the taint guard's).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAffinity {
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedPodStatus {
    pub conditions: Option<Vec<PodCondition>>,
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// The condition of `type_`, if the pod has one.
    pub fn condition(&self, type_: &str) -> Option<&PodCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// The pod conditions the passes read.
const READ_CONDITIONS: [&str; 2] = ["Ready", STORAGE_READINESS_GATE];

/// Drops what the decoder cannot skip and no pass reads: of the metadata, the managed fields,
/// annotations, uid, resourceVersion (the watch has read it already) and generateName; the
/// conditions but `Ready` and the storage gate's.
pub fn prune(pod: &mut CachedPod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.uid = None;
    meta.resource_version = None;
    meta.generate_name = None;
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        conditions.retain(|c| READ_CONDITIONS.contains(&c.type_.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_decoded_pod_keeps_only_what_the_passes_read() {
        let mut p: CachedPod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "ns", "labels": {"pod-template-hash": "5d4f"},
                "uid": "0b7c", "resourceVersion": "42", "generateName": "payments-5d4f-",
                "annotations": {"a": "b"},
                "managedFields": [{"manager": "x"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payments-5d4f", "uid": "u", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
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
                {"type": "Ready", "status": "True"},
                {"type": STORAGE_READINESS_GATE, "status": "True"}
            ]}
        }))
        .unwrap();
        prune(&mut p);
        assert!(p.metadata.managed_fields.is_none() && p.metadata.annotations.is_none());
        assert!(p.metadata.uid.is_none() && p.metadata.resource_version.is_none());
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            "5d4f"
        );
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].name,
            "payments-5d4f"
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.readiness_gates.as_ref().unwrap().len(), 1);
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("k")
        );
        let affinity = spec.affinity.as_ref().unwrap().node_affinity.as_ref();
        assert!(affinity
            .and_then(|a| a
                .required_during_scheduling_ignored_during_execution
                .as_ref())
            .is_some());
        let conditions = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", STORAGE_READINESS_GATE]);
        assert_eq!(
            p.condition("Ready").map(|c| c.status.as_str()),
            Some("True")
        );
        assert!(p.condition("PodScheduled").is_none());
    }

    #[test]
    fn a_pod_without_spec_or_status_decodes_and_has_no_conditions() {
        let p: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert!(p.spec.is_none() && p.status.is_none());
        assert!(p.condition("Ready").is_none());
    }

    #[test]
    fn the_kept_pod_is_far_smaller_than_a_pod() {
        let kept = std::mem::size_of::<CachedPod>();
        let pod = std::mem::size_of::<k8s_openapi::api::core::v1::Pod>();
        assert!(kept * 2 < pod, "CachedPod {kept} B, Pod {pod} B");
    }
}
