//! The storage-health options end to end on the real stack:
//!
//! - `--unknown-readiness fail-closed`: the operator loses its libvirt connection (a relay
//!   between it and libvirtd is cut, as a network partition would) and the pods leave rotation
//!   with reason `LatencyUnknown`; the relay back, they return.
//! - `--taint-degraded-nodes`: latency injected under a node's VM puts the `NoSchedule` taint
//!   on the node, clearing it takes the taint off, and taints others put on the node before
//!   and in between are kept; a namespace-scoped operator whose pods leave a still degraded
//!   node takes its taint off too.
//!
//! Needs `e2e/stack up`; fails saying so otherwise. Build with `--features libvirt`.

mod common;
mod health_common;

use anyhow::{bail, ensure, Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::{
    api::{Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_operator::{
    clock::SystemClock,
    health::HealthSettings,
    metrics::{ActionLabels, ActionLayer, ActionResult},
    run::Operator,
};
use plumbline_policies::health::UnknownReadiness;
use serde_json::json;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{
    net::{UnixListener, UnixStream},
    task::JoinSet,
};

const PATIENCE: Duration = Duration::from_secs(90);
/// Where `qemu:///system` connects (libvirtd's read-write socket).
const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// A unix-socket relay between the operator's libvirt client and libvirtd. Cutting it is
/// what a network partition does to a remote hypervisor, without stopping the daemon that
/// other tests share.
struct LibvirtLink {
    socket: PathBuf,
    relay: Option<Relay>,
}

/// The relay runs on a thread and runtime of its own: a libvirt call the operator makes on
/// the test's runtime (a blocking close, say) must never wait on the relay it would block.
struct Relay {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl LibvirtLink {
    fn new(name: &str) -> Result<Self> {
        ensure!(
            Path::new(LIBVIRTD_SOCKET).exists(),
            "libvirtd's socket {LIBVIRTD_SOCKET} is missing; start the stack with `e2e/stack up`"
        );
        Ok(Self {
            socket: std::env::temp_dir().join(format!("pl-{name}-{}.sock", std::process::id())),
            relay: None,
        })
    }

    /// The provider's URI: libvirt's remote driver through the relay.
    fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket.display())
    }

    fn up(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let listener = std::os::unix::net::UnixListener::bind(&self.socket)
            .with_context(|| format!("binding the relay socket {}", self.socket.display()))?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the relay's runtime");
            runtime.block_on(async move {
                let listener = UnixListener::from_std(listener).expect("the relay's listener");
                let mut connections = JoinSet::new();
                let accept = async {
                    while let Ok((mut client, _)) = listener.accept().await {
                        connections.spawn(async move {
                            if let Ok(mut daemon) = UnixStream::connect(LIBVIRTD_SOCKET).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    _ = accept => {}
                }
            });
            // Dropping the runtime closes every relayed connection.
        });
        self.relay = Some(Relay { stop, thread });
        Ok(())
    }

    /// Closes the listener and every relayed connection before returning.
    fn cut(&mut self) {
        if let Some(relay) = self.relay.take() {
            let _ = relay.stop.send(());
            let _ = relay.thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for LibvirtLink {
    fn drop(&mut self) {
        self.cut();
    }
}

fn storage_intent(app: &str, max_unready: serde_json::Value) -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": app},
        "priority": "critical",
        "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": max_unready},
    })
}

fn actions(operator: &Operator, result: ActionResult) -> u64 {
    operator
        .metrics
        .actions
        .get_or_create(&ActionLabels {
            layer: ActionLayer::kubernetes,
            action: "node_taint".into(),
            result,
        })
        .get()
}

#[tokio::test]
async fn serial_health_fail_closed_takes_pods_out_of_rotation_while_the_hypervisor_is_unreachable(
) -> Result<()> {
    plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = common::Cluster::connect("health_fail_closed").await?;
    let mut link = LibvirtLink::new("fail-closed")?;
    link.up()?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &link.uri()).await?;
    let operator = cluster
        .start_operator_with_health(
            Arc::new(SystemClock),
            HealthSettings {
                unknown: UnknownReadiness::FailClosed,
                ..HealthSettings::default()
            },
        )
        .await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "ledger", 3, "pl-vm1").await?;
        // The guard lets two go (never the last ready pod), so what fail-closed does is not
        // hidden by it.
        cluster
            .apply_intent("ledger", storage_intent("ledger", json!(2)))
            .await?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            3,
            "healthy before the cut",
            |pods| count(pods, "True", "LatencyWithinBudget") == 3,
        )
        .await?;

        link.cut();
        let unknown = wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            3,
            "unknown, failing closed, the last ready pod kept",
            |pods| {
                count(pods, "False", "LatencyUnknown") == 2
                    && count(pods, "True", "LatencyUnknownHeldByGuard") == 1
            },
        )
        .await?;
        for p in unknown
            .iter()
            .filter(|p| storage_condition(p).is_some_and(|(s, _, _)| s == "False"))
        {
            let (_, _, message) = storage_condition(p).unwrap();
            ensure!(
                message.contains("fail-closed"),
                "message says why: {message}"
            );
        }
        eventually("the pods' Ready to follow", PATIENCE, || async {
            let pods = pods(&cluster.admin, &cluster.namespace, "ledger").await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            Ok(if ready == 1 {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            })
        })
        .await?;
        eventually("the node condition Unknown", PATIENCE, || async {
            Ok(match node_condition(&cluster.admin, "pl-vm1").await? {
                Some((s, _, _)) if s == "Unknown" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;

        link.up()?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "ledger",
            3,
            "healthy again once libvirt is reachable",
            |pods| count(pods, "True", "LatencyWithinBudget") == 3,
        )
        .await?;
        Ok(())
    }
    .await;

    link.cut();
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}

/// Changes the node's taints as a careful admin tool would: read, change, write back guarded
/// by the resourceVersion read, again on a conflict.
async fn edit_taints(admin: &Client, node: &str, edit: impl Fn(&mut Vec<Taint>)) -> Result<()> {
    let api = Api::<Node>::all(admin.clone());
    for _ in 0..10 {
        let n = api.get(node).await?;
        let mut list = n.spec.clone().and_then(|s| s.taints).unwrap_or_default();
        edit(&mut list);
        let patch = json!({
            "metadata": {"resourceVersion": n.resource_version()},
            "spec": {"taints": if list.is_empty() { json!(null) } else { json!(list) }},
        });
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("editing the taints of {node}")),
        }
    }
    bail!("editing the taints of {node}: conflicts every time")
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: effect.into(),
        time_added: None,
    }
}

