//! The generated CRDs on the real Kubernetes 1.20 apiserver: they are accepted as structural,
//! valid objects pass unchanged, and nonsense is rejected at admission with a readable message.
//!
//! Needs `e2e/stack up k8s`; fails with a clear message without it. Every create is a
//! server-side dry run, so nothing is left behind.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    Api, Client,
};
use plumbline_crds::{generate, HypervisorProvider, WorkloadIntent};
use plumbline_e2e::cluster::CRD_HELD_ANNOTATION;
use serde_json::{json, Value};

const FIELD_MANAGER: &str = "plumbline-crds-test";

async fn client_with_crds() -> Result<Client> {
    let stack = plumbline_e2e::Stack::load().context("this test needs the real apiserver")?;
    let client = stack.admin_client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, crd) in generate::crds() {
        let name = crd
            .metadata
            .name
            .clone()
            .context("generated CRD has a name")?;
        // A CRD a test holds (the chart upgrade test widens it for a while) is left alone.
        let held = crds.get_opt(&name).await?.is_some_and(|c| {
            c.metadata
                .annotations
                .is_some_and(|a| a.contains_key(CRD_HELD_ANNOTATION))
        });
        if held {
            wait_established(&crds, &name).await?;
            continue;
        }
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {file} to the 1.20 apiserver"))?;
        wait_established(&crds, &name).await?;
    }
    Ok(client)
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
    let mut last = String::new();
    for _ in 0..120 {
        let crd = crds.get(name).await?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
        {
            bail!(
                "CRD {name} is not structural: {}",
                c.message.clone().unwrap_or_default()
            );
        }
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return Ok(());
        }
        last = format!("{conditions:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("CRD {name} not Established after 30s; conditions: {last}")
}

fn intents(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<WorkloadIntent>(&()),
    )
}

fn providers(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::erase::<HypervisorProvider>(&()),
    )
}

fn object(kind: &str, name: &str, spec: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "plumbline.dev/v1alpha1",
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    }))?)
}

