//! The change ledger end to end on the real stack: every noisy-neighbour throttle is an
//! `InfraChange` with its original, owner and reason; deleting it restores the original even
//! when the hypervisor was unreachable at the time; deleting the provider waits for that; a
//! killed operator's changes are adopted by the next one; a value changed behind Plumbline's
//! back is corrected until it is contested; two namespace-scoped operators never record or
//! restore each other's changes; a hung guest holds up only its own changes.
//!
//! Needs `e2e/stack up`; fails saying so otherwise. Build with `--features libvirt`.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use kube::{
    api::{DeleteParams, ListParams},
    Api, ResourceExt,
};
use plumbline_crds::{HypervisorProvider, InfraChange};
use plumbline_operator::{clock::SystemClock, health::HealthSettings, run::Operator};
use plumbline_policies::health::ThrottleLadder;
use serde_json::json;
use std::{process::Stdio, sync::Arc, time::Duration};
use tokio::process::{Child, Command};

const VICTIM: &str = "pl-vm2";
const PATIENCE: Duration = Duration::from_secs(90);

fn critical_intent(app: &str) -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": app},
        "priority": "critical",
        "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": 1},
        "infrastructure": {"throttleNoisyNeighbours": true}
    })
}

/// One step only, so the throttle settles at once and its value stays put.
fn one_step_health() -> HealthSettings {
    let mut health = common::test_health();
    health.ladder = ThrottleLadder {
        steps: vec![0.5],
        ..health.ladder
    };
    health.ledger.call_deadline = Duration::from_secs(5);
    health
}

/// The operator's throttle entries on the noisy guest's disk.
async fn throttle_of(
    admin: &kube::Client,
    namespace: &str,
    noisy: &str,
) -> Result<Vec<InfraChange>> {
    Ok(ledger(admin, namespace)
        .await?
        .into_iter()
        .filter(|ic| ic.spec.target.name == noisy && ic.spec.setting == "disk.vda.total_iops_sec")
        .collect())
}

fn state(ic: &InfraChange) -> Option<String> {
    ic.status.as_ref().and_then(|s| s.state.clone())
}

/// Waits until the noisy guest's throttle is Applied and returns it.
async fn applied_throttle(
    admin: &kube::Client,
    namespace: &str,
    noisy: &str,
) -> Result<InfraChange> {
    eventually("the throttle Applied in the ledger", PATIENCE, || async {
        let list = throttle_of(admin, namespace, noisy).await?;
        Ok(match list.first() {
            Some(ic) if state(ic).as_deref() == Some("Applied") => Ok(ic.clone()),
            other => Err(format!("{:?}", other.map(|ic| (&ic.spec, &ic.status)))),
        })
    })
    .await
}

struct Scene {
    stack: plumbline_e2e::Stack,
    uri: String,
    noisy: String,
    before: u64,
    cluster: common::Cluster,
    provider: String,
}

