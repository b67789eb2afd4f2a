//! Topology labels on the real stack (docs/placement.md): every VM-backed node of the test's
//! libvirt and vSphere providers carries `topology.plumbline.dev/host` as `virsh hostname` and
//! the simulator name its host (and `/cluster` as the simulator names the host's cluster, or
//! none for the standalone host); after a vMotion (`RelocateVM_Task`, made by the simulator's
//! control endpoint as any vSphere client would) the node's labels follow within two sample
//! intervals; deleting the providers releases every label this operator applied.
//!
//! The operator is scoped to the test's namespace and applies under its own field manager
//! (`plumbline-topology.<namespace>`), so what it releases is checked in the nodes'
//! managedFields: another instance applying the same labels keeps them. The VM is moved back
//! and the labels released even when the test fails. Needs `e2e/stack up`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::Node;
use kube::{api::ListParams, Api, Client, ResourceExt};
use plumbline_crds::{
    names::{TOPOLOGY_CLUSTER_LABEL, TOPOLOGY_HOST_LABEL, TOPOLOGY_PROVIDER_LABEL},
    HypervisorProvider,
};
use plumbline_e2e::vsphere_vms::SimVmPlacement;
use plumbline_operator::{clock::SystemClock, health::topology, run::Operator};
use plumbline_policies::topology::label_value;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

const PATIENCE: Duration = Duration::from_secs(60);
/// The providers' `sampleInterval` (health_common).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

struct Scene {
    stack: plumbline_e2e::Stack,
    cluster: common::Cluster,
    operator: Option<Operator>,
    providers: Vec<String>,
    /// A simulator VM this test moved, and the host it came from.
    moved: Option<(String, String)>,
}

impl Scene {
    async fn start(test: &str) -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let cluster = common::Cluster::connect(test).await?;
        Ok(Self {
            stack,
            cluster,
            operator: None,
            providers: Vec::new(),
            moved: None,
        })
    }

    fn admin(&self) -> &Client {
        &self.cluster.admin
    }

    fn field_manager(&self) -> String {
        topology::field_manager(Some(&self.cluster.namespace))
    }

    async fn run_operator(&mut self) -> Result<()> {
        let mut health = common::test_health();
        health.topology_labels = true;
        self.operator = Some(
            self.cluster
                .start_operator_with_health(Arc::new(SystemClock), health)
                .await?,
        );
        Ok(())
    }

    async fn relocate(&mut self, vm: &SimVmPlacement, host: &str) -> Result<SimVmPlacement> {
        if self.moved.is_none() {
            self.moved = Some((vm.name.clone(), vm.host.clone()));
        }
        Ok(self.stack.relocate_vsphere_vm(&vm.name, host).await?)
    }

    /// Puts a moved VM back, deletes the providers, stops the operator, releases whatever its
    /// field manager still owns (labels of nodes another provider still reaches, or all of
    /// them when the test failed early), and removes the namespace. Runs whether the test
    /// passed or not.
    async fn cleanup(mut self) {
        if let Some((vm, host)) = self.moved.take() {
            if let Err(e) = self.stack.relocate_vsphere_vm(&vm, &host).await {
                eprintln!("cleanup: moving {vm} back to {host} failed: {e}");
            }
        }
        for p in &self.providers {
            delete_provider(self.admin(), p).await;
        }
        if let Some(op) = self.operator.take() {
            op.stop().await;
        }
        // Whatever is left (the operator failed, or never got to it).
        release_topology_labels(self.admin(), &self.cluster.namespace).await;
        self.cluster.cleanup().await;
    }
}

/// The topology labels every VM-backed node of the stack should carry: libvirt guests on
/// `virsh hostname`, simulator VMs on their host and its cluster.
async fn expected(stack: &plumbline_e2e::Stack) -> Result<BTreeMap<String, Expected>> {
    let uri = stack.libvirt_uri()?;
    let hostname = tokio::process::Command::new("virsh")
        .args(["-c", uri, "hostname"])
        .output()
        .await
        .context("running virsh hostname")?;
    ensure!(hostname.status.success(), "virsh hostname: {hostname:?}");
    let libvirt_host = String::from_utf8_lossy(&hostname.stdout).trim().to_string();
    let mut out = BTreeMap::new();
    for domain in stack.libvirt_domains()? {
        out.insert(
            domain,
            Expected {
                host: label_value(&libvirt_host),
                cluster: None,
                kind: Kind::Libvirt,
            },
        );
    }
    for vm in stack.vsphere_vms().await? {
        out.insert(vm.dns_name.clone(), expected_vsphere(&vm));
    }
    Ok(out)
}

