//! Writing an intent's status with server-side apply under the field manager `plumbline`.
//!
//! The controller owns `conditions` Ready/Active/Degraded/SignalsHealthy, `observedGeneration`,
//! `plan`, `nextTransition` and `signals`. `backing` and `guard` belong to the storage-health loop, which applies them
//! under its own field manager, so they are left out of this apply configuration entirely.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
    let mut body = plumbline_crds::apply::status::<WorkloadIntent>(json!({
        "conditions": status.conditions,
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
