//! Reverting what an intent changed on Kubernetes: the workload's fields go back to their
//! previous values and owners, the intent's PodDisruptionBudget goes away. Fields that other
//! managers own were never Plumbline's and are not touched.

use kube::{
    runtime::events::{Event, EventType},
    ResourceExt,
};
use plumbline_crds::{conditions::reason, names::FIELD_MANAGER, WorkloadIntent};
use std::collections::BTreeMap;
use tracing::info;

use super::{
    apply::{self, WorkloadRef},
    fields::{self, Baseline},
};
use crate::{context::Context, Error, Result};

/// What a revert changed, for Events and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// Workload fields released or handed back, as dotted paths.
    pub fields: Vec<String>,
    /// PodDisruptionBudgets deleted.
    pub pdbs: Vec<String>,
}

/// Reverts everything `wi` holds. Idempotent; a workload held by another intent is left alone.
pub async fn revert(ctx: &Context, wi: &WorkloadIntent) -> Result<Reverted> {
    let mut reverted = Reverted {
        fields: release_workload(ctx, wi, &WorkloadRef::of(wi)).await?,
        ..Default::default()
    };
    for pdb in apply::own_pdbs(ctx, wi).await? {
        let name = pdb.name_any();
        if apply::delete_pdb(ctx, wi, &name).await? {
            reverted.pdbs.push(name);
        }
    }
    Ok(reverted)
}

/// Hands back and releases every field `wi` holds on `target` (which need not be its current
/// target: after a retarget the old workload is released this way). Returns the fields.
pub async fn release_workload(
    ctx: &Context,
    wi: &WorkloadIntent,
    target: &WorkloadRef,
) -> Result<Vec<String>> {
    let mut released = Vec::new();
    let live = apply::workload_api(&ctx.client, target)
        .get_opt(&target.name)
        .await
        .map_err(|source| Error::kube(format!("reading {target} to revert it"), source))?;
    let Some(live) = live else {
        return Ok(released);
    };
    let held_by_us = fields::holder(&live) == Some(wi.name_any().as_str());
    if held_by_us && fields::has_plumbline_fields(&live) {
        let baseline = Baseline::from_annotation(&live);
        let mut rv = live.resource_version();
        for (field, previous) in &baseline.0 {
            if !fields::owned_by(&live, *field, FIELD_MANAGER) {
                continue;
            }
            if let (Some(value), Some(manager)) = (&previous.value, &previous.manager) {
                rv = apply::hand_back(ctx, target, *field, value.clone(), manager, rv.as_deref())
                    .await?;
            }
            released.push(field.dotted());
        }
        // Applying an empty configuration releases every field Plumbline still owns
        // (including the baseline and holder annotations); unowned fields fall back to
        // their defaults, which is what they were before Plumbline set them.
        apply::apply_workload(
            ctx,
            target,
            &BTreeMap::new(),
            &Baseline::default(),
            None,
            rv.as_deref(),
        )
        .await?;
    }
    Ok(released)
}

/// After a retarget, `status.plan` still names the workload the intent governed before; the
/// planner only sees the current target, so the old one is released here.
pub async fn release_former_targets(ctx: &Context, wi: &WorkloadIntent) -> Result<()> {
    for target in former_targets(wi) {
        let fields = release_workload(ctx, wi, &target).await?;
        if !fields.is_empty() {
            info!(%target, ?fields, "released the intent's former target");
            ctx.publish(
                wi,
                Event {
                    type_: EventType::Normal,
                    reason: reason::REVERTED.to_string(),
                    note: Some(format!(
                        "no longer the target: released {} on {target}",
                        fields.join(", ")
                    )),
                    action: "Revert".to_string(),
                    secondary: None,
                },
            )
            .await;
        }
    }
    Ok(())
}

/// The workloads `wi` held before (as its `status.plan` records) that are no longer its
/// target: after a retarget they are released.
fn former_targets(wi: &WorkloadIntent) -> Vec<WorkloadRef> {
    let current = WorkloadRef::of(wi);
    let mut former: Vec<WorkloadRef> = Vec::new();
    for entry in wi
        .status
        .as_ref()
        .map(|s| s.plan.as_slice())
        .unwrap_or_default()
    {
        let kind = match entry.target.kind.as_str() {
            "Deployment" => plumbline_crds::TargetKind::Deployment,
            "StatefulSet" => plumbline_crds::TargetKind::StatefulSet,
            _ => continue,
        };
        let target = WorkloadRef {
            kind,
            namespace: entry
                .target
                .namespace
                .clone()
                .unwrap_or_else(|| current.namespace.clone()),
            name: entry.target.name.clone(),
        };
        if target != current && !former.contains(&target) {
            former.push(target);
        }
    }
    former
}