impl Scene {
    async fn start(test: &str) -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let uri = stack.libvirt_uri()?.to_string();
        let noisy = stack.noisy_domain()?.to_string();
        let cluster = common::Cluster::connect(test).await?;
        let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
        let before = total_iops_limit(&uri, &noisy).await?;
        Ok(Self {
            stack,
            uri,
            noisy,
            before,
            cluster,
            provider,
        })
    }

    async fn operator(&self, health: HealthSettings) -> Result<Operator> {
        self.cluster
            .start_operator_with_health(Arc::new(SystemClock), health)
            .await
    }

    /// A critical workload on the victim, healthy, then slowed down under it.
    async fn degrade(&self, app: &str) -> Result<()> {
        let (admin, ns) = (&self.cluster.admin, &self.cluster.namespace);
        deploy_pinned(admin, ns, app, 1, VICTIM).await?;
        self.cluster.apply_intent(app, critical_intent(app)).await?;
        wait_for_pods(admin, ns, app, 1, "healthy before the injection", |pods| {
            count(pods, "True", "LatencyWithinBudget") == 1
        })
        .await?;
        self.stack.inject_libvirt_latency(VICTIM, 20).await?;
        Ok(())
    }

    async fn limit(&self) -> Result<u64> {
        Ok(total_iops_limit(&self.uri, &self.noisy).await?)
    }

    async fn wait_for_limit(&self, what: &str, want: u64) -> Result<()> {
        eventually(what, PATIENCE, || async {
            let l = self.limit().await?;
            Ok(if l == want {
                Ok(())
            } else {
                Err(format!("total_iops_sec {l}"))
            })
        })
        .await
    }

    /// Leaves the guests and the cluster as they were, whatever happened.
    async fn finish(self, operator: Option<Operator>, result: Result<()>) -> Result<()> {
        let _ = self.stack.clear_libvirt_latency(VICTIM).await;
        let _ = self.stack.start_libvirtd().await;
        let released = match operator {
            Some(op) => release_everything(&self.cluster.admin, &self.cluster.namespace, op).await,
            None => Ok(()),
        };
        strip_ledger(&self.cluster.admin, &self.cluster.namespace).await;
        delete_provider(&self.cluster.admin, &self.provider).await;
        // Nothing may be left on the guest: a limit there now is one the ledger lost.
        let left = self.limit().await.unwrap_or(self.before);
        self.cluster.cleanup().await;
        result.and(released).and(if left == self.before {
            Ok(())
        } else {
            let cleaned = restore_guest_iops(&self.uri, &self.noisy)
                .await
                .unwrap_or_else(|e| format!("restoring it failed: {e:#}"));
            Err(anyhow::anyhow!(
                "{} was left limited to {left} IOPS (before: {}); {cleaned}",
                self.noisy,
                self.before
            ))
        })
    }
}

#[tokio::test]
async fn serial_ledger_a_throttle_is_recorded_and_restored_once_libvirtd_is_back() -> Result<()> {
    let scene = Scene::start("ledger_revert").await?;
    let operator = scene.operator(one_step_health()).await?;
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        scene.degrade("payments").await?;
        let ic = applied_throttle(admin, ns, &scene.noisy).await?;
        let status = ic.status.clone().unwrap_or_default();
        ensure!(
            status.original == Some(scene.before.to_string()),
            "the original recorded is the value before: {status:?}"
        );
        ensure!(
            ic.spec.owners.len() == 1
                && ic.spec.owners[0].intent == format!("{ns}/payments")
                && ic.spec.owners[0].reason.contains(VICTIM),
            "owner and reason: {:?}",
            ic.spec.owners
        );
        ensure!(
            status.observed.as_deref() == Some(ic.spec.desired.as_str())
                && scene.limit().await?.to_string() == ic.spec.desired,
            "the VM has what the ledger says: {status:?}"
        );
        ensure!(ic.has_finalizer(), "the finalizer restores the original");
        // What a user sees.
        let table = scene
            .stack
            .kubectl(&["get", "infrachanges", &ic.name_any()])
            .await?;
        println!("{table}");
        for column in [
            "TARGET", "SETTING", "DESIRED", "ORIGINAL", "STATE", "OWNERS",
        ] {
            ensure!(
                table.contains(column),
                "kubectl get shows {column}: {table}"
            );
        }
        ensure!(
            table.contains(&scene.noisy) && table.contains("Applied") && table.contains("payments"),
            "the row says what, its state and its owner: {table}"
        );

        // The intent's plan shows the change, in status and in explain, from the same ledger.
        eventually(
            "status.plan to carry the throttle, Applied",
            PATIENCE,
            || async {
                let status = intent_status(admin, ns, "payments").await?;
                let found = status["plan"].as_array().is_some_and(|plan| {
                    plan.iter().any(|a| {
                        a["kind"] == "DiskIopsLimit"
                            && a["target"]["name"] == scene.noisy.as_str()
                            && a["state"] == "Applied"
                    })
                });
                Ok(if found {
                    Ok(())
                } else {
                    Err(status["plan"].to_string())
                })
            },
        )
        .await?;
        let explained = Command::new(env!("CARGO_BIN_EXE_plumbline"))
            .args(["explain", "wi/payments", "-n", ns])
            .env("KUBECONFIG", scene.stack.get("KUBECONFIG")?)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&explained.stdout);
        println!("{text}");
        ensure!(
            explained.status.success()
                && text.contains(&scene.noisy)
                && text.contains(&ic.name_any()),
            "explain shows the hypervisor action with its InfraChange: {text}{}",
            String::from_utf8_lossy(&explained.stderr)
        );

        // The hypervisor goes away; the intent is deleted meanwhile.
        scene.stack.stop_libvirtd().await?;
        scene.cluster.delete_intent("payments").await?;
        let reverting = eventually(
            "the change Reverting while libvirtd is down",
            PATIENCE,
            || async {
                let list = throttle_of(admin, ns, &scene.noisy).await?;
                Ok(match list.first() {
                    Some(ic)
                        if ic.metadata.deletion_timestamp.is_some()
                            && state(ic).as_deref() == Some("Reverting")
                            && ic
                                .status
                                .as_ref()
                                .and_then(|s| s.last_error.as_ref())
                                .is_some() =>
                    {
                        Ok(ic.clone())
                    }
                    other => Err(format!("{:?}", other.map(|ic| &ic.status))),
                })
            },
        )
        .await?;
        println!(
            "while libvirtd is down: {:?}",
            reverting.status.as_ref().and_then(|s| s.last_error.clone())
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            throttle_of(admin, ns, &scene.noisy).await?.len() == 1,
            "deletion never forgets: the entry stays while the original cannot be restored"
        );
        scene.stack.start_libvirtd().await?;
        scene
            .wait_for_limit("the original limit back", scene.before)
            .await?;
        eventually("the entry gone", PATIENCE, || async {
            let left = throttle_of(admin, ns, &scene.noisy).await?;
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} left", left.len()))
            })
        })
        .await?;
        Ok(())
    }
    .await;
    scene.finish(Some(operator), result).await
}

