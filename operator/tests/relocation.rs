//! A noisy neighbour throttling cannot tame, moved away on the real stack
//! (`infrastructure.relocateNoisyNeighbours`): in the vSphere simulator's cluster the noisy VM
//! shares a host with the VM under a critical workload and does 1,000 IOPS; the simulator
//! raises its neighbours' disk latency by a fixed 30 ms plus 0.05 ms per IOPS it does, so the
//! throttle ladder lowers the victim's latency step by step (81 → 56 → 44 → 36 ms) without
//! bringing it under its 20 ms budget. After the ladder's floor and the dwell, the noisy VM —
//! never the victim — is moved once, by `RelocateVM_Task`, to the cluster's other host: an
//! `InfraChange` records from-host and to-host, an Event says why, its node's topology label
//! follows, the victim recovers and the throttle is released. Deleting the intent lets the
//! relocation entry go without moving anything back. Needs `e2e/stack up`.

mod common;
mod health_common;

use anyhow::{Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt};
use plumbline_crds::{conditions::event, names::TOPOLOGY_HOST_LABEL, ChangePurpose};
use plumbline_operator::{
    cli::{ExplainArgs, ExplainOutput},
    clock::SystemClock,
    explain,
};
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// vSphere samples cover 20 s; the ladder, the dwell and the recovery take a few of them.
const PATIENCE: Duration = Duration::from_secs(240);

/// `plumbline explain wi/db` as a user runs it.
async fn explain_db(cluster: &common::Cluster, namespace: &str) -> Result<String> {
    let args = ExplainArgs {
        file: None,
        intent: Some("db".into()),
        namespace: Some(namespace.into()),
        output: ExplainOutput::Text,
        at: None,
        prometheus: Default::default(),
    };
    Ok(explain::explain(cluster.operator_identity.clone(), &args, &SystemClock).await?)
}

