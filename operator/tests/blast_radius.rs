//! The blast radius of a storage incident, on the real stack:
//!
//! - **A whole datastore degraded**: latency on every libvirt guest at once. The guard keeps
//!   at least one pod of each workload ready, counting pods already unready for their own
//!   reasons (a failing readiness probe) against the budget; the storage taint stays within
//!   its cap and never takes a workload's last schedulable node; throttles stay within theirs.
//! - **Latency on the victim's own disk**, so no neighbour is to blame: the ladder's first
//!   step is judged not to help, undone, and the ladder stops; quiet guests are never touched.
//!
//! Needs `e2e/stack up`; fails saying so otherwise. Build with `--features libvirt`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_crds::ChangePurpose;
use plumbline_operator::{clock::SystemClock, health::HealthSettings};
use plumbline_policies::health::TaintCap;
use serde_json::json;
use std::{sync::Arc, time::Duration};

const PATIENCE: Duration = Duration::from_secs(90);
/// What kubelet-sim reads as the application's own readiness probe failing.
const PROBE_ANNOTATION: &str = "sim.plumbline.dev/probe";

fn intent(app: &str, max_unready: serde_json::Value) -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": app},
        "priority": "critical",
        "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": max_unready},
        "infrastructure": {"throttleNoisyNeighbours": true}
    })
}

/// Fails the pod's own readiness probe (kubelet-sim turns its containers unready).
async fn fail_probe(admin: &Client, namespace: &str, pod: &str) -> Result<()> {
    Api::<Pod>::namespaced(admin.clone(), namespace)
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {PROBE_ANNOTATION: "fail"}}})),
        )
        .await
        .with_context(|| format!("failing the probe of {namespace}/{pod}"))?;
    Ok(())
}

/// Nodes carrying the storage taint now.
async fn storage_tainted(admin: &Client) -> Result<Vec<String>> {
    Ok(Api::<Node>::all(admin.clone())
        .list(&Default::default())
        .await
        .context("listing Nodes")?
        .items
        .into_iter()
        .filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == STORAGE_TAINT))
        })
        .map(|n| n.name_any())
        .collect())
}

/// The VMs the test operator throttles now.
async fn throttled(admin: &Client, namespace: &str) -> Result<Vec<String>> {
    Ok(ledger(admin, namespace)
        .await?
        .into_iter()
        .filter(|ic| ic.spec.purpose == ChangePurpose::NeighbourThrottle)
        .map(|ic| ic.spec.target.name)
        .collect())
}

