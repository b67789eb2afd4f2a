//! Helm up to a newer chart whose WorkloadIntent CRD admits a new enum value, an intent that
//! uses it, then helm back down (`helm rollback`). Helm never downgrades CRDs (nor upgrades
//! them: `docs/install.md` has users apply them first), so the older operator then meets an
//! intent it cannot read. It must keep reconciling every other intent, report that one in its
//! status with the field path, and still let it be deleted.

use crate::support::{
    chart_dir, poll, run, service_account_kubeconfig, unique_suffix, Cluster, OperatorProcess,
    Uninstall, CRD_HELD_ANNOTATION,
};
use serde_json::{json, Value};
use std::{path::Path, process::Command, time::Duration};

const PATIENCE: Duration = Duration::from_secs(90);
/// The priority the newer chart's CRD adds.
const NEW_PRIORITY: &str = "platinum";

/// A copy of the chart as its next version: `0.2.0-next`, with `platinum` among the
/// WorkloadIntent's priorities.
fn newer_chart(dir: &Path) -> std::path::PathBuf {
    let chart = dir.join("plumbline");
    run(
        Command::new("cp").args(["-r", chart_dir().to_str().unwrap(), chart.to_str().unwrap()]),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let meta = chart.join("Chart.yaml");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(
        text.contains("\nversion: 0.1.0\n"),
        "the chart's version moved: update this test"
    );
    std::fs::write(
        &meta,
        text.replace("\nversion: 0.1.0\n", "\nversion: 0.2.0-next\n"),
    )
    .unwrap();
    let crd = chart.join("crds/workloadintents.plumbline.dev.yaml");
    let text = std::fs::read_to_string(&crd).unwrap();
    let priorities = "                - standard\n                - best-effort\n";
    assert_eq!(
        text.matches(priorities).count(),
        1,
        "one priority enum in {}",
        crd.display()
    );
    let added = format!("{priorities}                - {NEW_PRIORITY}\n");
    std::fs::write(&crd, text.replace(priorities, &added)).unwrap();
    chart
}

/// Puts the chart's own CRDs back (the field manager the newer ones were applied with), even
/// when the test failed: other tests expect the schema they were generated with.
struct RestoreCrds<'a>(&'a Cluster);

impl Drop for RestoreCrds<'_> {
    fn drop(&mut self) {
        let unheld = format!("{CRD_HELD_ANNOTATION}-");
        let _ = run(
            self.0
                .kubectl(["annotate", "crd", "workloadintents.plumbline.dev", &unheld]),
            None,
        );
        self.0.ensure_crds();
    }
}

fn apply(cluster: &Cluster, object: Value) {
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&object.to_string()));
}

fn deployment(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}
        }
    })
}

fn intent(namespace: &str, name: &str, priority: &str) -> Value {
    json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"target": {"kind": "Deployment", "name": name}, "priority": priority,
                 "availability": {"replicaFloor": 2}}
    })
}