#[tokio::test]
async fn serial_an_untameable_noisy_neighbour_is_moved_once_and_the_victim_recovers() -> Result<()>
{
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = common::Cluster::connect("relocation").await?;
    let (admin, ns) = (cluster.admin.clone(), cluster.namespace.clone());
    // The cluster's two VMs: the victim, and the noisy one put on the victim's host.
    let in_cluster: Vec<_> = stack
        .vsphere_vms()
        .await?
        .into_iter()
        .filter(|vm| !vm.cluster.is_empty())
        .collect();
    let [victim, noisy] = <[_; 2]>::try_from(in_cluster.clone())
        .map_err(|vms| anyhow::anyhow!("the simulator's cluster has {vms:?}"))?;
    let other_host = in_cluster
        .iter()
        .map(|vm| vm.host.clone())
        .find(|h| h != &victim.host)
        .context("the cluster's VMs were on two hosts")?;
    let provider = apply_vsphere_provider(&stack, &admin, &ns).await?;
    let mut operator = None;
    let result = async {
        stack.relocate_vsphere_vm(&noisy.name, &victim.host).await?;
        deploy_pinned(&admin, &ns, "db", 1, &victim.dns_name).await?;
        let mut health = common::test_health();
        health.topology_labels = true;
        health.relocation.dwell = Duration::from_secs(10);
        operator = Some(
            cluster
                .start_operator_with_health(Arc::new(SystemClock), health)
                .await?,
        );
        cluster
            .apply_intent(
                "db",
                json!({"target": {"kind": "Deployment", "name": "db"}, "priority": "critical",
                       "storage": {"latencyBudget": "20ms"},
                       "infrastructure": {"throttleNoisyNeighbours": true,
                                          "relocateNoisyNeighbours": true}}),
            )
            .await?;
        let verdict = || async {
            let status = intent_status(&admin, &ns, "db").await?;
            Ok::<_, anyhow::Error>(status.pointer("/backing/0/verdict").cloned())
        };
        eventually("the victim healthy before the load", PATIENCE, || async {
            Ok(match verdict().await? {
                Some(v) if v == "Healthy" => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;

        stack
            .set_vsphere_load(&noisy.name, 1000, 30.0, 0.05)
            .await?;
        let moved = eventually(
            "the noisy VM relocated through the ledger",
            PATIENCE,
            || async {
                let entries = ledger(&admin, &ns).await?;
                let relocation = entries
                    .iter()
                    .find(|ic| ic.spec.purpose == ChangePurpose::NeighbourRelocation);
                Ok(match relocation {
                    Some(ic)
                        if ic.status.as_ref().and_then(|s| s.state.as_deref())
                            == Some("Applied") =>
                    {
                        Ok(ic.clone())
                    }
                    _ => Err(entries
                        .iter()
                        .map(|ic| {
                            format!(
                                "{} {}={} {:?}",
                                ic.spec.target.name,
                                ic.spec.setting,
                                ic.spec.desired,
                                ic.status.as_ref().and_then(|s| s.state.clone())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")),
                })
            },
        )
        .await?;
        println!(
            "relocation: {} from {:?} to {}; original {:?}; reason: {}",
            moved.spec.target.name,
            moved.spec.relocation.as_ref().map(|r| r.from.clone()),
            moved.spec.desired,
            moved.status.as_ref().and_then(|s| s.original.clone()),
            moved.spec.owners[0].reason
        );
        anyhow::ensure!(
            moved.spec.target.name == noisy.name,
            "only the noisy VM moves"
        );
        anyhow::ensure!(
            moved.spec.desired == other_host,
            "to the cluster's other host"
        );
        let record = moved
            .spec
            .relocation
            .clone()
            .context("a relocation record")?;
        anyhow::ensure!(record.from == victim.host && record.decided.len() == 1);
        anyhow::ensure!(
            moved.status.as_ref().and_then(|s| s.original.as_deref()) == Some(victim.host.as_str())
        );
        // The move happened on the hypervisor, and the victim stayed.
        let placed = stack.vsphere_vms().await?;
        let host_of = |name: &str| {
            placed
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.host.clone())
        };
        anyhow::ensure!(
            host_of(&noisy.name) == Some(other_host.clone()),
            "{placed:?}"
        );
        anyhow::ensure!(
            host_of(&victim.name) == Some(victim.host.clone()),
            "{placed:?}"
        );
        let status = intent_status(&admin, &ns, "db").await?;
        anyhow::ensure!(
            status.pointer("/placement/relocations/0/to") == Some(&json!(other_host)),
            "{status}"
        );
        let explained = explain_db(&cluster, &ns).await?;
        anyhow::ensure!(
            explained.contains(&format!(
                "VM {} ({provider}) was moved from {} to {other_host}",
                noisy.name, victim.host
            )),
            "{explained}"
        );
        let reasons = intent_event_reasons(&admin, &ns, "db").await?;
        anyhow::ensure!(
            reasons
                .iter()
                .any(|(r, m)| r == event::NOISY_NEIGHBOUR_RELOCATED && m.contains(&other_host)),
            "{reasons:?}"
        );

        eventually("the noisy VM's node label follows", PATIENCE, || async {
            let node = Api::<Node>::all(admin.clone()).get(&noisy.dns_name).await?;
            let label = node.labels().get(TOPOLOGY_HOST_LABEL).cloned();
            Ok(
                if label == plumbline_policies::topology::label_value(&other_host) {
                    Ok(())
                } else {
                    Err(format!("{label:?}"))
                },
            )
        })
        .await?;
        eventually(
            "the victim recovers and the throttle is released",
            PATIENCE,
            || async {
                let healthy = verdict().await? == Some(json!("Healthy"));
                let throttles = ledger(&admin, &ns)
                    .await?
                    .iter()
                    .filter(|ic| ic.spec.purpose == ChangePurpose::NeighbourThrottle)
                    .count();
                Ok(if healthy && throttles == 0 {
                    Ok(())
                } else {
                    Err(format!("healthy {healthy}, throttles {throttles}"))
                })
            },
        )
        .await?;
        // Once: still one relocation, decided once, and the VM stays where it went.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let relocations: Vec<_> = ledger(&admin, &ns)
            .await?
            .into_iter()
            .filter(|ic| ic.spec.purpose == ChangePurpose::NeighbourRelocation)
            .collect();
        anyhow::ensure!(
            relocations.len() == 1
                && relocations[0]
                    .spec
                    .relocation
                    .as_ref()
                    .is_some_and(|r| r.decided.len() == 1),
            "{relocations:?}"
        );
        anyhow::ensure!(stack
            .vsphere_vms()
            .await?
            .iter()
            .any(|v| v.name == noisy.name && v.host == other_host));
        Ok(())
    }
    .await;

    let _ = stack.clear_vsphere_load(&noisy.name).await;
    let released = match operator {
        Some(op) => release_everything(&admin, &ns, op).await,
        None => Ok(()),
    };
    // Deleting the entry moved nothing back: the noisy VM is still on the other host.
    let left_in_place = match stack.vsphere_vms().await {
        Ok(vms) if result.is_ok() => {
            let now = vms.iter().find(|v| v.name == noisy.name).map(|v| &v.host);
            if now == Some(&other_host) {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "after the intent went the noisy VM is on {now:?}"
                ))
            }
        }
        _ => Ok(()),
    };
    // Put the cluster's VMs back where the test found them.
    for vm in &in_cluster {
        let _ = stack.relocate_vsphere_vm(&vm.name, &vm.host).await;
    }
    release_topology_labels(&admin, &ns).await;
    delete_provider(&admin, &provider).await;
    cluster.cleanup().await;
    result.and(released).and(left_in_place)
}
