//! From `kubectl apply` of an intent to coordinated, reversible Kubernetes changes: the
//! operator runs in-process as the restricted operator identity against the real apiserver.

mod common;

use anyhow::Result;
use common::{has_condition, manual_clock, owners, priority_class_name, replicas, Cluster};
use k8s_openapi::api::{events::v1::Event, scheduling::v1::PriorityClass};
use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::{ActionKind, ActionState};
use serde_json::json;

#[tokio::test]
async fn an_intent_gives_its_workload_the_tier_priority_a_replica_floor_and_a_budget() -> Result<()>
{
    let cluster = Cluster::connect("apply").await?;
    cluster.create_deployment("payments", 1).await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;

    cluster
        .apply_intent(
            "payments",
            json!({
                "target": {"kind": "Deployment", "name": "payments"},
                "priority": "critical",
                "availability": {"replicaFloor": 3, "minAvailable": 2}
            }),
        )
        .await?;

    let deployment = cluster
        .deployment_until(
            "payments",
            "the tier's priority class and the replica floor",
            |d| {
                priority_class_name(d).as_deref() == Some("plumbline-critical")
                    && replicas(d) == Some(3)
            },
        )
        .await?;
    let wi = cluster
        .intent_until("payments", "Ready=True Applied", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    let pdb = cluster.pdbs().await?.get("payments-plumbline").await?;
    assert_eq!(pdb.data["spec"]["minAvailable"], json!(2));
    assert_eq!(
        pdb.data["spec"]["selector"]["matchLabels"],
        json!({"app": "payments"})
    );
    assert_eq!(
        pdb.owner_references().first().map(|o| o.name.as_str()),
        Some("payments")
    );

    let class = Api::<PriorityClass>::all(cluster.admin.clone())
        .get("plumbline-critical")
        .await?;
    assert_eq!(class.value, Some(1_000_000));

    // The status lists exactly the actions taken, each applied, with the values they replaced.
    let status = wi.status.clone().expect("status");
    let mut kinds: Vec<ActionKind> = status.plan.iter().map(|a| a.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ActionKind::PriorityClass,
            ActionKind::PriorityClassName,
            ActionKind::ReplicaFloor,
            ActionKind::PodDisruptionBudget
        ]
    );
    assert!(
        status.plan.iter().all(|a| a.state == ActionState::Applied),
        "{:#?}",
        status.plan
    );
    let floor = status
        .plan
        .iter()
        .find(|a| a.kind == ActionKind::ReplicaFloor)
        .unwrap();
    assert_eq!(
        (floor.desired.as_deref(), floor.previous.as_deref()),
        (Some("3"), Some("1"))
    );
    let class_name = status
        .plan
        .iter()
        .find(|a| a.kind == ActionKind::PriorityClassName)
        .unwrap();
    assert_eq!(
        (
            class_name.desired.as_deref(),
            class_name.previous.as_deref()
        ),
        (Some("plumbline-critical"), None)
    );
    assert_eq!(status.observed_generation, wi.metadata.generation);
    assert!(has_condition(&wi, "Active", "True", "NoSchedule"));
    assert!(has_condition(&wi, "Degraded", "False", "AsExpected"));

    // Plumbline owns exactly the fields it set; the user's fields stay the user's.
    assert_eq!(
        owners(&deployment.metadata, &["spec", "replicas"]),
        vec!["plumbline"]
    );
    assert!(owners(
        &deployment.metadata,
        &["spec", "template", "spec", "containers"]
    )
    .contains(&"e2e-owner".to_string()));
    assert!(!owners(
        &deployment.metadata,
        &["spec", "template", "spec", "containers"]
    )
    .contains(&"plumbline".to_string()));

    // An Event says what was applied.
    let events: Api<Event> = Api::namespaced(cluster.admin.clone(), &cluster.namespace);
    let applied = common::eventually("an Applied event", || {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Applied")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("payments")
                })
        }
    })
    .await?;
    assert!(
        applied.note.unwrap_or_default().contains("replicas"),
        "the event names the changes"
    );

    // Metrics of what happened are served.
    let metrics = reqwest_get(&format!("http://{}/metrics", operator.http_addr)).await?;
    assert!(
        metrics.contains("plumbline_reconcile_runs_total{controller=\"workloadintent\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plumbline_actions_total{layer=\"kubernetes\",action=\"replica_floor\",result=\"applied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plumbline_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        reqwest_get(&format!("http://{}/readyz", operator.http_addr)).await?,
        "ready"
    );

    cluster.finish(operator).await?;
    Ok(())
}

