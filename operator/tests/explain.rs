//! `plumbline explain` prints the plan against the live cluster, changes nothing, and the
//! operator then applies exactly that plan. It also works as a kubectl plugin.

mod common;

use anyhow::{Context as _, Result};
use common::{has_condition, manual_clock, Cluster};
use plumbline_operator::{
    cli::{ExplainArgs, ExplainOutput},
    explain::{self, Explanation},
};
use plumbline_policies as policies;
use std::{io::Write, process::Command};

fn manifest(namespace: &str) -> String {
    format!(
        r#"apiVersion: plumbline.dev/v1alpha1
kind: WorkloadIntent
metadata:
  name: orders
  namespace: {namespace}
spec:
  target: {{kind: Deployment, name: orders}}
  priority: critical
  schedule:
    - days: [Mon, Tue, Wed, Thu, Fri]
      start: "08:00"
      end: "20:00"
      timeZone: Europe/Berlin
  availability: {{replicaFloor: 3, minAvailable: "50%"}}
  storage: {{latencyBudget: 20ms, readinessGate: true}}
"#
    )
}

#[tokio::test]
async fn explain_prints_the_plan_that_is_then_applied_and_changes_nothing() -> Result<()> {
    let cluster = Cluster::connect("explain").await?;
    cluster.create_deployment("orders", 1).await?;
    let clock = manual_clock("2026-11-23T09:00:00Z");
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(manifest(&cluster.namespace).as_bytes())?;

    let before = cluster.deployments().get("orders").await?;
    let args = ExplainArgs {
        file: Some(file.path().to_path_buf()),
        intent: None,
        namespace: None,
        output: ExplainOutput::Text,
        at: None,
        prometheus: Default::default(),
    };
    let text = explain::explain(cluster.operator_identity.clone(), &args, clock.as_ref()).await?;
    let wi = explain::load_intent(&cluster.operator_identity, &args).await?;
    let Explanation::Plan(plan) =
        explain::explain_intent(&cluster.operator_identity, &wi, clock.as_ref()).await?
    else {
        panic!("expected a plan:\n{text}");
    };
    println!("{text}");

    // The text shows every action with its reason, per layer.
    assert!(
        text.contains("Kubernetes layer:") && text.contains("Hypervisor layer:"),
        "{text}"
    );
    for action in &plan.actions {
        assert!(
            text.contains(&policies::describe(&action.change)),
            "missing {:?} in\n{text}",
            action.change
        );
        assert!(
            text.contains(&action.reason),
            "missing reason {:?} in\n{text}",
            action.reason
        );
    }
    assert!(
        text.contains("replicas: 1 -> 3") || text.contains("replicas"),
        "{text}"
    );

    // Nothing changed.
    let after = cluster.deployments().get("orders").await?;
    // (The controller-manager writes its status meanwhile, so compare the spec generation.)
    assert_eq!(
        before.metadata.generation, after.metadata.generation,
        "explain changed the Deployment"
    );
    assert!(
        common::owners(&after.metadata, &[])
            .iter()
            .all(|m| m != "plumbline"),
        "explain took fields"
    );
    assert!(
        cluster.intents().get_opt("orders").await?.is_none(),
        "explain created the intent"
    );

    // The operator applies exactly that plan.
    let operator = cluster.start_operator(clock.clone()).await?;
    let status = Command::new("kubectl")
        .args([
            "--kubeconfig",
            plumbline_e2e::Stack::load()?.get("KUBECONFIG")?,
            "apply",
            "-f",
        ])
        .arg(file.path())
        .output()
        .context("running kubectl apply")?;
    assert!(
        status.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let applied = cluster
        .intent_until("orders", "the intent applied", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;
    let strip = |mut a: plumbline_crds::PlannedAction| {
        a.state = Default::default();
        a.message = None;
        a
    };
    let d = cluster.deployments().get("orders").await?;
    let gates = d
        .spec
        .template
        .spec
        .and_then(|s| s.readiness_gates)
        .unwrap_or_default();
    assert_eq!(
        gates
            .iter()
            .map(|g| g.condition_type.as_str())
            .collect::<Vec<_>>(),
        vec!["plumbline.dev/storage-healthy"]
    );
    let in_status: Vec<_> = applied
        .status
        .unwrap()
        .plan
        .into_iter()
        .map(strip)
        .collect();
    let explained: Vec<_> = policies::plan_to_status(&plan)
        .into_iter()
        .map(strip)
        .collect();
    assert_eq!(
        in_status, explained,
        "status.plan differs from what explain printed"
    );

    // As a kubectl plugin, against the intent in the cluster, as the operator's identity:
    // the same actions (now already held, so the same plan again).
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-plumbline"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stack = plumbline_e2e::Stack::load()?;
    let out = Command::new("kubectl")
        .args([
            "plumbline",
            "explain",
            "wi/orders",
            "-n",
            &cluster.namespace,
            "--at",
            "2026-11-23T09:00:00Z",
        ])
        .env("PATH", path)
        .env("KUBECONFIG", stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?)
        .output()
        .context("running kubectl plumbline")?;
    let plugin_text = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "kubectl plumbline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for action in &plan.actions {
        assert!(
            plugin_text.contains(&action.reason),
            "kubectl plumbline lacks {:?}:\n{plugin_text}",
            action.reason
        );
    }

    cluster.finish(operator).await?;
    Ok(())
}
