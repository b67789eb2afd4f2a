//! "During peak traffic": intents activated by live Prometheus signals (docs/activation.md),
//! against the real apiserver and a real Prometheus scraping a traffic exporter whose value
//! each test sets (`plumbline_e2e::traffic`). Short intervals keep each test under a minute:
//! signals every 1 s, `for` 2 s, `keepActiveFor` 5 s, `maxKeepLast` 5 s.

mod common;

use anyhow::Result;
use common::{condition, has_condition, priority_class_name, replicas, Cluster};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use plumbline_crds::WorkloadIntent;
use plumbline_e2e::traffic::{OwnPrometheus, TrafficSource};
use plumbline_operator::{
    clock::SystemClock,
    prometheus::PrometheusSettings,
    run::{Operator, Settings},
};
use serde_json::{json, Value};
use std::{sync::Arc, time::Duration};

/// The stack's Prometheus (scrapes registered targets every 5 s).
fn stack_prometheus() -> Result<String> {
    Ok(plumbline_e2e::stack().get("PROMETHEUS_URL")?.to_string())
}

async fn start_operator(cluster: &Cluster, prometheus_url: &str) -> Result<Operator> {
    Ok(Operator::start(
        cluster.operator_identity.clone(),
        Settings {
            prometheus: Some(PrometheusSettings {
                url: prometheus_url.to_string(),
                bearer_token_file: None,
                ca_file: None,
                timeout: Duration::from_secs(2),
            }),
            ..cluster.settings("test", None)
        },
        Arc::new(SystemClock),
    )
    .await?)
}

/// A traffic source for this test, scraped by the stack's Prometheus.
async fn traffic(cluster: &Cluster) -> Result<TrafficSource> {
    let mut source = TrafficSource::start(&cluster.namespace).await?;
    source.register(&plumbline_e2e::stack())?;
    Ok(source)
}

/// An intent on `target` with one signal `checkout-peak` over `query`, band 500–800.
fn spec(target: &str, query: &str, extra: Value) -> Value {
    let mut spec = json!({
        "target": {"kind": "Deployment", "name": target},
        "priority": "critical",
        "availability": {"replicaFloor": 3},
        "storage": {"latencyBudget": "20ms", "readinessGate": true},
        "activation": {
            "maxKeepLast": "5s",
            "signals": [{
                "name": "checkout-peak",
                "query": query,
                "activateAbove": 800,
                "deactivateBelow": 500,
                "for": "2s",
                "keepActiveFor": "5s",
                "interval": "1s"
            }]
        }
    });
    if let (Some(into), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if k == "activation" {
                for (ak, av) in v.as_object().into_iter().flatten() {
                    into["activation"][ak] = av.clone();
                }
            } else {
                into.insert(k.clone(), v.clone());
            }
        }
    }
    spec
}

fn signal(wi: &WorkloadIntent) -> Option<&plumbline_crds::SignalStatus> {
    wi.status.as_ref()?.signals.first()
}

fn signal_is(wi: &WorkloadIntent, state: &str, value: f64) -> bool {
    signal(wi).is_some_and(|s| s.state == state && s.value == Some(value))
}

fn has_gate(d: &Deployment) -> bool {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| {
            g.iter()
                .any(|g| g.condition_type == "plumbline.dev/storage-healthy")
        })
}

fn protected(d: &Deployment) -> bool {
    priority_class_name(d).as_deref() == Some("plumbline-critical")
        && replicas(d) == Some(3)
        && has_gate(d)
}

fn unprotected(d: &Deployment) -> bool {
    priority_class_name(d).is_none() && replicas(d) == Some(1) && !has_gate(d)
}

/// Waits for an Event with `reason` about the intent `name`.
async fn event(cluster: &Cluster, name: &str, reason: &str) -> Result<()> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(cluster.admin.clone(), &cluster.namespace);
    common::eventually(&format!("a {reason} Event on {name}"), || {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                .map(|_| ())
        }
    })
    .await
}

/// A window that contains now (every day, all day) or one that does not (an hour well away
/// from now, UTC).
fn window(open: bool) -> Value {
    if open {
        return json!({"start": "00:00", "end": "24:00", "timeZone": "UTC"});
    }
    let hour = chrono::Timelike::hour(&chrono::Utc::now());
    let start = (hour + 12) % 24;
    json!({"start": format!("{start:02}:00"), "end": format!("{start:02}:30"), "timeZone": "UTC"})
}

