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

pub mod decision;
pub mod detect;
pub mod explain;
pub mod status;
pub mod view;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::maintenance as m, ChangeOwner, ChangePurpose, ChangeTarget, HostMaintenance,
    HostMaintenanceStatus, InfraChangeSpec,
};
use plumbline_policies::{
    ledger::{MAINTENANCE_MODE, PRESENT, REPLICAS, UNSCHEDULABLE},
    maintenance::MaintenancePlan,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::{info, warn};

use crate::{
    context::Context,
    health::{book::HealthBook, caches::Caches},
};

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
        let (nodes, pods, providers) = (
            caches.nodes.state(),
            caches.pods.state(),
            caches.providers.state(),
        );
        let intents = ctx.intents.state();
        let world = decision::World {
            client: &ctx.client,
            apis: &ctx.apis,
            all: &all,
            providers: &providers,
            book,
            nodes: &nodes,
            pods: &pods,
            intents: &intents,
            changes: &changes,
            operator,
        };
        let mut budgets = None;
        let mut wanted = Vec::new();
        for (i, hm) in all.iter().enumerate() {
            let plan = decision::plan(&world, i, &mut budgets, now).await;
            wanted.extend(ledger_entries(hm, &plan, operator));
            announce_surges(ctx, hm, &plan, &changes, operator).await;
            move_pods(ctx, hm, &plan).await;
            let in_maintenance = view::host_in_maintenance(book, hm);
            self.write_status(ctx, hm, &plan, in_maintenance, now).await;
        }
        wanted
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
        let status = status::status_for(hm, plan, host_in_maintenance, now);
        let blocked = plan.blockers.first();
        let name = hm.name_any();
        let states: Vec<&str> = plan.nodes.iter().map(|n| n.state).collect();
        ctx.metrics.maintenance(
            &name,
            plan.phase,
            plan.pending_pods,
            &states,
            status::blocked_for(&status, now),
        );
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
        relocation: None,
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
    for s in plan
        .surge
        .iter()
        .filter(|s| !in_force.contains_key(&s.workload))
    {
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
