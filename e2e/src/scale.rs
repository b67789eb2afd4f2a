//! The scale bed's workload (`e2e/scale`, docs/scale.md): Deployments whose pods carry the
//! storage readiness gate, each on its own slice of the bed's VM-backed nodes, and one
//! WorkloadIntent per Deployment. Shared by the benchmark (`scale-bench`) and the smoke test.
//!
//! The bed runs no controller-manager or scheduler, so the pods are created here as the
//! Deployment → ReplicaSet → Pod chain would make them: owned by the ReplicaSet (with the
//! `pod-template-hash` label the operator follows back to the Deployment), bound to their
//! node, the gate already in the template (the operator would otherwise add it and, in a full
//! cluster, roll every pod once).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    core::{DynamicObject, GroupVersionKind},
    discovery::ApiResource,
    Api, Client, ResourceExt,
};
use serde_json::{json, Value};

use crate::{node_list::SimNode, Stack};

/// The condition type of the storage readiness gate.
pub const GATE: &str = "plumbline.dev/storage-healthy";
/// The one namespace of the bed's workload.
pub const NAMESPACE: &str = "scale";
const TEMPLATE_HASH: &str = "5d8f7c9b6";
const FIELD_MANAGER: &str = "scale-bed";
/// Concurrent creates: enough to keep a 2-core apiserver busy, well under its 200
/// mutating requests in flight.
const CREATE_CONCURRENCY: usize = 24;

/// The bed as the benchmark and the smoke test see it: its env, clients and nodes.
pub struct ScaleBed {
    pub stack: Stack,
    pub admin: Client,
    /// Every VM-backed node, sorted by name.
    pub nodes: Vec<SimNode>,
    /// How many Deployments (and intents) the pods are spread over.
    pub deployments: usize,
}

impl ScaleBed {
    /// The bed whose state dir is `dir` (`/var/tmp/plumbline-scale[-smoke]`).
    pub async fn load(dir: &Path, deployments: usize) -> Result<Self> {
        let stack = Stack::load_from(dir)?;
        let admin = stack.admin_client().await?;
        let nodes = crate::node_list::read_nodes_dir(&stack.nodes_dir())?;
        anyhow::ensure!(
            nodes.len() >= deployments,
            "the scale bed at {} lists {} nodes, fewer than {deployments} deployments",
            dir.display(),
            nodes.len()
        );
        Ok(Self {
            stack,
            admin,
            nodes,
            deployments,
        })
    }

    pub fn deployment_name(d: usize) -> String {
        format!("app-{d}")
    }

    /// The nodes Deployment `d`'s pods run on: its contiguous share of the sorted node list.
    pub fn slice(&self, d: usize) -> &[SimNode] {
        let n = self.nodes.len();
        &self.nodes[d * n / self.deployments..(d + 1) * n / self.deployments]
    }

    /// The simulator VM names behind Deployment `d`'s nodes.
    pub fn vms_of(&self, d: usize) -> Vec<String> {
        self.slice(d)
            .iter()
            .filter_map(|n| n.labels.get("plumbline.dev/vsphere-vm").cloned())
            .collect()
    }

