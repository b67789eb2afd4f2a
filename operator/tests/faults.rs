//! The fault list, on the real binary and the real API server, through a relay of the
//! tests' own (`plumbline_e2e::relay`): a leader partitioned from the API server stops every
//! write before the standby starts (the gap is measured and printed), and a 429 storm neither
//! crashes the operator nor makes it act twice. And an API server of the test's own
//! (`plumbline_e2e::apiserver`) restarted under the operator: what changed meanwhile is acted
//! on once it is back.
//!
//! Needs `e2e/stack up`; fails saying so otherwise.

mod common;

use anyhow::{ensure, Context as _, Result};
use chrono::Utc;
use common::{
    eventually,
    process::{lease_holder, OperatorProcess, LEASE_ARGS},
    Cluster,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    Api,
};
use plumbline_e2e::relay::{ApiRelay, Mode};
use serde_json::json;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

struct Setup {
    stack: plumbline_e2e::Stack,
    relay: ApiRelay,
    /// The operator's kubeconfig, through the relay.
    relayed: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let url = stack.apiserver_url()?;
        let upstream: SocketAddr = url
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("the API server address in {url}"))?;
        let ca = std::fs::read(stack.get("KUBE_CA_FILE")?)?;
        let relay = ApiRelay::start(upstream, &ca).await?;
        let dir = tempfile::tempdir()?;
        let relayed = dir.path().join("operator-via-relay.kubeconfig");
        relay.kubeconfig(
            std::path::Path::new(stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?),
            &relayed,
        )?;
        Ok(Self {
            stack,
            relay,
            relayed,
            _dir: dir,
        })
    }

    fn direct(&self) -> Result<PathBuf> {
        Ok(PathBuf::from(
            self.stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?,
        ))
    }
}

fn lease_arg(name: &str) -> Duration {
    LEASE_ARGS
        .iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
        .and_then(|v| v.strip_suffix('s')?.parse().ok())
        .map(Duration::from_secs)
        .expect("lease flag")
}

#[tokio::test]
async fn a_partitioned_leader_stops_writing_before_the_standby_starts() -> Result<()> {
    let setup = Setup::new().await?;
    let cluster = Cluster::connect("partition").await?;
    let a = OperatorProcess::start("partitioned", &cluster.namespace, &setup.relayed, &[]).await?;
    let mut b = None;
    let result = async {
        eventually("the relayed replica to lead", || async {
            (lease_holder(&cluster).await.as_deref() == Some("partitioned")).then_some(())
        })
        .await?;
        let standby = b.insert(
            OperatorProcess::start("standby", &cluster.namespace, &setup.direct()?, &[]).await?,
        );
        standby.http_addr().await?;
        // The leader acts: an intent reconciled to a status (its target is missing).
        cluster
            .apply_intent(
                "before",
                json!({"target": {"kind": "Deployment", "name": "absent"}, "priority": "high"}),
            )
            .await?;
        eventually("the leader to write the intent's status", || async {
            let wi = cluster.intents().get("before").await.ok()?;
            wi.status.filter(|s| !s.conditions.is_empty()).map(|_| ())
        })
        .await?;

        let cut = Utc::now();
        setup.relay.set(Mode::Blackhole);
        let took_over = eventually("the standby to take over", || async {
            standby.logged_at("leadership term starts")
        })
        .await?;
        let stopped = a
            .logged_all("leader loops stopped")
            .last()
            .copied()
            .context("the partitioned leader never stopped its loops")?;
        let gap = took_over - stopped;
        println!(
            "partition at {cut}; old leader stopped every write at +{} ms; standby started at +{} ms; gap {} ms (lease {:?}, renew deadline {:?})",
            (stopped - cut).num_milliseconds(),
            (took_over - cut).num_milliseconds(),
            gap.num_milliseconds(),
            lease_arg("lease-duration"),
            lease_arg("lease-renew-deadline"),
        );
        ensure!(
            gap > chrono::Duration::zero(),
            "the standby started writing {} ms before the old leader stopped",
            -gap.num_milliseconds()
        );
        ensure!(
            lease_holder(&cluster).await.as_deref() == Some("standby"),
            "the Lease moved"
        );
        // The new leader acts.
        cluster
            .apply_intent(
                "after",
                json!({"target": {"kind": "Deployment", "name": "absent-too"}, "priority": "high"}),
            )
            .await?;
        eventually("the new leader to write the new intent's status", || async {
            let wi = cluster.intents().get("after").await.ok()?;
            wi.status.filter(|s| !s.conditions.is_empty()).map(|_| ())
        })
        .await?;

        // The partition heals: the old leader sees the Lease held and stays a standby.
        setup.relay.set(Mode::Pass);
        tokio::time::sleep(lease_arg("lease-duration")).await;
        ensure!(
            a.logged_all("became leader").len() == 1,
            "the old leader took the Lease back from a live leader"
        );
        ensure!(lease_holder(&cluster).await.as_deref() == Some("standby"));
        Ok(())
    }
    .await;
    setup.relay.set(Mode::Pass);
    let _ = a.stop().await;
    if let Some(b) = b {
        let _ = b.stop().await;
    }
    cluster.cleanup().await;
    result
}