#[tokio::test]
async fn serial_ledger_deleting_the_provider_waits_until_its_throttle_is_released() -> Result<()> {
    let scene = Scene::start("ledger_provider").await?;
    let operator = scene.operator(one_step_health()).await?;
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        scene.degrade("payments").await?;
        applied_throttle(admin, ns, &scene.noisy).await?;
        let providers = Api::<HypervisorProvider>::all(admin.clone());
        let hp = providers.get(&scene.provider).await?;
        ensure!(
            hp.finalizers()
                .iter()
                .any(|f| f == "plumbline.dev/infra-changes"),
            "the provider is guarded while a change targets it: {:?}",
            hp.finalizers()
        );
        providers
            .delete(&scene.provider, &DeleteParams::default())
            .await?;
        // Until the provider is gone it waits (deletionTimestamp set); once gone, the limit
        // must already be back.
        let mut saw_waiting = false;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match providers.get_opt(&scene.provider).await? {
                Some(hp) => saw_waiting |= hp.metadata.deletion_timestamp.is_some(),
                None => break,
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the provider is still there after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let l = scene.limit().await?;
        ensure!(
            l == scene.before,
            "the provider went while {} was still limited to {l}",
            scene.noisy
        );
        ensure!(saw_waiting, "the deletion waited for the release");
        ensure!(
            throttle_of(admin, ns, &scene.noisy).await?.is_empty(),
            "no entry left for the deleted provider"
        );
        Ok(())
    }
    .await;
    scene.finish(Some(operator), result).await
}