    /// The namespace, the vCenter credentials Secret and a HypervisorProvider `scale-vc`
    /// sampling every `sample_interval`.
    pub async fn prepare(&self, sample_interval: &str) -> Result<()> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))?;
        Api::<Namespace>::all(self.admin.clone())
            .patch(NAMESPACE, &pp, &Patch::Apply(&ns))
            .await
            .context("creating the scale namespace")?;
        // Pods need their service account, which only the controller-manager would make.
        let account: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": NAMESPACE}}))?;
        Api::<ServiceAccount>::namespaced(self.admin.clone(), NAMESPACE)
            .patch("default", &pp, &Patch::Apply(&account))
            .await
            .context("creating the scale namespace's default service account")?;
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "vcenter", "namespace": NAMESPACE},
            "stringData": {"username": self.stack.get("VSPHERE_USERNAME")?,
                           "password": self.stack.get("VSPHERE_PASSWORD")?},
        }))?;
        Api::<Secret>::namespaced(self.admin.clone(), NAMESPACE)
            .patch("vcenter", &pp, &Patch::Apply(&secret))
            .await
            .context("creating the vCenter credentials Secret")?;
        let ca = String::from_utf8(self.stack.vsphere_ca_pem()?)?;
        let provider = json!({
            "apiVersion": "plumbline.dev/v1alpha1", "kind": "HypervisorProvider",
            "metadata": {"name": "scale-vc"},
            "spec": {
                "vsphere": {"server": self.stack.get("VSPHERE_URL")?,
                            "credentialsSecretRef": {"name": "vcenter", "namespace": NAMESPACE},
                            "caBundle": ca},
                "sampleInterval": sample_interval,
            },
        });
        dynamic(
            &self.admin,
            "HypervisorProvider",
            "hypervisorproviders",
            None,
        )
        .patch("scale-vc", &pp, &Patch::Apply(&provider))
        .await
        .context("creating HypervisorProvider scale-vc")?;
        Ok(())
    }

    /// One intent per Deployment: a 20 ms budget with the readiness gate; Deployment 0's
    /// guard lets every pod but the last go (the 1,000-pod flip), the others' 10%.
    pub async fn apply_intents(&self) -> Result<()> {
        let api = dynamic(
            &self.admin,
            "WorkloadIntent",
            "workloadintents",
            Some(NAMESPACE),
        );
        for d in 0..self.deployments {
            let name = Self::deployment_name(d);
            let max_unready = if d == 0 { "100%" } else { "10%" };
            let body = json!({
                "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "target": {"kind": "Deployment", "name": name},
                    "priority": "critical",
                    "storage": {"latencyBudget": "20ms", "readinessGate": true,
                                "maxUnready": max_unready},
                },
            });
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .with_context(|| format!("applying WorkloadIntent {name}"))?;
        }
        Ok(())
    }

    /// Grows the workload to `total` pods (spread evenly over the Deployments); pods already
    /// there stay. Returns how many were created.
    pub async fn grow_to(&self, total: usize) -> Result<usize> {
        let per = total / self.deployments;
        let mut created = 0;
        for d in 0..self.deployments {
            let owner = self.deployment_chain(d, per).await?;
            let nodes = self.slice(d);
            let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NAMESPACE);
            let name = Self::deployment_name(d);
            let existing: usize = pods
                .list_metadata(&ListParams::default().labels(&format!("app={name}")))
                .await
                .with_context(|| format!("listing the pods of {name}"))?
                .items
                .len();
            let bodies = (existing..per)
                .map(|i| pod_body(&name, i, &nodes[i % nodes.len()].name, &owner.0, &owner.1));
            created += stream::iter(bodies)
                .map(|body| {
                    let pods = pods.clone();
                    async move {
                        let pod: Pod = serde_json::from_value(body)?;
                        match pods.create(&PostParams::default(), &pod).await {
                            Ok(_) => Ok(1),
                            Err(kube::Error::Api(s)) if s.code == 409 => Ok(0),
                            Err(e) => Err(anyhow::Error::new(e)
                                .context(format!("creating pod {}", pod.name_any()))),
                        }
                    }
                })
                .buffer_unordered(CREATE_CONCURRENCY)
                .try_fold(0usize, |n, c| async move { Ok(n + c) })
                .await?;
        }
        Ok(created)
    }

    /// The Deployment (replicas `replicas`, the gate in its template) and its ReplicaSet;
    /// returns the ReplicaSet's name and uid.
    async fn deployment_chain(&self, d: usize, replicas: usize) -> Result<(String, String)> {
        let name = Self::deployment_name(d);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let template = json!({
            "metadata": {"labels": {"app": name}},
            "spec": {
                "automountServiceAccountToken": false,
                "readinessGates": [{"conditionType": GATE}],
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            },
        });
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": template},
        });
        let deployment = Api::<Deployment>::namespaced(self.admin.clone(), NAMESPACE)
            .patch(&name, &pp, &Patch::Apply(&deployment))
            .await
            .with_context(|| format!("applying Deployment {name}"))?;
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"]["pod-template-hash"] = json!(TEMPLATE_HASH);
        let rs_name = format!("{name}-{TEMPLATE_HASH}");
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name, "namespace": NAMESPACE,
                "labels": {"app": name, "pod-template-hash": TEMPLATE_HASH},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                     "uid": deployment.uid(), "controller": true}],
            },
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app": name, "pod-template-hash": TEMPLATE_HASH}},
                     "template": rs_template},
        });
        let rs = Api::<ReplicaSet>::namespaced(self.admin.clone(), NAMESPACE)
            .patch(&rs_name, &pp, &Patch::Apply(&rs))
            .await
            .with_context(|| format!("applying ReplicaSet {rs_name}"))?;
        Ok((rs_name, rs.uid().unwrap_or_default()))
    }

    /// Every pod of the bed with its gate condition and whether it is Ready.
    pub async fn gate_states(&self) -> Result<BTreeMap<String, PodState>> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NAMESPACE);
        let list = pods
            .list(&ListParams::default())
            .await
            .context("listing the scale pods")?;
        Ok(list
            .items
            .iter()
            .map(|p| (p.name_any(), PodState::of(p)))
            .collect())
    }

    /// Sets (or, with `None`, clears) the simulator's disk latency on `vms`.
    pub async fn set_latency(&self, vms: &[String], ms: Option<u32>) -> Result<()> {
        let base = self.stack.get("VCSIM_CONTROL_URL")?.to_string();
        let http = reqwest::Client::new();
        stream::iter(vms)
            .map(|vm| {
                let (http, base) = (&http, &base);
                async move {
                    let request = match ms {
                        Some(ms) => http
                            .put(format!("{base}/latency"))
                            .json(&json!({"vm": vm, "read_ms": ms, "write_ms": ms})),
                        None => http.delete(format!("{base}/latency")).query(&[("vm", vm)]),
                    };
                    let response = request
                        .send()
                        .await
                        .with_context(|| format!("setting the latency of {vm}"))?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "setting the latency of {vm}: {}",
                        response.text().await.unwrap_or_default()
                    );
                    Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// A pod's gate condition and its Ready condition, as the bed's checks read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodState {
    /// The gate condition's status ("" when absent) and reason.
    pub gate: String,
    pub reason: String,
    /// Ready is True: kubelet-sim has caught up with the gate (the operator's guard counts a
    /// pod not Ready for another reason against its limit).
    pub ready: bool,
}

impl PodState {
    pub fn of(pod: &Pod) -> Self {
        let condition = |t: &str| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == t))
        };
        let (gate, reason) = condition(GATE)
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
            .unwrap_or_default();
        Self {
            gate,
            reason,
            ready: condition("Ready").is_some_and(|c| c.status == "True"),
        }
    }

    /// True within budget, and Ready.
    pub fn settled(&self) -> bool {
        self.gate == "True" && self.reason == "LatencyWithinBudget" && self.ready
    }
}

fn pod_body(app: &str, i: usize, node: &str, rs_name: &str, rs_uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{rs_name}-{i:05}"), "namespace": NAMESPACE,
            "labels": {"app": app, "pod-template-hash": TEMPLATE_HASH},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                 "uid": rs_uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "readinessGates": [{"conditionType": GATE}],
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    })
}

fn dynamic(
    client: &Client,
    kind: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("plumbline.dev", "v1alpha1", kind),
        plural,
    );
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}
