//! Storage health end to end on a vSphere-backed node: the simulator's latency hook makes
//! `QueryPerf` report high virtual-disk latency for one VM; the pods on the Node it backs go
//! unready (through the guard), the Node gets the condition, and both revert when cleared.
//!
//! Needs `e2e/stack up`; fails saying so otherwise.

mod common;
mod health_common;

use anyhow::{Context as _, Result};
use health_common::*;
use plumbline_operator::clock::SystemClock;
use serde_json::json;
use std::{sync::Arc, time::Duration};

const VM: &str = "DC0_H0_VM0";
const NODE: &str = "dc0-h0-vm0";
/// vSphere samples cover 20 s; confirming two of them and recovering after three take minutes.
const PATIENCE: Duration = Duration::from_secs(240);

#[tokio::test]
async fn serial_health_vsphere_node_goes_through_the_same_cycle() -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = common::Cluster::connect("health_vsphere").await?;
    let provider = apply_vsphere_provider(&stack, &cluster.admin, &cluster.namespace).await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "checkout", 2, NODE).await?;
        cluster
            .apply_intent(
                "checkout",
                json!({
                    "target": {"kind": "Deployment", "name": "checkout"},
                    "priority": "critical",
                    "storage": {"latencyBudget": "20ms", "readinessGate": true, "maxUnready": 1},
                }),
            )
            .await?;
        let settled = |want: fn(&[k8s_openapi::api::core::v1::Pod]) -> bool, what: &'static str| {
            let cluster = &cluster;
            async move {
                eventually(what, PATIENCE, || async {
                    let pods = pods(&cluster.admin, &cluster.namespace, "checkout").await?;
                    let ok = pods.len() == 2 && pods.iter().all(has_gate) && want(&pods);
                    Ok(if ok { Ok(()) } else { Err(summary(&pods)) })
                })
                .await
            }
        };
        settled(
            |p| count(p, "True", "LatencyWithinBudget") == 2,
            "both pods healthy before the injection",
        )
        .await?;

        stack.set_vsphere_latency(VM, 80, 80).await?;
        settled(
            |p| {
                count(p, "False", "LatencyOverBudget") == 1
                    && count(p, "True", "OverBudgetHeldByGuard") == 1
            },
            "one pod unready, one held by the guard",
        )
        .await?;
        eventually("the node condition", PATIENCE, || async {
            Ok(match node_condition(&cluster.admin, NODE).await? {
                Some((s, _, m)) if s == "True" => Ok(m),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;

        stack.clear_vsphere_latency(VM).await?;
        settled(
            |p| count(p, "True", "LatencyWithinBudget") == 2,
            "both pods healthy after clearing",
        )
        .await?;
        eventually("the node condition to clear", PATIENCE, || async {
            Ok(match node_condition(&cluster.admin, NODE).await? {
                Some((s, _, _)) if s == "False" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        Ok(())
    }
    .await;

    let _ = stack.clear_vsphere_latency(VM).await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}
