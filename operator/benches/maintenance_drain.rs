//! Drain benchmark on the real stack (not a test: it prints figures, asserts nothing).
//!
//! `cargo bench -p plumbline-operator --features libvirt --bench maintenance_drain`
//!
//! Runs the operator in-process with `--host-maintenance`, a Deployment of 30 pods preferring
//! three of the libvirt guests' nodes and a PodDisruptionBudget (`minAvailable: 27`, so at most
//! 3 pods move at once), then for each round: creates a HostMaintenance for the libvirt host
//! (one node drained at a time) and measures
//! - cordoned: creation → every node of the host cordoned;
//! - drained: creation → phase `Drained` (every pod off the host's nodes);
//! - the fewest ready pods seen meanwhile (sampled every 0.5 s);
//!
//! then deletes it, waits for the nodes to be uncordoned, and moves the pods back (a rollout
//! restart) for the next round.
//!
//! Environment: PLUMBLINE_BENCH_ROUNDS (default 3), PLUMBLINE_BENCH_PODS (default 30),
//! PLUMBLINE_BENCH_MIN_AVAILABLE (default pods - 3). Method and figures: docs/maintenance.md.

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_crds::HostMaintenance;
use plumbline_e2e::{cluster::TestNamespace, Stack};
use plumbline_operator::{
    clock::SystemClock,
    health::HealthSettings,
    run::{Operator, Settings},
};
use serde_json::json;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

const PATIENCE: Duration = Duration::from_secs(300);

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn pods(admin: &Client, ns: &str) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels("app=drain"))
        .await?
        .items)
}

