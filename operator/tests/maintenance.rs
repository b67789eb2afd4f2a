//! Host maintenance on the real stack: a HostMaintenance cordons the nodes whose VMs are on
//! the host (through the ledger) and evicts their pods without taking a workload below its
//! intent's floor or its PodDisruptionBudget; deleting it uncordons them.
//!
//! - **libvirt**: the libvirt host (every libvirt guest's node at once) is drained while the
//!   vSphere simulator's nodes take the pods; a critical intent's workload keeps its 2 ready
//!   pods throughout, sampled every 0.5 s.
//! - **Blocked**: a PodDisruptionBudget allowing no disruption is named in `DrainBlocked`,
//!   and `onTimeout: Abort` uncordons after the timeout.
//! - **Bad input**: an unknown provider or host, and a second maintenance for one host, are
//!   reported and cordon nothing.
//!
//! Each test's operator is scoped to its namespace, so it moves only that namespace's pods;
//! the cordons are real. Needs `e2e/stack up`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_crds::{ChangePurpose, HostMaintenance, InfraChange};
use plumbline_operator::{clock::SystemClock, health::HealthSettings, run::Operator};
use serde_json::json;
use std::{collections::BTreeSet, sync::Arc, time::Duration};

const PATIENCE: Duration = Duration::from_secs(120);

fn maintenance_health() -> HealthSettings {
    let mut health = common::test_health();
    health.host_maintenance = true;
    health
}

struct Scene {
    stack: plumbline_e2e::Stack,
    cluster: common::Cluster,
    operator: Option<Operator>,
    /// The maintenances this test made (deleted first when it ends).
    made: Vec<String>,
    /// Nodes cordoned before the test (left as they were).
    cordoned_before: BTreeSet<String>,
}

impl Scene {
    async fn start(test: &str) -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let cluster = common::Cluster::connect(test).await?;
        let cordoned_before = cordoned(&cluster.admin).await?;
        Ok(Self {
            stack,
            cluster,
            operator: None,
            made: Vec::new(),
            cordoned_before,
        })
    }

    async fn run_operator(&mut self) -> Result<()> {
        self.operator = Some(
            self.cluster
                .start_operator_with_health(Arc::new(SystemClock), maintenance_health())
                .await?,
        );
        Ok(())
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.cluster.namespace)
    }

    /// Creates HostMaintenance `<namespace>-<short>`; returns its name.
    async fn maintain(&mut self, short: &str, spec: serde_json::Value) -> Result<String> {
        let name = self.name(short);
        let body = json!({
            "apiVersion": "plumbline.dev/v1alpha1", "kind": "HostMaintenance",
            "metadata": {"name": name}, "spec": spec,
        });
        Api::<HostMaintenance>::all(self.cluster.admin.clone())
            .patch(&name, &PatchParams::apply("e2e-user"), &Patch::Apply(&body))
            .await
            .with_context(|| format!("creating HostMaintenance {name}"))?;
        if !self.made.contains(&name) {
            self.made.push(name.clone());
        }
        Ok(name)
    }

    async fn end(&self, name: &str) -> Result<()> {
        Api::<HostMaintenance>::all(self.cluster.admin.clone())
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting HostMaintenance {name}"))?;
        Ok(())
    }

    /// Waits until `name`'s status satisfies `check`.
    async fn status_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&plumbline_crds::HostMaintenanceStatus) -> bool,
    ) -> Result<plumbline_crds::HostMaintenanceStatus> {
        let api = Api::<HostMaintenance>::all(self.cluster.admin.clone());
        eventually(what, PATIENCE, || async {
            let status = api.get(name).await?.status.unwrap_or_default();
            Ok(if check(&status) {
                Ok(status)
            } else {
                Err(format!(
                    "phase {:?}, pending {}, conditions {:?}",
                    status.phase,
                    status.pending_pods,
                    status
                        .conditions
                        .iter()
                        .map(|c| (&c.type_, &c.status, &c.reason, &c.message))
                        .collect::<Vec<_>>()
                ))
            })
        })
        .await
    }

    /// The cordons this test's operator holds in the ledger.
    async fn cordons(&self) -> Result<Vec<InfraChange>> {
        Ok(ledger(&self.cluster.admin, &self.cluster.namespace)
            .await?
            .into_iter()
            .filter(|ic| ic.spec.purpose == ChangePurpose::MaintenanceCordon)
            .collect())
    }

    /// Waits until none of `nodes` is cordoned (unless it was before the test) and this test's
    /// operator holds no cordon in the ledger.
    async fn uncordoned(&self, what: &str, nodes: &[String]) -> Result<()> {
        eventually(&format!("{what} uncordoned"), PATIENCE, || async {
            let left = self.cordons().await?;
            let now = cordoned(&self.cluster.admin).await?;
            let still: Vec<&String> = nodes
                .iter()
                .filter(|n| now.contains(*n) && !self.cordoned_before.contains(*n))
                .collect();
            Ok(if left.is_empty() && still.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} cordon(s) in the ledger, still cordoned {still:?}",
                    left.len()
                ))
            })
        })
        .await
    }

    /// Ends every maintenance while the operator runs (so the cordons are reverted through
    /// their finalizers), releases the rest, and uncordons by hand, as an error, any node this
    /// test left cordoned.
    async fn finish(mut self, result: Result<()>) -> Result<()> {
        for name in &self.made {
            let _ = self.end(name).await;
        }
        let released = match self.operator.take() {
            Some(op) => {
                let drained = eventually("the cordons reverted", PATIENCE, || async {
                    let left = self.cordons().await?;
                    Ok(if left.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{} left", left.len()))
                    })
                })
                .await;
                drained
                    .and(release_everything(&self.cluster.admin, &self.cluster.namespace, op).await)
            }
            None => Ok(()),
        };
        strip_ledger(&self.cluster.admin, &self.cluster.namespace).await;
        let left: Vec<String> = cordoned(&self.cluster.admin)
            .await
            .unwrap_or_default()
            .difference(&self.cordoned_before)
            .cloned()
            .collect();
        for node in &left {
            let _ = Api::<Node>::all(self.cluster.admin.clone())
                .patch(
                    node,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"unschedulable": null}})),
                )
                .await;
        }
        self.cluster.cleanup().await;
        result.and(released).and(if left.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("nodes left cordoned: {left:?}"))
        })
    }
}