/// Clears the injected latency and reads it back, a few times if need be: the next test must
/// find the guest unlimited.
async fn clear_for_sure(stack: &plumbline_e2e::Stack, uri: &str, guest: &str) -> Result<()> {
    for _ in 0..5 {
        let _ = stack.clear_libvirt_latency(guest).await;
        if total_iops_limit(uri, guest).await? == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{guest} still limited after clearing its injected latency")
}

#[tokio::test]
async fn serial_blast_radius_a_whole_datastore_degraded_keeps_a_ready_pod_per_workload_and_caps_taints(
) -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let guests: Vec<String> = stack
        .get("LIBVIRT_DOMAINS")?
        .split(',')
        .map(String::from)
        .collect();
    let cluster = common::Cluster::connect("blast_datastore").await?;
    let all_nodes = Api::<Node>::all(cluster.admin.clone())
        .list(&Default::default())
        .await?
        .items
        .len();
    // 20 % of the stack's 8 nodes: one node may carry the taint.
    let cap = TaintCap {
        max_nodes_percent: 20,
    };
    let max_tainted = cap.allowed(all_nodes);
    ensure!(
        max_tainted == 1,
        "{all_nodes} nodes: the test expects a cap of one"
    );
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let operator = cluster
        .start_operator_with_health(
            Arc::new(SystemClock),
            HealthSettings {
                taint_degraded_nodes: true,
                taint_cap: cap,
                ..common::test_health()
            },
        )
        .await?;

    let result = async {
        // orders: three pods, two may go, but one already fails its own probe.
        deploy_pinned(&cluster.admin, &cluster.namespace, "orders", 3, "pl-vm1").await?;
        // cart: "100%" may go, but never the last ready pod.
        deploy_pinned(&cluster.admin, &cluster.namespace, "cart", 2, "pl-vm2").await?;
        // ledger: the scheduler may only place it on pl-vm3, its last schedulable node.
        deploy_selecting(&cluster.admin, &cluster.namespace, "ledger", 1, "pl-vm3").await?;
        for (app, max) in [
            ("orders", json!(2)),
            ("cart", json!("100%")),
            ("ledger", json!(1)),
        ] {
            cluster.apply_intent(app, intent(app, max)).await?;
        }
        for (app, n) in [("orders", 3), ("cart", 2), ("ledger", 1)] {
            wait_for_pods(
                &cluster.admin,
                &cluster.namespace,
                app,
                n,
                "healthy",
                |pods| count(pods, "True", "LatencyWithinBudget") == n,
            )
            .await?;
        }
        let orders = pods(&cluster.admin, &cluster.namespace, "orders").await?;
        let probe_failing = orders[0].name_any();
        fail_probe(&cluster.admin, &cluster.namespace, &probe_failing).await?;
        eventually("the probe-failing pod unready", PATIENCE, || async {
            let pods = pods(&cluster.admin, &cluster.namespace, "orders").await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            Ok(if ready == 2 {
                Ok(())
            } else {
                Err(summary(&pods))
            })
        })
        .await?;

        let since = chrono::Utc::now() - chrono::Duration::seconds(2);
        for guest in &guests {
            stack.inject_libvirt_latency(guest, 20).await?;
        }
        // maxUnready 2 with one pod failing its probe: Plumbline may take one more (or mark
        // the failing one too, which costs nothing), never the third.
        let status = eventually(
            "orders: one ready pod, held by the guard",
            PATIENCE,
            || async {
                let pods = pods(&cluster.admin, &cluster.namespace, "orders").await?;
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                let s = intent_status(&cluster.admin, &cluster.namespace, "orders").await?;
                let held = s
                    .pointer("/guard/heldReady")
                    .and_then(|v| v.as_array())
                    .map_or(0, Vec::len);
                let marked: Vec<&str> = s
                    .pointer("/guard/markedUnready")
                    .and_then(|v| v.as_array())
                    .map(|m| m.iter().filter_map(|p| p.as_str()).collect())
                    .unwrap_or_default();
                let counted = s.pointer("/guard/unreadyElsewhere") == Some(&json!(1))
                    || marked.contains(&probe_failing.as_str());
                Ok(if ready == 1 && held == 1 && counted {
                    Ok(s)
                } else {
                    Err(format!("{ready} ready; {s}"))
                })
            },
        )
        .await?;
        println!("orders status: {status:#}");
        for (app, n) in [("cart", 2), ("ledger", 1)] {
            wait_for_pods(
                &cluster.admin,
                &cluster.namespace,
                app,
                n,
                "the last ready pod held by the guard",
                |pods| count(pods, "True", "OverBudgetHeldByGuard") == 1,
            )
            .await?;
        }
        let degraded: Vec<String> = eventually("every guest's node degraded", PATIENCE, || async {
            let mut over = Vec::new();
            for node in ["pl-vm1", "pl-vm2", "pl-vm3"] {
                if let Some((s, _, _)) = node_condition(&cluster.admin, node).await? {
                    if s == "True" {
                        over.push(node.to_string());
                    }
                }
            }
            Ok(if over.len() == 3 {
                Ok(over)
            } else {
                Err(format!("{over:?}"))
            })
        })
        .await?;
        println!("degraded nodes: {degraded:?}");
        eventually("the cap's worth of taints", PATIENCE, || async {
            let t = storage_tainted(&cluster.admin).await?;
            Ok(if t.len() == max_tainted {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            })
        })
        .await?;

        // For a while, every pass must keep every bound.
        let mut seen_throttles = 0;
        for _ in 0..40 {
            for app in ["orders", "cart", "ledger"] {
                let pods = pods(&cluster.admin, &cluster.namespace, app).await?;
                ensure!(
                    pods.iter().any(is_ready),
                    "{app} has no ready pod: {}",
                    summary(&pods)
                );
            }
            let tainted = storage_tainted(&cluster.admin).await?;
            ensure!(
                tainted.len() <= max_tainted,
                "{} nodes tainted, cap {max_tainted}: {tainted:?}",
                tainted.len()
            );
            ensure!(
                !tainted.iter().any(|n| n == "pl-vm3"),
                "pl-vm3 is ledger's last schedulable node, yet tainted"
            );
            // One datastore: at most 4 VMs throttled on it (and 2 per victim, which with the
            // stack's one unprotected guest is implied).
            let throttled = throttled(&cluster.admin, &cluster.namespace).await?;
            ensure!(throttled.len() <= 4, "more than 4 throttles: {throttled:?}");
            ensure!(
                throttled
                    .iter()
                    .all(|vm| !["pl-vm1", "pl-vm2", "pl-vm3"].contains(&vm.as_str())),
                "a VM backing a critical intent throttled: {throttled:?}"
            );
            seen_throttles = seen_throttles.max(throttled.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("throttles at most {seen_throttles} at once");

        let held = operator.metrics.health.taints_held.get();
        ensure!(
            held == 2,
            "two deserving nodes held back, metric says {held}"
        );

        let ledger_intent = format!("{}/ledger", cluster.namespace);
        let pinned = eventually("a StorageTaintHeld Event on pl-vm3", PATIENCE, || async {
            let e = node_event_reasons(&cluster.admin, "pl-vm3", since).await?;
            Ok(
                match e.iter().find(|(r, m)| {
                    r == "StorageTaintHeld"
                        && m.contains("last schedulable node")
                        && m.contains(&ledger_intent)
                }) {
                    Some((_, m)) => Ok(m.clone()),
                    None => Err(format!("{e:?}")),
                },
            )
        })
        .await?;
        println!("pl-vm3: {pinned}");
        let mut capped = Vec::new();
        for node in ["pl-vm1", "pl-vm2"] {
            let e = node_event_reasons(&cluster.admin, node, since).await?;
            capped
                .extend(e.into_iter().filter(|(r, m)| {
                    r == "StorageTaintHeld" && m.contains("at most 1 of 8 nodes")
                }));
        }
        ensure!(
            !capped.is_empty(),
            "no StorageTaintHeld Event naming the cap on pl-vm1 or pl-vm2"
        );
        Ok(())
    }
    .await;

    // The ledger reverts what it holds (throttles back to the injected limits, taints off)
    // before the injected latency is cleared, so nothing it restores is stale.
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    let mut cleared = Ok(());
    for guest in &guests {
        cleared = cleared.and(clear_for_sure(&stack, &uri, guest).await);
    }
    delete_provider(&cluster.admin, &provider).await;
    let left = storage_tainted(&cluster.admin).await;
    cluster.cleanup().await;
    result.and(released).and(cleared)?;
    let left = left?;
    ensure!(left.is_empty(), "storage taints left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn serial_blast_radius_latency_on_the_victims_own_disk_undoes_the_step_and_leaves_quiet_guests_alone(
) -> Result<()> {
    const VICTIM: &str = "pl-vm2";
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let noisy = stack.noisy_domain()?.to_string();
    let quiet: Vec<String> = stack
        .get("LIBVIRT_DOMAINS")?
        .split(',')
        .filter(|d| *d != VICTIM && *d != noisy)
        .map(String::from)
        .collect();
    let cluster = common::Cluster::connect("blast_own_disk").await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let before = total_iops_limit(&uri, &noisy).await?;
    // The default ladder: each step judged 3 samples after it.
    let mut health = common::test_health();
    health.ladder.judge_after_samples = HealthSettings::default().ladder.judge_after_samples;
    ensure!(health.ladder.judge_after_samples == 3);
    let operator = cluster
        .start_operator_with_health(Arc::new(SystemClock), health)
        .await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "payments", 2, VICTIM).await?;
        cluster
            .apply_intent("payments", intent("payments", json!(1)))
            .await?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "payments",
            2,
            "healthy",
            |pods| count(pods, "True", "LatencyWithinBudget") == 2,
        )
        .await?;

        let mut quiet_before = Vec::new();
        for q in &quiet {
            quiet_before.push((q.clone(), total_iops_limit(&uri, q).await?));
        }
        stack.inject_libvirt_latency(VICTIM, 20).await?;
        let quiet_untouched = || async {
            for (q, before) in &quiet_before {
                let l = total_iops_limit(&uri, q).await?;
                ensure!(
                    l == *before,
                    "quiet guest {q} limited to {l} IOPS (before: {before})"
                );
            }
            Ok(())
        };
        let stepped = eventually("the first step on the noisy guest", PATIENCE, || async {
            quiet_untouched().await?;
            let l = total_iops_limit(&uri, &noisy).await?;
            Ok(if l > 0 && l != before {
                Ok(l)
            } else {
                Err(format!("{l}"))
            })
        })
        .await?;
        println!("{noisy} stepped to {stepped} IOPS");
        eventually("the step undone", PATIENCE, || async {
            quiet_untouched().await?;
            let l = total_iops_limit(&uri, &noisy).await?;
            Ok(if l == before {
                Ok(())
            } else {
                Err(format!("{l}"))
            })
        })
        .await?;
        let undone = eventually("a NoisyNeighbourStepUndone Event", PATIENCE, || async {
            let e = intent_event_reasons(&cluster.admin, &cluster.namespace, "payments").await?;
            Ok(
                match e.iter().find(|(r, _)| r == "NoisyNeighbourStepUndone") {
                    Some((_, m)) if m.contains(&noisy) => Ok(m.clone()),
                    _ => Err(format!("{e:?}")),
                },
            )
        })
        .await?;
        println!("event: {undone}");
        // The ladder stopped: the victim is still slow, and nobody is throttled again.
        for _ in 0..30 {
            quiet_untouched().await?;
            let l = total_iops_limit(&uri, &noisy).await?;
            ensure!(
                l == before,
                "{noisy} throttled again ({l} IOPS) after the undo"
            );
            let c = node_condition(&cluster.admin, VICTIM).await?;
            ensure!(
                c.as_ref().is_some_and(|(s, _, _)| s == "True"),
                "the victim still degraded: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let events = intent_event_reasons(&cluster.admin, &cluster.namespace, "payments").await?;
        let steps = events
            .iter()
            .filter(|(r, _)| r == "NoisyNeighbourThrottled" || r == "NoisyNeighbourStepped")
            .count();
        ensure!(steps == 1, "one step only: {events:?}");
        Ok(())
    }
    .await;

    let _ = stack.clear_libvirt_latency(VICTIM).await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}
