//! What an actuator tells about one `InfraChange`: its status (server-side apply under the
//! actuator's field manager, the whole status each time), Events on the object, and the
//! finalizer it removes once the original is back.

use k8s_openapi::{api::core::v1::Node, jiff::Timestamp};
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::{event, infra_change as ic_state},
    names::{ACTUATOR_FIELD_MANAGER, INFRA_CHANGE_FINALIZER},
    ChangePurpose, InfraChange, InfraChangeStatus,
};
use plumbline_policies::ledger::owner_summary;
use serde_json::json;

use crate::{
    context::{self, Context},
    controller::conditions::{merge, ConditionVerdict},
};

/// The conditions that go with a state: Applied, Drifted, Reverting.
pub fn with_state(
    ic: &InfraChange,
    mut status: InfraChangeStatus,
    state: &'static str,
    message: &str,
) -> InfraChangeStatus {
    use ic_state::*;
    let applied = match state {
        APPLIED => ConditionVerdict::new(COND_APPLIED, true, APPLIED_REASON, message),
        DRIFTED => ConditionVerdict::new(COND_APPLIED, false, DRIFT_DETECTED, message),
        CONTESTED => ConditionVerdict::new(COND_APPLIED, false, CONTESTED, message),
        FAILED => ConditionVerdict::new(COND_APPLIED, false, APPLY_FAILED, message),
        UNSUPPORTED => ConditionVerdict::new(COND_APPLIED, false, UNSUPPORTED, message),
        _ => ConditionVerdict::new(COND_APPLIED, false, NOT_APPLIED, message),
    };
    let drifted = match state {
        DRIFTED | CONTESTED => ConditionVerdict::new(COND_DRIFTED, true, DRIFT_DETECTED, message),
        _ => ConditionVerdict::new(
            COND_DRIFTED,
            false,
            NO_DRIFT,
            "the value read back is the one wanted",
        ),
    };
    let reverting = match state {
        REVERTING => ConditionVerdict::new(COND_REVERTING, true, REVERTING, message),
        _ => ConditionVerdict::new(COND_REVERTING, false, NOT_REVERTING, "not being deleted"),
    };
    status.conditions = merge(
        &status.conditions,
        &[applied, drifted, reverting],
        ic.metadata.generation,
        Timestamp::now(),
    );
    status.state = Some(state.to_string());
    status.owner_summary = Some(owner_summary(&ic.spec.owners));
    status
}

/// Writes the whole status, to this very object: a JSON patch that first tests the object's
/// uid, so a status meant for an object that was deleted meanwhile never lands on a new one
/// of the same name (another instance's change to the same setting). The status subresource
/// ignores a uid in an apply body, and a resourceVersion would fail on every write of the
/// writer in between.
pub async fn write_status(
    ctx: &Context,
    ic: &InfraChange,
    status: &InfraChangeStatus,
) -> Result<(), kube::Error> {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": ic.uid()},
        {"op": "add", "path": "/status", "value": status},
    ]))
    .expect("a JSON patch of a test and an add");
    Api::<InfraChange>::all(ctx.client.clone())
        .patch_status(
            &ic.name_any(),
            &PatchParams {
                field_manager: Some(ACTUATOR_FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            },
            &Patch::Json::<()>(patch),
        )
        .await
        .map(|_| ())
}

/// An Event about the change (best effort).
pub async fn event(ctx: &Context, ic: &InfraChange, warning: bool, reason: &str, note: String) {
    ctx.publish_cluster_scoped(
        ic,
        context::event(warning, reason, &note, "ChangeInfrastructure"),
    )
    .await;
}

/// For a node taint, an Event on the Node too (`kubectl describe node` shows it):
/// `StorageTaintAdded` / `StorageTaintRemoved` with why.
pub async fn node_event(ctx: &Context, ic: &InfraChange, added: bool) {
    if ic.spec.purpose != ChangePurpose::StorageTaint {
        return;
    }
    let taint = ic
        .spec
        .setting
        .strip_prefix("taint/")
        .unwrap_or(&ic.spec.setting);
    let why: Vec<&str> = ic.spec.owners.iter().map(|o| o.reason.as_str()).collect();
    let note = format!(
        "{taint} {}: {}",
        if added { "added" } else { "removed" },
        if added {
            why.first()
                .copied()
                .unwrap_or("the node's storage is over budget")
                .to_string()
        } else {
            "the node's storage is no longer over budget for this operator's intents".to_string()
        }
    );
    let node = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(ic.spec.target.name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let reason = if added {
        event::STORAGE_TAINT_ADDED
    } else {
        event::STORAGE_TAINT_REMOVED
    };
    let event = context::event(false, reason, &note, "TaintNode");
    ctx.publish_cluster_scoped(&node, event).await;
}

/// Removes the finalizer from this very object, guarded by the resourceVersion read so a
/// concurrent change to the list is never overwritten. An object of the same name with
/// another uid is a new one (another instance's change to the same setting): it is left
/// alone, since ours is already gone.
pub async fn remove_finalizer(ctx: &Context, ic: &InfraChange) -> Result<(), kube::Error> {
    let api = Api::<InfraChange>::all(ctx.client.clone());
    for attempt in 1..=3 {
        let Some(current) = api.get_opt(&ic.name_any()).await? else {
            return Ok(());
        };
        if current.uid() != ic.uid() {
            return Ok(());
        }
        let finalizers: Vec<String> = current
            .finalizers()
            .iter()
            .filter(|f| f.as_str() != INFRA_CHANGE_FINALIZER)
            .cloned()
            .collect();
        if finalizers.len() == current.finalizers().len() {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version(), "finalizers": finalizers},
        });
        match api
            .patch(
                &ic.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