fn chart_version(cluster: &Cluster, release: &str, namespace: &str) -> String {
    let out = run(cluster.helm(["list", "-n", namespace, "-o", "json"]), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let releases: Value = serde_json::from_str(&out).expect("helm list printed JSON");
    releases
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == release))
        .and_then(|r| r["chart"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn condition(cluster: &Cluster, namespace: &str, intent: &str, type_: &str) -> Option<Value> {
    let wi = cluster.kubectl_json(&["get", "-n", namespace, "workloadintent", intent]);
    wi["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn replicas(cluster: &Cluster, namespace: &str, name: &str) -> Option<i64> {
    cluster.kubectl_json(&["get", "-n", namespace, "deployment", name])["spec"]["replicas"].as_i64()
}

#[test]
fn serial_helm_up_to_a_new_crd_enum_value_and_back_down_the_older_operator_keeps_reconciling() {
    let cluster = Cluster::load();
    cluster.ensure_crds();
    let ns = cluster.namespace("chart-upgrade");
    let release = format!("pu-{}", unique_suffix());
    let fullname = format!("{release}-plumbline");
    let dir = tempfile::tempdir().unwrap();
    let newer = newer_chart(dir.path());
    let scope = format!("operator.watchNamespace={}", ns.name);

    let installed = run(
        cluster.helm([
            "install",
            &release,
            chart_dir().to_str().unwrap(),
            "-n",
            &ns.name,
            "--set",
            &scope,
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm install: {e}"));
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let _uninstall = Uninstall {
        cluster: &cluster,
        release: release.clone(),
        namespace: ns.name.clone(),
    };
    assert_eq!(
        chart_version(&cluster, &release, &ns.name),
        "plumbline-0.1.0"
    );

    // Up: CRDs first, as docs/install.md says, then the release.
    let _restore = RestoreCrds(&cluster);
    // Other tests re-install the generated CRDs when they start: held, they leave this one.
    // Held before it is widened, so no install in between can narrow it again.
    let held = format!("{CRD_HELD_ANNOTATION}=chart-upgrade");
    cluster.kubectl_ok(
        &[
            "annotate",
            "--overwrite",
            "crd",
            "workloadintents.plumbline.dev",
            &held,
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=plumbline-chart-tests",
            "-f",
            newer.join("crds").to_str().unwrap(),
        ],
        None,
    );
    cluster.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/workloadintents.plumbline.dev",
        ],
        None,
    );
    run(
        cluster.helm([
            "upgrade",
            &release,
            newer.to_str().unwrap(),
            "-n",
            &ns.name,
            "--set",
            &scope,
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    assert_eq!(
        chart_version(&cluster, &release, &ns.name),
        "plumbline-0.2.0-next"
    );
    for name in ["web", "gold", "api"] {
        apply(&cluster, deployment(&ns.name, name));
    }
    // The new value is admitted now (the API server checks it, not the operator), once every
    // API server handler has the new schema: Established comes a moment before that.
    let gold = intent(&ns.name, "gold", NEW_PRIORITY).to_string();
    poll("the new priority admitted", PATIENCE, || {
        run(cluster.kubectl(["apply", "-f", "-"]), Some(&gold))
    });
    apply(&cluster, intent(&ns.name, "web", "high"));

    // Down.
    run(
        cluster.helm(["rollback", &release, "1", "-n", &ns.name]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm rollback: {e}"));
    assert_eq!(
        chart_version(&cluster, &release, &ns.name),
        "plumbline-0.1.0"
    );

    // The older operator, with the rolled-back release's identity and RBAC.
    let kubeconfig = dir.path().join("operator.kubeconfig");
    service_account_kubeconfig(&cluster, &ns.name, &fullname, &kubeconfig);
    let operator = OperatorProcess::start(
        &kubeconfig,
        &ns.name,
        &format!("{release}-old"),
        &[
            "--leader-elect=true",
            &format!("--lease-name={fullname}-leader"),
            &format!("--watch-namespace={}", ns.name),
        ],
    );
    poll("web's intent in force", PATIENCE, || {
        let ready = condition(&cluster, &ns.name, "web", "Ready");
        match (replicas(&cluster, &ns.name, "web"), ready) {
            (Some(2), Some(c)) if c["status"] == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let reported = poll(
        "gold's intent reported with its field path",
        PATIENCE,
        || match condition(&cluster, &ns.name, "gold", "Degraded") {
            Some(c)
                if c["status"] == "True"
                    && c["message"].as_str().is_some_and(|m| {
                        m.starts_with("spec.priority: unknown variant") && m.contains(NEW_PRIORITY)
                    }) =>
            {
                Ok(c)
            }
            other => Err(format!("{other:?}")),
        },
    );
    println!("gold: {reported}");
    assert_eq!(
        replicas(&cluster, &ns.name, "gold"),
        Some(1),
        "nothing applied for the intent the operator cannot read"
    );
    // An intent made after the downgrade is reconciled too.
    apply(&cluster, intent(&ns.name, "api", "standard"));
    poll("api's intent in force", PATIENCE, || {
        match replicas(&cluster, &ns.name, "api") {
            Some(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    operator.assert_alive();
    assert!(!operator.logs().contains("panicked"), "{}", operator.logs());

    // Every intent can still be deleted (the unreadable one too: its finalizer completes).
    for name in ["gold", "web", "api"] {
        cluster.kubectl_ok(
            &[
                "delete",
                "-n",
                &ns.name,
                "workloadintent",
                name,
                "--wait=false",
            ],
            None,
        );
    }
    poll("every intent gone", PATIENCE, || {
        let left = cluster.kubectl_json(&["get", "-n", &ns.name, "workloadintents"]);
        match left["items"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            other => Err(format!("{other:?} left")),
        }
    });
    assert_eq!(
        replicas(&cluster, &ns.name, "web"),
        Some(1),
        "web's floor reverted"
    );
    drop(operator);
}
