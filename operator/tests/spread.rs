//! `placement.spreadAcrossHosts` on the real stack: a 3-replica Deployment on the nodes of the
//! vSphere simulator's cluster gets a topology spread constraint on
//! `topology.plumbline.dev/host`, its pods land on more than one hypervisor host after the
//! rollout (`status.placement`, `SpreadAcrossHosts=True`), and the simulator lists a DRS
//! anti-affinity rule over exactly the VMs under the pods. A rule change the cluster refuses
//! is reported in the intent's status and leaves the rule as it was, until the cluster takes
//! it. A workload held on one host's nodes is `SpreadAcrossHosts=False` with
//! `plumbline_workload_hosts` 1 (on the libvirt host the message also says what would fix it),
//! and deleting the intent removes the constraint and the rule. Needs `e2e/stack up`.

mod common;
mod health_common;

use anyhow::{Context as _, Result};
use health_common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{api::ListParams, Api, ResourceExt};
use plumbline_crds::names::TOPOLOGY_HOST_LABEL;
use plumbline_operator::clock::SystemClock;
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

const PATIENCE: Duration = Duration::from_secs(120);

/// The host-spread constraint in the Deployment's pod template, if any.
fn host_constraint(template: &Value) -> Option<Value> {
    template
        .pointer("/spec/template/spec/topologySpreadConstraints")?
        .as_array()?
        .iter()
        .find(|c| c["topologyKey"] == TOPOLOGY_HOST_LABEL)
        .cloned()
}