/// A plain HTTP GET on loopback, without pulling an HTTP client into the operator's deps.
async fn reqwest_get(url: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {url}: {head}");
    // axum may answer chunked; strip the chunk framing if so.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16)?;
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

#[tokio::test]
async fn outside_the_window_changes_are_reverted_and_inside_they_are_reapplied() -> Result<()> {
    let cluster = Cluster::connect("window").await?;
    cluster.create_deployment("checkout", 2).await?;
    // Monday 2026-11-23, 10:00 in Berlin: inside Mon-Fri 08:00-20:00.
    let clock = manual_clock("2026-11-23T09:00:00Z");
    let operator = cluster.start_operator(clock.clone()).await?;
    cluster
        .apply_intent(
            "checkout",
            json!({
                "target": {"kind": "Deployment", "name": "checkout"},
                "priority": "high",
                "schedule": [{"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "20:00", "timeZone": "Europe/Berlin"}],
                "availability": {"replicaFloor": 4, "minAvailable": "50%"}
            }),
        )
        .await?;
    cluster
        .deployment_until("checkout", "the floor inside the window", |d| {
            replicas(d) == Some(4) && priority_class_name(d).as_deref() == Some("plumbline-high")
        })
        .await?;
    let wi = cluster
        .intent_until("checkout", "Active WindowOpen, Ready", |wi| {
            has_condition(wi, "Active", "True", "WindowOpen")
                && has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;
    let next = wi
        .status
        .as_ref()
        .and_then(|s| s.next_transition.clone())
        .expect("nextTransition");
    assert_eq!(
        next.0.to_string(),
        "2026-11-23T19:00:00Z",
        "the window closes at 20:00 Berlin"
    );
    cluster.pdbs().await?.get("checkout-plumbline").await?;

    // 21:00 in Berlin: outside. Everything goes back, to its previous owner.
    clock.set(common::at("2026-11-23T20:00:00Z"));
    let d = cluster
        .deployment_until("checkout", "the revert after the window closes", |d| {
            replicas(d) == Some(2) && priority_class_name(d).is_none()
        })
        .await?;
    assert_eq!(
        owners(&d.metadata, &["spec", "replicas"]),
        vec!["e2e-owner"],
        "replicas handed back to their owner"
    );
    assert!(!d.annotations().contains_key("plumbline.dev/baseline"));
    let wi = cluster
        .intent_until(
            "checkout",
            "Active=False WindowClosed, Ready Reverted",
            |wi| {
                has_condition(wi, "Active", "False", "WindowClosed")
                    && has_condition(wi, "Ready", "True", "Reverted")
            },
        )
        .await?;
    assert!(
        wi.status.as_ref().unwrap().plan.is_empty(),
        "nothing is held outside the window"
    );
    common::eventually("the budget to be deleted", || async {
        cluster
            .pdbs()
            .await
            .ok()?
            .get_opt("checkout-plumbline")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;

    // Tuesday 09:00 in Berlin: inside again.
    clock.set(common::at("2026-11-24T08:00:00Z"));
    cluster
        .deployment_until("checkout", "the floor reapplied", |d| {
            replicas(d) == Some(4) && priority_class_name(d).as_deref() == Some("plumbline-high")
        })
        .await?;
    let wi = cluster
        .intent_until("checkout", "Active again", |wi| {
            has_condition(wi, "Active", "True", "WindowOpen")
                && has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;
    let floor = wi
        .status
        .unwrap()
        .plan
        .into_iter()
        .find(|a| a.kind == ActionKind::ReplicaFloor)
        .expect("floor action");
    assert_eq!(floor.previous.as_deref(), Some("2"));
    cluster.pdbs().await?.get("checkout-plumbline").await?;

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_intent_reverts_everything_and_leaves_other_managers_fields_alone() -> Result<()>
{
    let cluster = Cluster::connect("delete").await?;
    cluster.create_deployment("ledger", 2).await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;
    cluster
        .apply_intent(
            "ledger",
            json!({
                "target": {"kind": "Deployment", "name": "ledger"},
                "priority": "critical",
                "availability": {"replicaFloor": 5, "minAvailable": 1}
            }),
        )
        .await?;
    cluster
        .deployment_until("ledger", "the floor", |d| replicas(d) == Some(5))
        .await?;
    cluster
        .intent_until("ledger", "Ready", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    // Meanwhile another team manages an annotation and the image with its own field manager.
    let team_b = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ledger", "annotations": {"team-b/owner": "ledger-team"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:2"}]}}}
    });
    cluster
        .deployments()
        .patch(
            "ledger",
            &PatchParams::apply("team-b").force(),
            &Patch::Apply(&team_b),
        )
        .await?;

    cluster.delete_intent("ledger").await?;
    common::eventually("the intent to be gone (finalizer done)", || async {
        cluster
            .intents()
            .get_opt("ledger")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;

    let d = cluster.deployments().get("ledger").await?;
    assert_eq!(replicas(&d), Some(2), "replicas restored");
    assert_eq!(priority_class_name(&d), None, "priority class removed");
    assert_eq!(
        owners(&d.metadata, &["spec", "replicas"]),
        vec!["e2e-owner"]
    );
    assert!(
        owners(&d.metadata, &[]).iter().all(|m| m != "plumbline"),
        "Plumbline holds no field any more: {:?}",
        d.metadata.managed_fields
    );
    assert_eq!(
        d.annotations().get("team-b/owner").map(String::as_str),
        Some("ledger-team")
    );
    let image = d.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(
        image.as_deref(),
        Some("registry.invalid/app:2"),
        "another manager's change stays"
    );
    assert!(
        cluster
            .pdbs()
            .await?
            .get_opt("ledger-plumbline")
            .await?
            .is_none(),
        "budget deleted"
    );

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_intent_on_the_same_workload_is_degraded_and_applies_nothing() -> Result<()> {
    let cluster = Cluster::connect("conflict").await?;
    cluster.create_deployment("search", 1).await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;
    cluster
        .apply_intent("search-first", json!({"target": {"kind": "Deployment", "name": "search"}, "priority": "high", "availability": {"replicaFloor": 2}}))
        .await?;
    cluster
        .intent_until("search-first", "the first intent applied", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    cluster
        .apply_intent("search-second", json!({"target": {"kind": "Deployment", "name": "search"}, "priority": "critical", "availability": {"replicaFloor": 6}}))
        .await?;
    let second = cluster
        .intent_until("search-second", "Degraded ConflictingIntent", |wi| {
            has_condition(wi, "Degraded", "True", "ConflictingIntent")
        })
        .await?;
    let message = common::condition(&second, "Degraded").unwrap().message;
    assert!(
        message.contains("search-first"),
        "names the other intent: {message}"
    );
    assert!(second.status.unwrap().plan.is_empty());
    let d = cluster.deployments().get("search").await?;
    assert_eq!(
        (replicas(&d), priority_class_name(&d).as_deref()),
        (Some(2), Some("plumbline-high")),
        "the first intent's settings stand"
    );

    // Once the first intent goes, the second takes over.
    cluster.delete_intent("search-first").await?;
    cluster
        .deployment_until("search", "the second intent's settings", |d| {
            replicas(d) == Some(6)
                && priority_class_name(d).as_deref() == Some("plumbline-critical")
        })
        .await?;
    let second = cluster
        .intent_until("search-second", "the second intent ready", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;
    let floor = second
        .status
        .unwrap()
        .plan
        .into_iter()
        .find(|a| a.kind == ActionKind::ReplicaFloor)
        .unwrap();
    assert_eq!(
        floor.previous.as_deref(),
        Some("1"),
        "the original value, not the first intent's"
    );

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_target_or_an_invalid_window_is_degraded_with_the_problem_named() -> Result<()> {
    let cluster = Cluster::connect("invalid").await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;

    cluster
        .apply_intent(
            "orphan",
            json!({"target": {"kind": "Deployment", "name": "ghost"}, "priority": "standard"}),
        )
        .await?;
    let orphan = cluster
        .intent_until("orphan", "Degraded TargetNotFound", |wi| {
            has_condition(wi, "Degraded", "True", "TargetNotFound")
        })
        .await?;
    let message = common::condition(&orphan, "Degraded").unwrap().message;
    assert!(
        message.contains("ghost") && message.contains("spec.target"),
        "{message}"
    );

    cluster.create_deployment("real", 1).await?;
    cluster
        .apply_intent(
            "bad-window",
            json!({
                "target": {"kind": "Deployment", "name": "real"},
                "priority": "high",
                "schedule": [{"start": "18:00", "end": "09:00", "timeZone": "Mars/Olympus_Mons"}],
                "availability": {"replicaFloor": 3}
            }),
        )
        .await?;
    let bad = cluster
        .intent_until("bad-window", "Degraded InvalidSpec", |wi| {
            has_condition(wi, "Degraded", "True", "InvalidSpec")
        })
        .await?;
    let message = common::condition(&bad, "Degraded").unwrap().message;
    assert!(message.contains("spec.schedule[0].timeZone"), "{message}");
    assert!(message.contains("spec.schedule[0].end"), "{message}");
    // Nothing half-applied.
    let d = cluster.deployments().get("real").await?;
    assert_eq!((replicas(&d), priority_class_name(&d)), (Some(1), None));
    assert!(bad.status.unwrap().plan.is_empty());

    // Schema-level nonsense never reaches the operator: the API server rejects it with a message.
    let rejected = cluster
        .apply_intent(
            "nonsense",
            json!({"target": {"kind": "Deployment", "name": "real"}, "priority": "urgent"}),
        )
        .await
        .expect_err("an unknown priority is rejected at admission");
    let text = format!("{rejected:#}");
    assert!(
        text.contains("spec.priority") && text.contains("critical"),
        "{text}"
    );

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn a_statefulset_with_its_own_readiness_gate_gets_ours_added_and_back_to_only_its_own(
) -> Result<()> {
    let cluster = Cluster::connect("statefulset").await?;
    let body = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": cluster.namespace},
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "readinessGates": [{"conditionType": "example.com/warmed-up"}],
                    "containers": [{"name": "db", "image": "registry.invalid/db:1"}]
                }
            }
        }
    });
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(cluster.admin.clone(), &cluster.namespace);
    sets.patch("db", &PatchParams::apply("e2e-owner"), &Patch::Apply(&body))
        .await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;
    cluster
        .apply_intent(
            "db",
            json!({
                "target": {"kind": "StatefulSet", "name": "db"},
                "priority": "high",
                "availability": {"replicaFloor": 2},
                "storage": {"latencyBudget": "15ms", "readinessGate": true}
            }),
        )
        .await?;
    let gates = |s: &k8s_openapi::api::apps::v1::StatefulSet| -> Vec<String> {
        s.spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.readiness_gates.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.condition_type)
            .collect()
    };
    common::eventually("both gates and the floor on the StatefulSet", || async {
        let s = sets.get("db").await.ok()?;
        (gates(&s) == ["example.com/warmed-up", "plumbline.dev/storage-healthy"]
            && s.spec.replicas == Some(2))
        .then_some(())
    })
    .await?;
    cluster
        .intent_until("db", "Ready", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    cluster.delete_intent("db").await?;
    common::eventually("the intent to be gone", || async {
        cluster
            .intents()
            .get_opt("db")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let s = sets.get("db").await?;
    assert_eq!(
        gates(&s),
        ["example.com/warmed-up"],
        "only the owner's gate is left"
    );
    assert_eq!(s.spec.replicas, Some(1));
    assert_eq!(
        owners(&s.metadata, &["spec", "template", "spec", "readinessGates"]),
        vec!["e2e-owner"]
    );

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_count_someone_else_raised_is_left_alone_while_active_and_after_delete(
) -> Result<()> {
    let cluster = Cluster::connect("scale").await?;
    cluster.create_deployment("api", 1).await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;
    cluster
        .apply_intent("api", json!({"target": {"kind": "Deployment", "name": "api"}, "priority": "standard", "availability": {"replicaFloor": 3}}))
        .await?;
    cluster
        .deployment_until("api", "the floor", |d| replicas(d) == Some(3))
        .await?;
    cluster
        .intent_until("api", "Ready", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    // Someone scales up past the floor (an update, as `kubectl scale`/`edit` would).
    cluster
        .deployments()
        .patch(
            "api",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await?;
    let wi = cluster
        .intent_until("api", "the floor dropped from the plan", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
                && wi
                    .status
                    .as_ref()
                    .is_some_and(|s| !s.plan.iter().any(|a| a.kind == ActionKind::ReplicaFloor))
        })
        .await?;
    assert!(wi
        .status
        .unwrap()
        .plan
        .iter()
        .any(|a| a.kind == ActionKind::PriorityClassName));
    let d = cluster.deployments().get("api").await?;
    assert_eq!(
        replicas(&d),
        Some(6),
        "Plumbline does not fight a higher count"
    );
    assert_eq!(
        owners(&d.metadata, &["spec", "replicas"]),
        vec!["kubectl-edit"]
    );

    cluster.delete_intent("api").await?;
    common::eventually("the intent to be gone", || async {
        cluster
            .intents()
            .get_opt("api")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let d = cluster.deployments().get("api").await?;
    assert_eq!(
        replicas(&d),
        Some(6),
        "the revert leaves someone else's value"
    );
    assert_eq!(priority_class_name(&d), None);

    cluster.finish(operator).await?;
    Ok(())
}

#[tokio::test]
async fn retargeting_an_intent_releases_the_old_workload_and_governs_the_new_one() -> Result<()> {
    let cluster = Cluster::connect("retarget").await?;
    cluster.create_deployment("old", 1).await?;
    cluster.create_deployment("new", 1).await?;
    let operator = cluster
        .start_operator(manual_clock("2026-11-23T09:00:00Z"))
        .await?;
    let spec = |target: &str| json!({"target": {"kind": "Deployment", "name": target}, "priority": "high", "availability": {"replicaFloor": 3, "minAvailable": 1}});
    cluster.apply_intent("moving", spec("old")).await?;
    cluster
        .deployment_until("old", "the floor on the old target", |d| {
            replicas(d) == Some(3)
        })
        .await?;
    cluster
        .intent_until("moving", "Ready", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;

    cluster.apply_intent("moving", spec("new")).await?;
    cluster
        .deployment_until("new", "the floor on the new target", |d| {
            replicas(d) == Some(3)
        })
        .await?;
    let old = cluster
        .deployment_until("old", "the old target released", |d| {
            replicas(d) == Some(1) && priority_class_name(d).is_none()
        })
        .await?;
    assert!(owners(&old.metadata, &[]).iter().all(|m| m != "plumbline"));
    let pdbs = cluster.pdbs().await?;
    common::eventually("the old budget deleted, the new one created", || async {
        (pdbs.get_opt("old-plumbline").await.ok()?.is_none()
            && pdbs.get_opt("new-plumbline").await.ok()?.is_some())
        .then_some(())
    })
    .await?;
    let wi = cluster
        .intent_until("moving", "Ready on the new target", |wi| {
            has_condition(wi, "Ready", "True", "Applied")
        })
        .await?;
    assert!(wi
        .status
        .unwrap()
        .plan
        .iter()
        .all(|a| a.target.name != "old" && a.target.name != "old-plumbline"));

    cluster.finish(operator).await?;
    Ok(())
}
