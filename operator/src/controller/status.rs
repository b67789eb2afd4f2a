//! Writing an intent's status with server-side apply under the field manager `plumbline`.
//!
//! The controller owns `conditions`, `observedGeneration`, `plan`, `nextTransition` and
//! `signals`. `backing`, `guard` and `placement` belong to the storage-health loop, which
//! applies them under its own field manager, so they are left out of this apply
//! configuration entirely.
//!
//! The controller is the one writer of `conditions`: an API server that applies the list as
//! a whole (Kubernetes 1.20 does for this CRD) would let two writers replace each other's
//! entries. So the `SpreadAcrossHosts` verdict the health loop puts in `status.placement` is
//! written as a condition here (a status change reconciles the intent).

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    ResourceExt,
};
use plumbline_crds::{names::FIELD_MANAGER, PlannedAction, SignalStatus, WorkloadIntent};
use serde_json::json;

use crate::{context::Context, Error, Result};

/// The part of the status the controller decides.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerStatus {
    pub conditions: Vec<Condition>,
    pub observed_generation: Option<i64>,
    pub plan: Vec<PlannedAction>,
    pub next_transition: Option<Time>,
    /// `status.signals`: the activation signals' memories.
    pub signals: Vec<SignalStatus>,
}

pub async fn write(ctx: &Context, wi: &WorkloadIntent, status: &ControllerStatus) -> Result<()> {
    let name = wi.name_any();
    let namespace = wi.namespace().unwrap_or_default();
    let mut conditions = status.conditions.clone();
    conditions.extend(super::conditions::spread(wi, Timestamp::now()));
    let mut body = plumbline_crds::apply::status::<WorkloadIntent>(json!({
        "conditions": conditions,
        "plan": status.plan,
    }));
    if let Some(g) = status.observed_generation {
        body["status"]["observedGeneration"] = json!(g);
    }
    if !status.signals.is_empty() {
        body["status"]["signals"] = json!(status.signals);
    }
    if let Some(t) = &status.next_transition {
        body["status"]["nextTransition"] = json!(t);
    }
    // Untyped: the response must not need decoding (an intent with unreadable fields is
    // reported through here).
    super::lenient::api(&ctx.client, Some(&namespace))
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| {
            Error::kube(
                format!("writing status of WorkloadIntent {namespace}/{name}"),
                source,
            )
        })?;
    Ok(())
}
