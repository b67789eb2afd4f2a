//! Helpers for tests against the stack's Kubernetes control plane.

use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodCondition, ServiceAccount};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, Client,
};

use crate::{poll::until, Stack};

/// Generous, since 2 shared cores also run QEMU guests and builds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// On a CRD a test has replaced with a newer one for its duration (the chart upgrade test):
/// other tests' CRD installs leave it as it is.
pub const CRD_HELD_ANNOTATION: &str = "e2e.plumbline.dev/held-by";

/// A namespace of its own for one test, ready for pods (its `default` service account exists).
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{prefix}-"), "labels": {"plumbline.dev/e2e": "true"}},
        }))?;
        let created = namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating a test namespace {prefix}-*"))?;
        let name = created
            .metadata
            .name
            .context("created namespace has no name")?;
        // Pods that mount a token are refused until the token controller has given the
        // namespace's default service account its token Secret (1.20's legacy tokens).
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        until(
            format!("service account default in {name} with its token"),
            DEFAULT_TIMEOUT,
            || async {
                let account = accounts.get_opt("default").await?;
                Ok(account.filter(|a| a.secrets.as_ref().is_some_and(|s| !s.is_empty())))
            },
        )
        .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Best effort: the stack's `down` discards all of etcd anyway.
    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client);
        let _ = namespaces
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

impl Stack {
    /// `kubectl` as the stack's admin ([`Stack::admin_kubeconfig`]); its output, or an error
    /// with what it printed on stderr.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig()?)
            .args(args)
            .output()
            .await
            .context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The pod's condition of this type (`Ready`, a readiness gate…), if it has one.
pub fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Provider ID prefixes of nodes backed by a hypervisor VM (cloud-provider conventions).
pub const VM_PROVIDER_PREFIXES: [&str; 2] = ["libvirt:///", "vsphere://"];

pub fn is_vm_backed(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .is_some_and(|id| VM_PROVIDER_PREFIXES.iter().any(|p| id.starts_with(p)))
}

/// Every VM-backed node; fails when there are none, naming where they come from.
pub async fn vm_backed_nodes(client: &Client) -> anyhow::Result<Vec<Node>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let vm_nodes: Vec<Node> = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .items
        .into_iter()
        .filter(is_vm_backed)
        .collect();
    if vm_nodes.is_empty() {
        bail!(
            "no VM-backed nodes: the libvirt and vcsim components list their VMs in \
             $PLUMBLINE_STACK_DIR/nodes.d and the nodes component registers them (e2e/stack up)"
        );
    }
    Ok(vm_nodes)
}