/// Server-side dry-run create; the apiserver's message when rejected.
/// Every case (what, spec, expected message fragments) is refused at admission with a message
/// holding each fragment; all mismatches are reported together.
async fn assert_rejected(
    api: &Api<DynamicObject>,
    kind: &str,
    cases: &[(&str, Value, &[&str])],
) -> Result<()> {
    let mut failures = Vec::new();
    for (i, (what, spec, expected)) in cases.iter().enumerate() {
        match dry_run_create(api, &object(kind, &format!("bad-{i}"), spec.clone())?).await? {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(message) => {
                for e in *expected {
                    if !message.contains(e) {
                        failures.push(format!("{what}: message {message:?} lacks {e:?}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

async fn dry_run_create(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> Result<Result<DynamicObject, String>> {
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match api.create(&params, obj).await {
        Ok(created) => Ok(Ok(created)),
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(Err(status.message.clone())),
        Err(e) => Err(e).context("creating (dry run)"),
    }
}

fn valid_intent_spec() -> Value {
    json!({
        "target": { "kind": "Deployment", "name": "payments" },
        "priority": "critical",
        "schedule": [{ "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "20:00", "timeZone": "Europe/Berlin" }],
        "availability": { "replicaFloor": 3, "minAvailable": "50%" },
        "storage": { "latencyBudget": "20ms", "readinessGate": true, "maxUnready": 1 },
        "infrastructure": { "protectBackingVms": true, "throttleNoisyNeighbours": true, "relocateNoisyNeighbours": false }
    })
}

/// One valid activation signal.
fn signal() -> Value {
    json!({ "name": "checkout-peak", "query": "sum(rate(http_requests_total[1m]))", "activateAbove": 800, "deactivateBelow": 500 })
}

/// `valid_intent_spec` with one field replaced (JSON pointer) or removed (`None`).
fn intent_with(pointer: &str, value: Option<Value>) -> Value {
    let mut spec = valid_intent_spec();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = spec.pointer_mut(parent).expect("pointer exists");
    match value {
        Some(v) => match parent {
            Value::Array(items) => items[key.parse::<usize>().expect("index")] = v,
            other => {
                other[key] = v;
            }
        },
        None => {
            parent.as_object_mut().expect("object").remove(key);
        }
    }
    spec
}

#[tokio::test]
async fn a_valid_intent_is_accepted_and_kept_as_written() -> Result<()> {
    let client = client_with_crds().await?;
    let created = dry_run_create(
        &intents(&client),
        &object("WorkloadIntent", "payments-critical", valid_intent_spec())?,
    )
    .await?
    .map_err(anyhow::Error::msg)
    .context("the example intent must be accepted")?;
    assert_eq!(created.data["spec"], valid_intent_spec());
    // The typed API reads what the server stored.
    let typed: WorkloadIntent = serde_json::from_value(serde_json::to_value(&created)?)?;
    assert_eq!(typed.spec.priority, plumbline_crds::Priority::Critical);
    Ok(())
}

#[tokio::test]
async fn what_the_schema_cannot_check_passes_admission() -> Result<()> {
    // 1.20 has no CEL: an end before its start and an unknown zone pass here; plumbline-policies
    // reports them in the Degraded condition (see policies/tests/schedule.rs).
    let client = client_with_crds().await?;
    let spec = intent_with(
        "/schedule/0",
        Some(json!({ "start": "20:00", "end": "08:00", "timeZone": "Mars/Base" })),
    );
    let result = dry_run_create(
        &intents(&client),
        &object("WorkloadIntent", "overnight", spec)?,
    )
    .await?;
    assert!(result.is_ok(), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn invalid_intents_are_rejected_with_readable_messages() -> Result<()> {
    let client = client_with_crds().await?;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "unknown priority",
            intent_with("/priority", Some(json!("urgent"))),
            &[r#"spec.priority: Unsupported value: "urgent": supported values: "critical", "high", "standard", "best-effort""#],
        ),
        (
            "unknown target kind",
            intent_with("/target/kind", Some(json!("DaemonSet"))),
            &[r#"spec.target.kind: Unsupported value: "DaemonSet": supported values: "Deployment", "StatefulSet""#],
        ),
        ("missing target", intent_with("/target", None), &["spec.target: Required value"]),
        (
            "malformed latency budget",
            intent_with("/storage/latencyBudget", Some(json!("20 ms"))),
            &[r#"spec.storage.latencyBudget: Invalid value: "20 ms": spec.storage.latencyBudget in body should match '^[0-9]{1,9}(\.[0-9]{1,6})?(us|ms|s)$'"#],
        ),
        (
            "percentage over 100",
            intent_with("/availability/minAvailable", Some(json!("150%"))),
            &[r#"spec.availability.minAvailable: Invalid value: "150%": spec.availability.minAvailable in body should match '^(100|[1-9]?[0-9])%$'"#],
        ),
        (
            "percentage without %",
            intent_with("/storage/maxUnready", Some(json!("34"))),
            &[r#"spec.storage.maxUnready: Invalid value: "34": spec.storage.maxUnready in body should match"#],
        ),
        (
            "negative count",
            intent_with("/storage/maxUnready", Some(json!(-1))),
            &["spec.storage.maxUnready: Invalid value: -1: spec.storage.maxUnready in body should be greater than or equal to 0"],
        ),
        (
            "replica floor of zero",
            intent_with("/availability/replicaFloor", Some(json!(0))),
            &["spec.availability.replicaFloor: Invalid value: 0: spec.availability.replicaFloor in body should be greater than or equal to 1"],
        ),
        (
            "malformed clock time",
            intent_with("/schedule/0/start", Some(json!("8:00"))),
            &[r#"spec.schedule.start: Invalid value: "8:00": spec.schedule.start in body should match '^([01][0-9]|2[0-3]):[0-5][0-9]$'"#],
        ),
        (
            "end past midnight",
            intent_with("/schedule/0/end", Some(json!("24:30"))),
            &[r#"spec.schedule.end: Invalid value: "24:30""#],
        ),
        (
            "unknown day",
            intent_with("/schedule/0/days", Some(json!(["Mon", "Funday"]))),
            &[r#"spec.schedule.days: Unsupported value: "Funday": supported values: "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun""#],
        ),
        ("empty schedule", intent_with("/schedule", Some(json!([]))), &["spec.schedule: Invalid value: 0: spec.schedule in body should have at least 1 items"]),
        (
            "replica floor beyond int32",
            intent_with("/availability/replicaFloor", Some(json!(2147483648u64))),
            &["spec.availability.replicaFloor in body should be less than or equal to 2147483647"],
        ),
        (
            "minAvailable beyond int32",
            intent_with("/availability/minAvailable", Some(json!(2147483648u64))),
            &["spec.availability.minAvailable in body should be less than or equal to 2147483647"],
        ),
        (
            "maxUnready beyond int32",
            intent_with("/storage/maxUnready", Some(json!(9007199254740993u64))),
            &["spec.storage.maxUnready in body should be less than or equal to 2147483647"],
        ),
        (
            "huge latency budget",
            intent_with("/storage/latencyBudget", Some(json!("99999999999999999999s"))),
            &["spec.storage.latencyBudget"],
        ),
        (
            "long schedule",
            intent_with(
                "/schedule",
                Some(Value::Array(vec![json!({ "start": "08:00", "end": "20:00", "timeZone": "UTC" }); 33])),
            ),
            &["spec.schedule in body should have at most 32 items"],
        ),
        (
            "long target name",
            intent_with("/target/name", Some(json!("a".repeat(254)))),
            &["spec.target.name"],
        ),
        (
            "unknown combine",
            intent_with("/activation", Some(json!({ "combine": "someOf", "signals": [signal()] }))),
            &[r#"spec.activation.combine: Unsupported value: "someOf": supported values: "anyOf", "allOf""#],
        ),
        (
            "no signals",
            intent_with("/activation", Some(json!({ "signals": [] }))),
            &["spec.activation.signals in body should have at least 1 items"],
        ),
        (
            "signal without a query",
            intent_with("/activation", Some(json!({ "signals": [{ "name": "peak", "activateAbove": 800, "deactivateBelow": 500 }] }))),
            &["spec.activation.signals.query: Required value"],
        ),
        (
            "malformed for",
            intent_with("/activation", Some(json!({ "signals": [{ "name": "peak", "query": "up", "activateAbove": 800, "deactivateBelow": 500, "for": "1 minute" }] }))),
            &[r#"spec.activation.signals.for: Invalid value: "1 minute""#],
        ),
        (
            "several problems at once, all reported",
            json!({ "target": { "kind": "Deployment", "name": "Payments_API" }, "priority": "urgent", "storage": { "readinessGate": true } }),
            &[
                "spec.target.name: Invalid value: \"Payments_API\"",
                "spec.priority: Unsupported value: \"urgent\"",
                "spec.storage.latencyBudget: Required value",
            ],
        ),
    ];
    assert_rejected(&intents(&client), "WorkloadIntent", &cases).await
}

#[tokio::test]
async fn providers_need_exactly_one_hypervisor_kind() -> Result<()> {
    let client = client_with_crds().await?;
    let libvirt = json!({ "uri": "qemu:///system" });
    let vsphere = json!({ "server": "https://127.0.0.1:8989/sdk", "credentialsSecretRef": { "name": "vcsim", "namespace": "plumbline" } });
    let api = providers(&client);

    for (what, spec) in [
        (
            "libvirt",
            json!({ "libvirt": libvirt, "sampleInterval": "1s" }),
        ),
        (
            "vsphere",
            json!({ "vsphere": vsphere, "nodeMapping": { "by": "label", "label": "plumbline.dev/vm" } }),
        ),
    ] {
        let result = dry_run_create(
            &api,
            &object("HypervisorProvider", &format!("ok-{what}"), spec)?,
        )
        .await?;
        assert!(result.is_ok(), "{what}: {result:?}");
    }

    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "both kinds",
            json!({ "libvirt": libvirt, "vsphere": vsphere }),
            &[
                r#""spec" must validate one and only one schema (oneOf). Found 2 valid alternatives"#,
            ],
        ),
        (
            "neither kind",
            json!({ "sampleInterval": "1s" }),
            &[
                "must validate one and only one schema (oneOf). Found none valid",
                "spec.libvirt: Required value",
            ],
        ),
        (
            "vsphere without credentials",
            json!({ "vsphere": { "server": "vc" } }),
            &["spec.vsphere.credentialsSecretRef: Required value"],
        ),
        (
            "malformed interval",
            json!({ "libvirt": libvirt, "sampleInterval": "1.5s" }),
            &[
                r#"spec.sampleInterval: Invalid value: "1.5s": spec.sampleInterval in body should match '^[0-9]{1,7}(ms|s|m)$'"#,
            ],
        ),
        (
            "huge interval",
            json!({ "libvirt": libvirt, "sampleInterval": "6200000000000000000s" }),
            &[
                r#"spec.sampleInterval: Invalid value: "6200000000000000000s": spec.sampleInterval in body should be at most 9 chars long"#,
            ],
        ),
        (
            "plain http server",
            json!({ "vsphere": { "server": "http://vc.example/sdk", "credentialsSecretRef": { "name": "vc", "namespace": "plumbline" } } }),
            &[r#"spec.vsphere.server: Invalid value: "http://vc.example/sdk""#],
        ),
        (
            "malformed secret namespace",
            json!({ "vsphere": { "server": "vc.example", "credentialsSecretRef": { "name": "vc", "namespace": "Not_A_Namespace" } } }),
            &["spec.vsphere.credentialsSecretRef.namespace"],
        ),
        (
            "unknown node mapping",
            json!({ "libvirt": libvirt, "nodeMapping": { "by": "ip" } }),
            &[
                r#"spec.nodeMapping.by: Unsupported value: "ip": supported values: "providerID", "nodeName", "label""#,
            ],
        ),
    ];
    assert_rejected(&api, "HypervisorProvider", &cases).await
}

#[tokio::test]
async fn the_examples_are_accepted() -> Result<()> {
    let client = client_with_crds().await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).context("listing crds/examples")? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let mut obj: DynamicObject =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let api = match obj.types.as_ref().map(|t| t.kind.as_str()) {
            Some("WorkloadIntent") => {
                // The examples' namespace need not exist for a dry run in default.
                obj.metadata.namespace = None;
                serde_yaml::from_str::<WorkloadIntent>(&text)
                    .with_context(|| format!("typed {}", path.display()))?;
                intents(&client)
            }
            Some("HypervisorProvider") => {
                serde_yaml::from_str::<HypervisorProvider>(&text)
                    .with_context(|| format!("typed {}", path.display()))?;
                providers(&client)
            }
            other => bail!("{}: unexpected kind {other:?}", path.display()),
        };
        dry_run_create(&api, &obj)
            .await?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} rejected", path.display()))?;
        seen += 1;
    }
    assert!(seen >= 4, "expected the four examples, found {seen}");
    Ok(())
}
