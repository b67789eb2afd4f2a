//! `helm lint`, and values.schema.json rejecting bad values with messages that name the field.

use crate::support::{chart_dir, full_values, helm_cmd, run};
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn helm_lint_passes_with_default_and_full_values() {
    let chart = chart_dir();
    let out = run(
        helm_cmd(["lint", "--strict", chart.to_str().unwrap()]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm lint with default values: {e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = run(
        helm_cmd([
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-f",
            full_values().to_str().unwrap(),
        ]),
        None,
    )
    .unwrap_or_else(|e| panic!("helm lint with ci/full-values.yaml: {e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

/// Renders with `--set` values and returns helm's error message, failing if it rendered.
fn rejection(set: &str) -> String {
    let chart = chart_dir();
    match run(
        helm_cmd(["template", "t", chart.to_str().unwrap(), "--set", set]),
        None,
    ) {
        Ok(out) => panic!("helm template accepted --set {set}:\n{out}"),
        Err(message) => message,
    }
}

#[test]
fn bad_values_are_rejected_with_a_message_naming_the_field() {
    let cases: &[(&str, &[&str])] = &[
        // A typo must not be silently ignored.
        ("replica=2", &["additional properties 'replica' not allowed"]),
        ("replicas=-1", &["/replicas", "minimum"]),
        ("image.pullPolicy=Sometimes", &["/image/pullPolicy", "Always"]),
        ("image.digest=latest", &["/image/digest"]),
        ("operator.logFormat=xml", &["/operator/logFormat", "json"]),
        ("operator.port=70000", &["/operator/port", "maximum"]),
        ("operator.unknownReadiness=maybe", &["/operator/unknownReadiness", "fail-open", "fail-closed"]),
        ("operator.taintDegradedNodes=sometimes", &["/operator/taintDegradedNodes"]),
        ("operator.topologyLabels=sometimes", &["/operator/topologyLabels"]),
        ("operator.taintMaxNodesPercent=101", &["/operator/taintMaxNodesPercent", "maximum"]),
        ("operator.throttleMaxPerVictim=-1", &["/operator/throttleMaxPerVictim", "minimum"]),
        ("operator.throttleJudgeSamples=often", &["/operator/throttleJudgeSamples"]),
        // Only what `plumbline run --infra-readback-interval` parses: whole ms, s or m, >= 100ms.
        ("operator.infraReadbackInterval=1h", &["/operator/infraReadbackInterval", "does not match"]),
        ("operator.infraReadbackInterval=1.5s", &["/operator/infraReadbackInterval"]),
        ("operator.infraReadbackInterval=50ms", &["/operator/infraReadbackInterval"]),
        ("operator.infraReadbackInterval=0s", &["/operator/infraReadbackInterval"]),
        // Restricted Pod Security cannot be switched off by accident.
        ("securityContext.runAsNonRoot=false", &["/securityContext/runAsNonRoot"]),
        ("securityContext.allowPrivilegeEscalation=true", &["/securityContext/allowPrivilegeEscalation"]),
        ("podSecurityContext.runAsUser=0", &["/podSecurityContext/runAsUser", "minimum"]),
        ("rbac.extraSecretNames[0]=Not_A_Name", &["/rbac/extraSecretNames/0", "does not match"]),
        ("serviceMonitor.interval=often", &["/serviceMonitor/interval"]),
        // Providers: a name, exactly one connection, credentials for vSphere.
        ("providers[0].name=Bad_Name,providers[0].libvirt.uri=qemu:///system", &["/providers/0/name"]),
        ("providers[0].name=p", &["/providers/0", "missing property 'libvirt'", "missing property 'vsphere'"]),
        ("providers[0].name=p,providers[0].vsphere.server=vc.example", &["/providers/0", "missing property 'credentials'"]),
        (
            "providers[0].name=p,providers[0].vsphere.server=vc.example,providers[0].credentials.username=u",
            &["/providers/0/credentials", "missing property 'password'"],
        ),
        ("providers[0].name=p,providers[0].libvirt.uri=localhost", &["/providers/0/libvirt/uri"]),
        ("providers[0].name=p,providers[0].libvirt.uri=qemu:///system,providers[0].sampleInterval=1h", &["/providers/0/sampleInterval"]),
        ("providers[0].name=p,providers[0].libvirt.uri=qemu:///system,providers[0].nodeMapping.by=label", &["/providers/0/nodeMapping", "missing property 'label'"]),
        // What the schema cannot say is caught while rendering, with the same clarity.
        (
            "providers[0].name=p,providers[0].libvirt.uri=qemu:///system,providers[0].vsphere.server=vc,providers[0].credentials.existingSecret=s",
            &["providers[p]: set exactly one of libvirt or vsphere, not both"],
        ),
        (
            "providers[0].name=p,providers[0].vsphere.server=vc,providers[0].vsphere.insecureSkipVerify=true,providers[0].vsphere.caBundle=x,providers[0].credentials.existingSecret=s",
            &["providers[p].vsphere: insecureSkipVerify and caBundle cannot be combined"],
        ),
        ("serviceAccount.create=false", &["serviceAccount.name is required"]),
        ("serviceMonitor.enabled=true,metrics.service.enabled=false", &["serviceMonitor.enabled needs metrics.service.enabled"]),
    ];
    let mut failures = Vec::new();
    for (set, expected) in cases {
        let message = rejection(set);
        for want in *expected {
            if !message.contains(want) {
                failures.push(format!("--set {set}: message lacks {want:?}:\n{message}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn good_values_render() {
    let chart = chart_dir();
    let sets = [
        "replicas=3",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "providers[0].name=kvm-a,providers[0].libvirt.uri=qemu+tls://kvm-a.example/system",
        "providers[0].name=vc,providers[0].vsphere.server=vc.example,providers[0].credentials.existingSecret=vc-creds",
        "serviceAccount.create=false,serviceAccount.name=existing",
        "operator.infraReadbackInterval=500ms",
        "operator.infraReadbackInterval=2m",
    ];
    for set in sets {
        run(
            helm_cmd(["template", "t", chart.to_str().unwrap(), "--set", set]),
            None,
        )
        .unwrap_or_else(|e| panic!("--set {set} should render: {e}"));
    }
}

/// Every object `helm template` renders with these `--set` values.
pub(crate) fn rendered(set: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = chart_dir();
    let mut args = vec!["template", "t", chart.to_str().unwrap()];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = run(helm_cmd(args), None).unwrap_or_else(|e| panic!("--set {set:?}: {e}"));
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).expect("helm printed YAML"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

pub(crate) fn operator_args(objects: &[serde_yaml::Value]) -> Vec<String> {
    let d = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn may_patch_nodes(objects: &[serde_yaml::Value]) -> bool {
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let has = |v: &serde_yaml::Value, s: &str| {
        v.as_sequence()
            .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(s)))
    };
    role["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .any(|r| has(&r["resources"], "nodes") && has(&r["verbs"], "patch"))
}

#[test]
fn health_options_become_flags_and_only_node_writers_get_patch_on_nodes() {
    // Topology labels are on by default, and need patch on nodes; without them and without
    // tainting or maintenance, nodes are not patched.
    let default = rendered(&[]);
    assert!(
        operator_args(&default).contains(&"--topology-labels=true".to_string()),
        "{:?}",
        operator_args(&default)
    );
    assert!(
        may_patch_nodes(&default),
        "topology labels need patch on nodes"
    );
    let default = rendered(&["operator.topologyLabels=false"]);
    let args = operator_args(&default);
    assert!(
        args.contains(&"--unknown-readiness=fail-open".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--taint-degraded-nodes")),
        "{args:?}"
    );
    assert!(
        args.contains(&"--topology-labels=false".to_string()),
        "{args:?}"
    );
    assert!(
        !may_patch_nodes(&default),
        "no patch on nodes unless tainting or topology labels are on"
    );
    assert!(
        args.contains(&"--infra-readback-interval=30s".to_string()),
        "the ledger's read-back interval, default 30s: {args:?}"
    );
    for default in [
        "--taint-max-nodes-percent=33",
        "--throttle-max-per-victim=2",
        "--throttle-max-per-host=4",
        "--throttle-judge-samples=3",
    ] {
        assert!(
            args.contains(&default.to_string()),
            "the operator's own default {default}: {args:?}"
        );
    }
    assert!(
        !args.iter().any(|a| a.contains("recover-leftovers")),
        "the flag is gone from the operator: {args:?}"
    );

    let on = rendered(&[
        "operator.topologyLabels=false",
        "operator.unknownReadiness=fail-closed",
        "operator.taintDegradedNodes=true",
        "operator.infraReadbackInterval=2m",
        "operator.taintMaxNodesPercent=50",
        "operator.throttleJudgeSamples=0",
    ]);
    let args = operator_args(&on);
    assert!(
        args.contains(&"--unknown-readiness=fail-closed".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--taint-degraded-nodes=true".to_string()),
        "{args:?}"
    );
    for set in [
        "--infra-readback-interval=2m",
        "--taint-max-nodes-percent=50",
        "--throttle-judge-samples=0",
    ] {
        assert!(args.contains(&set.to_string()), "{set}: {args:?}");
    }
    assert!(may_patch_nodes(&on), "tainting needs patch on nodes");
}

/// The verbs the ClusterRole grants on each resource of an API group, over all its rules.
fn cluster_role_verbs(
    objects: &[serde_yaml::Value],
    group: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    role_verbs(objects, "ClusterRole", None, group)
}

/// The verbs the first role of `kind` (in `namespace`, for a Role) grants on each resource of
/// an API group, over all its rules; empty when there is no such role.
fn role_verbs(
    objects: &[serde_yaml::Value],
    kind: &str,
    namespace: Option<&str>,
    group: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let Some(role) = objects.iter().find(|o| {
        o["kind"] == kind
            && namespace.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
    }) else {
        return BTreeMap::new();
    };
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut verbs: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        if !strings(&rule["apiGroups"]).iter().any(|g| g == group) {
            continue;
        }
        for resource in strings(&rule["resources"]) {
            verbs
                .entry(resource)
                .or_default()
                .extend(strings(&rule["verbs"]));
        }
    }
    verbs
}

#[test]
fn plumbline_resources_get_exactly_the_verbs_the_code_uses() {
    // The ledger: InfraChanges written by server-side apply (create and patch), deleted, read
    // before their finalizer is removed; providers patched for their finalizer. Never `update`
    // of a whole object (no replace anywhere), never a provider created or deleted.
    let want: &[(&str, &[&str])] = &[
        ("workloadintents", &["get", "list", "watch", "patch"]),
        ("workloadintents/status", &["patch"]),
        ("workloadintents/finalizers", &["update"]),
        ("tenantpolicies", &["get", "list", "watch"]),
        ("hypervisorproviders", &["get", "list", "watch", "patch"]),
        ("hypervisorproviders/status", &["get", "patch"]),
        ("hypervisorproviders/finalizers", &["update"]),
        (
            "infrachanges",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("infrachanges/status", &["patch"]),
        ("infrachanges/finalizers", &["update"]),
    ];
    for set in [&[][..], &["operator.taintDegradedNodes=true"][..]] {
        let got = cluster_role_verbs(&rendered(set), "plumbline.dev");
        let want: BTreeMap<String, BTreeSet<String>> = want
            .iter()
            .map(|(r, v)| (r.to_string(), v.iter().map(|v| v.to_string()).collect()))
            .collect();
        assert_eq!(got, want, "plumbline.dev rules with --set {set:?}");
    }
    // With operator.hostMaintenance, HostMaintenances are read and their status written, and
    // detected ones created and deleted; never for an operator scoped to a namespace.
    let got = cluster_role_verbs(
        &rendered(&["operator.hostMaintenance=true"]),
        "plumbline.dev",
    );
    assert_eq!(
        got.get("hostmaintenances"),
        Some(
            &["get", "list", "watch", "create", "delete"]
                .iter()
                .map(|v| v.to_string())
                .collect()
        )
    );
    assert_eq!(
        got.get("hostmaintenances/status"),
        Some(&["patch"].iter().map(|v| v.to_string()).collect())
    );
    let scoped = cluster_role_verbs(
        &rendered(&[
            "operator.hostMaintenance=true",
            "operator.watchNamespace=shop",
        ]),
        "plumbline.dev",
    );
    assert!(!scoped.contains_key("hostmaintenances"), "{scoped:?}");
    let events = cluster_role_verbs(&rendered(&[]), "events.k8s.io");
    assert_eq!(
        events
            .get("events")
            .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["create", "patch"]),
        "Events, including those about InfraChanges and Nodes in namespace default"
    );
}

/// Inline vSphere credentials: the Secret the chart makes is pinned to the provider's server,
/// no pod annotation is derived from the password, and a plain http:// server is refused.
#[test]
fn inline_credentials_are_pinned_and_never_hashed_into_the_pod() {
    let objects = rendered(&[
        "providers[0].name=vc,providers[0].vsphere.server=vc.example,providers[0].credentials.username=u,providers[0].credentials.password=hunter2",
    ]);
    let secret = objects
        .iter()
        .find(|o| {
            o["kind"] == "Secret" && o["metadata"]["labels"]["plumbline.dev/provider"] == "vc"
        })
        .expect("the chart makes the credentials Secret");
    assert_eq!(
        secret["metadata"]["annotations"]["plumbline.dev/vsphere-server"],
        "vc.example"
    );
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod_annotations =
        serde_yaml::to_string(&deployment["spec"]["template"]["metadata"]).expect("YAML");
    assert!(
        !pod_annotations.contains("checksum"),
        "no annotation derived from the credentials: {pod_annotations}"
    );
    let refused = rejection("providers[0].name=vc,providers[0].vsphere.server=http://vc.example,providers[0].credentials.existingSecret=s");
    assert!(refused.contains("/providers/0/vsphere/server"), "{refused}");
}

#[test]
fn a_namespace_scoped_install_gets_a_role_for_workloads_not_cluster_wide_patch() {
    let objects = rendered(&["operator.watchNamespace=shop"]);
    let args = operator_args(&objects);
    assert!(
        args.contains(&"--watch-namespace=shop".to_string()),
        "{args:?}"
    );
    // Nothing namespaced that the operator changes is granted cluster-wide.
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("policy", "poddisruptionbudgets"),
        ("", "pods/status"),
        ("", "pods"),
        ("plumbline.dev", "workloadintents"),
        ("plumbline.dev", "workloadintents/status"),
    ] {
        let cluster_wide = cluster_role_verbs(&objects, group);
        assert!(
            !cluster_wide.contains_key(resource),
            "the ClusterRole of a scoped install grants {resource}: {cluster_wide:?}"
        );
        let scoped = role_verbs(&objects, "Role", Some("shop"), group);
        assert!(
            scoped.contains_key(resource),
            "the Role in shop lacks {resource}: {scoped:?}"
        );
    }
    let apps = role_verbs(&objects, "Role", Some("shop"), "apps");
    assert_eq!(
        apps["deployments"]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["get", "list", "patch", "watch"]
    );
    let binding = objects
        .iter()
        .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == "shop")
        .expect("a RoleBinding in shop");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    // Cluster-scoped objects stay in the ClusterRole.
    let plumbline = cluster_role_verbs(&objects, "plumbline.dev");
    for resource in ["tenantpolicies", "hypervisorproviders", "infrachanges"] {
        assert!(
            plumbline.contains_key(resource),
            "{resource}: {plumbline:?}"
        );
    }
    // Unscoped (the default): the same rules, cluster-wide, and no workload Role.
    let default = rendered(&[]);
    assert!(cluster_role_verbs(&default, "apps").contains_key("deployments"));
    assert!(!default.iter().any(|o| o["kind"] == "Role"
        && o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-workloads"))));
}