/// The operator as its own process, as it runs in a pod (so it can be SIGKILLed).
async fn operator_process(namespace: &str, stack: &plumbline_e2e::Stack) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_plumbline"))
        .args([
            "run",
            "--leader-elect=false",
            "--metrics-addr=127.0.0.1:0",
            "--watch-namespace",
            namespace,
            "--infra-readback-interval=2s",
            // As common::test_health: the stack slows the victim through its own disk, so
            // judging would undo the step; topology labels are node-wide and a killed
            // operator never releases them. And one aggressor only.
            "--throttle-judge-samples=0",
            "--topology-labels=false",
            "--throttle-max-per-victim=1",
        ])
        .env("KUBECONFIG", stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator binary")
}

#[tokio::test]
async fn serial_ledger_a_killed_operators_throttle_is_adopted_and_released_by_the_next(
) -> Result<()> {
    let scene = Scene::start("ledger_sigkill").await?;
    let mut process = operator_process(&scene.cluster.namespace, &scene.stack).await?;
    let mut next = None;
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        scene.degrade("payments").await?;
        applied_throttle(admin, ns, &scene.noisy).await?;

        // SIGKILL right after the throttle: nothing runs on the way out.
        let pid = process.id().context("the operator's pid")?;
        let killed = plumbline_e2e::process::kill(pid, "KILL").await?;
        ensure!(killed, "kill -KILL {pid}");
        process.wait().await?;
        // What it left, read once it is dead. On a loaded machine its ladder may have
        // recorded a next step it never carried out: the next operator applies that one
        // (once), and nothing that was already in force.
        let left = throttle_of(admin, ns, &scene.noisy).await?;
        ensure!(left.len() == 1, "its entry stays after the kill: {left:?}");
        let status = left[0].status.clone().unwrap_or_default();
        let limit = scene.limit().await?;
        ensure!(
            limit != scene.before,
            "the throttle stays after the kill (no release on the way out)"
        );
        ensure!(
            status.original == Some(scene.before.to_string()),
            "the original recorded is the value before: {status:?}"
        );
        let carried_out = state(&left[0]).as_deref() == Some("Applied")
            && limit.to_string() == left[0].spec.desired;

        // The victim recovers while nobody runs; the next operator adopts the change and lets
        // it go once the victim has been healthy long enough. One step and one aggressor: a
        // victim slowed by the machine's load gets no new change from it.
        scene.stack.clear_libvirt_latency(VICTIM).await?;
        let mut adopter = one_step_health();
        adopter.ladder.max_per_victim = 1;
        let operator = next.insert(scene.operator(adopter).await?);
        scene
            .wait_for_limit("the original limit back", scene.before)
            .await?;
        eventually("the entry gone", PATIENCE, || async {
            Ok(if throttle_of(admin, ns, &scene.noisy).await?.is_empty() {
                Ok(())
            } else {
                Err("still there".to_string())
            })
        })
        .await?;
        let metrics = common::metrics(operator.http_addr).await?;
        let applied: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("plumbline_actions_total")
                    && l.contains("disk_iops_limit")
                    && l.contains("result=\"applied\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        ensure!(
            applied <= if carried_out { 0.0 } else { 1.0 },
            "the adopting operator applied nothing again (all carried out before the kill: \
             {carried_out}; applied {applied}):\n{metrics}"
        );
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("plumbline_actions_total")
                    && l.contains("disk_iops_limit")
                    && l.contains("result=\"reverted\"")),
            "it restored the original:\n{metrics}"
        );
        Ok(())
    }
    .await;
    let _ = process.kill().await;
    scene.finish(next, result).await
}