fn has(list: &[Taint], t: &Taint) -> bool {
    list.iter()
        .any(|x| x.key == t.key && x.value == t.value && x.effect == t.effect)
}

#[tokio::test]
async fn serial_health_taint_degraded_node_on_latency_and_untaint_on_recovery_keeping_other_taints(
) -> Result<()> {
    const NODE: &str = "pl-vm2";
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let cluster = common::Cluster::connect("health_taint").await?;
    let started = chrono::Utc::now() - chrono::Duration::seconds(2);
    let before = taint("e2e.plumbline.dev/before", Some("keep"), "PreferNoSchedule");
    let between = taint("e2e.plumbline.dev/between", None, "NoSchedule");
    let ours = taint(STORAGE_TAINT, None, "NoSchedule");
    // Someone else's taint, there before Plumbline acts.
    edit_taints(&cluster.admin, NODE, |l| {
        l.retain(|t| t.key != before.key && t.key != between.key && t.key != ours.key);
        l.push(before.clone());
    })
    .await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let operator = cluster
        .start_operator_with_health(
            Arc::new(SystemClock),
            HealthSettings {
                taint_degraded_nodes: true,
                ..HealthSettings::default()
            },
        )
        .await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "orders", 2, NODE).await?;
        cluster
            .apply_intent("orders", storage_intent("orders", json!(1)))
            .await?;
        eventually("the node healthy and untainted", PATIENCE, || async {
            let c = node_condition(&cluster.admin, NODE).await?;
            let t = taints(&cluster.admin, NODE).await?;
            Ok(match c {
                Some((s, _, _)) if s == "False" && !has(&t, &ours) => Ok(()),
                other => Err(format!("{other:?}, taints {t:?}")),
            })
        })
        .await?;

        stack.inject_libvirt_latency(NODE, 20).await?;
        // Together: the condition of this node is shared with the other tests' operators.
        let tainted = eventually(
            "the storage taint, with the condition True",
            PATIENCE,
            || async {
                let t = taints(&cluster.admin, NODE).await?;
                let c = node_condition(&cluster.admin, NODE).await?;
                Ok(match c {
                    Some((s, _, _)) if s == "True" && has(&t, &ours) => Ok(t),
                    other => Err(format!("{other:?}, taints {t:?}")),
                })
            },
        )
        .await?;
        ensure!(
            has(&tainted, &before),
            "the taint that was there before is kept: {tainted:?}"
        );
        // The actuator counts the change once it has read it back, a moment after the node
        // shows it.
        eventually(
            "plumbline_actions_total node_taint applied",
            PATIENCE,
            || async {
                Ok(if actions(&operator, ActionResult::applied) >= 1 {
                    Ok(())
                } else {
                    Err("0".to_string())
                })
            },
        )
        .await?;
        let added = eventually("an Event about the taint", PATIENCE, || async {
            let e = node_event_reasons(&cluster.admin, NODE, started).await?;
            Ok(match e.iter().find(|(r, _)| r == "StorageTaintAdded") {
                Some((_, m)) => Ok(m.clone()),
                None => Err(format!("{e:?}")),
            })
        })
        .await?;
        ensure!(
            added.contains(STORAGE_TAINT) && added.contains("over budget"),
            "the Event says what and why: {added}"
        );
        println!("event: {added}");

        // Someone else taints the node while Plumbline's taint is on.
        edit_taints(&cluster.admin, NODE, |l| l.push(between.clone())).await?;

        stack.clear_libvirt_latency(NODE).await?;
        let untainted = eventually("the storage taint removed", PATIENCE, || async {
            let t = taints(&cluster.admin, NODE).await?;
            Ok(if has(&t, &ours) {
                Err(format!("{t:?}"))
            } else {
                Ok(t)
            })
        })
        .await?;
        ensure!(
            has(&untainted, &before) && has(&untainted, &between),
            "the others' taints are kept: {untainted:?}"
        );
        // The actuator counts the change once it has read it back, a moment after the node
        // shows it.
        eventually(
            "plumbline_actions_total node_taint reverted",
            PATIENCE,
            || async {
                Ok(if actions(&operator, ActionResult::reverted) >= 1 {
                    Ok(())
                } else {
                    Err("0".to_string())
                })
            },
        )
        .await?;
        eventually("an Event about the removal", PATIENCE, || async {
            let e = node_event_reasons(&cluster.admin, NODE, started).await?;
            Ok(if e.iter().any(|(r, _)| r == "StorageTaintRemoved") {
                Ok(())
            } else {
                Err(format!("{e:?}"))
            })
        })
        .await?;
        ensure!(
            actions(&operator, ActionResult::failed) == 0,
            "no failed taint change"
        );
        Ok(())
    }
    .await;

    let _ = stack.clear_libvirt_latency(NODE).await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    // Leave the node as it was, whatever happened.
    let _ = edit_taints(&cluster.admin, NODE, |l| {
        l.retain(|t| t.key != before.key && t.key != between.key && t.key != ours.key)
    })
    .await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}