/// The nodes cordoned now.
async fn cordoned(admin: &Client) -> Result<BTreeSet<String>> {
    Ok(Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
        .map(|n| n.name_any())
        .collect())
}

/// The host the libvirt provider reports for its guests, and their node names.
async fn libvirt_host(stack: &plumbline_e2e::Stack) -> Result<(String, Vec<String>)> {
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

/// A PodDisruptionBudget `<app>-frozen` with `maxUnavailable: 0` over the app's pods, in the
/// policy version the server serves.
async fn no_disruption_budget(admin: &Client, namespace: &str, app: &str) -> Result<()> {
    let apis = plumbline_operator::discovery::ServedApis::discover(admin).await?;
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &apis.pdb);
    let name = format!("{app}-frozen");
    let body = json!({
        "apiVersion": apis.pdb.api_version, "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": app}}},
    });
    api.patch(&name, &PatchParams::apply("e2e-user"), &Patch::Apply(&body))
        .await
        .with_context(|| format!("creating PodDisruptionBudget {name}"))?;
    Ok(())
}

fn ready_pods(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .count()
}

#[tokio::test]
async fn serial_maintenance_of_the_libvirt_host_moves_pods_to_vsphere_nodes_keeping_the_floor(
) -> Result<()> {
    let mut scene = Scene::start("maint-kvm").await?;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let uri = scene.stack.libvirt_uri()?.to_string();
        let provider = apply_libvirt_provider(&admin, &ns, &uri).await?;
        let (host, guests) = libvirt_host(&scene.stack).await?;
        // Four pods, preferring the libvirt guests' nodes: they start there.
        deploy_placed(
            &admin,
            &ns,
            "pay",
            4,
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": guests}]}}]}}}),
        )
        .await?;
        scene
            .cluster
            .apply_intent(
                "pay",
                json!({"target": {"kind": "Deployment", "name": "pay"}, "priority": "critical",
                       "availability": {"replicaFloor": 2, "minAvailable": 2}}),
            )
            .await?;
        scene.run_operator().await?;
        let on_guests = |pods: &[Pod]| {
            pods.iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| guests.contains(n))
                })
                .count()
        };
        eventually("4 ready pods on the libvirt guests' nodes", PATIENCE, || async {
            let list = pods(&admin, &ns, "pay").await?;
            Ok(if ready_pods(&list) == 4 && on_guests(&list) >= 2 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;

        // First a dry run: the pre-flight, nothing cordoned.
        let spec = json!({"provider": provider, "host": host, "reason": "kernel update",
                          "maxUnavailableNodes": guests.len(), "dryRun": true});
        let name = scene.maintain("kvm", spec.clone()).await?;
        let preview = scene
            .status_until(&name, "the pre-flight", |s| !s.workloads.is_empty())
            .await?;
        ensure!(
            preview.workloads.iter().any(|w| w.intent.as_deref() == Some(&format!("{ns}/pay"))
                && w.pods_on_host >= 2
                && w.evictable),
            "the pre-flight names the intent: {:?}",
            preview.workloads
        );
        ensure!(
            preview.phase.as_deref() == Some("Pending") && scene.cordons().await?.is_empty(),
            "a dry run cordons nothing: {preview:?}"
        );
        let mut go = spec;
        go["dryRun"] = json!(false);
        scene.maintain("kvm", go).await?;
        // Sample the ready pods every 0.5 s until drained.
        let api = Api::<HostMaintenance>::all(admin.clone());
        let mut fewest = usize::MAX;
        let started = tokio::time::Instant::now();
        loop {
            let list = pods(&admin, &ns, "pay").await?;
            fewest = fewest.min(ready_pods(&list));
            let hm = api.get(&name).await?;
            let status = hm.status.clone().unwrap_or_default();
            if status.phase.as_deref() == Some("Drained") && on_guests(&list) == 0 {
                break;
            }
            ensure!(
                started.elapsed() < PATIENCE,
                "not drained in {PATIENCE:?}: {:?}, pods {}",
                status,
                summary(&list)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "drained {} node(s) in {:?}; fewest ready pods seen: {fewest}",
            guests.len(),
            started.elapsed()
        );
        ensure!(fewest >= 2, "the workload went below its floor: {fewest} ready");
        let status = scene
            .status_until(&name, "ReadyForMaintenance", |s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "ReadyForMaintenance" && c.status == "True")
            })
            .await?;
        ensure!(
            status.nodes.len() == guests.len() && status.nodes.iter().all(|n| n.state == "Drained"),
            "every guest's node drained: {:?}",
            status.nodes
        );
        let now_cordoned = cordoned(&admin).await?;
        ensure!(
            guests.iter().all(|g| now_cordoned.contains(g)),
            "every guest's node is cordoned: {now_cordoned:?}"
        );
        ensure!(
            scene.cordons().await?.len() == guests.len(),
            "one ledger entry per cordon"
        );
        eventually("4 ready pods elsewhere", PATIENCE, || async {
            let list = pods(&admin, &ns, "pay").await?;
            Ok(if ready_pods(&list) == 4 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;

        // The maintenance ends: the nodes are uncordoned through the ledger.
        scene.end(&name).await?;
        scene.uncordoned("the guests' nodes", &guests).await?;
        Ok(())
    }
    .await;
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_blocked_by_a_budget_names_it_and_abort_uncordons() -> Result<()> {
    let mut scene = Scene::start("maint-blocked").await?;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let uri = scene.stack.libvirt_uri()?.to_string();
        let provider = apply_libvirt_provider(&admin, &ns, &uri).await?;
        let (host, guests) = libvirt_host(&scene.stack).await?;
        deploy_pinned(&admin, &ns, "ledger", 1, &guests[0]).await?;
        no_disruption_budget(&admin, &ns, "ledger").await?;
        scene.run_operator().await?;
        eventually("the pod ready", PATIENCE, || async {
            let list = pods(&admin, &ns, "ledger").await?;
            Ok(if ready_pods(&list) == 1 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;
        let name = scene
            .maintain(
                "blocked",
                json!({"provider": provider, "host": host, "maxUnavailableNodes": guests.len(),
                       "drainTimeout": "20s", "onTimeout": "Abort"}),
            )
            .await?;
        let blocked = scene
            .status_until(&name, "DrainBlocked naming the budget", |s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "DrainBlocked"
                        && c.status == "True"
                        && c.reason == "DisruptionBudget"
                        && c.message.contains("ledger")
                })
            })
            .await?;
        println!("blocked: {:?}", blocked.conditions);
        ensure!(
            pods(&admin, &ns, "ledger").await?.len() == 1,
            "the pod was not evicted"
        );
        // The timeout passes: Abort uncordons and ends.
        let ended = scene
            .status_until(&name, "Ended after the timeout", |s| {
                s.phase.as_deref() == Some("Ended")
            })
            .await?;
        ensure!(
            ended
                .conditions
                .iter()
                .any(|c| c.type_ == "DrainBlocked" && c.reason == "Aborted"),
            "{:?}",
            ended.conditions
        );
        scene
            .uncordoned("the guests' nodes after Abort", &guests)
            .await?;
        Ok(())
    }
    .await;
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_bad_input_is_reported_and_cordons_nothing() -> Result<()> {
    let mut scene = Scene::start("maint-bad").await?;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let uri = scene.stack.libvirt_uri()?.to_string();
        let provider = apply_libvirt_provider(&admin, &ns, &uri).await?;
        let (host, _) = libvirt_host(&scene.stack).await?;
        scene.run_operator().await?;
        let unknown_provider = scene
            .maintain(
                "no-provider",
                json!({"provider": "no-such-provider", "host": host}),
            )
            .await?;
        let unknown_host = scene
            .maintain(
                "no-host",
                json!({"provider": provider, "host": "no-such-host"}),
            )
            .await?;
        let s = scene
            .status_until(&unknown_provider, "UnknownProvider", |s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "DrainBlocked" && c.reason == "UnknownProvider")
            })
            .await?;
        ensure!(s.phase.as_deref() == Some("Pending"), "{s:?}");
        let s = scene
            .status_until(&unknown_host, "UnknownHost naming the real one", |s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "DrainBlocked"
                        && c.reason == "UnknownHost"
                        && c.message.contains(&host)
                })
            })
            .await?;
        ensure!(s.phase.as_deref() == Some("Pending"), "{s:?}");
        // Two for one host, made in order: the second waits for the first.
        let first = scene
            .maintain(
                "first",
                json!({"provider": provider, "host": host, "drainTimeout": "1h"}),
            )
            .await?;
        scene
            .status_until(&first, "the first one acting", |s| s.phase.is_some())
            .await?;
        let second = scene
            .maintain("second", json!({"provider": provider, "host": host}))
            .await?;
        scene
            .status_until(&second, "ConflictingMaintenance naming the first", |s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "DrainBlocked"
                        && c.reason == "ConflictingMaintenance"
                        && c.message.contains(&first)
                })
            })
            .await?;
        let owners: BTreeSet<String> = scene
            .cordons()
            .await?
            .iter()
            .flat_map(|ic| ic.spec.owners.iter().map(|o| o.intent.clone()))
            .collect();
        ensure!(
            owners
                .iter()
                .all(|o| o == &format!("HostMaintenance/{first}")),
            "only the first one cordons: {owners:?}"
        );
        Ok(())
    }
    .await;
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_resumes_after_the_operator_is_killed_mid_drain() -> Result<()> {
    use common::process::OperatorProcess;
    let mut scene = Scene::start("maint-restart").await?;
    let mut second = None;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let uri = scene.stack.libvirt_uri()?.to_string();
        let provider = apply_libvirt_provider(&admin, &ns, &uri).await?;
        let (host, guests) = libvirt_host(&scene.stack).await?;
        deploy_pinned(&admin, &ns, "ledger", 1, &guests[0]).await?;
        no_disruption_budget(&admin, &ns, "ledger").await?;
        let kubeconfig = scene.stack.operator_kubeconfig()?.to_path_buf();
        let args = ["--host-maintenance=true"];
        let mut first = OperatorProcess::start("maint-first", &ns, &kubeconfig, &args).await?;
        let name = scene
            .maintain(
                "restart",
                json!({"provider": provider, "host": host, "maxUnavailableNodes": guests.len(),
                       "drainTimeout": "1h"}),
            )
            .await?;
        scene
            .status_until(&name, "blocked mid-drain by the budget", |s| {
                s.phase.as_deref() == Some("Blocked")
            })
            .await?;
        eventually("every guest's node cordoned", PATIENCE, || async {
            let now = cordoned(&admin).await?;
            let missing: Vec<&String> = guests.iter().filter(|g| !now.contains(*g)).collect();
            Ok(if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not cordoned yet: {missing:?}"))
            })
        })
        .await?;

        // SIGKILL mid-drain: nothing is released, nothing is lost.
        first.signal("KILL").await?;
        first.exited().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = cordoned(&admin).await?;
        ensure!(
            guests.iter().all(|g| now.contains(g)) && scene.cordons().await?.len() == guests.len(),
            "the cordons and their ledger entries outlive the killed operator: {now:?}"
        );

        // The next operator continues from status and the ledger: once the budget allows it,
        // the pod leaves and the host is drained; deleting the maintenance uncordons.
        let next =
            second.insert(OperatorProcess::start("maint-second", &ns, &kubeconfig, &args).await?);
        next.http_addr().await?;
        let budgets = plumbline_operator::discovery::ServedApis::discover(&admin).await?;
        Api::<kube::api::DynamicObject>::namespaced_with(admin.clone(), &ns, &budgets.pdb)
            .delete("ledger-frozen", &DeleteParams::default())
            .await?;
        let drained = scene
            .status_until(&name, "Drained by the next operator", |s| {
                s.phase.as_deref() == Some("Drained")
            })
            .await?;
        ensure!(drained.started_at.is_some(), "{drained:?}");
        scene.end(&name).await?;
        scene
            .uncordoned("the guests' nodes, by the next operator", &guests)
            .await?;
        Ok(())
    }
    .await;
    if let Some(op) = second {
        let _ = op.stop().await;
    }
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_of_a_vsphere_host_drains_its_nodes_under_a_budget() -> Result<()> {
    let mut scene = Scene::start("maint-vc").await?;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let provider = apply_vsphere_provider(&scene.stack, &admin, &ns).await?;
        let hv = vsphere_adapter(&scene.stack).await?;
        let inventory = hv.inventory().await?;
        let _ = hv.close().await;
        // The simulator's host with the most VMs: its nodes (found by providerID) are drained.
        let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for vm in &inventory {
            by_host
                .entry(vm.host.clone())
                .or_default()
                .push(vm.provider_id.clone());
        }
        let (host, provider_ids) = by_host
            .into_iter()
            .max_by_key(|(_, ids)| ids.len())
            .context("the simulator reports no VMs")?;
        let vms: Vec<String> = Api::<Node>::all(admin.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_ref())
                    .is_some_and(|id| provider_ids.contains(id))
            })
            .map(|n| n.name_any())
            .collect();
        ensure!(!vms.is_empty(), "no node is a VM on {host}: {provider_ids:?}");
        println!("draining simulator host {host}: nodes {vms:?}");
        // Three pods preferring the host's nodes, at most one away at a time.
        deploy_placed(
            &admin,
            &ns,
            "orders",
            3,
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": vms}]}}]}}}),
        )
        .await?;
        let on_host = |pods: &[Pod]| {
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| vms.contains(n))
                })
                .count()
        };
        eventually("3 ready pods, on the host's nodes", PATIENCE, || async {
            let list = pods(&admin, &ns, "orders").await?;
            Ok(if ready_pods(&list) == 3 && on_host(&list) >= 1 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;
        let apis = plumbline_operator::discovery::ServedApis::discover(&admin).await?;
        let budget = json!({
            "apiVersion": apis.pdb.api_version, "kind": "PodDisruptionBudget",
            "metadata": {"name": "orders", "namespace": ns},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "orders"}}},
        });
        Api::<kube::api::DynamicObject>::namespaced_with(admin.clone(), &ns, &apis.pdb)
            .patch("orders", &PatchParams::apply("e2e-user"), &Patch::Apply(&budget))
            .await?;
        scene.run_operator().await?;
        let name = scene
            .maintain("vc", json!({"provider": provider, "host": host, "reason": "firmware"}))
            .await?;
        let mut fewest = usize::MAX;
        let started = tokio::time::Instant::now();
        loop {
            let list = pods(&admin, &ns, "orders").await?;
            fewest = fewest.min(ready_pods(&list));
            let status = Api::<HostMaintenance>::all(admin.clone())
                .get(&name)
                .await?
                .status
                .unwrap_or_default();
            if status.phase.as_deref() == Some("Drained") && on_host(&list) == 0 {
                ensure!(
                    status.nodes.len() == vms.len(),
                    "the host's nodes, and only those: {:?}",
                    status.nodes
                );
                break;
            }
            ensure!(
                started.elapsed() < PATIENCE,
                "not drained in {PATIENCE:?}: {status:?}, pods {}",
                summary(&list)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("drained in {:?}; fewest ready pods: {fewest}", started.elapsed());
        ensure!(fewest >= 2, "the budget of 2 was breached: {fewest} ready");
        let now = cordoned(&admin).await?;
        ensure!(vms.iter().all(|v| now.contains(v)), "{now:?}");
        scene.end(&name).await?;
        scene.uncordoned("the host's nodes", &vms).await?;
        Ok(())
    }
    .await;
    scene.finish(result).await
}