/// Leader and standby as their own processes, as two pods of the chart: the leader is
/// SIGKILLed right after its throttle is in force. The standby takes over once the Lease has
/// gone unrenewed for its duration, adopts the change as it is (nothing stranded, nothing
/// applied again, the original kept) and releases it when the victim recovers.
#[tokio::test]
async fn serial_ledger_a_killed_leaders_standby_takes_over_mid_throttle() -> Result<()> {
    use chrono::Utc;
    use common::process::OperatorProcess;
    let scene = Scene::start("ledger_standby").await?;
    let kubeconfig = std::path::PathBuf::from(scene.stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?);
    let ns = scene.cluster.namespace.clone();
    // One aggressor only (judging is off in every OperatorProcess).
    let args = ["--throttle-max-per-victim=1"];
    let mut first = Some(OperatorProcess::start("replica-a", &ns, &kubeconfig, &args).await?);
    let mut second = Some(OperatorProcess::start("replica-b", &ns, &kubeconfig, &args).await?);
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        scene.cluster.admin.clone(),
        &ns,
    );
    let result = async {
        let admin = &scene.cluster.admin;
        let leader = eventually("one replica to lead", PATIENCE, || async {
            let holder = lease
                .get_opt("plumbline-operator")
                .await?
                .and_then(|l| l.spec?.holder_identity);
            Ok(holder.ok_or_else(|| "no holder yet".to_string()))
        })
        .await?;
        let (leading, standing_by) = if leader == "replica-a" {
            (&mut first, &mut second)
        } else {
            (&mut second, &mut first)
        };
        let standby = standing_by.as_ref().context("the standby")?;
        scene.degrade("payments").await?;
        applied_throttle(admin, &ns, &scene.noisy).await?;

        // SIGKILL: no release of the Lease, no release of anything.
        let killed = leading.take().context("the leader")?;
        killed.signal("KILL").await?;
        let killed_at = chrono::Utc::now();
        drop(killed);
        let took_over = eventually("the standby to take over", PATIENCE, || async {
            Ok(standby
                .logged_at("leadership term starts")
                .ok_or_else(|| "still standing by".to_string()))
        })
        .await?;
        let takeover = (took_over - killed_at).to_std().unwrap_or_default();
        println!(
            "the standby took over {takeover:.1?} after the SIGKILL (lease duration {})",
            common::process::LEASE_ARGS[0]
        );
        ensure!(
            takeover < Duration::from_secs(30),
            "the takeover waited for more than the Lease: {takeover:?}"
        );
        // The victim is still degraded: the new leader keeps the throttle in force (nothing
        // stranded, nothing released and applied again), with the original of before.
        eventually("the new leader to run a few passes", PATIENCE, || async {
            Ok(standby
                .logged_all("connected")
                .first()
                .filter(|at| Utc::now() - **at > chrono::Duration::seconds(5))
                .map(|_| ())
                .ok_or_else(|| "not yet".to_string()))
        })
        .await?;
        let entries = throttle_of(admin, &ns, &scene.noisy).await?;
        ensure!(entries.len() == 1, "one entry: {entries:?}");
        let status = entries[0].status.clone().unwrap_or_default();
        ensure!(
            status.original == Some(scene.before.to_string()),
            "the original is still the value before any throttle: {status:?}"
        );
        // Still limited (the ladder may have taken its next step meanwhile: the same entry).
        let now_limit = scene.limit().await?;
        ensure!(
            now_limit != scene.before,
            "the throttle stays in force: {now_limit} (entry wants {})",
            entries[0].spec.desired
        );
        ensure!(
            standby.logged_at("original restored").is_none()
                && standby.logged_at("original recorded").is_none(),
            "the new leader neither released the inherited throttle nor recorded it again"
        );

        scene.stack.clear_libvirt_latency(VICTIM).await?;
        // The new leader lets the change go once the victim has been healthy long enough.
        scene
            .wait_for_limit("the original limit back", scene.before)
            .await?;
        eventually("the entry gone", PATIENCE, || async {
            Ok(if throttle_of(admin, &ns, &scene.noisy).await?.is_empty() {
                Ok(())
            } else {
                Err("still there".to_string())
            })
        })
        .await?;
        Ok(())
    }
    .await;
    for p in [first, second].into_iter().flatten() {
        let _ = p.stop().await;
    }
    scene.finish(None, result).await
}