#[tokio::test]
async fn traffic_above_the_band_activates_inside_it_changes_nothing_and_below_it_deactivates(
) -> Result<()> {
    let cluster = Cluster::connect("activation-band").await?;
    cluster.create_deployment("payments", 1).await?;
    let source = traffic(&cluster).await?;
    let url = stack_prometheus()?;
    let operator = start_operator(&cluster, &url).await?;
    source.set(Some(600.0));
    cluster
        .apply_intent("payments", spec("payments", &source.query(), json!({})))
        .await?;

    // Inside the band from the start: evaluated, inactive, nothing applied.
    let wi = cluster
        .intent_until("payments", "the signal read as 600, inactive", |wi| {
            signal_is(wi, "Value", 600.0)
                && has_condition(wi, "Active", "False", "SignalsInactive")
                && has_condition(wi, "SignalsHealthy", "True", "SignalsEvaluated")
        })
        .await?;
    assert!(unprotected(&cluster.deployments().get("payments").await?));
    let active = condition(&wi, "Active").unwrap();
    assert!(
        active
            .message
            .contains("checkout-peak = 600 (band 500–800): inactive"),
        "{}",
        active.message
    );

    // explain evaluates the signal live, with the same decision.
    let args = plumbline_operator::cli::ExplainArgs {
        file: None,
        intent: Some("wi/payments".into()),
        namespace: Some(cluster.namespace.clone()),
        output: plumbline_operator::cli::ExplainOutput::Text,
        at: None,
        prometheus: plumbline_operator::cli::PrometheusArgs {
            prometheus_url: Some(url.clone()),
            ..Default::default()
        },
    };
    let text =
        plumbline_operator::explain::explain(cluster.admin.clone(), &args, &SystemClock).await?;
    assert!(
        text.contains("checkout-peak = 600 (band 500–800): stays inactive; activates after the value stays above 800 for 2s"),
        "{text}"
    );

    // Peak: active within `for` + a few intervals (and a scrape), and the plan is applied.
    source.set(Some(1000.0));
    let wi = cluster
        .intent_until("payments", "Active=True by the signal", |wi| {
            has_condition(wi, "Active", "True", "SignalActive")
        })
        .await?;
    let active = condition(&wi, "Active").unwrap();
    assert!(
        active.message.contains("checkout-peak = 1000"),
        "{}",
        active.message
    );
    cluster
        .deployment_until(
            "payments",
            "priority class, replica floor and readiness gate",
            protected,
        )
        .await?;

    // Back inside the band: still active.
    source.set(Some(600.0));
    cluster
        .intent_until("payments", "the signal read as 600 again", |wi| {
            signal_is(wi, "Value", 600.0)
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wi = cluster.intents().get("payments").await?;
    assert!(has_condition(&wi, "Active", "True", "SignalActive"));
    assert!(protected(&cluster.deployments().get("payments").await?));

    // Below the band: inactive (after keepActiveFor), and the plan is reverted.
    source.set(Some(100.0));
    cluster
        .intent_until("payments", "Active=False after the drop", |wi| {
            signal_is(wi, "Value", 100.0) && has_condition(wi, "Active", "False", "SignalsInactive")
        })
        .await?;
    cluster
        .deployment_until("payments", "the plan reverted", unprotected)
        .await?;

    // The metrics name the intent and the signal.
    let metrics = common::metrics(operator.http_addr).await?;
    let series = format!(
        "plumbline_signal_value{{namespace=\"{}\",intent=\"payments\",signal=\"checkout-peak\"}} 100",
        cluster.namespace
    );
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");
    assert!(
        metrics.contains("plumbline_activation_transitions_total{"),
        "{metrics}"
    );

    // Deleted: its signal series go too.
    cluster.delete_intent("payments").await?;
    common::eventually("the signal series dropped", || async {
        let metrics = common::metrics(operator.http_addr).await.ok()?;
        (!metrics.contains(&series)).then_some(())
    })
    .await?;
    drop(source);
    cluster.finish(operator).await
}

#[tokio::test]
async fn an_invalid_query_is_reported_with_prometheus_message_and_the_rest_of_the_intent_applies(
) -> Result<()> {
    let cluster = Cluster::connect("activation-invalid").await?;
    cluster.create_deployment("orders", 1).await?;
    let operator = start_operator(&cluster, &stack_prometheus()?).await?;
    cluster
        .apply_intent(
            "orders",
            spec(
                "orders",
                "sum(rate(http_requests_total[1m]",
                json!({"schedule": [window(true)]}),
            ),
        )
        .await?;
    let wi = cluster
        .intent_until("orders", "Degraded=True InvalidSignal", |wi| {
            has_condition(wi, "Degraded", "True", "InvalidSignal")
                && has_condition(wi, "SignalsHealthy", "False", "InvalidSignal")
        })
        .await?;
    let degraded = condition(&wi, "Degraded").unwrap();
    // Prometheus's own words about the query.
    assert!(
        degraded.message.contains("checkout-peak") && degraded.message.contains("parse error"),
        "{}",
        degraded.message
    );
    assert!(signal(&wi).is_some_and(|s| s.invalid && s.state == "Error"));
    // The window still activates the intent (anyOf), and its plan is applied.
    assert!(has_condition(&wi, "Active", "True", "WindowOpen"));
    cluster
        .deployment_until(
            "orders",
            "the plan applied despite the bad signal",
            protected,
        )
        .await?;
    cluster.finish(operator).await
}

#[tokio::test]
async fn an_empty_result_is_reported_as_empty_and_not_treated_as_zero() -> Result<()> {
    let cluster = Cluster::connect("activation-empty").await?;
    cluster.create_deployment("search", 1).await?;
    let source = traffic(&cluster).await?;
    let operator = start_operator(&cluster, &stack_prometheus()?).await?;
    source.set(Some(1000.0));
    cluster
        .apply_intent(
            "search",
            spec(
                "search",
                &source.query(),
                json!({"activation": {"maxKeepLast": "10m"}}),
            ),
        )
        .await?;
    cluster
        .intent_until("search", "Active=True by the signal", |wi| {
            has_condition(wi, "Active", "True", "SignalActive")
        })
        .await?;

    // The series disappears: the query returns nothing.
    source.set(None);
    let wi = cluster
        .intent_until("search", "the signal reported Empty", |wi| {
            signal(wi).is_some_and(|s| s.state == "Empty")
                && has_condition(wi, "SignalsHealthy", "False", "SignalDataMissing")
        })
        .await?;
    // Not zero: the last value is kept, the intent stays active, its plan stays applied.
    assert_eq!(signal(&wi).and_then(|s| s.value), Some(1000.0));
    assert!(has_condition(&wi, "Active", "True", "SignalActive"));
    let healthy = condition(&wi, "SignalsHealthy").unwrap();
    assert!(healthy.message.contains("no series"), "{}", healthy.message);
    assert!(protected(&cluster.deployments().get("search").await?));
    drop(source);
    cluster.finish(operator).await
}

#[tokio::test]
async fn windows_and_signals_combine_any_of_and_all_of() -> Result<()> {
    let cluster = Cluster::connect("activation-combine").await?;
    cluster.create_deployment("any", 1).await?;
    cluster.create_deployment("all", 1).await?;
    let source = traffic(&cluster).await?;
    let operator = start_operator(&cluster, &stack_prometheus()?).await?;
    source.set(Some(100.0));
    cluster
        .apply_intent(
            "any",
            spec("any", &source.query(), json!({"schedule": [window(true)]})),
        )
        .await?;
    cluster
        .apply_intent(
            "all",
            spec(
                "all",
                &source.query(),
                json!({"schedule": [window(true)], "activation": {"combine": "allOf"}}),
            ),
        )
        .await?;
    // Low traffic: anyOf is active by its window, allOf waits for the signal too.
    cluster
        .intent_until("any", "anyOf active by the window", |wi| {
            signal_is(wi, "Value", 100.0) && has_condition(wi, "Active", "True", "WindowOpen")
        })
        .await?;
    cluster
        .intent_until("all", "allOf inactive while the signal is low", |wi| {
            signal_is(wi, "Value", 100.0) && has_condition(wi, "Active", "False", "SignalsInactive")
        })
        .await?;
    assert!(unprotected(&cluster.deployments().get("all").await?));

    // Peak: allOf active too; anyOf stays active (a signal never lowers what a window wants).
    source.set(Some(1000.0));
    cluster
        .intent_until("all", "allOf active with window and signal", |wi| {
            has_condition(wi, "Active", "True", "AllActive")
        })
        .await?;
    cluster
        .deployment_until("all", "allOf's plan applied", protected)
        .await?;
    assert!(has_condition(
        &cluster.intents().get("any").await?,
        "Active",
        "True",
        "WindowOpen"
    ));

    // A closed window: allOf deactivates at once whatever the signal says.
    cluster
        .apply_intent(
            "all",
            spec(
                "all",
                &source.query(),
                json!({"schedule": [window(false)], "activation": {"combine": "allOf"}}),
            ),
        )
        .await?;
    cluster
        .intent_until("all", "allOf inactive outside its window", |wi| {
            has_condition(wi, "Active", "False", "WindowClosed")
        })
        .await?;
    drop(source);
    cluster.finish(operator).await
}

#[tokio::test]
async fn prometheus_stopped_while_active_holds_then_releases_hypervisor_actions_and_recovers(
) -> Result<()> {
    let cluster = Cluster::connect("activation-stopped").await?;
    cluster.create_deployment("checkout", 1).await?;
    let source = TrafficSource::start(&cluster.namespace).await?;
    let mut prometheus = OwnPrometheus::start(&source.address()).await?;
    let operator = start_operator(&cluster, &prometheus.url()).await?;
    source.set(Some(1000.0));
    cluster
        .apply_intent("checkout", spec("checkout", &source.query(), json!({})))
        .await?;
    cluster
        .intent_until("checkout", "Active=True by the signal", |wi| {
            has_condition(wi, "Active", "True", "SignalActive")
        })
        .await?;
    cluster
        .deployment_until("checkout", "the plan applied", protected)
        .await?;

    // Prometheus dies: the signal errs, then goes stale; the intent stays active.
    prometheus.kill().await?;
    let wi = cluster
        .intent_until(
            "checkout",
            "SignalsHealthy=False, stale, still active",
            |wi| {
                signal(wi).is_some_and(|s| s.state == "Stale")
                    && has_condition(wi, "SignalsHealthy", "False", "SignalDataMissing")
                    && has_condition(wi, "Active", "True", "SignalActive")
            },
        )
        .await?;
    assert!(
        signal(&wi)
            .and_then(|s| s.last_error.as_deref())
            .is_some_and(|e| e.contains("unreachable")),
        "{:?}",
        signal(&wi)
    );

    // After maxKeepLast: disruptive hypervisor actions are released (what the storage-health
    // loop decides throttles by), Kubernetes protection stays.
    let wi = cluster
        .intent_until("checkout", "maxKeepLast passed", |wi| {
            condition(wi, "Active").is_some_and(|c| {
                c.status == "True"
                    && c.message
                        .contains("disruptive hypervisor actions are released")
            })
        })
        .await?;
    let valid = plumbline_policies::validate_intent(&wi.spec)?;
    let decision = plumbline_policies::activation::evaluate_intent(
        valid.schedule.as_ref(),
        valid.activation.as_ref(),
        &wi,
        chrono::Utc::now(),
    );
    assert!(decision.activity.active && !decision.disruptive_allowed);
    assert!(protected(&cluster.deployments().get("checkout").await?));

    // Each step was told once, as an Event on the intent.
    for reason in [
        "SignalActive",
        "SignalDataMissing",
        "HypervisorActionsReleased",
    ] {
        event(&cluster, "checkout", reason).await?;
    }

    // Prometheus back: normal evaluation resumes.
    prometheus.restart().await?;
    source.set(Some(900.0));
    let wi = cluster
        .intent_until("checkout", "SignalsHealthy=True again", |wi| {
            signal_is(wi, "Value", 900.0)
                && has_condition(wi, "SignalsHealthy", "True", "SignalsEvaluated")
        })
        .await?;
    let active = condition(&wi, "Active").unwrap();
    assert!(
        active.status == "True" && !active.message.contains("released"),
        "{active:?}"
    );
    let _ = wi.name_any();
    cluster.finish(operator).await?;
    prometheus.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_new_operator_continues_from_the_signal_memory_in_status() -> Result<()> {
    let cluster = Cluster::connect("activation-restart").await?;
    cluster.create_deployment("cart", 1).await?;
    let source = traffic(&cluster).await?;
    let url = stack_prometheus()?;
    let operator = start_operator(&cluster, &url).await?;
    source.set(Some(1000.0));
    cluster
        .apply_intent("cart", spec("cart", &source.query(), json!({})))
        .await?;
    cluster
        .intent_until("cart", "Active=True by the signal", |wi| {
            has_condition(wi, "Active", "True", "SignalActive")
        })
        .await?;
    // The operator goes away; traffic falls into the band meanwhile.
    operator.stop().await;
    source.set(Some(600.0));
    tokio::time::sleep(Duration::from_secs(12)).await;

    // A new operator reads 600: inside the band, so the remembered activation holds. (Without
    // the memory in status it would start inactive.)
    let operator = start_operator(&cluster, &url).await?;
    let wi = cluster
        .intent_until("cart", "the new operator read 600", |wi| {
            signal_is(wi, "Value", 600.0)
        })
        .await?;
    assert!(
        has_condition(&wi, "Active", "True", "SignalActive"),
        "{:?}",
        condition(&wi, "Active")
    );
    assert!(protected(&cluster.deployments().get("cart").await?));
    drop(source);
    cluster.finish(operator).await
}
