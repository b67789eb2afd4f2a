//! Host maintenance on the real stack: a HostMaintenance cordons the nodes whose VMs are on
//! the host (through the ledger) and evicts their pods without taking a workload below its
//! intent's floor or its PodDisruptionBudget; deleting it uncordons them.
//!
//! - **libvirt**: the libvirt host (every libvirt guest's node at once) is drained while the
//!   vSphere simulator's nodes take the pods; a critical intent's workload keeps its 2 ready
//!   pods throughout, sampled every 0.5 s.
//! - **vSphere**: a simulator host's nodes are drained while a critical intent's workload (2
//!   pods, both on the host, floor 2, budget 2) is first surged to 4 through the ledger; the
//!   new pods are ready elsewhere before any pod leaves, it never has fewer than 2 ready, and
//!   ending the maintenance uncordons and scales back to 2.
//! - **Detected**: maintenance started on the simulator by someone else (a lingering
//!   `EnterMaintenanceMode_Task`) gets a HostMaintenance labelled as detected, which drains the
//!   host's nodes and is deleted when the host leaves maintenance mode.
//! - **enterMaintenance**: once drained, the host is put into maintenance mode through the
//!   ledger and taken out when the object is deleted.
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
            let Some(hm) = api.get_opt(name).await? else {
                return Ok(Err("not created yet".to_string()));
            };
            let status = hm.status.unwrap_or_default();
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

/// The simulator's host with the most VMs, and the nodes (found by providerID) that are VMs
/// on it.
async fn busiest_vsphere_host(
    stack: &plumbline_e2e::Stack,
    admin: &Client,
) -> Result<(String, Vec<String>)> {
    let hv = vsphere_adapter(stack).await?;
    let inventory = hv.inventory().await?;
    let _ = hv.close().await;
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
    let nodes: Vec<String> = Api::<Node>::all(admin.clone())
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
    ensure!(
        !nodes.is_empty(),
        "no node is a VM on {host}: {provider_ids:?}"
    );
    Ok((host, nodes))
}

/// The pods of `pods` on one of `nodes`, not being deleted.
fn on_nodes(pods: &[Pod], nodes: &[String]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| nodes.contains(n))
        })
        .count()
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

