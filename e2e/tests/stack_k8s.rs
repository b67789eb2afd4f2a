//! The stack's Kubernetes half, for real: kube-apiserver 1.20.2 on etcd with RBAC, the
//! controller-manager and scheduler, and kubelet-sim playing the kubelet for VM-backed nodes.
//! Needs `e2e/stack up`; fails with a message saying so otherwise.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
    Api, Client, ResourceExt,
};
use plumbline_e2e::{
    cluster::{is_vm_backed, pod_condition, vm_backed_nodes, TestNamespace, DEFAULT_TIMEOUT},
    node_list::read_nodes_dir,
    poll::until,
    Stack,
};
use serde_json::json;

const STORAGE_GATE: &str = "plumbline.dev/storage-healthy";

fn is_forbidden<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

#[tokio::test]
async fn apiserver_serves_a_crd_with_custom_resources_and_status() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let client = stack.admin_client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "stackprobes.e2e.plumbline.dev";
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": "e2e.plumbline.dev",
            "scope": "Namespaced",
            "names": {"kind": "StackProbe", "plural": "stackprobes", "singular": "stackprobe", "listKind": "StackProbeList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"message": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"echoed": {"type": "string"}}},
                }}},
            }],
        },
    });
    crds.patch(
        crd_name,
        &PatchParams::apply("plumbline-e2e").force(),
        &Patch::Apply(crd),
    )
    .await
    .context("applying the StackProbe CRD")?;
    until(
        "the StackProbe CRD to be Established",
        DEFAULT_TIMEOUT,
        || async {
            let crd = crds.get(crd_name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await?;

    let ns = TestNamespace::create(&client, "crd").await?;
    let gvk = GroupVersionKind::gvk("e2e.plumbline.dev", "v1", "StackProbe");
    let probes: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::from_gvk_with_plural(&gvk, "stackprobes"),
    );
    let probe = json!({
        "apiVersion": "e2e.plumbline.dev/v1", "kind": "StackProbe",
        "metadata": {"name": "probe"}, "spec": {"message": "hello"},
    });
    // Discovery of a just-established CRD can lag a little behind the condition.
    until("creating a StackProbe", DEFAULT_TIMEOUT, || async {
        Ok(Some(
            probes
                .patch(
                    "probe",
                    &PatchParams::apply("plumbline-e2e").force(),
                    &Patch::Apply(probe.clone()),
                )
                .await?,
        ))
    })
    .await?;
    let status = json!({
        "apiVersion": "e2e.plumbline.dev/v1", "kind": "StackProbe",
        "metadata": {"name": "probe"}, "status": {"echoed": "hello"},
    });
    probes
        .patch_status(
            "probe",
            &PatchParams::apply("plumbline-e2e-status").force(),
            &Patch::Apply(status),
        )
        .await
        .context("server-side applying StackProbe status")?;
    let got = probes
        .get("probe")
        .await
        .context("reading the StackProbe back")?;
    assert_eq!(got.data["spec"]["message"], "hello");
    assert_eq!(got.data["status"]["echoed"], "hello");
    let managers: BTreeSet<_> = got
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains("plumbline-e2e") && managers.contains("plumbline-e2e-status"),
        "{managers:?}"
    );
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn vm_backed_nodes_are_registered_ready_and_heartbeating() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let client = stack.admin_client().await?;
    let listed = read_nodes_dir(&stack.nodes_dir())?;
    ensure!(
        !listed.is_empty(),
        "no VMs listed in {}",
        stack.nodes_dir().display()
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for vm in &listed {
        let node = until(
            format!("node {} to be Ready and untainted", vm.name),
            DEFAULT_TIMEOUT,
            || async {
                let Some(node) = nodes.get_opt(&vm.name).await? else {
                    return Ok(None);
                };
                let ready = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let tainted = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
                Ok((ready && !tainted).then_some(node))
            },
        )
        .await?;
        let spec = node.spec.clone().unwrap_or_default();
        assert_eq!(spec.provider_id.as_deref(), Some(vm.provider_id.as_str()));
        assert!(
            is_vm_backed(&node),
            "{} has providerID {:?}",
            vm.name,
            spec.provider_id
        );
        assert!(spec.pod_cidr.is_some(), "{} has no podCIDR", vm.name);
        let allocatable = node.status.and_then(|s| s.allocatable).unwrap_or_default();
        assert!(
            allocatable.contains_key("cpu") && allocatable.contains_key("pods"),
            "{allocatable:?}"
        );
        for (k, v) in &vm.labels {
            assert_eq!(
                node.metadata.labels.as_ref().and_then(|l| l.get(k)),
                Some(v),
                "label {k} on {}",
                vm.name
            );
        }
    }
    // Heartbeats: one node's Lease is renewed again while we watch.
    let name = &listed[0].name;
    let first = leases
        .get(name)
        .await
        .context("reading the node lease")?
        .spec
        .and_then(|s| s.renew_time);
    ensure!(first.is_some(), "lease of {name} has no renewTime");
    until(
        format!("the lease of {name} to be renewed"),
        DEFAULT_TIMEOUT,
        || async {
            let now = leases.get(name).await?.spec.and_then(|s| s.renew_time);
            Ok((now > first).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn deployment_applied_with_kubectl_runs_ready_on_vm_backed_nodes() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let client = stack.admin_client().await?;
    vm_backed_nodes(&client).await?;
    let ns = TestNamespace::create(&client, "deploy").await?;
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/test/web-deployment.yaml");
    let manifest = manifest.to_str().context("the manifest's path")?;
    stack
        .kubectl(&["-n", &ns.name, "apply", "-f", manifest])
        .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    until(
        "e2e-web to have 4 available replicas",
        DEFAULT_TIMEOUT,
        || async {
            let d = deployments.get("e2e-web").await?;
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Ok((available == 4).then_some(()))
        },
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().labels("app=e2e-web"))
        .await?;
    assert_eq!(list.items.len(), 4);
    for pod in &list.items {
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .context("pod not bound")?;
        let node = nodes.get(&node_name).await?;
        assert!(
            is_vm_backed(&node),
            "{} runs on {node_name}, which is not VM-backed",
            pod.name_any()
        );
        assert_eq!(
            pod_condition(pod, "Ready").map(|c| c.status.as_str()),
            Some("True"),
            "{}",
            pod.name_any()
        );
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        let ip = pod_ip(pod).context("pod has no IP")?;
        let cidr = node
            .spec
            .and_then(|s| s.pod_cidr)
            .context("node has no podCIDR")?;
        let net = cidr.trim_end_matches("0/24");
        assert!(
            ip.starts_with(net),
            "pod IP {ip} is outside {node_name}'s podCIDR {cidr}"
        );
    }
    ns.delete().await;
    Ok(())
}

/// The kubelet's rule, through to Endpoints: a pod whose readiness gate is not True is not
/// Ready and is not among its Service's ready addresses; setting the gate (as the operator
/// identity, by server-side apply on pods/status) makes it Ready and routable.
#[tokio::test]
async fn readiness_gate_holds_pod_out_of_service_endpoints_until_true() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let admin = stack.admin_client().await?;
    let operator = stack.operator_client().await?;
    vm_backed_nodes(&admin).await?;
    let ns = TestNamespace::create(&admin, "gate").await?;

    let services: Api<Service> = Api::namespaced(admin.clone(), &ns.name);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "gated"},
        "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80, "targetPort": 80}]},
    }))?;
    services
        .create(&PostParams::default(), &service)
        .await
        .context("creating Service gated")?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "gated-0", "labels": {"app": "gated"}},
        "spec": {
            "readinessGates": [{"conditionType": STORAGE_GATE}],
            "containers": [{"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating pod gated-0")?;

    let endpoints: Api<Endpoints> = Api::namespaced(admin.clone(), &ns.name);
    // (ready addresses, not-ready addresses) of the Service.
    let addresses = || async {
        let Some(ep) = endpoints.get_opt("gated").await? else {
            return Ok::<_, anyhow::Error>((vec![], vec![]));
        };
        let mut ready = vec![];
        let mut not_ready = vec![];
        for subset in ep.subsets.unwrap_or_default() {
            ready.extend(
                subset
                    .addresses
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.ip),
            );
            not_ready.extend(
                subset
                    .not_ready_addresses
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.ip),
            );
        }
        Ok((ready, not_ready))
    };
    let gate = |status: &'static str| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gated-0"},
            "status": {"conditions": [{"type": STORAGE_GATE, "status": status, "reason": "E2eTest"}]},
        })
    };
    let operator_pods: Api<Pod> = Api::namespaced(operator, &ns.name);
    let gate_writer = PatchParams::apply("plumbline-e2e-gate").force();

    // Running with an IP, but the gate condition does not exist yet: not Ready.
    let ip = until("gated-0 to run with a pod IP", DEFAULT_TIMEOUT, || async {
        let pod = pods.get("gated-0").await?;
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        Ok(pod_ip(&pod).filter(|_| running))
    })
    .await?;
    assert_eq!(
        pod_condition(&pods.get("gated-0").await?, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );

    operator_pods
        .patch_status("gated-0", &gate_writer, &Patch::Apply(gate("False")))
        .await
        .context("setting the readiness gate False as the operator")?;
    until(
        "gated-0 to be listed as not ready in Endpoints",
        DEFAULT_TIMEOUT,
        || async {
            let (ready, not_ready) = addresses().await?;
            ensure!(
                !ready.contains(&ip),
                "pod {ip} with a False gate is a ready endpoint: {ready:?}"
            );
            Ok(not_ready.contains(&ip).then_some(()))
        },
    )
    .await?;
    let pod = pods.get("gated-0").await?;
    assert_eq!(
        pod_condition(&pod, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    assert_eq!(
        pod_condition(&pod, "ContainersReady").map(|c| c.status.as_str()),
        Some("True")
    );
    // kubelet-sim's status writes must leave the gate condition alone.
    assert_eq!(
        pod_condition(&pod, STORAGE_GATE).map(|c| c.status.as_str()),
        Some("False")
    );

    operator_pods
        .patch_status("gated-0", &gate_writer, &Patch::Apply(gate("True")))
        .await
        .context("setting the readiness gate True as the operator")?;
    until(
        "gated-0 to become Ready and a ready endpoint",
        DEFAULT_TIMEOUT,
        || async {
            let ready_now = pod_condition(&pods.get("gated-0").await?, "Ready")
                .map(|c| c.status.as_str())
                == Some("True");
            let (ready, not_ready) = addresses().await?;
            Ok((ready_now && ready.contains(&ip) && !not_ready.contains(&ip)).then_some(()))
        },
    )
    .await?;
    let pod = pods.get("gated-0").await?;
    let managers: BTreeSet<_> = pod
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains("plumbline-e2e-gate") && managers.contains("kubelet-sim"),
        "{managers:?}"
    );
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn deleted_pods_on_vm_backed_nodes_terminate() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let client = stack.admin_client().await?;
    vm_backed_nodes(&client).await?;
    let ns = TestNamespace::create(&client, "delete").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "doomed"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    until("doomed to be Ready", DEFAULT_TIMEOUT, || async {
        let pod = pods.get("doomed").await?;
        Ok((pod_condition(&pod, "Ready").map(|c| c.status.as_str()) == Some("True")).then_some(()))
    })
    .await?;
    // A graceful delete (default 30 s grace) only marks the pod; the kubelet's side finishes it.
    pods.delete("doomed", &DeleteParams::default()).await?;
    until("doomed to be gone", DEFAULT_TIMEOUT, || async {
        Ok(pods.get_opt("doomed").await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await;
    Ok(())
}

#[tokio::test]
async fn operator_identity_is_limited_to_its_role() -> anyhow::Result<()> {
    let stack = Stack::load()?;
    let operator: Client = stack.operator_client().await?;
    // Granted: observe pods and nodes cluster-wide.
    Api::<Pod>::all(operator.clone())
        .list(&ListParams::default())
        .await
        .context("the operator identity listing pods")?;
    Api::<Node>::all(operator.clone())
        .list(&ListParams::default())
        .await
        .context("the operator identity listing nodes")?;
    // Not granted: anything outside the ClusterRole.
    let configmaps = Api::<ConfigMap>::all(operator.clone())
        .list(&ListParams::default())
        .await;
    let secrets = Api::<Secret>::all(operator.clone())
        .list(&ListParams::default())
        .await;
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": "denied-"}}))?;
    let new_namespace = Api::<Namespace>::all(operator.clone())
        .create(&PostParams::default(), &namespace)
        .await;
    for (what, forbidden) in [
        ("listing configmaps", is_forbidden(&configmaps)),
        (
            "listing secrets (only get is granted)",
            is_forbidden(&secrets),
        ),
        ("creating a namespace", is_forbidden(&new_namespace)),
    ] {
        if !forbidden {
            bail!("the operator identity was not denied {what}");
        }
    }
    Ok(())
}

/// The operator identity's cluster-wide rights are the chart's, not a stack-only role:
/// `stack up` binds it to the ClusterRole rendered from charts/plumbline/templates/rbac.yaml,
/// so the live rules equal what `helm template` renders now, and a right the old hand-written
/// role gave (listing ReplicaSets) is gone.
#[tokio::test]
async fn operator_identity_is_bound_to_the_charts_rendered_cluster_role() -> anyhow::Result<()> {
    use k8s_openapi::api::{
        apps::v1::ReplicaSet,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let stack = Stack::load()?;
    let admin = stack.admin_client().await?;
    let operator = stack.operator_client().await?;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf();
    let helm = std::process::Command::new(repo.join("e2e/install-helm"))
        .output()
        .context("running e2e/install-helm")?;
    ensure!(
        helm.status.success(),
        "e2e/install-helm: {}",
        String::from_utf8_lossy(&helm.stderr)
    );
    let helm = String::from_utf8(helm.stdout)?.trim().to_string();
    let out = std::process::Command::new(&helm)
        .args(["template", "plumbline"])
        .arg(repo.join("charts/plumbline"))
        .args([
            "--set",
            "fullnameOverride=plumbline-operator-chart",
            "--set",
            "operator.taintDegradedNodes=true",
            "--set",
            "operator.hostMaintenance=true",
            "--show-only",
            "templates/rbac.yaml",
        ])
        .output()
        .context("helm template")?;
    ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: ClusterRole = serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout)?)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter_map(|v: serde_json::Value| {
            (v["kind"] == "ClusterRole")
                .then(|| serde_json::from_value(v).ok())
                .flatten()
        })
        .next()
        .context("no ClusterRole in the chart's rbac.yaml")?;

    let live = Api::<ClusterRole>::all(admin.clone())
        .get("plumbline-operator-chart")
        .await
        .context("the chart's ClusterRole in the stack (applied by `e2e/stack up`)")?;
    ensure!(
        live.rules == rendered.rules,
        "the stack's copy of the chart's ClusterRole is stale (re-run `e2e/stack up k8s`):\nlive: {:?}\nchart: {:?}",
        live.rules,
        rendered.rules
    );
    let binding = Api::<ClusterRoleBinding>::all(admin)
        .get("plumbline-operator-chart")
        .await?;
    ensure!(binding.role_ref.name == "plumbline-operator-chart");
    ensure!(binding
        .subjects
        .unwrap_or_default()
        .iter()
        .any(|s| s.kind == "User" && s.name == "plumbline-operator"));

    // Granted by the chart: the provider status read before it is rewritten.
    let providers = Api::<DynamicObject>::all_with(
        operator.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "plumbline.dev",
            "v1alpha1",
            "HypervisorProvider",
        )),
    );
    providers
        .list(&ListParams::default().limit(1))
        .await
        .context("the operator identity listing HypervisorProviders")?;
    // Not granted any more: what only the old stack role allowed.
    let replicasets = Api::<ReplicaSet>::all(operator)
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&replicasets),
        "the operator identity may list ReplicaSets, which the chart does not grant"
    );
    Ok(())
}

#[test]
fn stack_env_prints_export_lines_a_shell_can_eval() -> anyhow::Result<()> {
    let stack = plumbline_e2e::Stack::load()?;
    let script = plumbline_e2e::Stack::script();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "eval \"$({} env)\" && printf '%s\\n%s' \"$KUBECONFIG\" \"$PROMETHEUS_URL\"",
            script.display()
        ))
        .env_remove("KUBECONFIG")
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    ensure!(lines.next() == Some(stack.get("KUBECONFIG")?), "{text}");
    ensure!(lines.next() == Some(stack.get("PROMETHEUS_URL")?), "{text}");
    Ok(())
}
