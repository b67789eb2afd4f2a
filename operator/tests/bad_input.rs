//! Bad objects on the real stack: every malformed intent and provider is rejected at admission
//! naming the field, or reported in status with its field path; the operator keeps reconciling
//! valid intents, also after a restart with the bad objects present; an intent the types cannot
//! read (kube-rs#774) does not stop the watch of the others.

mod common;
mod health_common;

use anyhow::{Context as _, Result};
use common::{eventually, Cluster};
use health_common::{apply_provider, delete_provider};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    api::{Patch, PatchParams},
    Api,
};
use plumbline_crds::{HypervisorProvider, WorkloadIntent};
use plumbline_operator::clock::SystemClock;
use serde_json::json;
use std::sync::Arc;

/// The intent's `Degraded` condition as (status, reason, message).
async fn degraded(api: &Api<WorkloadIntent>, name: &str) -> Option<(String, String, String)> {
    // Read untyped: one of these intents has a status the types cannot read.
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        api.clone().into_client(),
        api.namespace().unwrap_or_default(),
        &kube::api::ApiResource::erase::<WorkloadIntent>(&()),
    );
    let wi = dynamic.get(name).await.ok()?;
    let conditions = wi.data.pointer("/status/conditions")?.as_array()?.clone();
    conditions
        .iter()
        .find(|c| c["type"] == "Degraded")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn replicas(cluster: &Cluster, name: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .get(name)
        .await
        .ok()?
        .spec
        .replicas
}

/// Waits until each bad intent is `Degraded` with its reason and a message naming the field.
async fn bad_ones_reported(cluster: &Cluster, expected: &[(&str, &str, &str)]) -> Result<()> {
    for (name, reason, field) in expected {
        let api = cluster.intents();
        eventually(
            &format!("{name} reported Degraded/{reason} naming {field}"),
            || {
                let api = api.clone();
                async move {
                    let (status, r, message) = degraded(&api, name).await?;
                    (status == "True" && r == *reason && message.contains(field)).then_some(())
                }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn bad_intents_are_reported_and_valid_ones_reconciled_across_a_restart() -> Result<()> {
    let cluster = Cluster::connect("bad_input").await?;
    cluster.create_deployment("web", 1).await?;
    cluster.create_deployment("api", 1).await?;
    cluster.create_deployment("db", 1).await?;

    // Rejected at admission, naming the field: nothing is stored.
    let rejected = cluster
        .apply_intent(
            "overflow",
            json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                   "availability": {"replicaFloor": 2147483648u64}}),
        )
        .await
        .expect_err("a replica floor beyond int32 must be rejected");
    assert!(
        format!("{rejected:#}").contains("spec.availability.replicaFloor"),
        "{rejected:#}"
    );

    // Admitted, but wrong in ways the 1.20 schema cannot see: reported in status.
    cluster
        .apply_intent(
            "overnight",
            json!({"target": {"kind": "Deployment", "name": "api"}, "priority": "standard",
                   "schedule": [{"start": "22:00", "end": "06:00", "timeZone": "Mars/Base"}]}),
        )
        .await?;
    cluster
        .apply_intent(
            "slow-budget",
            json!({"target": {"kind": "Deployment", "name": "db"}, "priority": "standard",
                   "storage": {"latencyBudget": "120s"}}),
        )
        .await?;
    // A status the types cannot read (a number beyond int32 where the code has an i32): the
    // kube-rs#774 shape. Before lenient decoding, it failed the list of every intent.
    cluster
        .apply_intent(
            "garbled",
            json!({"target": {"kind": "Deployment", "name": "missing"}, "priority": "standard"}),
        )
        .await?;
    // Untyped: the typed API could not read its own answer (which is the point).
    Api::<kube::api::DynamicObject>::namespaced_with(
        cluster.admin.clone(),
        &cluster.namespace,
        &kube::api::ApiResource::erase::<WorkloadIntent>(&()),
    )
    .patch_status(
        "garbled",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"guard": {"allowedUnready": 2147483648u64}}})),
    )
    .await
    .context("writing an unreadable status")?;
    assert!(
        cluster.intents().list(&Default::default()).await.is_err(),
        "a typed list of the namespace's intents now fails, as the operator's watch did"
    );
    // An unknown field, as `kubectl apply` sends it: the apiserver prunes it, and its
    // last-applied-configuration keeps the record.
    let typo = json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
        "metadata": {"name": "typo", "namespace": cluster.namespace},
        "spec": {"target": {"kind": "Deployment", "name": "cache"}, "priority": "high",
                 "replicaFloor": 3},
    });
    let mut with_record = typo.clone();
    with_record["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": typo.to_string()
    });
    cluster.create_deployment("cache", 1).await?;
    cluster
        .intents()
        .create(&Default::default(), &serde_json::from_value(with_record)?)
        .await
        .context("creating the intent with an unknown field")?;
    // The valid one, applied while the bad ones are present.
    cluster
        .apply_intent(
            "valid",
            json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                   "availability": {"replicaFloor": 2}}),
        )
        .await?;

    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;
    let expected = [
        ("overnight", "InvalidSpec", "spec.schedule[0]"),
        ("slow-budget", "InvalidSpec", "spec.storage.latencyBudget"),
        ("garbled", "TargetNotFound", "spec.target"),
        ("typo", "InvalidSpec", "spec.replicaFloor: unknown field"),
    ];
    let first = async {
        eventually("the valid intent's replica floor applied", || async {
            (replicas(&cluster, "web").await? == 2).then_some(())
        })
        .await?;
        bad_ones_reported(&cluster, &expected).await
    }
    .await;
    operator.stop().await;
    first?;

    // Restart with every bad object still present: the valid intent keeps being reconciled.
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;
    let second = async {
        cluster
            .apply_intent(
                "valid",
                json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                       "availability": {"replicaFloor": 3}}),
            )
            .await?;
        eventually(
            "the edited valid intent reconciled after the restart",
            || async { (replicas(&cluster, "web").await? == 3).then_some(()) },
        )
        .await?;
        bad_ones_reported(&cluster, &expected).await
    }
    .await;
    // `finish` lists the intents typed: make the garbled one readable again first.
    cluster
        .intents()
        .patch_status(
            "garbled",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"guard": null}})),
        )
        .await
        .context("repairing the garbled status")?;
    cluster.finish(operator).await?;
    second
}