/// How many PodDisruptionBudgets the test's namespace has, in whichever version the API
/// server serves (the operator discovers it the same way).
async fn budgets(cluster: &Cluster) -> Result<usize> {
    let mut last = None;
    for version in ["v1", "v1beta1"] {
        let gvk = GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
        let api: Api<DynamicObject> = Api::namespaced_with(
            cluster.admin.clone(),
            &cluster.namespace,
            &ApiResource::from_gvk(&gvk),
        );
        match api.list(&Default::default()).await {
            Ok(list) => return Ok(list.items.len()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried a version").into())
}

#[tokio::test]
async fn a_429_storm_neither_crashes_the_operator_nor_makes_it_act_twice() -> Result<()> {
    let setup = Setup::new().await?;
    let cluster = Cluster::connect("storm").await?;
    let mut op = OperatorProcess::start("stormed", &cluster.namespace, &setup.relayed, &[]).await?;
    let result = async {
        let pid = op.pid();
        cluster.create_deployment("web", 1).await?;
        cluster
            .apply_intent(
                "web",
                json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                       "availability": {"replicaFloor": 2, "minAvailable": 1}}),
            )
            .await?;
        eventually("the floor and the budget in force", || async {
            let d = cluster.deployments().get("web").await.ok()?;
            let replicas = d.spec.replicas?;
            let n = budgets(&cluster).await.ok()?;
            (replicas == 2 && n == 1).then_some(())
        })
        .await?;

        // The storm lasts longer than the renew deadline: the lease cannot be renewed.
        setup.relay.set(Mode::TooManyRequests);
        let storm = lease_arg("lease-duration") + Duration::from_secs(2);
        tokio::time::sleep(storm).await;
        setup.relay.set(Mode::Pass);
        let rejected = setup.relay.rejected();
        println!("the relay answered {rejected} requests 429 in {storm:?}");
        ensure!(rejected > 0, "the storm reached the operator");
        ensure!(op.running()?, "the operator survived the storm");

        // It works again: a new intent is reconciled, by the same process.
        cluster
            .apply_intent(
                "later",
                json!({"target": {"kind": "Deployment", "name": "absent"}, "priority": "high"}),
            )
            .await?;
        eventually("the operator to reconcile after the storm", || async {
            let wi = cluster.intents().get("later").await.ok()?;
            wi.status.filter(|s| !s.conditions.is_empty()).map(|_| ())
        })
        .await?;
        ensure!(op.running()? && op.pid() == pid, "no restart");
        let terms = op.logged_all("became leader").len();
        let stepped_down = op.logged_all("stepping down").len();
        println!("leadership terms: {terms}; step-downs during the storm: {stepped_down}");
        ensure!(
            op.logged_all("a loop ended unexpectedly").is_empty(),
            "no loop died in the storm"
        );
        // Nothing twice: one budget, the floor as it was.
        let n = budgets(&cluster).await?;
        let replicas = cluster.deployments().get("web").await?.spec.replicas;
        ensure!(
            n == 1 && replicas == Some(2),
            "{n} budgets, {replicas:?} replicas"
        );
        Ok(())
    }
    .await;
    setup.relay.set(Mode::Pass);
    let _ = op.stop().await;
    cluster.cleanup().await;
    result
}

/// The operator talks to an API server of the test's own (on the stack's etcd), which is
/// stopped and started again: while it is down, an intent is created, another changed and a
/// third deleted through the shared API server. Once it is back, the operator's watches
/// relist and every one of the three is acted on, by the same process, once.
#[tokio::test]
async fn an_apiserver_restart_loses_nothing() -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let mut server = plumbline_e2e::apiserver::ExtraApiserver::start(&stack).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("operator-via-extra-apiserver.kubeconfig");
    server.kubeconfig(
        std::path::Path::new(stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?),
        &kubeconfig,
    )?;
    let cluster = Cluster::connect("apiserver_restart").await?;
    let mut op = OperatorProcess::start("restarted", &cluster.namespace, &kubeconfig, &[]).await?;
    let floor = |n: i32| {
        json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
               "availability": {"replicaFloor": n, "minAvailable": 1}})
    };
    let result = async {
        let pid = op.pid();
        cluster.create_deployment("web", 1).await?;
        cluster.create_deployment("api", 1).await?;
        cluster.apply_intent("web", floor(2)).await?;
        cluster
            .apply_intent(
                "api",
                json!({"target": {"kind": "Deployment", "name": "api"}, "priority": "high",
                       "availability": {"replicaFloor": 2}}),
            )
            .await?;
        eventually("both intents in force", || async {
            let web = cluster.deployments().get("web").await.ok()?.spec.replicas?;
            let api = cluster.deployments().get("api").await.ok()?.spec.replicas?;
            (web == 2 && api == 2 && budgets(&cluster).await.ok()? == 1).then_some(())
        })
        .await?;

        server.stop().await?;
        println!("the operator's API server stopped");
        // Meanwhile, through the shared API server:
        cluster.apply_intent("web", floor(3)).await?;
        cluster.delete_intent("api").await?;
        cluster.create_deployment("late", 1).await?;
        cluster
            .apply_intent(
                "late",
                json!({"target": {"kind": "Deployment", "name": "late"}, "priority": "high",
                       "availability": {"replicaFloor": 2}}),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarted = std::time::Instant::now();
        server.restart().await?;
        println!(
            "the operator's API server answered again after {:?}",
            restarted.elapsed()
        );
        eventually(
            "the change, the deletion and the new intent acted on",
            || async {
                let web = cluster.deployments().get("web").await.ok()?.spec.replicas?;
                let late = cluster
                    .deployments()
                    .get("late")
                    .await
                    .ok()?
                    .spec
                    .replicas?;
                let api_gone = cluster.intents().get_opt("api").await.ok()?.is_none();
                (web == 3 && late == 2 && api_gone).then_some(())
            },
        )
        .await?;
        println!(
            "caught up {:?} after the restart began",
            restarted.elapsed()
        );
        ensure!(
            op.running()? && op.pid() == pid,
            "no restart of the operator"
        );
        ensure!(
            op.logged_all("a loop ended unexpectedly").is_empty(),
            "no loop died"
        );
        // Once: still one budget (web's), and api's floor reverted to what it was.
        let api = cluster.deployments().get("api").await?.spec.replicas;
        let n = budgets(&cluster).await?;
        ensure!(api == Some(1), "api's replicas back to 1, not {api:?}");
        ensure!(n == 1, "{n} budgets");
        Ok(())
    }
    .await;
    let _ = op.stop().await;
    let _ = server.stop().await;
    cluster.cleanup().await;
    result
}
