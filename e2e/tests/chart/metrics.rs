//! `promtool check metrics` (Debian's prometheus package, installed by the stack) on what the
//! operator serves at /metrics after it has reconciled an intent, the way an operator of
//! Plumbline would lint it: `curl …/metrics | promtool check metrics`.

use crate::support::{poll, run, unique_suffix, Cluster, OperatorProcess};
use std::{path::Path, process::Command, time::Duration};

#[test]
fn promtool_accepts_the_operators_metrics() {
    let cluster = Cluster::load();
    cluster.ensure_crds();
    let kubeconfig = cluster
        .stack
        .get("PLUMBLINE_OPERATOR_KUBECONFIG")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let ns = cluster.namespace("chart-promtool");
    let suffix = unique_suffix();
    let manifests = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
        {{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","namespace":"{ns}"}},
          "spec":{{"replicas":1,"selector":{{"matchLabels":{{"app":"web"}}}},
          "template":{{"metadata":{{"labels":{{"app":"web"}}}},
          "spec":{{"containers":[{{"name":"web","image":"registry.invalid/web:1"}}]}}}}}}}},
        {{"apiVersion":"plumbline.dev/v1alpha1","kind":"WorkloadIntent","metadata":{{"name":"web","namespace":"{ns}"}},
          "spec":{{"target":{{"kind":"Deployment","name":"web"}},"priority":"high",
          "availability":{{"replicaFloor":2}}}}}}]}}"#,
        ns = ns.name
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&manifests));
    let operator = OperatorProcess::start(
        Path::new(&kubeconfig),
        &ns.name,
        &format!("promtool-{suffix}"),
        &[
            "--leader-elect=true",
            &format!("--lease-name=promtool-{suffix}"),
            &format!("--watch-namespace={}", ns.name),
        ],
    );
    // Every family the operator has: counters, histograms, gauges and the build info.
    let metrics = poll(
        "the operator to reconcile and count it",
        Duration::from_secs(90),
        || {
            operator.assert_alive();
            let m = operator.metrics();
            (m.contains("plumbline_reconcile_runs_total")
                && m.contains("plumbline_reconcile_duration_seconds_bucket"))
            .then_some(m.clone())
            .ok_or_else(|| "no reconcile metrics yet".to_string())
        },
    );
    // Revert before the operator stops, so the namespace leaves nothing behind.
    cluster.kubectl_ok(
        &[
            "delete",
            "-n",
            &ns.name,
            "workloadintent",
            "web",
            "--timeout=60s",
        ],
        None,
    );
    drop(operator);

    if let Err(e) = run(Command::new("promtool").arg("--version"), None) {
        panic!("promtool is missing (the stack's prometheus component installs it): {e}");
    }
    let mut check = Command::new("promtool");
    check.args(["check", "metrics"]);
    if let Err(e) = run(check, Some(&metrics)) {
        panic!("promtool check metrics rejects the operator's /metrics:\n{e}\n--- /metrics ---\n{metrics}");
    }
}