#[tokio::test]
async fn bad_providers_are_rejected_or_reported_with_their_field() -> Result<()> {
    let cluster = Cluster::connect("bad_provider").await?;
    let admin = cluster.admin.clone();
    let providers = Api::<HypervisorProvider>::all(admin.clone());
    let name = format!("{}-bad", cluster.namespace);

    // Rejected at admission, naming the field.
    for (spec, field) in [
        (
            json!({"libvirt": {"uri": "qemu:///system"}, "sampleInterval": "6200000000000000000s"}),
            "spec.sampleInterval",
        ),
        (
            json!({"vsphere": {"server": "http://vc.example/sdk", "credentialsSecretRef": {"name": "vc", "namespace": "default"}}}),
            "spec.vsphere.server",
        ),
    ] {
        let e = apply_provider(&admin, &name, spec)
            .await
            .expect_err("must be rejected");
        assert!(format!("{e:#}").contains(field), "{e:#}");
    }

    // Admitted (the schema bounds digits, not the range): reported in status with the field.
    apply_provider(
        &admin,
        &name,
        json!({"libvirt": {"uri": "qemu:///system"}, "sampleInterval": "120m"}),
    )
    .await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;
    let result = async {
        let generation = providers.get(&name).await?.metadata.generation;
        eventually(
            "the provider reported InvalidSpec naming spec.sampleInterval",
            || async {
                let hp = providers.get_status(&name).await.ok()?;
                let c = hp
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Connected")?;
                (c.reason == "InvalidSpec"
                    && c.message.contains("spec.sampleInterval")
                    && c.message.contains("longer than 1h")
                    && c.observed_generation == generation)
                    .then_some(())
            },
        )
        .await?;
        // A fixed spec is a new generation: evaluated again.
        apply_provider(
            &admin,
            &name,
            json!({"libvirt": {"uri": "qemu:///system"}, "sampleInterval": "1s"}),
        )
        .await?;
        eventually("the fixed provider no longer reported invalid", || async {
            let hp = providers.get_status(&name).await.ok()?;
            let c = hp
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Connected")?;
            (c.reason != "InvalidSpec").then_some(())
        })
        .await
    }
    .await;
    delete_provider(&admin, &name).await;
    operator.stop().await;
    cluster.cleanup().await;
    result
}