async fn infra_change_events(admin: &kube::Client, name: &str) -> Result<Vec<(String, String)>> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), "default")
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("InfraChange")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn serial_ledger_drift_is_corrected_until_it_is_contested() -> Result<()> {
    let scene = Scene::start("ledger_drift").await?;
    let operator = scene.operator(one_step_health()).await?;
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        scene.degrade("payments").await?;
        let ic = applied_throttle(admin, ns, &scene.noisy).await?;
        let desired: u64 = ic.spec.desired.parse()?;
        let name = ic.name_any();

        for round in 1..=2u64 {
            let foreign = 700 + round;
            set_total_iops_limit(&scene.uri, &scene.noisy, foreign).await?;
            scene
                .wait_for_limit(&format!("drift {round} corrected"), desired)
                .await?;
            // Settled (read back and recorded) before the next change, so the next one is
            // seen as drift rather than racing the correction's own read-back.
            eventually(
                &format!("correction {round} recorded"),
                PATIENCE,
                || async {
                    let list = throttle_of(admin, ns, &scene.noisy).await?;
                    Ok(match list.first().and_then(|ic| ic.status.clone()) {
                        Some(s)
                            if s.state.as_deref() == Some("Applied")
                                && s.corrections.len() == round as usize =>
                        {
                            Ok(())
                        }
                        other => Err(format!("{other:?}")),
                    })
                },
            )
            .await?;
            // Events of one reason on one object fold into one series (kube's recorder): the
            // first names the values, the metric counts every drift.
            if round == 1 {
                eventually(
                    &format!("a DriftDetected Event naming {foreign}"),
                    PATIENCE,
                    || async {
                        let e = infra_change_events(admin, &name).await?;
                        Ok(
                            match e.iter().find(|(r, m)| {
                                r == "DriftDetected" && m.contains(&foreign.to_string())
                            }) {
                                Some((_, m)) => Ok(m.clone()),
                                None => Err(format!("{e:?}")),
                            },
                        )
                    },
                )
                .await?;
            }
        }
        let metrics = common::metrics(operator.http_addr).await?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("plumbline_infra_drift_total")
                    && l.contains("NeighbourThrottle")
                    && l.trim_end().ends_with(" 2")),
            "two drifts counted:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("infra_drift"))
                .collect::<Vec<_>>()
                .join("\n")
        );

        // The third change within the window: Plumbline stops fighting.
        set_total_iops_limit(&scene.uri, &scene.noisy, 733).await?;
        let contested = eventually("Contested", PATIENCE, || async {
            let list = throttle_of(admin, ns, &scene.noisy).await?;
            Ok(match list.first() {
                Some(ic) if state(ic).as_deref() == Some("Contested") => Ok(ic.clone()),
                other => Err(format!("{:?}", other.map(|ic| &ic.status))),
            })
        })
        .await?;
        println!("{:?}", contested.status);
        tokio::time::sleep(Duration::from_secs(6)).await;
        ensure!(
            scene.limit().await? == 733,
            "a contested value is left as the other party set it"
        );
        Ok(())
    }
    .await;
    scene.finish(Some(operator), result).await
}

