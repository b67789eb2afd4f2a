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
fn health_options_become_flags_and_only_tainting_grants_patch_on_nodes() {
    let default = rendered(&[]);
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
        !may_patch_nodes(&default),
        "no patch on nodes unless tainting is on"
    );
    assert!(
        args.contains(&"--infra-readback-interval=30s".to_string()),
        "the ledger's read-back interval, default 30s: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a.contains("recover-leftovers")),
        "the flag is gone from the operator: {args:?}"
    );

    let on = rendered(&[
        "operator.unknownReadiness=fail-closed",
        "operator.taintDegradedNodes=true",
        "operator.infraReadbackInterval=2m",
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
    assert!(
        args.contains(&"--infra-readback-interval=2m".to_string()),
        "{args:?}"
    );
    assert!(may_patch_nodes(&on), "tainting needs patch on nodes");
}

/// The verbs the ClusterRole grants on each resource of an API group, over all its rules.
fn cluster_role_verbs(
    objects: &[serde_yaml::Value],
    group: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("a ClusterRole");
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
        ("hypervisorproviders", &["get", "list", "watch", "patch"]),
        ("hypervisorproviders/status", &["patch"]),
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
    let events = cluster_role_verbs(&rendered(&[]), "events.k8s.io");
    assert_eq!(
        events
            .get("events")
            .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["create", "patch"]),
        "Events, including those about InfraChanges and Nodes in namespace default"
    );
}
