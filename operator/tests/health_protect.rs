//! `infrastructure.protectBackingVms` end to end: a critical workload pinned to a vSphere-backed
//! node; its VM gets 4096 CPU shares through the simulator's ReconfigVM (read back through the
//! adapter), the intent's status and Events say so, and deleting the intent restores the
//! original shares; every change is an `InfraChange` with the true original. On libvirt the
//! shares are real where the host mounts the cgroup CPU controller (the stack configures libvirt
//! to use it), and otherwise the intent is told once that the VM cannot be protected.
//!
//! Needs `e2e/stack up`; fails saying so otherwise. Build with `--features libvirt`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use common::metrics;
use health_common::*;
use k8s_openapi::api::core::v1::Event;
use kube::{api::ListParams, Api};
use plumbline_adapters::{Hypervisor, Tunable, VmId};
use plumbline_operator::{clock::SystemClock, run::Operator};
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// A simulator VM no other health test uses, and the Node it backs.
const VM: &str = "DC0_H0_VM1";
const NODE: &str = "dc0-h0-vm1";
const LIBVIRT_VM: &str = "pl-vm3";
const PATIENCE: Duration = Duration::from_secs(90);

fn protected_intent() -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": "payments"},
        "priority": "critical",
        // A storage section makes the health loop write its own status fields too.
        "storage": {"latencyBudget": "500ms"},
        "infrastructure": {"protectBackingVms": true},
    })
}

/// (current, recorded original) CPU shares of the VM.
async fn cpu_shares(hv: &dyn Hypervisor, vm: &VmId) -> Result<(Option<u64>, Option<u64>)> {
    let report = hv.tunables(vm).await?;
    Ok((
        report.current(&Tunable::CpuShares),
        report.original(&Tunable::CpuShares),
    ))
}

/// Events on the intent with this reason, summed over their counts (the recorder folds
/// repeats into one Event).
async fn event_count(
    cluster: &common::Cluster,
    intent: &str,
    reason: &str,
) -> Result<(i32, Vec<String>)> {
    let events = Api::<Event>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .list(&ListParams::default())
        .await
        .context("listing Events")?;
    let mut count = 0;
    let mut notes = Vec::new();
    for e in events.items {
        if e.involved_object.name.as_deref() != Some(intent) || e.reason.as_deref() != Some(reason)
        {
            continue;
        }
        // core/v1 Events: `count`; the events.k8s.io recorder: `series.count`.
        let series = e.series.as_ref().and_then(|s| s.count);
        count += series.or(e.count).unwrap_or(1).max(1);
        notes.extend(e.message);
    }
    Ok((count, notes))
}

fn protected_vms(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status
        .get("protectedVms")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default()
}

/// A vSphere provider for a fresh test namespace, and the VM with its shares before the test.
struct VsphereCase {
    cluster: common::Cluster,
    provider: String,
    hv: Arc<dyn Hypervisor>,
    vm: VmId,
    before: Option<u64>,
}

impl VsphereCase {
    async fn start(test: &str) -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let hv = vsphere_adapter(&stack).await?;
        let vm = vsphere_vm_with_its_own_shares(hv.as_ref(), VM).await?;
        let (before, recorded) = cpu_shares(hv.as_ref(), &vm).await?;
        ensure!(recorded.is_none(), "no original recorded before the test");
        ensure!(
            before != Some(4096),
            "the VM starts with the default shares, not 4096"
        );