fn on(pods: &[Pod], nodes: &[String]) -> usize {
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

async fn cordoned(admin: &Client, nodes: &[String]) -> Result<usize> {
    let api = Api::<Node>::all(admin.clone());
    let mut n = 0;
    for name in nodes {
        if api.get(name).await?.spec.and_then(|s| s.unschedulable) == Some(true) {
            n += 1;
        }
    }
    Ok(n)
}

async fn wait(what: &str, mut done: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !done().await? {
        if Instant::now() > deadline {
            bail!("{what} within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let stack = Stack::load().context("the benchmark needs the real stack: e2e/stack up")?;
    let admin = stack.admin_client().await?;
    let rounds = env_num("PLUMBLINE_BENCH_ROUNDS", 3);
    let replicas = env_num("PLUMBLINE_BENCH_PODS", 30) as i32;
    let min_available = env_num(
        "PLUMBLINE_BENCH_MIN_AVAILABLE",
        replicas.saturating_sub(3) as u64,
    ) as i32;

    for (_, crd) in plumbline_crds::generate::crds() {
        Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(admin.clone())
            .patch(&crd.name_any(), &PatchParams::apply("plumbline-bench").force(), &Patch::Apply(&crd))
            .await
            .context("installing CRDs")?;
    }
    let hv = plumbline_adapters::connect(plumbline_adapters::HypervisorConfig::Libvirt(
        plumbline_adapters::LibvirtConfig {
            uri: stack.libvirt_uri()?.to_string(),
        },
    ))
    .await?;
    let inventory = hv.inventory().await?;
    let _ = hv.close().await;
    let host = inventory.first().context("no libvirt guests")?.host.clone();
    let mut guests: Vec<String> = inventory.into_iter().map(|vm| vm.name).collect();
    guests.sort();
    let busy: Vec<String> = guests.iter().take(3).cloned().collect();

    let namespace = TestNamespace::create(&admin, "bench-drain").await?;
    let ns = namespace.name.clone();
    let provider = format!("{ns}-kvm");
    let maintenance = format!("{ns}-drain");
    let hp = json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "HypervisorProvider",
        "metadata": {"name": provider},
        "spec": {"libvirt": {"uri": stack.libvirt_uri()?}, "sampleInterval": "1s"},
    });
    Api::<plumbline_crds::HypervisorProvider>::all(admin.clone())
        .patch(
            &provider,
            &PatchParams::apply("plumbline-bench").force(),
            &Patch::Apply(&hp),
        )
        .await?;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "drain", "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "drain"}},
                 "template": {"metadata": {"labels": {"app": "drain"}},
                              "spec": {"automountServiceAccountToken": false,
                                       "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                                       "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                                           {"weight": 100, "preference": {"matchExpressions": [
                                               {"key": "kubernetes.io/hostname", "operator": "In", "values": busy}]}}]}}}}},
    });
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns)
        .patch(
            "drain",
            &PatchParams::apply("plumbline-bench"),
            &Patch::Apply(&deployment),
        )
        .await?;
    let apis = plumbline_operator::discovery::ServedApis::discover(&admin).await?;
    let pdb = json!({
        "apiVersion": apis.pdb.api_version, "kind": "PodDisruptionBudget",
        "metadata": {"name": "drain", "namespace": ns},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": "drain"}}},
    });
    Api::<kube::api::DynamicObject>::namespaced_with(admin.clone(), &ns, &apis.pdb)
        .patch(
            "drain",
            &PatchParams::apply("plumbline-bench"),
            &Patch::Apply(&pdb),
        )
        .await?;

    let operator = Operator::start(
        stack.operator_client().await?,
        Settings {
            metrics_addr: "127.0.0.1:0".parse()?,
            leader_election: None,
            concurrency: 2,
            identity: "bench-drain".into(),
            namespace: Some(ns.clone()),
            health: HealthSettings {
                host_maintenance: true,
                ..HealthSettings::default()
            },
            prometheus: None,
        },
        Arc::new(SystemClock),
    )
    .await?;

    let hms = Api::<HostMaintenance>::all(admin.clone());
    let result = async {
        println!(
            "# maintenance_drain: {replicas} pods preferring {busy:?}, PodDisruptionBudget minAvailable {min_available}, host {host} ({} nodes), one node at a time",
            guests.len()
        );
        println!("round\ton_host\tcordoned_s\tdrained_s\tfewest_ready");
        for round in 1..=rounds {
            wait("every pod ready", async || {
                let list = pods(&admin, &ns).await?;
                Ok(list.iter().filter(|p| is_ready(p)).count() == replicas as usize
                    && list.len() == replicas as usize)
            })
            .await?;
            let on_host = on(&pods(&admin, &ns).await?, &guests);
            let spec = json!({
                "apiVersion": "plumbline.dev/v1alpha1", "kind": "HostMaintenance",
                "metadata": {"name": maintenance},
                "spec": {"provider": provider, "host": host, "reason": "benchmark"},
            });
            let started = Instant::now();
            hms.patch(&maintenance, &PatchParams::apply("plumbline-bench"), &Patch::Apply(&spec))
                .await?;
            let mut cordoned_at = None;
            let mut fewest = usize::MAX;
            loop {
                let list = pods(&admin, &ns).await?;
                fewest = fewest.min(list.iter().filter(|p| is_ready(p)).count());
                if cordoned_at.is_none() && cordoned(&admin, &guests).await? == guests.len() {
                    cordoned_at = Some(started.elapsed());
                }
                let phase = hms
                    .get(&maintenance)
                    .await?
                    .status
                    .and_then(|s| s.phase)
                    .unwrap_or_default();
                if phase == "Drained" {
                    break;
                }
                if started.elapsed() > PATIENCE {
                    bail!("round {round}: not drained within {PATIENCE:?} (phase {phase})");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let drained = started.elapsed();
            println!(
                "{round}\t{on_host}\t{:.1}\t{:.1}\t{fewest}",
                cordoned_at.unwrap_or(drained).as_secs_f64(),
                drained.as_secs_f64()
            );
            hms.delete(&maintenance, &DeleteParams::default()).await?;
            wait("the nodes uncordoned", async || {
                Ok(cordoned(&admin, &guests).await? == 0)
            })
            .await?;
            // Back onto the guests for the next round.
            let restart = json!({"spec": {"template": {"metadata": {"annotations": {
                "plumbline.dev/bench-round": round.to_string()}}}}});
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns)
                .patch("drain", &PatchParams::default(), &Patch::Merge(&restart))
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = hms.delete(&maintenance, &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    operator.stop().await;
    let _ = Api::<plumbline_crds::HypervisorProvider>::all(admin.clone())
        .delete(&provider, &DeleteParams::default())
        .await;
    namespace.delete().await;
    result
}