fn expected_vsphere(vm: &SimVmPlacement) -> Expected {
    Expected {
        host: label_value(&vm.host),
        cluster: label_value(&vm.cluster),
        kind: Kind::VSphere,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Libvirt,
    VSphere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    host: Option<String>,
    cluster: Option<String>,
    kind: Kind,
}

/// How `node`'s labels differ from `want`, or `None` when they match. The provider label
/// names the test's provider of that kind, or another existing provider that sorts before it
/// (a VM reached through two providers is the first one's, by name).
fn mismatch(
    node: &Node,
    want: &Expected,
    ours: &BTreeMap<Kind, String>,
    existing: &[String],
) -> Option<String> {
    let labels = node.labels();
    let got = |k: &str| labels.get(k).cloned();
    let provider = got(TOPOLOGY_PROVIDER_LABEL);
    let our = &ours[&want.kind];
    let provider_ok = provider
        .as_ref()
        .is_some_and(|p| p == our || (p < our && existing.contains(p)));
    let ok = got(TOPOLOGY_HOST_LABEL) == want.host
        && got(TOPOLOGY_CLUSTER_LABEL) == want.cluster
        && provider_ok;
    (!ok).then(|| {
        format!(
            "{}: host {:?} cluster {:?} provider {:?}, want {want:?} via {our}",
            node.name_any(),
            got(TOPOLOGY_HOST_LABEL),
            got(TOPOLOGY_CLUSTER_LABEL),
            provider
        )
    })
}

async fn check_all(
    admin: &Client,
    want: &BTreeMap<String, Expected>,
    ours: &BTreeMap<Kind, String>,
) -> Result<Result<(), String>> {
    let existing: Vec<String> = Api::<HypervisorProvider>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let nodes = Api::<Node>::all(admin.clone());
    let mut wrong = Vec::new();
    for (name, w) in want {
        match nodes.get_opt(name).await? {
            Some(node) => wrong.extend(mismatch(&node, w, ours, &existing)),
            None => wrong.push(format!("{name}: no such node")),
        }
    }
    Ok(if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    })
}

#[tokio::test]
async fn serial_topology_labels_match_the_hypervisors_follow_a_vmotion_and_go_with_the_providers(
) -> Result<()> {
    let mut scene = Scene::start("topology").await?;
    let result = labels_follow(&mut scene).await;
    scene.cleanup().await;
    result
}

