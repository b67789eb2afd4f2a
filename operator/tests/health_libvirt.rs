//! Storage health end to end on the real stack: a critical workload's pods on a libvirt guest,
//! latency injected under them for real (an IOPS limit on the guest's disk), and the operator's
//! answer: pod conditions through the guard, the node condition, the noisy neighbour throttled
//! and explained; then everything reverted when the latency is cleared. Also: a lost libvirt
//! connection makes verdicts unknown, and readiness fails open. (What happens to a throttle
//! when the operator dies is in `ledger.rs`: the next one adopts it.)
//!
//! Needs `e2e/stack up`; fails saying so otherwise. Build with `--features libvirt`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use kube::ResourceExt;
use plumbline_operator::clock::SystemClock;
use serde_json::json;
use std::{sync::Arc, time::Duration};

const VICTIM: &str = "pl-vm2";
const PATIENCE: Duration = Duration::from_secs(90);

fn critical_intent(app: &str, max_unready: serde_json::Value) -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": app},
        "priority": "critical",
        "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": max_unready},
        "infrastructure": {"throttleNoisyNeighbours": true}
    })
}

#[tokio::test]
async fn serial_health_latency_under_a_critical_workload_flips_readiness_throttles_the_neighbour_and_reverts(
) -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let noisy = stack.noisy_domain()?.to_string();
    let cluster = common::Cluster::connect("health_libvirt").await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let noisy_limit_before = total_iops_limit(&uri, &noisy).await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "payments", 3, VICTIM).await?;
        // Two of three pods may leave rotation; the third is held by the guard.
        cluster
            .apply_intent("payments", critical_intent("payments", json!(2)))
            .await?;

        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "payments",
            3,
            "every pod healthy before the injection",
            |pods| count(pods, "True", "LatencyWithinBudget") == 3,
        )
        .await?;

        stack.inject_libvirt_latency(VICTIM, 20).await?;
        let degraded = wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "payments",
            3,
            "two pods unready, one held by the guard",
            |pods| {
                count(pods, "False", "LatencyOverBudget") == 2
                    && count(pods, "True", "OverBudgetHeldByGuard") == 1
            },
        )
        .await?;
        for p in &degraded {
            let (_, _, message) = storage_condition(p).unwrap();
            ensure!(
                message.contains(VICTIM) && message.contains("ms per operation"),
                "message names VM and latency: {message}"
            );
        }
        eventually("the pods' Ready to follow the gate", PATIENCE, || async {
            let pods = pods(&cluster.admin, &cluster.namespace, "payments").await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            Ok(if ready == 1 {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            })
        })
        .await?;
        eventually("the node condition", PATIENCE, || async {
            let c = node_condition(&cluster.admin, VICTIM).await?;
            Ok(match c {
                Some((s, r, m)) if s == "True" && r == "StorageLatencyOverBudget" => Ok(m),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        let limit = eventually("an I/O limit on the noisy neighbour", PATIENCE, || async {
            let l = total_iops_limit(&uri, &noisy).await?;
            Ok(if l > 0 && l != noisy_limit_before {
                Ok(l)
            } else {
                Err(format!("total_iops_sec {l}"))
            })
        })
        .await?;
        println!("{noisy} limited to {limit} IOPS");
        let status = eventually(
            "status to explain the guard, the backing map and the throttle",
            PATIENCE,
            || async {
                let s = intent_status(&cluster.admin, &cluster.namespace, "payments").await?;
                let held = s
                    .pointer("/guard/heldReady")
                    .and_then(|v| v.as_array())
                    .map_or(0, Vec::len);
                let degraded_backing =
                    s.pointer("/backing")
                        .and_then(|v| v.as_array())
                        .map_or(0, |b| {
                            b.iter()
                                .filter(|e| e["verdict"] == "Degraded" && e["vm"] == VICTIM)
                                .count()
                        });
                let throttled = s
                    .pointer("/neighbourThrottles")
                    .and_then(|v| v.as_array())
                    .is_some_and(|t| {
                        t.iter().any(|e| {
                            e["vm"] == noisy.as_str()
                                && e["limitIops"].as_u64().is_some_and(|l| l > 0)
                        })
                    });
                Ok(if held == 1 && degraded_backing == 3 && throttled {
                    Ok(s)
                } else {
                    Err(s.to_string())
                })
            },
        )
        .await?;
        println!("status: {status:#}");
        let events = eventually("an Event explaining the throttle", PATIENCE, || async {
            let e = intent_event_reasons(&cluster.admin, &cluster.namespace, "payments").await?;
            Ok(
                match e.iter().find(|(r, _)| r == "NoisyNeighbourThrottled") {
                    Some((_, m)) if m.contains(&noisy) && m.contains(VICTIM) => Ok(m.clone()),
                    _ => Err(format!("{e:?}")),
                },
            )
        })
        .await?;
        println!("event: {events}");

        stack.clear_libvirt_latency(VICTIM).await?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "payments",
            3,
            "every pod healthy after clearing",
            |pods| count(pods, "True", "LatencyWithinBudget") == 3,
        )
        .await?;
        eventually("the node condition to clear", PATIENCE, || async {
            let c = node_condition(&cluster.admin, VICTIM).await?;
            Ok(match c {
                Some((s, _, _)) if s == "False" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        eventually(
            "the neighbour's original limit restored",
            PATIENCE,
            || async {
                let l = total_iops_limit(&uri, &noisy).await?;
                Ok(if l == noisy_limit_before {
                    Ok(())
                } else {
                    Err(format!("total_iops_sec {l}"))
                })
            },
        )
        .await?;
        eventually("the throttle gone from status", PATIENCE, || async {
            let s = intent_status(&cluster.admin, &cluster.namespace, "payments").await?;
            let left = s
                .pointer("/neighbourThrottles")
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len);
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(s.to_string())
            })
        })
        .await?;
        eventually("a release Event", PATIENCE, || async {
            let e = intent_event_reasons(&cluster.admin, &cluster.namespace, "payments").await?;
            Ok(if e.iter().any(|(r, _)| r == "NoisyNeighbourReleased") {
                Ok(())
            } else {
                Err(format!("{e:?}"))
            })
        })
        .await?;
        Ok(())
    }
    .await;

    // Whatever happened, leave the guests as they were.
    let _ = stack.clear_libvirt_latency(VICTIM).await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}

#[tokio::test]
async fn serial_health_libvirt_disconnected_makes_verdicts_unknown_and_readiness_fails_open(
) -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let cluster = common::Cluster::connect("health_disconnect").await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "ledger", 2, "pl-vm3").await?;
        cluster
            .apply_intent("ledger", critical_intent("ledger", json!("50%")))
            .await?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            2,
            "healthy before the disconnect",
            |pods| count(pods, "True", "LatencyWithinBudget") == 2,
        )
        .await?;

        stack.stop_libvirtd().await?;
        let unknown = wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            2,
            "unknown, failing open",
            |pods| count(pods, "True", "LatencyUnknown") == 2,
        )
        .await;
        let node = node_condition(&cluster.admin, "pl-vm3").await;
        let provider_status =
            kube::Api::<plumbline_crds::HypervisorProvider>::all(cluster.admin.clone())
                .get(&provider)
                .await
                .map(|p| serde_json::to_value(p.status).unwrap_or_default());
        stack.start_libvirtd().await?;
        let unknown = unknown?;
        for p in &unknown {
            ensure!(
                is_ready(p) || !has_gate(p),
                "{} stays ready while health is unknown",
                p.name_any()
            );
        }
        let node = node?;
        ensure!(
            matches!(&node, Some((s, _, _)) if s == "Unknown"),
            "node condition while disconnected: {node:?}"
        );
        println!("provider status while disconnected: {provider_status:?}");

        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            2,
            "healthy again after libvirtd is back",
            |pods| count(pods, "True", "LatencyWithinBudget") == 2,
        )
        .await?;
        Ok(())
    }
    .await;

    // libvirtd must be running for whatever comes next.
    let _ = stack.start_libvirtd().await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}
