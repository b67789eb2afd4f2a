//! `helm lint`, and values.schema.json rejecting bad values with messages that name the field.

use crate::support::{chart_dir, full_values, helm_cmd, run};

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
    ];
    for set in sets {
        run(
            helm_cmd(["template", "t", chart.to_str().unwrap(), "--set", set]),
            None,
        )
        .unwrap_or_else(|e| panic!("--set {set} should render: {e}"));
    }
}