async fn labels_follow(scene: &mut Scene) -> Result<()> {
    let ns = scene.cluster.namespace.clone();
    let kvm = apply_libvirt_provider(scene.admin(), &ns, scene.stack.libvirt_uri()?).await?;
    scene.providers.push(kvm.clone());
    let vc = apply_vsphere_provider(&scene.stack, scene.admin(), &ns).await?;
    scene.providers.push(vc.clone());
    let ours = BTreeMap::from([(Kind::Libvirt, kvm.clone()), (Kind::VSphere, vc.clone())]);
    scene.run_operator().await?;

    // Every VM-backed node of both hypervisors, as virsh and the simulator place them.
    let mut want = expected(&scene.stack).await?;
    ensure!(
        want.values().any(|w| w.kind == Kind::Libvirt)
            && want.values().any(|w| w.cluster.is_some())
            && want
                .values()
                .any(|w| w.kind == Kind::VSphere && w.cluster.is_none()),
        "libvirt guests, clustered and standalone simulator VMs: {want:?}"
    );
    let started = Instant::now();
    eventually("every VM-backed node labelled", PATIENCE, || async {
        check_all(scene.admin(), &want, &ours).await
    })
    .await?;
    eprintln!(
        "all {} nodes labelled {:?} after the operator started",
        want.len(),
        started.elapsed()
    );
    let owned = owned_by(scene.admin(), &scene.field_manager()).await?;
    ensure!(
        want.keys().all(|n| owned.contains_key(n)),
        "the operator's field manager owns the labels of every node: {owned:?}"
    );
    for keys in owned.values() {
        ensure!(
            keys.iter()
                .all(|k| k.starts_with("f:topology.plumbline.dev/")),
            "it owns only topology labels: {keys:?}"
        );
    }

    // vMotions of a clustered VM: to the standalone host (its cluster label goes), to the
    // cluster's other host, and back where it was. Each time its node's labels follow within
    // two sample intervals of the task's end; the other nodes keep theirs.
    let vms = scene.stack.vsphere_vms().await?;
    let vm = vms
        .iter()
        .find(|v| !v.cluster.is_empty())
        .context("a simulator VM in the cluster")?
        .clone();
    let standalone = vms
        .iter()
        .find(|v| v.cluster.is_empty())
        .context("a simulator VM on the standalone host")?
        .host
        .clone();
    let hosts = scene.stack.vsphere_hosts().await?;
    let other_in_cluster = hosts
        .iter()
        .map(|h| h.name.clone())
        .find(|h| h != &vm.host && h != &standalone)
        .context("another host in the cluster")?;
    for to in [standalone, other_in_cluster, vm.host.clone()] {
        let moved = scene.relocate(&vm, &to).await?;
        let relocated_at = Instant::now();
        ensure!(moved.host == to, "{moved:?}");
        want.insert(vm.dns_name.clone(), expected_vsphere(&moved));
        let node_want = BTreeMap::from([(vm.dns_name.clone(), want[&vm.dns_name].clone())]);
        // Polled every 50 ms (not the usual 250 ms): this is the measurement.
        let deadline = relocated_at + PATIENCE;
        loop {
            match check_all(scene.admin(), &node_want, &ours).await? {
                Ok(()) => break,
                Err(seen) if Instant::now() >= deadline => {
                    anyhow::bail!("the moved VM's node was not relabelled: {seen}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let followed = relocated_at.elapsed();
        eprintln!(
            "{} moved to {to} (cluster {:?}): labels followed in {followed:?}",
            vm.name, moved.cluster
        );
        ensure!(
            followed <= 2 * SAMPLE_INTERVAL,
            "labels followed the vMotion in {followed:?}, more than two sample intervals ({:?})",
            2 * SAMPLE_INTERVAL
        );
        check_all(scene.admin(), &want, &ours)
            .await?
            .map_err(anyhow::Error::msg)?;
    }
    scene.moved = None;

    // Deleting the providers releases every label this operator applied, except on nodes
    // another existing provider still reaches (another test's provider of the same libvirt):
    // those it keeps labelled through that one. A label another instance applies too stays.
    for p in std::mem::take(&mut scene.providers) {
        delete_provider(scene.admin(), &p).await;
    }
    let manager = scene.field_manager();
    let deleted_at = Instant::now();
    eventually("the labels released", PATIENCE, || async {
        let existing: Vec<String> = Api::<HypervisorProvider>::all(scene.admin().clone())
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        let owned = owned_by(scene.admin(), &manager).await?;
        let nodes = Api::<Node>::all(scene.admin().clone());
        let mut wrong = Vec::new();
        for name in want.keys() {
            let Some(node) = nodes.get_opt(name).await? else {
                continue;
            };
            let provider = node.labels().get(TOPOLOGY_PROVIDER_LABEL).cloned();
            if provider.as_ref().is_some_and(|p| p == &kvm || p == &vc) {
                wrong.push(format!("{name} names a deleted provider"));
            } else if owned.contains_key(name)
                && !provider.as_ref().is_some_and(|p| existing.contains(p))
            {
                wrong.push(format!(
                    "{name}: still owns {:?}, provider {provider:?}",
                    owned[name]
                ));
            }
        }
        Ok(if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        })
    })
    .await?;
    eprintln!(
        "labels released {:?} after the providers' deletion",
        deleted_at.elapsed()
    );
    // Nothing else reaches the simulator: its nodes carry none of this operator's labels.
    let owned = owned_by(scene.admin(), &manager).await?;
    for (name, w) in &want {
        ensure!(
            w.kind != Kind::VSphere || !owned.contains_key(name),
            "{name} keeps labels of this operator: {owned:?}"
        );
    }
    Ok(())
}