#[tokio::test]
async fn serial_health_taint_removed_when_the_scoped_operators_pods_leave_a_degraded_node(
) -> Result<()> {
    const NODE: &str = "pl-vm2";
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let cluster = common::Cluster::connect("health_taint_leave").await?;
    let ours = taint(STORAGE_TAINT, None, "NoSchedule");
    edit_taints(&cluster.admin, NODE, |l| l.retain(|t| t.key != ours.key)).await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let operator = cluster
        .start_operator_with_health(
            Arc::new(SystemClock),
            HealthSettings {
                taint_degraded_nodes: true,
                ..HealthSettings::default()
            },
        )
        .await?;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "orders", 1, NODE).await?;
        cluster
            .apply_intent("orders", storage_intent("orders", json!(1)))
            .await?;
        wait_for_pods(
            &cluster.admin,
            &cluster.namespace,
            "orders",
            1,
            "healthy first",
            |pods| count(pods, "True", "LatencyWithinBudget") == 1,
        )
        .await?;
        stack.inject_libvirt_latency(NODE, 20).await?;
        eventually("the storage taint", PATIENCE, || async {
            let t = taints(&cluster.admin, NODE).await?;
            Ok(if has(&t, &ours) {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            })
        })
        .await?;

        // Still degraded, but the operator's only pod leaves the node.
        cluster
            .deployments()
            .delete("orders", &Default::default())
            .await?;
        eventually(
            "the taint removed although the node is still degraded",
            PATIENCE,
            || async {
                let t = taints(&cluster.admin, NODE).await?;
                Ok(if has(&t, &ours) {
                    Err(format!("{t:?}"))
                } else {
                    Ok(())
                })
            },
        )
        .await?;
        Ok(())
    }
    .await;

    let _ = stack.clear_libvirt_latency(NODE).await;
    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    let _ = edit_taints(&cluster.admin, NODE, |l| l.retain(|t| t.key != ours.key)).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}
