//! Helpers shared by the storage-health tests: providers, pinned workloads, conditions, and
//! the guests' I/O limits as virsh reports them.

#![allow(dead_code)]

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Taint};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_crds::{HypervisorProvider, InfraChange, WorkloadIntent};
use plumbline_e2e::cluster::pod_condition;
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};

/// The guests' disk limits, as virsh reports and sets them (not every test reads them).
#[allow(unused_imports)]
pub use plumbline_e2e::latency::{set_total_iops_limit, total_iops_limit};
/// The one polling loop (`Err(seen)` is "not yet", reported on timeout; an error fails at once).
pub use plumbline_e2e::poll::until as eventually;

pub const GATE: &str = "plumbline.dev/storage-healthy";
pub const NODE_CONDITION: &str = "StorageLatencyHigh";
pub const STORAGE_TAINT: &str = "plumbline.dev/storage-latency-high";

/// Creates (or replaces) a cluster-scoped HypervisorProvider.
pub async fn apply_provider(
    admin: &Client,
    name: &str,
    spec: serde_json::Value,
) -> Result<HypervisorProvider> {
    let body = json!({
        "apiVersion": "plumbline.dev/v1alpha1",
        "kind": "HypervisorProvider",
        "metadata": {"name": name},
        "spec": spec,
    });
    Api::<HypervisorProvider>::all(admin.clone())
        .patch(
            name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("applying HypervisorProvider {name}"))
}

/// A provider `<namespace>-kvm` for the libvirt at `uri`, sampling every second. Returns its
/// name.
pub async fn apply_libvirt_provider(admin: &Client, namespace: &str, uri: &str) -> Result<String> {
    let provider = format!("{namespace}-kvm");
    apply_provider(
        admin,
        &provider,
        json!({"libvirt": {"uri": uri}, "sampleInterval": "1s"}),
    )
    .await?;
    Ok(provider)
}

/// A `vcenter` credentials Secret in `namespace` and a provider `<namespace>-vc` for the
/// stack's vSphere simulator, sampling every second. Returns the provider's name.
pub async fn apply_vsphere_provider(
    stack: &plumbline_e2e::Stack,
    admin: &Client,
    namespace: &str,
) -> Result<String> {
    let ca = std::fs::read_to_string(stack.get("VSPHERE_CA_FILE")?)
        .context("reading the simulator's CA")?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vcenter", "namespace": namespace},
        "stringData": {"username": stack.get("VSPHERE_USERNAME")?, "password": stack.get("VSPHERE_PASSWORD")?},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .patch(
            "vcenter",
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(&secret),
        )
        .await
        .context("creating the credentials Secret")?;
    let provider = format!("{namespace}-vc");
    apply_provider(
        admin,
        &provider,
        json!({
            "vsphere": {
                "server": stack.get("VSPHERE_URL")?,
                "credentialsSecretRef": {"name": "vcenter", "namespace": namespace},
                "caBundle": ca,
            },
            "sampleInterval": "1s",
        }),
    )
    .await?;
    Ok(provider)
}

pub async fn delete_provider(admin: &Client, name: &str) {
    let _ = Api::<HypervisorProvider>::all(admin.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Pod placement preferring `nodes` (node affinity, weight 100): the pods start there when
/// they can, and may go elsewhere.
pub fn preferring(nodes: &[impl serde::Serialize]) -> serde_json::Value {
    json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}}]}}})
}

/// Pod placement on `nodes` only (required node affinity).
pub fn only_on(nodes: &[impl serde::Serialize]) -> serde_json::Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}}}})
}

/// The host the libvirt provider reports for its guests, and their node names.
pub async fn libvirt_host(stack: &plumbline_e2e::Stack) -> Result<(String, Vec<String>)> {
    use plumbline_adapters::{HypervisorConfig, LibvirtConfig};
    let hv = plumbline_adapters::connect(HypervisorConfig::Libvirt(LibvirtConfig {
        uri: stack.libvirt_uri()?.to_string(),
    }))
    .await?;
    let inventory = hv.inventory().await?;
    let _ = hv.close().await;
    let host = inventory
        .first()
        .map(|vm| vm.host.clone())
        .context("the libvirt inventory is empty")?;
    Ok((host, inventory.into_iter().map(|vm| vm.name).collect()))
}

/// A Deployment whose pods are all bound to `node` (no scheduler involved), so the test
/// knows which VM backs them.
pub async fn deploy_pinned(
    admin: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    node: &str,
) -> Result<()> {
    deploy_placed(admin, namespace, name, replicas, json!({"nodeName": node})).await
}

/// A Deployment whose pods the scheduler may only place on `node` (a `nodeSelector`): the
/// node is the workload's only schedulable node.
pub async fn deploy_selecting(
    admin: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    node: &str,
) -> Result<()> {
    let placement = json!({"nodeSelector": {"kubernetes.io/hostname": node}});
    deploy_placed(admin, namespace, name, replicas, placement).await
}