#[tokio::test]
async fn serial_spread_across_hosts_puts_the_pods_on_several_hosts_and_goes_on_delete() -> Result<()>
{
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = common::Cluster::connect("spread").await?;
    let (admin, ns) = (cluster.admin.clone(), cluster.namespace.clone());
    let mut operator = None;
    let result = async {
        apply_vsphere_provider(&stack, &admin, &ns).await?;
        // Every simulator VM's node, and its host.
        let hv = vsphere_adapter(&stack).await?;
        let inventory = hv.inventory().await?;
        let _ = hv.close().await;
        let host_of_id: BTreeMap<String, String> = inventory
            .iter()
            .map(|vm| (vm.provider_id.clone(), vm.host.clone()))
            .collect();
        let host_of_node: BTreeMap<String, String> = Api::<Node>::all(admin.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| {
                let id = n.spec.as_ref()?.provider_id.clone()?;
                Some((n.name_any(), host_of_id.get(&id)?.clone()))
            })
            .collect();
        let hosts: BTreeSet<&String> = host_of_node.values().collect();
        anyhow::ensure!(hosts.len() >= 2, "the simulator's nodes are on {hosts:?}");
        // The cluster's VMs' nodes (a DRS rule binds VMs of one cluster), and the VM of each.
        let in_cluster: BTreeMap<String, String> = stack
            .vsphere_vms()
            .await?
            .into_iter()
            .filter(|vm| !vm.cluster.is_empty())
            .map(|vm| (vm.dns_name, vm.name))
            .collect();
        let cluster_name = stack
            .vsphere_vms()
            .await?
            .into_iter()
            .find(|vm| !vm.cluster.is_empty())
            .map(|vm| vm.cluster)
            .context("the simulator has a cluster")?;
        let nodes: Vec<&String> = in_cluster.keys().collect();
        let cluster_hosts: BTreeSet<&String> =
            nodes.iter().filter_map(|n| host_of_node.get(*n)).collect();
        anyhow::ensure!(
            cluster_hosts.len() >= 2,
            "the cluster's VMs are on {cluster_hosts:?}"
        );
        stack.reject_vsphere_rules(&cluster_name, false).await?;
        deploy_placed(&admin, &ns, "web", 3, only_on(&nodes)).await?;
        let mut health = common::test_health();
        health.topology_labels = true;
        operator = Some(
            cluster
                .start_operator_with_health(Arc::new(SystemClock), health)
                .await?,
        );
        eventually(
            "every simulator node labelled with its host",
            PATIENCE,
            || async {
                let list = Api::<Node>::all(admin.clone())
                    .list(&ListParams::default())
                    .await?;
                let wrong: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|n| {
                        let want = host_of_node.get(&n.name_any())?;
                        let has = n.labels().get(TOPOLOGY_HOST_LABEL);
                        (has.cloned() != plumbline_policies::topology::label_value(want))
                            .then(|| format!("{}: {has:?}", n.name_any()))
                    })
                    .collect();
                Ok(if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join(", "))
                })
            },
        )
        .await?;

        cluster
            .apply_intent(
                "web",
                json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "standard",
                       "placement": {"spreadAcrossHosts": "preferred"}}),
            )
            .await?;
        let deployments = cluster.deployments();
        let constraint = eventually(
            "the spread constraint in the pod template",
            PATIENCE,
            || async {
                let d = serde_json::to_value(deployments.get("web").await?)?;
                Ok(host_constraint(&d).ok_or_else(|| "not yet".to_string()))
            },
        )
        .await?;
        anyhow::ensure!(
            constraint["maxSkew"] == 1
                && constraint["whenUnsatisfiable"] == "ScheduleAnyway"
                && constraint["labelSelector"]["matchLabels"]["app"] == "web",
            "{constraint}"
        );
        let spread = eventually(
            "3 ready pods of the new template on 2 or more hosts",
            PATIENCE,
            || async {
                let list = pods(&admin, &ns, "web").await?;
                let current: Vec<_> = list
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.topology_spread_constraints.as_ref())
                            .is_some()
                    })
                    .collect();
                let on: BTreeSet<String> = current
                    .iter()
                    .filter_map(|p| {
                        host_of_node
                            .get(p.spec.as_ref()?.node_name.as_ref()?)
                            .cloned()
                    })
                    .collect();
                let ready = current.iter().filter(|p| is_ready(p)).count();
                Ok(if ready == 3 && current.len() == 3 && on.len() >= 2 {
                    Ok(on)
                } else {
                    Err(format!(
                        "{ready} ready, on hosts {on:?}: {}",
                        summary(&list)
                    ))
                })
            },
        )
        .await?;
        println!("3 pods on hosts {spread:?}");
        let intents = cluster.intents();
        let rule_name = format!("plumbline-{ns}-web");
        let sim_rule = || async {
            Ok::<_, anyhow::Error>(
                stack
                    .vsphere_rules()
                    .await?
                    .into_iter()
                    .find(|r| r.name == rule_name),
            )
        };
        // The rule over exactly the VMs under the pods, and the status saying so.
        let under_pods = || async {
            let list = pods(&admin, &ns, "web").await?;
            Ok::<_, anyhow::Error>(
                list.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| {
                        in_cluster
                            .get(p.spec.as_ref()?.node_name.as_ref()?)
                            .cloned()
                    })
                    .collect::<BTreeSet<String>>(),
            )
        };
        let rule = eventually(
            "a DRS rule over exactly the VMs under the pods",
            PATIENCE,
            || async {
                let want: Vec<String> = under_pods().await?.into_iter().collect();
                Ok(match sim_rule().await? {
                    Some(r)
                        if r.vms == want
                            && r.kind == "ClusterAntiAffinityRuleSpec"
                            && !r.mandatory
                            && r.enabled =>
                    {
                        Ok(r)
                    }
                    other => Err(format!("want {want:?}, the simulator has {other:?}")),
                })
            },
        )
        .await?;
        println!("DRS rule {rule:?}");
        let rule_state = |wi: &plumbline_crds::WorkloadIntent| {
            wi.status
                .as_ref()
                .and_then(|s| s.placement.as_ref())
                .and_then(|p| p.drs_rules.first().cloned())
        };
        eventually(
            "status.placement.drsRules says Applied",
            PATIENCE,
            || async {
                let wi = intents.get("web").await?;
                Ok(match rule_state(&wi) {
                    Some(r)
                        if r.state.as_deref() == Some("Applied")
                            && r.mode == "should"
                            && r.vms == rule.vms =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;

        // The cluster refuses the change to a "must" rule: reported, the rule as it was.
        stack.reject_vsphere_rules(&cluster_name, true).await?;
        cluster
            .apply_intent(
                "web",
                json!({"target": {"kind": "Deployment", "name": "web"}, "priority": "standard",
                       "placement": {"spreadAcrossHosts": "required"}}),
            )
            .await?;
        let refused = eventually(
            "the refused rule change in the intent's status",
            PATIENCE,
            || async {
                let wi = intents.get("web").await?;
                Ok(match rule_state(&wi) {
                    Some(r)
                        if r.mode == "must"
                            && r.message
                                .as_deref()
                                .is_some_and(|m| m.contains("InvalidArgument")) =>
                    {
                        Ok(r)
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await;
        let still = sim_rule().await;
        stack.reject_vsphere_rules(&cluster_name, false).await?;
        println!("refused: {:?}", refused?);
        anyhow::ensure!(
            still?.is_some_and(|r| !r.mandatory && r.vms == rule.vms),
            "the refused change left the rule as it was"
        );
        eventually("the cluster takes the must rule", PATIENCE, || async {
            Ok(match sim_rule().await? {
                Some(r) if r.mandatory => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
        let condition = |wi: &plumbline_crds::WorkloadIntent| {
            wi.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "SpreadAcrossHosts")
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            })
        };
        let addr = operator
            .as_ref()
            .map(|o| o.http_addr)
            .context("the operator runs")?;
        eventually(
            "status.placement and SpreadAcrossHosts=True",
            PATIENCE,
            || async {
                let wi = intents.get("web").await?;
                let placement = wi.status.as_ref().and_then(|s| s.placement.clone());
                Ok(match (&placement, condition(&wi)) {
                    (Some(p), Some((status, reason, _)))
                        if p.distinct_hosts >= 2 && status == "True" && reason == "Spread" =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;

        // A workload held on one host's nodes: SpreadAcrossHosts=False, and the metric says 1.
        let (one_host, its_nodes) = host_of_node
            .iter()
            .fold(
                BTreeMap::<&String, Vec<&String>>::new(),
                |mut by, (node, host)| {
                    by.entry(host).or_default().push(node);
                    by
                },
            )
            .into_iter()
            .max_by_key(|(_, nodes)| nodes.len())
            .context("no simulator host")?;
        // 2 replicas of `name` on `nodes` only, with an intent asking for spreading: False,
        // OneHost, with a message `check` accepts.
        let held = |name: &'static str, nodes: Vec<String>, check: Box<dyn Fn(&str) -> bool>| {
            let (admin, ns, cluster, intents) = (&admin, &ns, &cluster, &intents);
            async move {
                deploy_placed(admin, ns, name, 2, only_on(&nodes)).await?;
                cluster
                    .apply_intent(
                        name,
                        json!({"target": {"kind": "Deployment", "name": name},
                               "priority": "standard",
                               "placement": {"spreadAcrossHosts": "preferred"}}),
                    )
                    .await?;
                eventually(
                    &format!("SpreadAcrossHosts=False for {name}"),
                    PATIENCE,
                    || async {
                        let wi = intents.get(name).await?;
                        Ok(match condition(&wi) {
                            Some((status, reason, message))
                                if status == "False" && reason == "OneHost" && check(&message) =>
                            {
                                Ok(())
                            }
                            other => Err(format!("{other:?}")),
                        })
                    },
                )
                .await
            }
        };
        let want = format!(
            "2 of 2 pods run on VMs on host {one_host}: one host failure stops the service"
        );
        let its_nodes = its_nodes.into_iter().cloned().collect();
        held("solo", its_nodes, Box::new(move |m| m == want)).await?;
        // On the libvirt host (one host, no DRS) the message also says what would fix it.
        apply_libvirt_provider(&admin, &ns, stack.libvirt_uri()?).await?;
        let (_, guests) = libvirt_host(&stack).await?;
        held(
            "kvm",
            guests,
            Box::new(|m| m.contains("is a libvirt host (no DRS, nothing is changed there)")),
        )
        .await?;

        let series = format!("plumbline_workload_hosts{{namespace=\"{ns}\",intent=\"solo\"}} 1");
        let metrics = common::metrics(addr).await?;
        anyhow::ensure!(
            metrics.contains(&series),
            "{series} in /metrics:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("workload_hosts"))
                .collect::<Vec<_>>()
                .join("\n")
        );

        // The rule follows the pods: all of them on one VM leaves nothing to keep apart (the
        // rule goes); back on both VMs, it is made again.
        let first = nodes[0].clone();
        deploy_placed(&admin, &ns, "web", 3, only_on(&[&first])).await?;
        eventually(
            "the rule gone with the pods on one VM",
            PATIENCE,
            || async {
                Ok(match sim_rule().await? {
                    None => Ok(()),
                    Some(r) => Err(format!("{r:?}, pods under {:?}", under_pods().await?)),
                })
            },
        )
        .await?;
        deploy_placed(&admin, &ns, "web", 3, only_on(&nodes)).await?;
        // `preferred` only scores: the rollout counts the old pods on the first VM, so the new
        // ones can all land on the other. A pod deleted from a crowded VM is placed again by
        // the constraint, on the empty one.
        let pod_api = Api::<Pod>::namespaced(admin.clone(), &ns);
        eventually(
            "the rule back with the pods on both VMs",
            PATIENCE,
            || async {
                let live = pods(&admin, &ns, "web").await?;
                let want: Vec<String> = under_pods().await?.into_iter().collect();
                let placed = live
                    .iter()
                    .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                    .count();
                if live.len() == 3 && placed == 3 && want.len() == 1 {
                    pod_api
                        .delete(&live[0].name_any(), &Default::default())
                        .await?;
                }
                Ok(match sim_rule().await? {
                    Some(r) if r.vms == want && want.len() == 2 => Ok(()),
                    other => Err(format!("want {want:?}, the simulator has {other:?}")),
                })
            },
        )
        .await?;

        // Deleting the intent takes the constraint and the rule out again.
        cluster.delete_intent("web").await?;
        eventually(
            "the spread constraint and the rule removed",
            PATIENCE,
            || async {
                let d = serde_json::to_value(deployments.get("web").await?)?;
                Ok(match (host_constraint(&d), sim_rule().await?) {
                    (None, None) => Ok(()),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        Ok(())
    }
    .await;
    let released = match operator {
        Some(op) => release_everything(&admin, &ns, op).await,
        None => Ok(()),
    };
    release_topology_labels(&admin, &ns).await;
    cluster.cleanup().await;
    result.and(released)
}

/// A workload whose pods run on a node that maps to no provider's VM: the intent's spread is
/// `Unknown` (`HostsUnknown`, never reported as a violation), no DRS rule is asked for, and
/// the Kubernetes side (the constraint) is applied whole.
#[tokio::test]
async fn spreading_on_nodes_of_no_provider_is_unknown_and_asks_for_no_rule() -> Result<()> {
    let cluster = common::Cluster::connect("spread-nowhere").await?;
    let (admin, ns) = (cluster.admin.clone(), cluster.namespace.clone());
    let ghost = format!("{ns}-ghost");
    let nodes = Api::<Node>::all(admin.clone());
    let mut operator = None;
    let result = async {
        // A node nobody backs: no providerID, no kubelet.
        nodes
            .create(
                &Default::default(),
                &serde_json::from_value(json!({"metadata": {"name": ghost}}))?,
            )
            .await?;
        // Bound to it directly (no kubelet: the pods stay Pending, but their node is set).
        deploy_placed(&admin, &ns, "app", 2, json!({"nodeName": ghost})).await?;
        operator = Some(
            cluster
                .start_operator_with_health(Arc::new(SystemClock), common::test_health())
                .await?,
        );
        cluster
            .apply_intent(
                "app",
                json!({"target": {"kind": "Deployment", "name": "app"}, "priority": "standard",
                       "placement": {"spreadAcrossHosts": "required"}}),
            )
            .await?;
        let intents = cluster.intents();
        let deployments = cluster.deployments();
        eventually(
            "HostsUnknown, no rule, and the constraint in the template",
            PATIENCE,
            || async {
                let wi = intents.get("app").await?;
                let d = serde_json::to_value(deployments.get("app").await?)?;
                let status = wi.status.as_ref();
                let condition = status.and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == "SpreadAcrossHosts")
                        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                });
                let placement = status.and_then(|s| s.placement.clone());
                Ok(match (&condition, &placement, host_constraint(&d)) {
                    (Some((s, r, m)), Some(p), Some(c))
                        if s == "Unknown"
                            && r == "HostsUnknown"
                            // The rollout adding the constraint leaves pods of both templates.
                            && m.starts_with("the host of none of the")
                            && p.pods_on_unknown_hosts >= 2
                            && p.drs_rules.is_empty()
                            && c["whenUnsatisfiable"] == "DoNotSchedule" =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        let rules: Vec<_> = ledger(&admin, &ns)
            .await?
            .into_iter()
            .filter(|ic| ic.spec.purpose == plumbline_crds::ChangePurpose::HostAntiAffinity)
            .collect();
        anyhow::ensure!(rules.is_empty(), "no rule asked for: {rules:?}");
        Ok(())
    }
    .await;
    let released = match operator {
        Some(op) => release_everything(&admin, &ns, op).await,
        None => Ok(()),
    };
    let _ = nodes.delete(&ghost, &Default::default()).await;
    cluster.cleanup().await;
    result.and(released)
}