        let cluster = common::Cluster::connect(test).await?;
        let provider = apply_vsphere_provider(&stack, &cluster.admin, &cluster.namespace).await?;
        Ok(Self {
            cluster,
            provider,
            hv,
            vm,
            before,
        })
    }

    async fn start_operator(&self) -> Result<Operator> {
        self.cluster
            .start_operator_with_health(Arc::new(SystemClock), common::test_health())
            .await
    }

    async fn wait_for_shares(
        &self,
        what: &str,
        want: Option<u64>,
        original: Option<u64>,
    ) -> Result<()> {
        eventually(what, PATIENCE, || async {
            let (current, recorded) = cpu_shares(self.hv.as_ref(), &self.vm).await?;
            Ok(if current == want && recorded == original {
                Ok(())
            } else {
                Err(format!(
                    "current {current:?}, recorded original {recorded:?}"
                ))
            })
        })
        .await
    }

    async fn wait_for_status(&self) -> Result<serde_json::Value> {
        eventually("status.protectedVms", PATIENCE, || async {
            let status =
                intent_status(&self.cluster.admin, &self.cluster.namespace, "payments").await?;
            let vms = protected_vms(&status);
            let ok = vms.len() == 1
                && vms[0]["vm"] == VM
                && vms[0]["provider"] == self.provider.as_str()
                && vms[0]["reason"] == "Protected"
                && vms[0]["shares"] == 4096
                && vms[0]["original"] == json!(self.before)
                && vms[0]["since"].is_string();
            Ok(if ok {
                Ok(vms[0].clone())
            } else {
                Err(status.to_string())
            })
        })
        .await
    }

    /// Releases through the ledger while `operator` runs, then leaves the VM as it was.
    async fn finish(self, operator: Option<Operator>, result: Result<()>) -> Result<()> {
        let released = match operator {
            Some(op) => release_everything(&self.cluster.admin, &self.cluster.namespace, op).await,
            None => Ok(()),
        };
        strip_ledger(&self.cluster.admin, &self.cluster.namespace).await;
        let _ = self.hv.revert(&self.vm, &[Tunable::CpuShares]).await;
        delete_provider(&self.cluster.admin, &self.provider).await;
        self.cluster.cleanup().await;
        result.and(released)
    }
}

fn counted(text: &str, result: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("plumbline_actions_total")
            && l.contains("layer=\"hypervisor\"")
            && l.contains("action=\"cpu_shares\"")
            && l.contains(&format!("result=\"{result}\""))
    })
}

#[tokio::test]
async fn serial_protect_vsphere_backing_vm_gets_the_tier_shares_and_the_original_back() -> Result<()>
{
    let case = VsphereCase::start("health_protect").await?;
    let operator = case.start_operator().await?;
    let cluster = &case.cluster;

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "payments", 2, NODE).await?;
        cluster.apply_intent("payments", protected_intent()).await?;

        case.wait_for_shares("the VM to have 4096 CPU shares", Some(4096), case.before)
            .await?;
        let entry = case.wait_for_status().await?;
        println!("status.protectedVms: {entry}");
        let change = eventually("the change in the ledger", PATIENCE, || async {
            let list = ledger(&cluster.admin, &cluster.namespace).await?;
            Ok(match list.as_slice() {
                [ic] if ic.spec.setting == "cpu_shares"
                    && ic.spec.target.name == VM
                    && ic.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Applied") =>
                {
                    Ok(ic.clone())
                }
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        let status = change.status.clone().unwrap_or_default();
        ensure!(
            change.spec.desired == "4096"
                && status.original == case.before.map(|b| b.to_string())
                && change
                    .spec
                    .owners
                    .iter()
                    .any(|o| o.intent.ends_with("/payments")),
            "the entry records the true original and its owner: {:?} {status:?}",
            change.spec
        );
        let (_, notes) = eventually("a BackingVmProtected Event", PATIENCE, || async {
            let (n, notes) = event_count(cluster, "payments", "BackingVmProtected").await?;
            Ok(if n >= 1 {
                Ok((n, notes))
            } else {
                Err("none".into())
            })
        })
        .await?;
        println!("event: {notes:?}");
        ensure!(
            notes.iter().any(|n| n.contains(VM) && n.contains("4096")),
            "the Event names the VM and the shares: {notes:?}"
        );
        ensure!(
            counted(&metrics(operator.http_addr).await?, "applied"),
            "plumbline_actions_total counts the change"
        );
        // The health loop's own status apply (backing map, guard) and the controller's do not
        // remove it, nor it theirs.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = intent_status(&cluster.admin, &cluster.namespace, "payments").await?;
        ensure!(
            protected_vms(&status).len() == 1
                && status["backing"].as_array().is_some_and(|b| b.len() == 2)
                && status["guard"].is_object()
                && status["plan"].as_array().is_some_and(|p| !p.is_empty()),
            "protectedVms stays next to the other status fields: {status}"
        );

        cluster.delete_intent("payments").await?;
        case.wait_for_shares("the original CPU shares back", case.before, None)
            .await?;
        ensure!(
            counted(&metrics(operator.http_addr).await?, "reverted"),
            "plumbline_actions_total counts the release"
        );
        let (_, notes) = eventually("a BackingVmReleased Event", PATIENCE, || async {
            let (n, notes) = event_count(cluster, "payments", "BackingVmReleased").await?;
            Ok(if n >= 1 {
                Ok((n, notes))
            } else {
                Err("none".into())
            })
        })
        .await?;
        println!("event: {notes:?}");
        Ok(())
    }
    .await;

    case.finish(Some(operator), result).await
}

#[tokio::test]
async fn serial_protect_vsphere_after_a_restart_keeps_what_is_wanted_and_restores_the_rest(
) -> Result<()> {
    let case = VsphereCase::start("health_protect_restart").await?;
    let cluster = &case.cluster;
    let mut running = Some(case.start_operator().await?);

    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "payments", 1, NODE).await?;
        cluster.apply_intent("payments", protected_intent()).await?;
        case.wait_for_shares("the VM to have 4096 CPU shares", Some(4096), case.before)
            .await?;
        case.wait_for_status().await?;

        // A new operator finds the shares with their recorded original and keeps them: not
        // restored and set again.
        running.take().expect("running").stop().await;
        let second = running.insert(case.start_operator().await?);
        let watch_until = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < watch_until {
            let (current, recorded) = cpu_shares(case.hv.as_ref(), &case.vm).await?;
            ensure!(
                current == Some(4096) && recorded == case.before,
                "the shares stay while the new operator starts: current {current:?}, recorded {recorded:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        case.wait_for_status().await?;
        let text = metrics(second.http_addr).await?;
        ensure!(
            !counted(&text, "reverted") && !counted(&text, "applied"),
            "the second operator neither restored nor set the shares"
        );

        // Deleted while no operator runs (the finalizer holds it): the next one restores.
        running.take().expect("running").stop().await;
        cluster.delete_intent("payments").await?;
        let third = running.insert(case.start_operator().await?);
        case.wait_for_shares("the original CPU shares back", case.before, None)
            .await?;
        ensure!(
            counted(&metrics(third.http_addr).await?, "reverted"),
            "plumbline_actions_total counts the restore"
        );
        Ok(())
    }
    .await;

    case.finish(running, result).await
}

/// The guest's `cpu_shares` as `virsh schedinfo` reports it.
async fn libvirt_cpu_shares(uri: &str, domain: &str) -> Result<u64> {
    let out = tokio::process::Command::new("virsh")
        .args(["-q", "-c", uri, "schedinfo", domain])
        .output()
        .await
        .context("running virsh schedinfo")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "cpu_shares")
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("no cpu_shares in virsh schedinfo {domain}: {text}"))
}