/// A Deployment's `spec.replicas`.
async fn replicas(admin: &Client, namespace: &str, name: &str) -> Result<i32> {
    Ok(
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("reading Deployment {name}"))?
            .spec
            .replicas
            .unwrap_or(1),
    )
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
        deploy_placed(&admin, &ns, "pay", 4, preferring(&guests)).await?;
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
        eventually(
            "4 ready pods on the libvirt guests' nodes",
            PATIENCE,
            || async {
                let list = pods(&admin, &ns, "pay").await?;
                Ok(if ready_pods(&list) == 4 && on_guests(&list) >= 2 {
                    Ok(())
                } else {
                    Err(summary(&list))
                })
            },
        )
        .await?;

        // First a dry run: the pre-flight, nothing cordoned.
        let spec = json!({"provider": provider, "host": host, "reason": "kernel update",
                          "maxUnavailableNodes": guests.len(), "dryRun": true});
        let name = scene.maintain("kvm", spec.clone()).await?;
        let preview = scene
            .status_until(&name, "the pre-flight", |s| !s.workloads.is_empty())
            .await?;
        ensure!(
            preview
                .workloads
                .iter()
                .any(|w| w.intent.as_deref() == Some(&format!("{ns}/pay"))
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
        ensure!(
            fewest >= 2,
            "the workload went below its floor: {fewest} ready"
        );
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
        // The workload was surged by its pods on the host (its floor of 2 could not have
        // held otherwise when most of its pods were there), and all of them are ready elsewhere.
        let surged = replicas(&admin, &ns, "pay").await?;
        ensure!(
            surged > 4,
            "a critical workload at its floor is surged: {surged} replicas"
        );
        eventually("every replica ready elsewhere", PATIENCE, || async {
            let list = pods(&admin, &ns, "pay").await?;
            Ok(if ready_pods(&list) == surged as usize {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;

        // The maintenance ends: the nodes are uncordoned and the surge removed, through the
        // ledger.
        scene.end(&name).await?;
        scene.uncordoned("the guests' nodes", &guests).await?;
        eventually("back to 4 replicas", PATIENCE, || async {
            let now = replicas(&admin, &ns, "pay").await?;
            Ok(if now == 4 {
                Ok(())
            } else {
                Err(format!("{now} replicas"))
            })
        })
        .await?;
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
    // An operator in the test for the cleanup: the test's provider goes while it runs, so its
    // finalizer is let go (the binaries above are gone).
    let result = match scene.run_operator().await {
        Ok(()) => result,
        Err(e) => result.and(Err(e)),
    };
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_of_a_vsphere_host_surges_a_critical_workload_then_drains_it(
) -> Result<()> {
    let mut scene = Scene::start("maint-vc").await?;
    let result = async {
        let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
        let provider = apply_vsphere_provider(&scene.stack, &admin, &ns).await?;
        let (host, vms) = busiest_vsphere_host(&scene.stack, &admin).await?;
        println!("draining simulator host {host}: nodes {vms:?}");
        // Two pods preferring the host's nodes, a critical intent with a floor of 2 and a
        // budget of 2: without a surge, neither could leave.
        deploy_placed(
            &admin,
            &ns,
            "orders",
            2,
            preferring(&vms),
        )
        .await?;
        let on_host = |pods: &[Pod]| on_nodes(pods, &vms);
        let apis = plumbline_operator::discovery::ServedApis::discover(&admin).await?;
        let budget = json!({
            "apiVersion": apis.pdb.api_version, "kind": "PodDisruptionBudget",
            "metadata": {"name": "orders", "namespace": ns},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "orders"}}},
        });
        Api::<kube::api::DynamicObject>::namespaced_with(admin.clone(), &ns, &apis.pdb)
            .patch("orders", &PatchParams::apply("e2e-user"), &Patch::Apply(&budget))
            .await?;
        scene
            .cluster
            .apply_intent(
                "orders",
                json!({"target": {"kind": "Deployment", "name": "orders"}, "priority": "critical",
                       "availability": {"replicaFloor": 2}}),
            )
            .await?;
        scene.run_operator().await?;
        // The intent's template change has rolled out: 2 ready pods of the critical class,
        // both on the host's nodes.
        eventually("2 ready critical pods, on the host's nodes", PATIENCE, || async {
            let list: Vec<Pod> = pods(&admin, &ns, "orders")
                .await?
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.priority_class_name.as_deref())
                        == Some("plumbline-critical")
                })
                .collect();
            Ok(if ready_pods(&list) == 2 && on_host(&list) == 2 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;
        // The pre-flight first, as `plumbline explain hm/NAME` shows it: the surge to come.
        let spec = json!({"provider": provider, "host": host, "reason": "firmware", "dryRun": true});
        let name = scene.maintain("vc", spec.clone()).await?;
        let args = plumbline_operator::cli::ExplainArgs {
            file: None,
            intent: Some(format!("hm/{name}")),
            namespace: None,
            output: plumbline_operator::cli::ExplainOutput::Text,
            at: None,
            prometheus: Default::default(),
        };
        let text =
            plumbline_operator::explain::explain(admin.clone(), &args, &SystemClock).await?;
        println!("{text}");
        ensure!(
            text.contains(&format!("Nodes on the host ({})", vms.len()))
                && text.contains(&format!(
                    "surged by 2 to 4 replicas for WorkloadIntent {ns}/orders"
                )),
            "explain shows the nodes and the surge to come:\n{text}"
        );
        let mut go = spec;
        go["dryRun"] = json!(false);
        scene.maintain("vc", go).await?;
        let (mut fewest, mut most_replicas) = (usize::MAX, 0);
        // Ready pods off the host when the first pod on it went away.
        let mut elsewhere_at_first_move = None;
        let started = tokio::time::Instant::now();
        loop {
            let list = pods(&admin, &ns, "orders").await?;
            fewest = fewest.min(ready_pods(&list));
            most_replicas = most_replicas.max(replicas(&admin, &ns, "orders").await?);
            if elsewhere_at_first_move.is_none() && on_host(&list) < 2 {
                let elsewhere: Vec<Pod> = list
                    .iter()
                    .filter(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_ref())
                            .is_some_and(|n| !vms.contains(n))
                    })
                    .cloned()
                    .collect();
                elsewhere_at_first_move = Some(ready_pods(&elsewhere));
            }
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
        println!(
            "drained in {:?}; fewest ready pods: {fewest}; replicas up to {most_replicas}; \
             ready elsewhere when the first pod left: {elsewhere_at_first_move:?}",
            started.elapsed()
        );
        ensure!(fewest >= 2, "the floor and budget of 2 were breached: {fewest} ready");
        ensure!(most_replicas == 4, "surged to 4 replicas, saw {most_replicas}");
        ensure!(
            elsewhere_at_first_move >= Some(2),
            "the surge's pods were ready elsewhere before a pod left the host: {elsewhere_at_first_move:?}"
        );
        let surge: Vec<InfraChange> = ledger(&admin, &ns)
            .await?
            .into_iter()
            .filter(|ic| ic.spec.purpose == ChangePurpose::MaintenanceSurge)
            .collect();
        ensure!(
            surge.len() == 1
                && surge[0].spec.desired == "4"
                && surge[0].status.as_ref().and_then(|s| s.original.as_deref()) == Some("2"),
            "one surge in the ledger, 2 -> 4: {surge:?}"
        );
        let now = cordoned(&admin).await?;
        ensure!(vms.iter().all(|v| now.contains(v)), "{now:?}");
        scene.end(&name).await?;
        scene.uncordoned("the host's nodes", &vms).await?;
        eventually("the surge removed", PATIENCE, || async {
            let (replicas, left) = (
                replicas(&admin, &ns, "orders").await?,
                ledger(&admin, &ns)
                    .await?
                    .into_iter()
                    .filter(|ic| ic.spec.purpose == ChangePurpose::MaintenanceSurge)
                    .count(),
            );
            Ok(if replicas == 2 && left == 0 {
                Ok(())
            } else {
                Err(format!("{replicas} replicas, {left} surge(s) in the ledger"))
            })
        })
        .await?;
        Ok(())
    }
    .await;
    scene.finish(result).await
}

#[tokio::test]
async fn serial_maintenance_started_on_vsphere_is_detected_drained_and_ended_with_it() -> Result<()>
{
    let mut scene = Scene::start("maint-seen").await?;
    let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
    let (host, nodes) = busiest_vsphere_host(&scene.stack, &admin).await?;
    let result = async {
        let provider = apply_vsphere_provider(&scene.stack, &admin, &ns).await?;
        deploy_placed(&admin, &ns, "web", 2, preferring(&nodes)).await?;
        eventually("2 ready pods on the host's nodes", PATIENCE, || async {
            let list = pods(&admin, &ns, "web").await?;
            Ok(if ready_pods(&list) == 2 && on_nodes(&list, &nodes) >= 1 {
                Ok(())
            } else {
                Err(summary(&list))
            })
        })
        .await?;
        scene.run_operator().await?;
        // Someone else starts maintenance on the hypervisor: the task runs for 20 s.
        scene
            .stack
            .start_vsphere_maintenance(&host, Duration::from_secs(20))
            .await?;
        let name = plumbline_policies::maintenance::detect::detected_name(&provider, &host);
        scene.made.push(name.clone());
        let status = scene
            .status_until(&name, "the detected maintenance drained", |s| {
                s.phase.as_deref() == Some("Drained")
            })
            .await?;
        let hm = Api::<HostMaintenance>::all(admin.clone())
            .get(&name)
            .await?;
        ensure!(
            hm.labels()
                .get("plumbline.dev/detected")
                .map(String::as_str)
                == Some("true"),
            "labelled as detected: {:?}",
            hm.labels()
        );
        ensure!(
            hm.spec.reason.as_deref().is_some_and(|r| r.contains(&host)),
            "the reason names the host: {:?}",
            hm.spec.reason
        );
        ensure!(
            status.host_in_maintenance == Some(true),
            "status shows the host entering or in maintenance: {status:?}"
        );
        ensure!(
            on_nodes(&pods(&admin, &ns, "web").await?, &nodes) == 0,
            "the host's nodes are drained"
        );
        // The host leaves maintenance: the detected maintenance ends and the nodes come back.
        scene.stack.end_vsphere_maintenance(&host).await?;
        eventually("the detected maintenance deleted", PATIENCE, || async {
            Ok(
                match Api::<HostMaintenance>::all(admin.clone())
                    .get_opt(&name)
                    .await?
                {
                    None => Ok(()),
                    Some(hm) => Err(format!("still there: {:?}", hm.status)),
                },
            )
        })
        .await?;
        scene.uncordoned("the host's nodes", &nodes).await?;
        Ok(())
    }
    .await;
    let ended = scene.stack.end_vsphere_maintenance(&host).await;
    scene.finish(result.and(ended.map_err(Into::into))).await
}

#[tokio::test]
async fn serial_maintenance_puts_a_drained_vsphere_host_into_maintenance_mode_and_back(
) -> Result<()> {
    let mut scene = Scene::start("maint-mode").await?;
    let (admin, ns) = (scene.cluster.admin.clone(), scene.cluster.namespace.clone());
    let (host, _) = busiest_vsphere_host(&scene.stack, &admin).await?;
    let result = async {
        let provider = apply_vsphere_provider(&scene.stack, &admin, &ns).await?;
        scene.run_operator().await?;
        let name = scene
            .maintain(
                "mode",
                json!({"provider": provider, "host": host, "reason": "BIOS update",
                       "enterMaintenance": true}),
            )
            .await?;
        let mode = || async {
            anyhow::Ok(
                ledger(&admin, &ns)
                    .await?
                    .into_iter()
                    .filter(|ic| ic.spec.purpose == ChangePurpose::HostMaintenanceMode)
                    .collect::<Vec<_>>(),
            )
        };
        eventually("the host in maintenance mode", PATIENCE, || async {
            let (entries, sim) = (mode().await?, scene.stack.vsphere_host(&host).await?);
            let applied = entries.iter().any(|ic| {
                ic.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Applied")
                    && ic.status.as_ref().and_then(|s| s.original.as_deref()) == Some("absent")
            });
            Ok(if applied && sim.in_maintenance {
                Ok(())
            } else {
                Err(format!("ledger {entries:?}, simulator {sim:?}"))
            })
        })
        .await?;
        scene
            .status_until(&name, "status shows the host in maintenance", |s| {
                s.phase.as_deref() == Some("Drained") && s.host_in_maintenance == Some(true)
            })
            .await?;
        // Ending the maintenance takes the host out through the entry's finalizer; Plumbline's
        // own maintenance mode on its way out is never mistaken for someone else's.
        scene.end(&name).await?;
        eventually("the host out of maintenance mode", PATIENCE, || async {
            let (entries, sim) = (mode().await?, scene.stack.vsphere_host(&host).await?);
            Ok(if entries.is_empty() && !sim.in_maintenance {
                Ok(())
            } else {
                Err(format!("ledger {entries:?}, simulator {sim:?}"))
            })
        })
        .await?;
        // Past the next read of the hosts (every 10 samples).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let detected: Vec<String> = Api::<HostMaintenance>::all(admin.clone())
            .list(&ListParams::default().labels("plumbline.dev/detected=true"))
            .await?
            .items
            .iter()
            .map(|hm| hm.name_any())
            .collect();
        ensure!(detected.is_empty(), "nothing detected: {detected:?}");
        Ok(())
    }
    .await;
    let ended = scene.stack.end_vsphere_maintenance(&host).await;
    scene.finish(result.and(ended.map_err(Into::into))).await
}
