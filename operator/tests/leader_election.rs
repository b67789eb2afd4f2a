//! Two operator replicas never both act: they campaign for one Lease, only the holder
//! reconciles, and the standby takes over when the leader stops.

mod common;

use anyhow::Result;
use common::{eventually, manual_clock, Cluster};
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    Api,
};
use plumbline_operator::{leader::LeaseConfig, run::Operator};
use serde_json::json;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

const CONTROLLER: &str = "workloadintent";

fn lease(cluster: &Cluster, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..LeaseConfig::new(&cluster.namespace, "plumbline-operator", identity)
    }
}

/// Flags a violation whenever both replicas report leadership at the same moment.
fn watch_for_double_leadership(a: &Operator, b: &Operator) -> Arc<AtomicBool> {
    let violated = Arc::new(AtomicBool::new(false));
    let (mut a, mut b) = (a.leadership(), b.leadership());
    let flag = violated.clone();
    tokio::spawn(async move {
        loop {
            if *a.borrow() && *b.borrow() {
                flag.store(true, Ordering::SeqCst);
            }
            tokio::select! {
                r = a.changed() => if r.is_err() { break },
                r = b.changed() => if r.is_err() { break },
            }
        }
    });
    violated
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_the_standby_takes_over() -> Result<()> {
    let cluster = Cluster::connect("leader").await?;
    let clock = manual_clock("2026-11-23T10:00:00Z");
    let a = Operator::start(
        cluster.operator_identity.clone(),
        cluster.settings("replica-a", Some(lease(&cluster, "replica-a"))),
        clock.clone(),
    )
    .await?;
    let b = Operator::start(
        cluster.operator_identity.clone(),
        cluster.settings("replica-b", Some(lease(&cluster, "replica-b"))),
        clock.clone(),
    )
    .await?;
    let violated = watch_for_double_leadership(&a, &b);

    eventually("one replica to lead", || async {
        (a.is_leader() || b.is_leader()).then_some(())
    })
    .await?;
    let (leader, standby) = if a.is_leader() { (a, b) } else { (b, a) };

    // An intent whose target is missing is still reconciled (to Degraded); enough to see who acts.
    cluster
        .apply_intent(
            "first",
            json!({"target": {"kind": "Deployment", "name": "absent"}, "priority": "high"}),
        )
        .await?;
    eventually("the leader to reconcile the intent", || async {
        (leader.metrics.runs(CONTROLLER) > 0).then_some(())
    })
    .await?;
    // Give the standby every chance to (wrongly) act as well.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        standby.metrics.runs(CONTROLLER),
        0,
        "the standby reconciled while another replica led"
    );
    assert!(!standby.is_leader());

    let lease_api: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.namespace);
    let held = lease_api.get("plumbline-operator").await?;
    let leader_name = held.spec.as_ref().and_then(|s| s.holder_identity.clone());
    assert!(leader_name.is_some(), "the Lease names its holder");

    leader.stop().await;
    eventually("the standby to take over", || async {
        standby.is_leader().then_some(())
    })
    .await?;
    let runs_before = standby.metrics.runs(CONTROLLER);
    cluster
        .apply_intent(
            "second",
            json!({"target": {"kind": "Deployment", "name": "absent-too"}, "priority": "standard"}),
        )
        .await?;
    eventually("the new leader to reconcile", || async {
        (standby.metrics.runs(CONTROLLER) > runs_before).then_some(())
    })
    .await?;
    let held = lease_api.get("plumbline-operator").await?;
    assert_ne!(
        held.spec.as_ref().and_then(|s| s.holder_identity.clone()),
        leader_name,
        "the Lease moved to the standby"
    );

    assert!(
        !violated.load(Ordering::SeqCst),
        "both replicas led at the same time"
    );
    cluster.finish(standby).await?;
    Ok(())
}

#[tokio::test]
async fn a_lease_held_by_a_live_replica_keeps_this_one_standing_by_until_it_expires() -> Result<()>
{
    let cluster = Cluster::connect("leader-expiry").await?;
    let lease_api: Api<Lease> = Api::namespaced(cluster.admin.clone(), &cluster.namespace);
    // Another replica (not running here) holds the lease and renewed it just now.
    let now = serde_json::to_value(MicroTime(Timestamp::now()))?;
    let ghost = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "plumbline-operator", "namespace": cluster.namespace},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 4, "renewTime": now, "acquireTime": now, "leaseTransitions": 0}
    });
    lease_api
        .patch(
            "plumbline-operator",
            &PatchParams::apply("e2e-ghost"),
            &Patch::Apply(&ghost),
        )
        .await?;

    let op = Operator::start(
        cluster.operator_identity.clone(),
        cluster.settings("replica-c", Some(lease(&cluster, "replica-c"))),
        manual_clock("2026-11-23T10:00:00Z"),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !op.is_leader(),
        "took a lease another replica renewed moments ago"
    );
    // The ghost never renews: after one lease duration without change the lease is free.
    eventually("the expired lease to be taken over", || async {
        op.is_leader().then_some(())
    })
    .await?;
    let held = lease_api.get("plumbline-operator").await?;
    let spec = held.spec.expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-c"));
    assert_eq!(spec.lease_transitions, Some(1));

    op.stop().await;
    let released = lease_api
        .get("plumbline-operator")
        .await?
        .spec
        .expect("lease spec");
    assert_eq!(
        released.holder_identity, None,
        "a stopping leader releases the lease"
    );
    cluster.cleanup().await;
    Ok(())
}