#[tokio::test]
async fn serial_protect_libvirt_sets_real_cpu_shares_where_the_host_has_the_controller(
) -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let uri = stack.libvirt_uri()?.to_string();
    let controllers = stack
        .get("LIBVIRT_CGROUP_CONTROLLERS")
        .unwrap_or("")
        .to_string();
    let cluster = common::Cluster::connect("health_protect_libvirt").await?;
    let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
    let operator = cluster
        .start_operator_with_health(Arc::new(SystemClock), common::test_health())
        .await?;

    let result = async {
        deploy_pinned(
            &cluster.admin,
            &cluster.namespace,
            "payments",
            1,
            LIBVIRT_VM,
        )
        .await?;
        if controllers.split(',').any(|c| c == "cpu") {
            let before = libvirt_cpu_shares(&uri, LIBVIRT_VM).await?;
            ensure!(
                before != 4096,
                "the guest starts with other shares than 4096"
            );
            cluster.apply_intent("payments", protected_intent()).await?;
            eventually("4096 real CPU shares on the guest", PATIENCE, || async {
                let now = libvirt_cpu_shares(&uri, LIBVIRT_VM).await?;
                Ok(if now == 4096 {
                    Ok(())
                } else {
                    Err(format!("cpu_shares {now}"))
                })
            })
            .await?;
            let entry = eventually("status.protectedVms Protected", PATIENCE, || async {
                let status = intent_status(&cluster.admin, &cluster.namespace, "payments").await?;
                let vms = protected_vms(&status);
                let ok = vms.len() == 1
                    && vms[0]["vm"] == LIBVIRT_VM
                    && vms[0]["reason"] == "Protected"
                    && vms[0]["shares"] == 4096
                    && vms[0]["original"] == json!(before);
                Ok(if ok {
                    Ok(vms[0].clone())
                } else {
                    Err(status.to_string())
                })
            })
            .await?;
            println!("status.protectedVms: {entry}");
            let list = ledger(&cluster.admin, &cluster.namespace).await?;
            ensure!(
                list.len() == 1
                    && list[0].status.as_ref().and_then(|s| s.original.clone())
                        == Some(before.to_string()),
                "one entry with the true original: {list:?}"
            );
            cluster.delete_intent("payments").await?;
            eventually("the original shares back", PATIENCE, || async {
                let now = libvirt_cpu_shares(&uri, LIBVIRT_VM).await?;
                let left = ledger(&cluster.admin, &cluster.namespace).await?.len();
                Ok(if now == before && left == 0 {
                    Ok(())
                } else {
                    Err(format!("cpu_shares {now}, {left} entries"))
                })
            })
            .await?;
            return Ok(());
        }

        // Without the controller: told once, never attempted.
        cluster.apply_intent("payments", protected_intent()).await?;
        let entry = eventually(
            "status to say CPU shares are unsupported",
            PATIENCE,
            || async {
                let status = intent_status(&cluster.admin, &cluster.namespace, "payments").await?;
                let vms = protected_vms(&status);
                let ok = vms.len() == 1
                    && vms[0]["vm"] == LIBVIRT_VM
                    && vms[0]["reason"] == "CpuSharesUnsupported"
                    && vms[0].get("shares").is_none();
                Ok(if ok {
                    Ok(vms[0].clone())
                } else {
                    Err(status.to_string())
                })
            },
        )
        .await?;
        println!("status.protectedVms: {entry}");
        // Several passes later: still one Event, no failures, nothing counted as failed.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (unsupported, notes) =
            event_count(&cluster, "payments", "CpuSharesUnsupported").await?;
        println!("event: {notes:?}");
        ensure!(unsupported == 1, "told once, not {unsupported} times");
        let (failed, _) = event_count(&cluster, "payments", "BackingVmProtectFailed").await?;
        ensure!(failed == 0, "no failure Events: {failed}");
        let text = metrics(operator.http_addr).await?;
        ensure!(
            !text.lines().any(|l| l.contains("action=\"cpu_shares\"")),
            "no CPU shares action attempted"
        );
        Ok(())
    }
    .await;

    let released = release_everything(&cluster.admin, &cluster.namespace, operator).await;
    delete_provider(&cluster.admin, &provider).await;
    cluster.cleanup().await;
    result.and(released)
}

