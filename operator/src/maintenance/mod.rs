//! Host maintenance, carried out: each pass of the health loop looks at every HostMaintenance,
//! asks `plumbline_policies::maintenance` what to do, and
//!
//! - returns the cordons and surges it wants as ledger entries (purposes `MaintenanceCordon`,
//!   `MaintenanceSurge`): the writer records them and the Kubernetes actuator cordons and
//!   scales; when the maintenance ends or is deleted they are no longer wanted, so their
//!   finalizers uncordon and scale back to the recorded replicas;
//! - evicts the pods the plan names through the Eviction API (in the policy version the server
//!   serves), or deletes them after the timeout with `onTimeout: Force`;
//! - writes the status: phase, per-node progress, the pre-flight, `DrainBlocked` and
//!   `ReadyForMaintenance`, with Events on changes.
//!
//! It runs with `--host-maintenance`; the chart sets that only for an operator of the whole
//! cluster (one scoped to a namespace would move only that namespace's pods).

pub mod detect;
pub mod view;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::maintenance as m, ChangeOwner, ChangePurpose, ChangeTarget, HostMaintenance,
    HostMaintenanceStatus, InfraChangeSpec, MaintenanceNode, MaintenanceWorkload,
};
use plumbline_policies::{
    ledger::{MAINTENANCE_MODE, PRESENT, REPLICAS, UNSCHEDULABLE},
    maintenance::{plan_maintenance, Blocker, MaintenancePlan, MaintenanceSpec, MaintenanceView},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::{info, warn};

use crate::{
    context::Context,
    controller::conditions::{merge, ConditionVerdict},
    health::{book::HealthBook, caches::Caches},
};
use view::HostNodes;

/// Evictions and deletions per maintenance and pass: the next pass continues.
const MOVES_PER_PASS: usize = 10;

/// What the maintenance pass remembers between passes: the status it wrote last, so it
/// writes (and tells) only changes.
#[derive(Default)]
pub struct Maintenances {
    written: HashMap<String, HostMaintenanceStatus>,
    detector: detect::Detector,
}

impl Maintenances {
    /// One pass over every HostMaintenance; the cordons wanted, as ledger entries.
    pub async fn pass(
        &mut self,
        ctx: &Context,
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        operator: &str,
        now: SystemTime,
    ) -> Vec<InfraChangeSpec> {
        let changes = caches.changes.state();
        let mut all = caches.maintenances.state();
        self.detector.pass(ctx, book, &all, &changes, now).await;
        all.retain(|hm| hm.metadata.deletion_timestamp.is_none());
        all.sort_by_key(|hm| (hm.metadata.creation_timestamp.clone(), hm.name_any()));
        self.written.retain(|name, _| {
            let here = all.iter().any(|hm| &hm.name_any() == name);
            if !here {
                ctx.metrics.forget_maintenance(name);
            }
            here
        });
        if all.is_empty() {
            return Vec::new();
        }
        let nodes = caches.nodes.state();
        let pods = caches.pods.state();
        let intents = ctx.intents.state();
        let mut budgets = None;
        let mut wanted = Vec::new();
        for (i, hm) in all.iter().enumerate() {
            let plan = match Self::decide_one(hm, &all[..i], caches, book, &nodes) {
                Err(blocker) => MaintenancePlan {
                    phase: m::PENDING,
                    ..MaintenancePlan::ended(vec![blocker])
                },
                Ok((spec, host_nodes)) => {
                    let host_pods = view::host_pods(&pods, &host_nodes);
                    if budgets.is_none() && !host_pods.is_empty() {
                        budgets = Some(view::budgets(ctx).await.unwrap_or_else(|e| {
                            warn!(error = %e, "listing PodDisruptionBudgets failed; every budget counts as allowing none");
                            Vec::new()
                        }));
                    }
                    let surges = view::surges_of(hm, &changes, operator);
                    let mut workloads = view::workload_facts(
                        &host_pods,
                        &surges,
                        &pods,
                        &intents,
                        budgets.as_deref().unwrap_or_default(),
                        now,
                    );
                    view::replicas(ctx, &mut workloads, &surges).await;
                    let status = hm.status.clone().unwrap_or_default();
                    let started_at = status
                        .started_at
                        .as_ref()
                        .map(|t| SystemTime::from(t.0))
                        .unwrap_or(now);
                    let view = MaintenanceView {
                        spec,
                        started_at: Some(started_at),
                        previous_phase: status.phase.clone(),
                        nodes: host_nodes,
                        pods: host_pods,
                        workloads,
                        cordoned_by_us: view::cordoned_by(hm, &changes, operator),
                        host_mode_by_us: view::host_mode_by(hm, &changes, operator),
                    };
                    plan_maintenance(&view, now)
                }
            };
            wanted.extend(ledger_entries(hm, &plan, operator));
            announce_surges(ctx, hm, &plan, &changes, operator).await;
            move_pods(ctx, hm, &plan).await;
            let in_maintenance = view::host_in_maintenance(book, hm);
            self.write_status(ctx, hm, &plan, in_maintenance, now).await;
        }
        wanted
    }

    /// The checked spec and the host's nodes, or what stops this maintenance from acting.
    fn decide_one(
        hm: &HostMaintenance,
        earlier: &[Arc<HostMaintenance>],
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        nodes: &[Arc<k8s_openapi::api::core::v1::Node>],
    ) -> Result<
        (
            MaintenanceSpec,
            Vec<plumbline_policies::maintenance::HostNode>,
        ),
        Blocker,
    > {
        let spec = MaintenanceSpec::from_crd(&hm.spec).map_err(|message| Blocker {
            reason: m::INVALID_SPEC,
            message,
        })?;
        if let Some(first) = earlier
            .iter()
            .find(|o| o.spec.provider == hm.spec.provider && o.spec.host == hm.spec.host)
        {
            return Err(Blocker {
                reason: m::CONFLICTING_MAINTENANCE,
                message: format!(
                    "HostMaintenance {} already covers host {} of {}; this one does nothing until it is deleted",
                    first.name_any(),
                    hm.spec.host,
                    hm.spec.provider
                ),
            });
        }
        if !caches
            .providers
            .state()
            .iter()
            .any(|p| p.name_any() == hm.spec.provider)
        {
            return Err(Blocker {
                reason: m::UNKNOWN_PROVIDER,
                message: format!("no HypervisorProvider {}", hm.spec.provider),
            });
        }
        let book = crate::locks::lock(book);
        match view::host_nodes(&book, nodes, &hm.spec.provider, &hm.spec.host) {
            HostNodes::NoInventory => Err(Blocker {
                reason: m::UNKNOWN_HOST,
                message: format!(
                    "HypervisorProvider {} has not reported its VMs yet; nothing is done until it does",
                    hm.spec.provider
                ),
            }),
            HostNodes::UnknownHost { hosts } => Err(Blocker {
                reason: m::UNKNOWN_HOST,
                message: format!(
                    "HypervisorProvider {} reports no VM on host {:?}; its hosts: {}",
                    hm.spec.provider,
                    hm.spec.host,
                    hosts.into_iter().collect::<Vec<_>>().join(", ")
                ),
            }),
            HostNodes::Found(found) => Ok((spec, found)),
        }
    }

    async fn write_status(
        &mut self,
        ctx: &Context,
        hm: &HostMaintenance,
        plan: &MaintenancePlan,
        host_in_maintenance: Option<bool>,
        now: SystemTime,
    ) {
        let previous = hm.status.clone().unwrap_or_default();
        // Once ended, the status stays as it was when it ended (why it ended, what was left).
        if previous.phase.as_deref() == Some(m::ENDED) && plan.phase == m::ENDED {
            return;
        }
        let blocked = plan.blockers.first();
        let verdicts = [
            match blocked {
                Some(b) => ConditionVerdict::new(
                    m::DRAIN_BLOCKED,
                    plan.phase != m::ENDED || b.reason == m::ABORTED,
                    b.reason,
                    plan.blockers
                        .iter()
                        .map(|b| b.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => ConditionVerdict::new(
                    m::DRAIN_BLOCKED,
                    false,
                    m::NOT_BLOCKED,
                    "nothing blocks the drain",
                ),
            },
            if plan.ready_for_maintenance() {
                ConditionVerdict::new(
                    m::READY_FOR_MAINTENANCE,
                    true,
                    m::DRAINED_REASON,
                    format!("every node on host {} is drained", hm.spec.host),
                )
            } else {
                ConditionVerdict::new(
                    m::READY_FOR_MAINTENANCE,
                    false,
                    m::NOT_DRAINED,
                    format!(
                        "{} pod(s) still to leave the host's nodes",
                        plan.pending_pods
                    ),
                )
            },
        ];
        let started = plan.phase != m::PENDING || !plan.cordon.is_empty();
        let status = HostMaintenanceStatus {
            phase: Some(plan.phase.to_string()),
            conditions: merge(
                &previous.conditions,
                &verdicts,
                hm.metadata.generation,
                Timestamp::now(),
            ),
            started_at: previous.started_at.clone().or_else(|| {
                started.then(|| Time(Timestamp::try_from(now).unwrap_or_else(|_| Timestamp::now())))
            }),
            pending_pods: plan.pending_pods as i32,
            nodes: plan
                .nodes
                .iter()
                .map(|n| MaintenanceNode {
                    name: n.name.clone(),
                    vm: n.vm.clone(),
                    state: n.state.to_string(),
                    pending_pods: n.pending_pods as i32,
                })
                .collect(),
            workloads: plan
                .workloads
                .iter()
                .map(|w| MaintenanceWorkload {
                    workload: w.workload.clone(),
                    intent: w.intent.clone(),
                    pods_on_host: w.pods_on_host as i32,
                    ready: w.ready as i32,
                    evictable: w.evictable,
                    message: w.message.clone(),
                })
                .collect(),
            host_in_maintenance,
            observed_generation: hm.metadata.generation,
        };
        let name = hm.name_any();
        let states: Vec<&str> = plan.nodes.iter().map(|n| n.state).collect();
        ctx.metrics
            .maintenance(&name, plan.phase, plan.pending_pods, &states);
        if self.written.get(&name) == Some(&status) || previous == status {
            self.written.insert(name, status);
            return;
        }
        if previous.phase != status.phase {
            info!(maintenance = %name, phase = plan.phase, "host maintenance phase");
            let warning = matches!(plan.phase, m::BLOCKED | m::TIMED_OUT);
            let note = match blocked {
                Some(b) if warning || plan.phase == m::ENDED => {
                    format!("{}: {}", plan.phase, b.message)
                }
                _ => format!(
                    "{} ({} node(s), {} pod(s) to move)",
                    plan.phase,
                    plan.nodes.len(),
                    plan.pending_pods
                ),
            };
            publish(
                ctx,
                hm,
                warning,
                blocked.map_or(plan.phase, |b| b.reason),
                note,
            )
            .await;
        }

        let body = plumbline_crds::apply::status::<HostMaintenance>(serde_json::json!(status));
        match Api::<HostMaintenance>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                self.written.insert(name, status);
            }
            Err(e) => {
                warn!(maintenance = %name, error = %e, "writing HostMaintenance status failed")
            }
        }
    }
}

/// The ledger entries for the nodes the plan cordons and the workloads it surges.
fn ledger_entries(
    hm: &HostMaintenance,
    plan: &MaintenancePlan,
    operator: &str,
) -> Vec<InfraChangeSpec> {
    let reason = format!(
        "host {} of {} goes into maintenance{}",
        hm.spec.host,
        hm.spec.provider,
        hm.spec
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let entry = |target, setting: &str, desired: String, purpose, reason: String| InfraChangeSpec {
        target,
        setting: setting.to_string(),
        desired,
        purpose,
        owners: vec![ChangeOwner {
            intent: view::owner_name(hm),
            reason,
        }],
        operator: operator.to_string(),
        throttle: None,
    };
    let cordons = plan.cordon.iter().map(|node| {
        entry(
            ChangeTarget::node(node),
            UNSCHEDULABLE,
            PRESENT.to_string(),
            ChangePurpose::MaintenanceCordon,
            reason.clone(),
        )
    });
    let surges = plan.surge.iter().filter_map(|s| {
        let w = view::workload_ref(&s.workload)?;
        Some(entry(
            ChangeTarget::workload(w.kind, &w.namespace, &w.name),
            REPLICAS,
            s.replicas.to_string(),
            ChangePurpose::MaintenanceSurge,
            format!(
                "{} more replica(s) for WorkloadIntent {} while its pods leave the host: {reason}",
                s.by, s.intent
            ),
        ))
    });
    let host_mode = plan.host_mode.then(|| {
        entry(
            ChangeTarget::host(&hm.spec.provider, &hm.spec.host),
            MAINTENANCE_MODE,
            PRESENT.to_string(),
            ChangePurpose::HostMaintenanceMode,
            format!("every node on it is drained; {reason}"),
        )
    });
    cordons.chain(surges).chain(host_mode).collect()
}

/// An Event for each surge the plan starts (one this maintenance has not asked for yet).
async fn announce_surges(
    ctx: &Context,
    hm: &HostMaintenance,
    plan: &MaintenancePlan,
    changes: &[Arc<plumbline_crds::InfraChange>],
    operator: &str,
) {
    let in_force = view::surges_of(hm, changes, operator);
    for s in plan.surge.iter().filter(|s| !in_force.contains_key(&s.workload)) {
        publish(
            ctx,
            hm,
            false,
            m::SURGED,
            format!(
                "{} surged by {} to {} replicas for WorkloadIntent {} before its pods leave the host",
                s.workload, s.by, s.replicas, s.intent
            ),
        )
        .await;
    }
}

/// Evicts (or, with `Force` after the timeout, deletes) the pods the plan names, a bounded
/// number per pass.
async fn move_pods(ctx: &Context, hm: &HostMaintenance, plan: &MaintenancePlan) {
    let moves = plan
        .evict
        .iter()
        .map(|p| (p, false))
        .chain(plan.delete.iter().map(|p| (p, true)))
        .take(MOVES_PER_PASS);
    for ((namespace, name), force) in moves {
        let result = if force {
            Api::<Pod>::namespaced(ctx.client.clone(), namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
        } else {
            evict(ctx, namespace, name).await
        };
        match result {
            Ok(()) => {
                ctx.metrics
                    .maintenance_moved(if force { "deleted" } else { "evicted" });
                let (reason, verb) = if force {
                    (
                        m::POD_DELETED,
                        "deleted after the drain timeout (onTimeout: Force)",
                    )
                } else {
                    (m::POD_EVICTED, "evicted")
                };
                publish(
                    ctx,
                    hm,
                    force,
                    reason,
                    format!("pod {namespace}/{name} {verb}"),
                )
                .await;
            }
            // A budget refused it after all (429), or it is gone already (404).
            Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => {
                ctx.metrics.maintenance_moved("refused");
            }
            Err(e) => warn!(pod = %format!("{namespace}/{name}"), error = %e, "evicting failed"),
        }
    }
}

/// One eviction, in the policy version the server serves (policy/v1beta1 on 1.20).
async fn evict(ctx: &Context, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let body = serde_json::json!({
        "apiVersion": ctx.apis.pdb.api_version,
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    });
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}/eviction"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).expect("an Eviction serializes"))
    .expect("a valid eviction request");
    ctx.client
        .request::<serde_json::Value>(request)
        .await
        .map(|_| ())
}

async fn publish(ctx: &Context, hm: &HostMaintenance, warning: bool, reason: &str, note: String) {
    ctx.publish_cluster_scoped(hm, crate::context::event(warning, reason, &note, "Drain"))
        .await;
}
