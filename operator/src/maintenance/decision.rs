//! One maintenance, observed and decided: the same path for the pass that carries it out and
//! for `plumbline explain hostmaintenance/NAME`, which shows what the next pass would do.

use k8s_openapi::api::core::v1::Node;
use kube::{Client, ResourceExt};
use plumbline_crds::{
    conditions::maintenance as m, HostMaintenance, HypervisorProvider, InfraChange, WorkloadIntent,
};
use plumbline_policies::maintenance::{
    plan_maintenance, Blocker, HostNode, MaintenancePlan, MaintenanceSpec, MaintenanceView,
};
use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::warn;

use super::view::{self, Budget, HostNodes};
use crate::{
    discovery::ServedApis,
    health::{book::HealthBook, pod::CachedPod},
};

/// What every maintenance's decision reads, listed once.
pub struct World<'a> {
    pub client: &'a Client,
    pub apis: &'a ServedApis,
    /// Every HostMaintenance not being deleted, oldest first.
    pub all: &'a [Arc<HostMaintenance>],
    pub providers: &'a [Arc<HypervisorProvider>],
    pub book: &'a Mutex<HealthBook>,
    pub nodes: &'a [Arc<Node>],
    pub pods: &'a [Arc<CachedPod>],
    pub intents: &'a [Arc<WorkloadIntent>],
    pub changes: &'a [Arc<InfraChange>],
    /// The operator instance whose ledger entries count as this maintenance's.
    pub operator: &'a str,
}

/// The plan for `world.all[i]` at `now`. `budgets` is listed on first need and kept for the
/// other maintenances of the pass.
pub async fn plan(
    world: &World<'_>,
    i: usize,
    budgets: &mut Option<Vec<Budget>>,
    now: SystemTime,
) -> MaintenancePlan {
    match observe(world, i, budgets, now).await {
        Ok(view) => plan_maintenance(&view, now),
        Err(blocker) => MaintenancePlan {
            phase: m::PENDING,
            ..MaintenancePlan::ended(vec![blocker])
        },
    }
}

async fn observe(
    world: &World<'_>,
    i: usize,
    budgets: &mut Option<Vec<Budget>>,
    now: SystemTime,
) -> Result<MaintenanceView, Blocker> {
    let hm = &world.all[i];
    let (spec, host_nodes) = check(hm, &world.all[..i], world)?;
    let host_pods = view::host_pods(world.pods, &host_nodes);
    if budgets.is_none() && !host_pods.is_empty() {
        *budgets = Some(view::budgets(world.client, world.apis).await.unwrap_or_else(|e| {
            warn!(error = %e, "listing PodDisruptionBudgets failed; every budget counts as allowing none");
            Vec::new()
        }));
    }
    let surges = view::surges_of(hm, world.changes, world.operator);
    let mut workloads = view::workload_facts(
        &host_pods,
        &surges,
        world.pods,
        world.intents,
        budgets.as_deref().unwrap_or_default(),
        now,
    );
    view::replicas(world.client, &host_pods, &mut workloads, &surges).await;
    let status = hm.status.clone().unwrap_or_default();
    let started_at = status
        .started_at
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .unwrap_or(now);
    Ok(MaintenanceView {
        spec,
        started_at: Some(started_at),
        previous_phase: status.phase.clone(),
        nodes: host_nodes,
        pods: host_pods,
        workloads,
        cordoned_by_us: view::cordoned_by(hm, world.changes, world.operator),
        host_mode_by_us: view::host_mode_by(hm, world.changes, world.operator),
    })
}

/// The checked spec and the host's nodes, or what stops this maintenance from acting.
fn check(
    hm: &HostMaintenance,
    earlier: &[Arc<HostMaintenance>],
    world: &World<'_>,
) -> Result<(MaintenanceSpec, Vec<HostNode>), Blocker> {
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
    if !world
        .providers
        .iter()
        .any(|p| p.name_any() == hm.spec.provider)
    {
        return Err(Blocker {
            reason: m::UNKNOWN_PROVIDER,
            message: format!("no HypervisorProvider {}", hm.spec.provider),
        });
    }
    let book = crate::locks::lock(world.book);
    match view::host_nodes(&book, world.nodes, &hm.spec.provider, &hm.spec.host) {
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
