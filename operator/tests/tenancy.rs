//! Tenant policies against the real apiserver: an intent asking for a tier or action its
//! namespace's TenantPolicy does not allow is Degraded/NotAllowed with nothing applied, is
//! applied once the policy allows it, and is undone when the policy is narrowed again.
//!
//! Each test's policy names only its own namespace, so tests sharing the apiserver are not
//! restricted by it (a namespace no policy names is unrestricted).

mod common;

use anyhow::{ensure, Context as _, Result};
use common::{condition, has_condition, manual_clock, priority_class_name, replicas, Cluster};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api,
};
use plumbline_crds::TenantPolicy;
use plumbline_operator::{cli::ExplainOutput, explain::explain_intent};
use serde_json::json;

async fn apply_policy(cluster: &Cluster, tiers: &[&str], actions: &[&str]) -> Result<()> {
    let body = json!({
        "apiVersion": "plumbline.dev/v1alpha1",
        "kind": "TenantPolicy",
        "metadata": {"name": cluster.namespace},
        "spec": {"namespaces": [cluster.namespace], "tiers": tiers, "actions": actions},
    });
    Api::<TenantPolicy>::all(cluster.admin.clone())
        .patch(
            &cluster.namespace,
            &PatchParams::apply("e2e-platform-team"),
            &Patch::Apply(&body),
        )
        .await
        .context("applying the test's TenantPolicy")?;
    Ok(())
}

#[tokio::test]
async fn an_intent_its_namespace_may_not_use_is_not_allowed_and_nothing_is_applied() -> Result<()> {
    let cluster = Cluster::connect("tenancy").await?;
    let result = not_allowed_then_allowed_then_narrowed(&cluster).await;
    // The policy is cluster-scoped: it goes whatever happened.
    let _ = Api::<TenantPolicy>::all(cluster.admin.clone())
        .delete(&cluster.namespace, &DeleteParams::default())
        .await;
    let operator = result?;
    cluster.finish(operator).await
}

async fn not_allowed_then_allowed_then_narrowed(
    cluster: &Cluster,
) -> Result<plumbline_operator::run::Operator> {
    let ns = cluster.namespace.clone();
    apply_policy(cluster, &["standard", "best-effort"], &["ReadinessGate"]).await?;
    cluster.create_deployment("shop", 1).await?;
    let clock = manual_clock("2026-11-23T09:00:00Z");
    let operator = cluster.start_operator(clock.clone()).await?;
    let spec = json!({
        "target": {"kind": "Deployment", "name": "shop"},
        "priority": "critical",
        "availability": {"replicaFloor": 3, "minAvailable": 1},
        "infrastructure": {"throttleNoisyNeighbours": true},
    });
    cluster.apply_intent("shop", spec).await?;

    let wi = cluster
        .intent_until("shop", "Degraded=True NotAllowed", |wi| {
            has_condition(wi, "Degraded", "True", "NotAllowed")
        })
        .await?;
    let message = condition(&wi, "Degraded")
        .map(|c| c.message)
        .unwrap_or_default();
    for part in [
        format!("namespace {ns}"),
        "tier critical".to_string(),
        "action ThrottleNoisyNeighbours".to_string(),
        format!("TenantPolicy {ns}"),
    ] {
        ensure!(
            message.contains(&part),
            "the message lacks {part:?}: {message}"
        );
    }
    ensure!(
        has_condition(&wi, "Ready", "False", "NotAllowed"),
        "{:#?}",
        wi.status
    );
    ensure!(
        wi.status.as_ref().is_some_and(|s| s.plan.is_empty()),
        "{:#?}",
        wi.status
    );
    // Nothing applied: no priority class, no replica floor, no disruption budget.
    let d = cluster.deployments().get("shop").await?;
    ensure!(
        priority_class_name(&d).is_none() && replicas(&d) == Some(1),
        "{:?}",
        d.spec
    );
    ensure!(
        cluster
            .pdbs()
            .await?
            .get_opt("shop-plumbline")
            .await?
            .is_none(),
        "a NotAllowed intent got a PodDisruptionBudget"
    );

    // `explain` computes the same verdict.
    let explained = explain_intent(&cluster.operator_identity, &wi, clock.as_ref())
        .await?
        .render(&wi, ExplainOutput::Text)?;
    ensure!(
        explained.contains("Nothing would be applied (NotAllowed)")
            && explained.contains("tier critical"),
        "explain does not show the verdict:\n{explained}"
    );

    // The platform team allows it: the policy change alone brings the intent in.
    apply_policy(
        cluster,
        &["critical", "standard"],
        &["ReadinessGate", "ThrottleNoisyNeighbours"],
    )
    .await?;
    cluster
        .deployment_until("shop", "the critical class and the replica floor", |d| {
            priority_class_name(d).as_deref() == Some("plumbline-critical")
                && replicas(d) == Some(3)
        })
        .await?;
    cluster
        .intent_until("shop", "Degraded=False", |wi| {
            has_condition(wi, "Degraded", "False", "AsExpected")
        })
        .await?;
    ensure!(cluster
        .pdbs()
        .await?
        .get_opt("shop-plumbline")
        .await?
        .is_some());

    // Narrowed again: what was applied is undone.
    apply_policy(cluster, &["standard"], &[]).await?;
    cluster
        .intent_until("shop", "Degraded=True NotAllowed again", |wi| {
            has_condition(wi, "Degraded", "True", "NotAllowed")
        })
        .await?;
    cluster
        .deployment_until("shop", "the class and floor reverted", |d| {
            priority_class_name(d).is_none() && replicas(d) == Some(1)
        })
        .await?;
    let pdbs = cluster.pdbs().await?;
    common::eventually("the disruption budget deleted", || {
        let pdbs = pdbs.clone();
        async move {
            pdbs.get_opt("shop-plumbline")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await?;
    Ok(operator)
}