#[tokio::test]
async fn serial_ledger_two_scoped_operators_never_record_or_restore_each_others_changes(
) -> Result<()> {
    let a = Scene::start("ledger_two_a").await?;
    let b = common::Cluster::connect("ledger_two_b").await?;
    let op_a = a.operator(one_step_health()).await?;
    let op_b = b
        .start_operator_with_health(Arc::new(SystemClock), one_step_health())
        .await?;
    const OTHER_VICTIM: &str = "pl-vm3";
    let result = async {
        let admin = &a.cluster.admin;
        deploy_pinned(admin, &b.namespace, "orders", 1, OTHER_VICTIM).await?;
        b.apply_intent("orders", critical_intent("orders")).await?;
        wait_for_pods(
            admin,
            &b.namespace,
            "orders",
            1,
            "b healthy first",
            |pods| count(pods, "True", "LatencyWithinBudget") == 1,
        )
        .await?;
        a.degrade("payments").await?;
        a.stack.inject_libvirt_latency(OTHER_VICTIM, 20).await?;

        // Both want pl-noisy throttled; one entry exists, held by one of them.
        let all_on_noisy = || async {
            Ok::<_, anyhow::Error>(
                Api::<InfraChange>::all(admin.clone())
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .filter(|ic| {
                        ic.spec.target.name == a.noisy
                            && ic.spec.setting == "disk.vda.total_iops_sec"
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let held = eventually("one Applied entry on the noisy guest", PATIENCE, || async {
            let list = all_on_noisy().await?;
            Ok(match list.as_slice() {
                [one] if state(one).as_deref() == Some("Applied") => Ok(one.clone()),
                other => Err(format!(
                    "{:?}",
                    other
                        .iter()
                        .map(|ic| (&ic.spec.operator, state(ic)))
                        .collect::<Vec<_>>()
                )),
            })
        })
        .await?;
        let (holder, other) = if held.spec.operator == format!("namespace/{}", a.cluster.namespace)
        {
            (a.cluster.namespace.clone(), b.namespace.clone())
        } else {
            (b.namespace.clone(), a.cluster.namespace.clone())
        };
        println!("held by {holder}; {other} waits");
        ensure!(
            held.status.as_ref().and_then(|s| s.original.clone()) == Some(a.before.to_string()),
            "the holder recorded the true original: {:?}",
            held.status
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let list = all_on_noisy().await?;
        ensure!(
            list.len() == 1 && list[0].spec.operator == held.spec.operator,
            "the other instance neither took nor changed it: {:?}",
            list.iter().map(|ic| &ic.spec.operator).collect::<Vec<_>>()
        );

        // The holder lets go (its intent is deleted): the original comes back through its
        // finalizer, and the other instance then records the true original, not the holder's
        // limit.
        let holder_app = if holder == a.cluster.namespace {
            "payments"
        } else {
            "orders"
        };
        Api::<plumbline_crds::WorkloadIntent>::namespaced(admin.clone(), &holder)
            .delete(holder_app, &DeleteParams::default())
            .await?;
        let taken = eventually("the other instance's entry Applied", PATIENCE, || async {
            let list = all_on_noisy().await?;
            Ok(match list.as_slice() {
                [one]
                    if one.spec.operator == format!("namespace/{other}")
                        && state(one).as_deref() == Some("Applied") =>
                {
                    Ok(one.clone())
                }
                other => Err(format!(
                    "{:?}",
                    other
                        .iter()
                        .map(|ic| (
                            &ic.spec.operator,
                            state(ic),
                            ic.metadata.deletion_timestamp.is_some()
                        ))
                        .collect::<Vec<_>>()
                )),
            })
        })
        .await?;
        ensure!(
            taken.status.as_ref().and_then(|s| s.original.clone()) == Some(a.before.to_string()),
            "the second instance recorded the true original, not the first's limit: {:?}",
            taken.status
        );
        Ok(())
    }
    .await;
    let _ = a.stack.clear_libvirt_latency(OTHER_VICTIM).await;
    let _ = a.stack.clear_libvirt_latency(VICTIM).await;
    let released_b = release_everything(&b.admin, &b.namespace, op_b).await;
    strip_ledger(&b.admin, &b.namespace).await;
    b.cleanup().await;
    a.finish(Some(op_a), result.and(released_b)).await
}

#[tokio::test]
async fn serial_ledger_a_hung_guest_holds_up_only_its_own_changes() -> Result<()> {
    let scene = Scene::start("ledger_hung").await?;
    let operator = scene.operator(one_step_health()).await?;
    const OTHER: &str = "pl-vm3";
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        // Two pods: the guard never takes a workload's last ready pod.
        deploy_pinned(admin, ns, "orders", 2, OTHER).await?;
        scene
            .cluster
            .apply_intent("orders", critical_intent("orders"))
            .await?;
        scene.degrade("payments").await?;
        applied_throttle(admin, ns, &scene.noisy).await?;

        // The noisy guest's QEMU stops answering; its throttle is to be released.
        let frozen = scene.stack.freeze_guest(&scene.noisy).await?;
        scene.cluster.delete_intent("payments").await?;
        // Meanwhile another VM degrades: its pod's condition must still follow in time.
        let started = tokio::time::Instant::now();
        scene.stack.inject_libvirt_latency(OTHER, 20).await?;
        wait_for_pods(
            admin,
            ns,
            "orders",
            2,
            "one of the other VM's pods out of rotation",
            |pods| count(pods, "False", "LatencyOverBudget") == 1,
        )
        .await?;
        println!(
            "a pod on another VM left rotation {:?} after its injection, with {} frozen",
            started.elapsed(),
            scene.noisy
        );
        let stuck = eventually(
            "the hung VM's change reports its deadline",
            PATIENCE,
            || async {
                let list = throttle_of(admin, ns, &scene.noisy).await?;
                Ok(match list.first() {
                    Some(ic)
                        if state(ic).as_deref() == Some("Reverting")
                            && ic
                                .status
                                .as_ref()
                                .and_then(|s| s.last_error.as_deref())
                                .is_some_and(|e| {
                                    e.contains("deadline")
                                        || e.contains("timed out")
                                        || e.contains("Timeout")
                                }) =>
                    {
                        Ok(ic.clone())
                    }
                    other => Err(format!("{:?}", other.map(|ic| &ic.status))),
                })
            },
        )
        .await?;
        println!(
            "hung: {:?}",
            stuck.status.as_ref().and_then(|s| s.last_error.clone())
        );
        drop(frozen);
        scene
            .wait_for_limit("the original limit back after the thaw", scene.before)
            .await?;
        scene.stack.clear_libvirt_latency(OTHER).await?;
        Ok(())
    }
    .await;
    let _ = scene.stack.clear_libvirt_latency(OTHER).await;
    scene.finish(Some(operator), result).await
}

#[tokio::test]
async fn serial_ledger_an_abandoned_change_is_dropped_as_is_and_recover_restores_it_later(
) -> Result<()> {
    let scene = Scene::start("ledger_abandon").await?;
    let operator = scene.operator(one_step_health()).await?;
    let result = async {
        let (admin, ns) = (&scene.cluster.admin, &scene.cluster.namespace);
        scene.degrade("payments").await?;
        let ic = applied_throttle(admin, ns, &scene.noisy).await?;
        let limit = scene.limit().await?;

        // The hypervisor is unreachable (as if gone for good) when the change is released.
        scene.stack.stop_libvirtd().await?;
        scene.cluster.delete_intent("payments").await?;
        eventually("the change Reverting", PATIENCE, || async {
            let list = throttle_of(admin, ns, &scene.noisy).await?;
            Ok(match list.first() {
                Some(ic) if state(ic).as_deref() == Some("Reverting") => Ok(()),
                other => Err(format!("{:?}", other.map(|ic| &ic.status))),
            })
        })
        .await?;
        Api::<InfraChange>::all(admin.clone())
            .patch(
                &ic.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    &json!({"metadata": {"annotations": {"plumbline.dev/abandon": "true"}}}),
                ),
            )
            .await?;
        eventually("the abandoned entry gone", PATIENCE, || async {
            Ok(if throttle_of(admin, ns, &scene.noisy).await?.is_empty() {
                Ok(())
            } else {
                Err("still there".to_string())
            })
        })
        .await?;
        scene.stack.start_libvirtd().await?;
        ensure!(
            scene.limit().await? == limit,
            "abandoned means left as it is on the VM"
        );

        // The original is still recorded on the VM: `plumbline recover` restores it.
        let out = Command::new(env!("CARGO_BIN_EXE_plumbline"))
            .args(["recover", "--provider", &scene.provider])
            .env("KUBECONFIG", scene.stack.get("KUBECONFIG")?)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        ensure!(
            out.status.success(),
            "recover: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            scene.limit().await? == scene.before,
            "recover restored the original: {text}"
        );
        Ok(())
    }
    .await;
    scene.finish(Some(operator), result).await
}