pub async fn deploy_placed(
    admin: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    placement: serde_json::Value,
) -> Result<()> {
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
    });
    for (k, v) in placement.as_object().into_iter().flatten() {
        pod_spec[k] = v.clone();
    }
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}
        }
    });
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), namespace)
        .patch(name, &PatchParams::apply("e2e-owner"), &Patch::Apply(&body))
        .await
        .with_context(|| format!("creating Deployment {name}"))?;
    Ok(())
}

/// The workload's live pods (not being deleted).
pub async fn pods(admin: &Client, namespace: &str, app: &str) -> Result<Vec<Pod>> {
    let list = Api::<Pod>::namespaced(admin.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .with_context(|| format!("listing pods of {app}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// (status, reason, message) of the pod's storage condition.
pub fn storage_condition(pod: &Pod) -> Option<(String, String, String)> {
    let c = pod_condition(pod, GATE)?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == GATE))
}

pub fn is_ready(pod: &Pod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// (status, reason, message) of the node's StorageLatencyHigh condition.
pub async fn node_condition(
    admin: &Client,
    node: &str,
) -> Result<Option<(String, String, String)>> {
    let n = Api::<Node>::all(admin.clone())
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    Ok(n.status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == NODE_CONDITION))
        .map(|c| {
            (
                c.status,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        }))
}

pub async fn intent_status(
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Result<serde_json::Value> {
    let wi = Api::<WorkloadIntent>::namespaced(admin.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading WorkloadIntent {namespace}/{name}"))?;
    Ok(serde_json::to_value(wi.status)?)
}

/// Event reasons recorded on the intent.
pub async fn intent_event_reasons(
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, String)>> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), namespace)
        .list(&ListParams::default())
        .await
        .context("listing Events")?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Puts a guest's `total_iops_sec` back after a test that left it changed: the original its
/// record names is restored and the record removed (a record left behind would poison the
/// next test that reads records), and without a record the limit is lifted. What it found,
/// for the test's error.
pub async fn restore_guest_iops(uri: &str, domain: &str) -> Result<String> {
    use plumbline_adapters::{DiskLimit, HypervisorConfig, LibvirtConfig, Tunable};
    let hv = plumbline_adapters::connect(HypervisorConfig::Libvirt(LibvirtConfig {
        uri: uri.to_string(),
    }))
    .await?;
    let vm = hv
        .inventory()
        .await?
        .into_iter()
        .find(|vm| vm.name == domain)
        .with_context(|| format!("guest {domain} is not in the inventory of {uri}"))?;
    let iops = Tunable::DiskLimit {
        disk: "vda".into(),
        limit: DiskLimit::TotalIops,
    };
    let restored = hv.revert(&vm.id, &[iops]).await?;
    let _ = hv.close().await;
    if let Some(s) = restored.first() {
        return Ok(format!("restored the recorded original {}", s.value));
    }
    set_total_iops_limit(uri, domain, 0)
        .await
        .with_context(|| format!("lifting the limit of {domain}"))?;
    Ok("no original was recorded; lifted the limit".into())
}

/// Pods whose storage condition has this status and reason.
pub fn count(pods: &[Pod], status: &str, reason: &str) -> usize {
    pods.iter()
        .filter(|p| storage_condition(p).is_some_and(|(s, r, _)| s == status && r == reason))
        .count()
}

/// The workload's pods once all `replicas` carry the gate and `ok` holds for them.
pub async fn wait_for_pods(
    admin: &Client,
    namespace: &str,
    app: &str,
    replicas: usize,
    what: &str,
    ok: impl Fn(&[Pod]) -> bool,
) -> Result<Vec<Pod>> {
    eventually(what, Duration::from_secs(90), || async {
        let pods = pods(admin, namespace, app).await?;
        let settled = pods.len() == replicas && pods.iter().all(has_gate);
        Ok(if settled && ok(&pods) {
            Ok(pods)
        } else {
            Err(summary(&pods))
        })
    })
    .await
}

/// A short summary of the workload's storage conditions, for failure messages.
pub fn summary(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{}: {:?} gate={}",
                p.name_any(),
                storage_condition(p),
                has_gate(p)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The InfraChanges of the operator scoped to `namespace`.
pub async fn ledger(admin: &Client, namespace: &str) -> Result<Vec<InfraChange>> {
    let operator = format!("namespace/{namespace}");
    Ok(Api::<InfraChange>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .context("listing InfraChanges")?
        .items
        .into_iter()
        .filter(|ic| ic.spec.operator == operator)
        .collect())
}

/// Ends a test the way an operator's user would: the test's intents are deleted while its
/// operator still runs, so every InfraChange it holds is reverted through its finalizer;
/// then the operator stops. Entries still there after the patience are stripped of their
/// finalizer (so they cannot poison later tests) and reported as an error.
pub async fn release_everything(
    admin: &Client,
    namespace: &str,
    operator: plumbline_operator::run::Operator,
) -> Result<()> {
    let intents = Api::<WorkloadIntent>::namespaced(admin.clone(), namespace);
    if let Ok(list) = intents.list(&ListParams::default()).await {
        for wi in list.items {
            let _ = intents
                .delete(&wi.name_any(), &DeleteParams::default())
                .await;
        }
    }
    let drained = eventually(
        "the operator's InfraChanges to be reverted",
        Duration::from_secs(90),
        || async {
            let left = ledger(admin, namespace).await?;
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(left
                    .iter()
                    .map(|ic| {
                        format!(
                            "{} {:?}",
                            ic.name_any(),
                            ic.status.as_ref().and_then(|s| s.state.clone())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "))
            })
        },
    )
    .await;
    // The test's providers (`<namespace>-kvm`, `<namespace>-vc`) go while the operator runs,
    // so it lets go of their finalizer.
    let providers = Api::<HypervisorProvider>::all(admin.clone());
    let ours: Vec<String> = providers
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.name_any())
        .filter(|n| n == &format!("{namespace}-kvm") || n == &format!("{namespace}-vc"))
        .collect();
    for name in &ours {
        let _ = providers.delete(name, &DeleteParams::default()).await;
    }
    let gone = eventually(
        "the test's providers to go",
        Duration::from_secs(30),
        || async {
            let mut left = Vec::new();
            for name in &ours {
                if providers.get_opt(name).await?.is_some() {
                    left.push(name.clone());
                }
            }
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            })
        },
    )
    .await;
    operator.stop().await;
    if drained.is_err() {
        strip_ledger(admin, namespace).await;
    }
    if gone.is_err() {
        for name in &ours {
            let _ = providers
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }
    drained.and(gone)
}

/// Removes the namespace operator's InfraChanges without reverting them (test cleanup only).
pub async fn strip_ledger(admin: &Client, namespace: &str) {
    let api = Api::<InfraChange>::all(admin.clone());
    for ic in ledger(admin, namespace).await.unwrap_or_default() {
        let name = ic.name_any();
        let _ = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}

/// An adapter for the stack's vSphere simulator, as the operator would build one.
pub async fn vsphere_adapter(
    stack: &plumbline_e2e::Stack,
) -> Result<std::sync::Arc<dyn plumbline_adapters::Hypervisor>> {
    use plumbline_adapters::{HypervisorConfig, Secret as Password, TlsTrust, VSphereConfig};
    let config = VSphereConfig {
        url: stack.get("VSPHERE_URL")?.to_string(),
        username: stack.get("VSPHERE_USERNAME")?.to_string(),
        password: Password::new(stack.get("VSPHERE_PASSWORD")?.to_string()),
        tls: TlsTrust::CaPem(stack.vsphere_ca_pem()?),
    };
    Ok(plumbline_adapters::connect(HypervisorConfig::VSphere(config)).await?)
}

/// The simulator VM `name`, with any CPU shares an interrupted earlier run left on it
/// restored, so the test sees the real original.
pub async fn vsphere_vm_with_its_own_shares(
    hv: &dyn plumbline_adapters::Hypervisor,
    name: &str,
) -> Result<plumbline_adapters::VmId> {
    let vm = hv
        .inventory()
        .await?
        .into_iter()
        .find(|v| v.name == name)
        .with_context(|| format!("the simulator has no VM {name}"))?
        .id;
    hv.revert(&vm, &[plumbline_adapters::Tunable::CpuShares])
        .await?;
    Ok(vm)
}

/// The node's taints.
pub async fn taints(admin: &Client, node: &str) -> Result<Vec<Taint>> {
    let n = Api::<Node>::all(admin.clone())
        .get(node)
        .await
        .with_context(|| format!("reading Node {node}"))?;
    Ok(n.spec.and_then(|s| s.taints).unwrap_or_default())
}

/// Reasons of Events about the node created since `since`.
pub async fn node_event_reasons(
    admin: &Client,
    node: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(String, String)>> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), "default")
        .list(&ListParams::default())
        .await
        .context("listing Events in default")?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Node")
                && e.involved_object.name.as_deref() == Some(node)
                && e.metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= since.timestamp())
        })
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Nodes on which `manager` owns topology labels, with the labels' keys.
pub async fn owned_by(admin: &Client, manager: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let nodes = Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let mut owned = BTreeMap::new();
    for node in nodes.items {
        let keys: Vec<String> = node
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some(manager))
            .filter_map(|m| m.fields_v1.as_ref())
            .flat_map(|f| {
                f.0.pointer("/f:metadata/f:labels")
                    .and_then(|l| l.as_object())
                    .map(|l| l.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .filter(|k| k.starts_with("f:topology.plumbline.dev/"))
            .collect();
        if !keys.is_empty() {
            owned.insert(node.name_any(), keys);
        }
    }
    Ok(owned)
}

/// Releases the topology labels the test operator of `namespace` applied, as the operator
/// would (an apply without labels under its field manager): a test with labels on leaves no
/// field manager of its own on the shared nodes.
pub async fn release_topology_labels(admin: &Client, namespace: &str) {
    let manager = plumbline_operator::health::topology::field_manager(Some(namespace));
    let Ok(owned) = owned_by(admin, &manager).await else {
        return;
    };
    for node in owned.keys() {
        let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
        let _ = Api::<Node>::all(admin.clone())
            .patch(
                node,
                &kube::api::PatchParams::apply(&manager).force(),
                &kube::api::Patch::Apply(&body),
            )
            .await;
    }
}
