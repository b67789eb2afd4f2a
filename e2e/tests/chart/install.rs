//! The chart against the stack's real kube-apiserver: server-side dry run of everything it
//! renders, then a real `helm install`, the operator run with nothing but the chart's
//! ServiceAccount token, and proof that this RBAC is enough (for the intent controller and
//! for the change ledger, which protects a vSphere VM and reverts it) and no broader than
//! needed.

use crate::support::{
    chart_dir, full_values, poll, run, service_account_kubeconfig, Cluster, LedgerRelease,
    OperatorProcess, Uninstall, LEDGER_PATIENCE,
};
use serde_json::Value;
use std::{path::Path, process::Command, time::Duration};

fn items(list: &Value) -> Vec<Value> {
    match list.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![list.clone()],
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn chart_renders_and_passes_server_side_dry_run() {
    let cluster = Cluster::load();
    cluster.ensure_crds();
    let ns = cluster.namespace("chart-dry-run");
    let chart = chart_dir();
    // The stack has no prometheus-operator, so no ServiceMonitor CRD: render it separately.
    let manifest = run(
        cluster.helm([
            "template",
            "dry",
            chart.to_str().unwrap(),
            // The server's API versions (the budget's policy/v1 or v1beta1), as an install sees.
            "--validate",
            "-n",
            &ns.name,
            "-f",
            full_values().to_str().unwrap(),
            "--set",
            "serviceMonitor.enabled=false",
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let applied = cluster.kubectl_ok(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(&manifest),
    );
    let applied: Value = serde_json::from_str(&applied).expect("kubectl printed JSON");
    let objects = items(&applied);
    // Tenant policies from values pass the TenantPolicy CRD's schema.
    let tenants = of_kind(&objects, "TenantPolicy");
    assert_eq!(tenants.len(), 1, "{tenants:?}");
    assert_eq!(
        tenants[0]["spec"]["actions"],
        serde_json::json!(["ReadinessGate"])
    );

    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "NetworkPolicy",
        "Secret",
    ] {
        assert_eq!(
            of_kind(&objects, kind).len(),
            1,
            "expected one {kind} in {objects:#?}"
        );
    }
    assert_eq!(
        of_kind(&objects, "HypervisorProvider").len(),
        2,
        "both providers from values"
    );
    let dashboards = of_kind(&objects, "ConfigMap");
    assert_eq!(dashboards.len(), 2, "one ConfigMap per dashboard");
    for cm in &dashboards {
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm:#}");
        let (file, json) = cm["data"].as_object().unwrap().iter().next().unwrap();
        let dashboard: Value = serde_json::from_str(json.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{file} in the ConfigMap is not JSON: {e}"));
        assert!(dashboard["title"].is_string(), "{file} has no title");
    }

    // Restricted Pod Security, as the server stored it (defaults applied).
    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--leader-elect=true"),
        "two replicas elect a leader: {args:?}"
    );
    assert!(
        args.contains(&"--lease-name=dry-plumbline-leader"),
        "{args:?}"
    );
    assert_eq!(pod["serviceAccountName"], "dry-plumbline");

    // Secrets only by name: the chart-made vSphere credentials plus rbac.extraSecretNames.
    let role = of_kind(&objects, "Role")[0];
    let secret_rules: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "secrets")
        })
        .collect();
    assert_eq!(secret_rules.len(), 1, "{role:#}");
    assert_eq!(secret_rules[0]["verbs"], serde_json::json!(["get"]));
    assert_eq!(
        secret_rules[0]["resourceNames"],
        serde_json::json!([
            "dry-plumbline-chart-ci-vsphere-credentials",
            "lab-libvirt-tls"
        ])
    );
    let cluster_role = of_kind(&objects, "ClusterRole")[0];
    for rule in cluster_role["rules"].as_array().unwrap() {
        let resources = rule["resources"].as_array().unwrap();
        assert!(
            !resources.iter().any(|r| r == "secrets" || r == "*"),
            "cluster-wide secrets or wildcard: {rule}"
        );
        assert!(
            !rule["verbs"].as_array().unwrap().iter().any(|v| v == "*"),
            "wildcard verb: {rule}"
        );
    }

    // The vSphere provider points at the Secret the chart made, in the release namespace.
    let vsphere = of_kind(&objects, "HypervisorProvider")
        .into_iter()
        .find(|p| p["spec"]["vsphere"].is_object())
        .expect("a vSphere provider");
    assert_eq!(
        vsphere["spec"]["vsphere"]["credentialsSecretRef"],
        serde_json::json!({"name": "dry-plumbline-chart-ci-vsphere-credentials", "namespace": ns.name})
    );

    // The ServiceMonitor renders against the metrics Service's labels and port.
    let monitor = run(
        cluster.helm([
            "template",
            "dry",
            chart.to_str().unwrap(),
            "-f",
            full_values().to_str().unwrap(),
            "--show-only",
            "templates/servicemonitor.yaml",
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for want in [
        "kind: ServiceMonitor",
        "port: metrics",
        "app.kubernetes.io/component: metrics",
        "release: kube-prometheus-stack",
    ] {
        assert!(
            monitor.contains(want),
            "ServiceMonitor lacks {want:?}:\n{monitor}"
        );
    }
}

/// `kubectl auth can-i` as the ServiceAccount itself (its own token).
fn can_i(kubeconfig: &Path, args: &[&str]) -> bool {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig)
        .args(["auth", "can-i"])
        .args(args);
    match run(cmd, None) {
        Ok(out) => out.trim() == "yes",
        Err(e) if e.contains("\nno") || e.trim_end().ends_with("no") => false,
        Err(e) => panic!("kubectl auth can-i {args:?}: {e}"),
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[test]
fn serial_helm_install_then_operator_runs_with_only_the_charts_rbac() {
    let cluster = Cluster::load();
    let ns = cluster.namespace("chart-install");
    let release = format!("pl-{}", &ns.name[ns.name.len() - 6..]);
    let fullname = format!("{release}-plumbline");
    let chart = chart_dir();
    let libvirt_uri = cluster
        .stack
        .get("LIBVIRT_URI")
        .unwrap_or("qemu:///system")
        .to_string();
    let provider = format!("{release}-kvm");

    // Two replicas, so the chart sets up leader election and grants its Lease; a libvirt and
    // a vSphere provider (the stack's simulator), whose credentials Secret the chart makes.
    let vsphere = format!("{release}-vc");
    let ca_bundle = std::fs::read_to_string(
        cluster
            .stack
            .get("VSPHERE_CA_FILE")
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .expect("reading the simulator's CA");
    let values = serde_json::json!({
        "replicas": 2,
        "rbac": {"extraSecretNames": ["readable-secret"]},
        "providers": [
            {"name": provider, "libvirt": {"uri": libvirt_uri}, "sampleInterval": "2s"},
            {
                "name": vsphere,
                "vsphere": {"server": cluster.stack.get("VSPHERE_URL").unwrap_or_else(|e| panic!("{e}")), "caBundle": ca_bundle},
                "sampleInterval": "5s",
                "credentials": {
                    "username": cluster.stack.get("VSPHERE_USERNAME").unwrap_or_else(|e| panic!("{e}")),
                    "password": cluster.stack.get("VSPHERE_PASSWORD").unwrap_or_else(|e| panic!("{e}")),
                },
            },
        ],
    });
    let values_file = std::env::temp_dir().join(format!("{}-values.json", ns.name));
    std::fs::write(&values_file, values.to_string()).expect("writing the values file");
    let installed = run(
        cluster.helm([
            "install",
            &release,
            chart.to_str().unwrap(),
            "-n",
            &ns.name,
            "-f",
            values_file.to_str().unwrap(),
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm install: {e}"));
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let uninstall = Uninstall {
        cluster: &cluster,
        release: release.clone(),
        namespace: ns.name.clone(),
    };

    // What helm installed exists on the server.
    cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "workloadintents.plumbline.dev",
            "hypervisorproviders.plumbline.dev",
            "infrachanges.plumbline.dev",
        ],
        None,
    );
    cluster.kubectl_ok(&["get", "-n", &ns.name, "serviceaccount", &fullname], None);
    cluster.kubectl_ok(&["get", "clusterrole", &fullname], None);
    cluster.kubectl_ok(&["get", "hypervisorprovider", &provider], None);
    let deployment = cluster.kubectl_json(&["get", "-n", &ns.name, "deployment", &fullname]);
    assert_eq!(deployment["spec"]["replicas"], 2);

    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", ns.name));
    service_account_kubeconfig(&cluster, &ns.name, &fullname, &kubeconfig);

    // Sufficient ... (checked for real by running the operator below) and not broader.
    let must: &[&[&str]] = &[
        &["watch", "workloadintents.plumbline.dev", "-A"],
        &[
            "patch",
            "workloadintents.plumbline.dev",
            "--subresource=status",
            "-A",
        ],
        &[
            "update",
            "workloadintents.plumbline.dev",
            "--subresource=finalizers",
            "-A",
        ],
        &[
            "patch",
            "hypervisorproviders.plumbline.dev",
            "--subresource=status",
        ],
        // The ledger's provider finalizer (plumbline.dev/infra-changes).
        &["patch", "hypervisorproviders.plumbline.dev"],
        &[
            "update",
            "hypervisorproviders.plumbline.dev",
            "--subresource=finalizers",
        ],
        // The ledger: InfraChanges, cluster-scoped.
        &["watch", "infrachanges.plumbline.dev"],
        &["get", "infrachanges.plumbline.dev"],
        &["create", "infrachanges.plumbline.dev"],
        &["patch", "infrachanges.plumbline.dev"],
        &["delete", "infrachanges.plumbline.dev"],
        &[
            "patch",
            "infrachanges.plumbline.dev",
            "--subresource=status",
        ],
        &[
            "update",
            "infrachanges.plumbline.dev",
            "--subresource=finalizers",
        ],
        // Events about cluster-scoped objects (InfraChanges, Nodes) go to `default`.
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "events.events.k8s.io", "-n", "default"],
        &["patch", "deployments.apps", "-A"],
        &["patch", "pods", "--subresource=status", "-A"],
        &["patch", "nodes", "--subresource=status"],
        &["create", "events.events.k8s.io", "-A"],
        &["create", "poddisruptionbudgets.policy", "-A"],
        &["get", "secret/readable-secret"],
        &[
            "update",
            &format!("lease.coordination.k8s.io/{fullname}-leader"),
        ],
        &["create", "leases.coordination.k8s.io"],
        &["patch", "priorityclasses.scheduling.k8s.io"],
        &["list", "nodes"],
        // The topology labels (operator.topologyLabels, on by default; health/topology.rs).
        &["patch", "nodes"],
        &["watch", "pods", "-A"],
        &["watch", "hypervisorproviders.plumbline.dev"],
        // The live provider status, read before it is rewritten (health/providers.rs).
        &[
            "get",
            "hypervisorproviders.plumbline.dev",
            "--subresource=status",
        ],
        // Tenant policies, read only.
        &["watch", "tenantpolicies.plumbline.dev"],
    ];
    let must_not: &[&[&str]] = &[
        // Secrets: only by the names in values, never listed, never elsewhere.
        &["get", "secret/some-other-secret"],
        &["list", "secrets"],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-A"],
        // Pods are never created, deleted or edited; only their status conditions.
        &["create", "pods", "-A"],
        &["delete", "pods", "-A"],
        &["patch", "pods", "-A"],
        &["create", "pods/exec", "-A"],
        // Workloads are changed, never created or deleted.
        &["create", "deployments.apps", "-A"],
        &["delete", "deployments.apps", "-A"],
        &["delete", "nodes"],
        &["delete", "workloadintents.plumbline.dev", "-A"],
        &["delete", "hypervisorproviders.plumbline.dev"],
        &["create", "hypervisorproviders.plumbline.dev"],
        &["update", "hypervisorproviders.plumbline.dev"],
        // InfraChanges are applied and patched, never replaced; nor deleted wholesale.
        &["update", "infrachanges.plumbline.dev"],
        &["deletecollection", "infrachanges.plumbline.dev"],
        &["delete", "priorityclasses.scheduling.k8s.io"],
        // Tenants cannot be granted anything by the operator.
        &["patch", "tenantpolicies.plumbline.dev"],
        // Nodes are labelled (topology), their status conditions written, never created:
        // an apply of labels never makes a node that is gone.
        &["create", "nodes"],
        // Nothing that escalates.
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["create", "rolebindings.rbac.authorization.k8s.io", "-A"],
        &["impersonate", "users"],
        &["get", "configmaps", "-A"],
        // Other Leases (e.g. kube-controller-manager's) are not ours to renew.
        &[
            "update",
            "lease.coordination.k8s.io/kube-controller-manager",
            "-n",
            "kube-system",
        ],
        &["update", "lease.coordination.k8s.io/someone-else"],
    ];
    let mut wrong = Vec::new();
    for args in must {
        if !can_i(&kubeconfig, args) {
            wrong.push(format!("cannot {args:?} but the operator needs it"));
        }
    }
    for args in must_not {
        if can_i(&kubeconfig, args) {
            wrong.push(format!("can {args:?} but the operator must not"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the chart's RBAC is wrong:\n{}",
        wrong.join("\n")
    );

    // A workload and an intent for it, made by an admin, as a user would. Its pods run on a
    // node backed by a simulator VM no other test uses, and the intent protects that VM: a
    // CPU-shares InfraChange through the chart's vSphere provider.
    let workload = format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"payments","namespace":"{ns}"}},
        "spec":{{"replicas":1,"selector":{{"matchLabels":{{"app":"payments"}}}},
        "template":{{"metadata":{{"labels":{{"app":"payments"}}}},
        "spec":{{"nodeName":"{PROTECTED_NODE}","containers":[{{"name":"api","image":"registry.invalid/payments:1"}}]}}}}}}}}"#,
        ns = ns.name
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&workload));
    let intent = format!(
        r#"{{"apiVersion":"plumbline.dev/v1alpha1","kind":"WorkloadIntent","metadata":{{"name":"payments","namespace":"{ns}"}},
        "spec":{{"target":{{"kind":"Deployment","name":"payments"}},"priority":"critical",
        "availability":{{"replicaFloor":2,"minAvailable":1}},
        "infrastructure":{{"protectBackingVms":true}}}}}}"#,
        ns = ns.name
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&intent));

    // The operator, as the chart's ServiceAccount and nothing else.
    let identity = format!("{release}-test-replica");
    let operator = OperatorProcess::start(
        &kubeconfig,
        &ns.name,
        &identity,
        // Other tests' intents are not this operator's business.
        &[
            "--leader-elect=true",
            &format!("--lease-name={fullname}-leader"),
            &format!("--watch-namespace={}", ns.name),
        ],
    );
    // Declared after the operator, so a failing test still reverts the ledger while it runs.
    let mut ledger = LedgerRelease::new(&cluster, &ns.name, &[&provider, &vsphere]);

    poll(
        "the operator to take the chart's Lease",
        Duration::from_secs(60),
        || {
            operator.assert_alive();
            let lease = run(
                cluster.kubectl([
                    "get",
                    "lease",
                    "-n",
                    &ns.name,
                    &format!("{fullname}-leader"),
                    "-o",
                    "json",
                ]),
                None,
            )?;
            let lease: Value = serde_json::from_str(&lease).map_err(|e| e.to_string())?;
            (lease["spec"]["holderIdentity"] == identity.as_str())
                .then_some(())
                .ok_or_else(|| format!("holder {}", lease["spec"]["holderIdentity"]))
        },
    );

    let reconciled = poll(
        "the intent to be reconciled Ready",
        Duration::from_secs(120),
        || {
            operator.assert_alive();
            let wi = cluster.kubectl_json(&["get", "-n", &ns.name, "workloadintent", "payments"]);
            match condition(&wi, "Ready") {
                Some(c)
                    if c["status"] == "True"
                        && wi["status"]["observedGeneration"] == wi["metadata"]["generation"] =>
                {
                    Ok(wi)
                }
                other => Err(format!(
                    "Ready condition {other:?}; status {}",
                    wi["status"]
                )),
            }
        },
    );
    assert!(
        !reconciled["status"]["plan"]
            .as_array()
            .map(Vec::is_empty)
            .unwrap_or(true),
        "status lists the plan: {}",
        reconciled["status"]
    );
    let target = poll(
        "the replica floor on the target",
        Duration::from_secs(60),
        || {
            let d = cluster.kubectl_json(&["get", "-n", &ns.name, "deployment", "payments"]);
            (d["spec"]["replicas"].as_i64() >= Some(2))
                .then_some(d.clone())
                .ok_or_else(|| format!("replicas {}", d["spec"]["replicas"]))
        },
    );
    assert_eq!(
        target["spec"]["template"]["spec"]["priorityClassName"],
        "plumbline-critical"
    );

    // Both providers connected from this process: the vSphere one through the credentials
    // Secret that the chart's Role lets it read by name.
    for name in [&provider, &vsphere] {
        let series = format!("plumbline_provider_connected{{provider=\"{name}\"}} 1");
        poll(
            &format!("the operator to connect provider {name}"),
            Duration::from_secs(90),
            || {
                operator.assert_alive();
                let metrics = operator.metrics();
                metrics.contains(&series).then_some(()).ok_or_else(|| {
                    metrics
                        .lines()
                        .filter(|l| l.starts_with("plumbline_provider_connected"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            },
        );
    }

    // The ledger under the chart's RBAC: the VM's CPU shares recorded as an InfraChange of this
    // operator (server-side apply that creates it), carried out and read back (status), and the
    // provider it goes through guarded by its finalizer (patch).
    let change = poll(
        "the protected VM's CPU shares Applied as an InfraChange",
        LEDGER_PATIENCE,
        || {
            operator.assert_alive();
            let list = cluster.kubectl_json(&["get", "infrachanges"]);
            let ours: Vec<Value> = items(&list)
                .into_iter()
                .filter(|ic| ic["spec"]["operator"] == format!("namespace/{}", ns.name).as_str())
                .collect();
            match ours.as_slice() {
                [ic] if ic["status"]["state"] == "Applied" => Ok(ic.clone()),
                other => Err(format!("{other:#?}")),
            }
        },
    );
    assert_eq!(
        change["spec"]["purpose"], "BackingVmProtection",
        "{change:#}"
    );
    assert_eq!(change["spec"]["setting"], "cpu_shares", "{change:#}");
    assert_eq!(change["spec"]["desired"], "4096", "{change:#}");
    assert_eq!(change["spec"]["target"]["name"], PROTECTED_VM, "{change:#}");
    assert_eq!(
        change["spec"]["target"]["provider"],
        vsphere.as_str(),
        "the VM is reached through the chart's vSphere provider: {change:#}"
    );
    assert_eq!(change["status"]["observed"], "4096", "{change:#}");
    assert!(change["status"]["original"].is_string(), "{change:#}");
    assert_eq!(
        change["metadata"]["finalizers"],
        serde_json::json!(["plumbline.dev/restore-original"]),
        "{change:#}"
    );
    let change_name = change["metadata"]["name"].as_str().unwrap().to_string();
    eprintln!(
        "{}",
        cluster.kubectl_ok(&["get", "infrachange", &change_name, "-o", "wide"], None)
    );
    let guarded = cluster.kubectl_json(&["get", "hypervisorprovider", &vsphere]);
    assert!(
        guarded["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "plumbline.dev/infra-changes")),
        "the provider is guarded while a change targets it: {}",
        guarded["metadata"]
    );
    // Its Events go to `default`, under this identity.
    poll(
        "an Applied Event about the InfraChange",
        Duration::from_secs(30),
        || {
            let events = cluster.kubectl_json(&["get", "events.events.k8s.io", "-n", "default"]);
            items(&events)
                .iter()
                .any(|e| {
                    e["regarding"]["name"] == change_name.as_str()
                        && e["reason"] == "Applied"
                        && e["reportingInstance"] == identity.as_str()
                })
                .then_some(())
                .ok_or_else(|| "none yet".to_string())
        },
    );

    // It was this process, under this identity, that acted.
    let events = cluster.kubectl_json(&["get", "events.events.k8s.io", "-n", &ns.name]);
    let ours = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reportingInstance"] == identity.as_str())
        .count();
    assert!(ours > 0, "no Events reported by {identity}: {events:#}");

    // Deleting the intent runs the finalizer: the changes are reverted under the same RBAC.
    cluster.kubectl_ok(
        &[
            "delete",
            "-n",
            &ns.name,
            "workloadintent",
            "payments",
            "--timeout=120s",
        ],
        None,
    );
    let reverted = cluster.kubectl_json(&["get", "-n", &ns.name, "deployment", "payments"]);
    assert!(
        reverted["spec"]["template"]["spec"]["priorityClassName"].is_null(),
        "priority class left after the intent was deleted: {}",
        reverted["spec"]["template"]["spec"]
    );
    // ... and the ledger: the InfraChange is deleted, its original restored, its finalizer
    // removed; then the providers go, their finalizer released, as docs/install.md has a user
    // uninstall.
    ledger
        .release()
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));

    let metrics = operator.metrics();
    let logs = operator.logs();
    // Providers are cluster-scoped: tests running meanwhile add their own, whose Secrets live
    // in namespaces the chart rightly does not let this install read. Only refusals about this
    // release's own objects count.
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .filter(|l| !l.contains("provider=") || l.contains(&format!("provider={release}-")))
        .collect();
    assert!(
        refused.is_empty(),
        "the operator was refused something under the chart's RBAC:\n{}\nthe whole log:\n{logs}",
        refused.join("\n")
    );
    assert!(
        metrics.contains("plumbline_reconcile_runs_total"),
        "{metrics}"
    );
    for result in ["applied", "reverted"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("plumbline_actions_total")
                    && l.contains(r#"action="cpu_shares""#)
                    && l.contains(&format!(r#"result="{result}""#))),
            "the actuator counts the CPU shares {result}:\n{metrics}"
        );
    }
    drop(ledger);
    drop(operator);

    let budgets = cluster.kubectl_ok(
        &["get", "-n", &ns.name, "poddisruptionbudget", "-o", "name"],
        None,
    );
    assert!(
        budgets.contains(&format!("poddisruptionbudget.policy/{fullname}")),
        "two replicas get a budget: {budgets}"
    );

    // Upgrade to one replica: leader election stays (Recreate would not cover a node failure
    // or a drain), and so does the Lease grant; the budget for two replicas goes.
    let upgraded = run(
        cluster.helm([
            "upgrade",
            &release,
            chart.to_str().unwrap(),
            "-n",
            &ns.name,
            "--reuse-values",
            "--set",
            "replicas=1",
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    assert!(upgraded.contains("STATUS: deployed"), "{upgraded}");
    let deployment = cluster.kubectl_json(&["get", "-n", &ns.name, "deployment", &fullname]);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--leader-elect=true"), "{args}");
    assert!(can_i(
        &kubeconfig,
        &[
            "update",
            &format!("lease.coordination.k8s.io/{fullname}-leader")
        ]
    ));
    let budgets = cluster.kubectl_ok(
        &["get", "-n", &ns.name, "poddisruptionbudget", "-o", "name"],
        None,
    );
    assert!(
        budgets.trim().is_empty(),
        "no budget for one replica: {budgets}"
    );
    assert!(
        can_i(&kubeconfig, &["get", "secret/readable-secret"]),
        "the named Secret stays readable"
    );

    // Uninstall removes what the chart made and leaves the CRDs (Helm never deletes crds/).
    drop(uninstall);
    let leftovers = cluster.kubectl_ok(
        &[
            "get",
            "clusterrole,clusterrolebinding,hypervisorprovider",
            "-o",
            "name",
            "--ignore-not-found",
        ],
        None,
    );
    assert!(
        !leftovers.contains(&format!("/{fullname}"))
            && !leftovers.contains(&format!("/{provider}"))
            && !leftovers.contains(&format!("/{vsphere}")),
        "left after helm uninstall:\n{leftovers}"
    );
    cluster.kubectl_ok(
        &[
            "get",
            "crd",
            "workloadintents.plumbline.dev",
            "hypervisorproviders.plumbline.dev",
            "infrachanges.plumbline.dev",
        ],
        None,
    );
}

/// A simulator VM no other test changes, and the Node it backs.
const PROTECTED_VM: &str = "DC0_C0_RP0_VM0";
const PROTECTED_NODE: &str = "dc0-c0-rp0-vm0";