#[tokio::test]
async fn serial_protect_vsphere_a_session_lost_mid_reconfigure_applies_once_with_the_true_original(
) -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let case = VsphereCase::start("health_protect_session").await?;
    let cluster = &case.cluster;
    let earlier = stack.vsphere_reconfigurations(VM).await?.len();
    // The operator's reconfigure runs, but its session ends and the answer is lost.
    stack
        .arm_vsphere_session_fault(
            VM,
            plumbline_e2e::latency::SessionFault::LoseReconfigureAnswer,
        )
        .await?;
    let operator = case.start_operator().await?;
    let result = async {
        deploy_pinned(&cluster.admin, &cluster.namespace, "payments", 1, NODE).await?;
        cluster.apply_intent("payments", protected_intent()).await?;
        case.wait_for_shares("the VM to have 4096 CPU shares", Some(4096), case.before)
            .await?;
        let change = eventually("the change Applied in the ledger", PATIENCE, || async {
            let list = ledger(&cluster.admin, &cluster.namespace).await?;
            Ok(match list.as_slice() {
                [ic] if ic.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Applied") => {
                    Ok(ic.clone())
                }
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        ensure!(
            change.status.as_ref().and_then(|s| s.original.clone())
                == case.before.map(|b| b.to_string()),
            "the true original is recorded: {:?}",
            change.status
        );
        let calls = stack.vsphere_reconfigurations(VM).await?;
        let ours = &calls[earlier..];
        println!("reconfigurations during the test: {ours:?}");
        ensure!(
            ours.iter().any(|c| c.session_ended.is_some()),
            "the fault fired: {ours:?}"
        );
        ensure!(
            ours.iter()
                .filter(|c| !c.refused && c.changed_cpu_shares())
                .count()
                == 1,
            "the shares were changed exactly once: {ours:?}"
        );
        Ok(())
    }
    .await;
    let _ = stack.disarm_vsphere_session_fault(VM).await;
    case.finish(Some(operator), result).await
}
