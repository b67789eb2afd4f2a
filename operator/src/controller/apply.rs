//! Server-side apply of the Kubernetes half of a plan, under the field manager `plumbline`.
//!
//! Each object gets exactly one apply configuration from Plumbline, holding every field
//! Plumbline wants on it. Server-side apply then owns exactly those fields for us: fields other
//! managers own are never touched, and applying a smaller configuration later releases what
//! was left out.

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    scheduling::v1::PriorityClass,
};

use kube::{
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::ApiResource,
    Api, Resource, ResourceExt,
};
use plumbline_crds::{
    names::{FIELD_MANAGER, INTENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    TargetKind, WorkloadIntent,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::fields::{Baseline, WorkloadField};
use crate::{context::Context, Error, Result};
use plumbline_crds::names::{BASELINE_ANNOTATION, HOLDER_ANNOTATION};
pub use plumbline_policies::WorkloadRef;

/// The workload's objects, untyped: Deployments and StatefulSets are handled alike.
pub fn workload_api(client: &kube::Client, target: &WorkloadRef) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), &target.namespace, &resource(target.kind))
}

fn resource(kind: TargetKind) -> ApiResource {
    match kind {
        TargetKind::Deployment => ApiResource::erase::<Deployment>(&()),
        TargetKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn managed_labels(wi: &WorkloadIntent) -> Value {
    json!({ MANAGED_BY_LABEL: MANAGED_BY_VALUE, INTENT_LABEL: wi.name_any() })
}

/// Applies Plumbline's configuration of the workload: `fields`, the baseline that says how to
/// give each field back, and the intent holding it. `holder: None` (with no fields) releases
/// everything Plumbline held.
///
/// `resource_version` is the version the decision was made on. The apply is forced (Plumbline
/// takes the fields it sets), so without this precondition a change someone made a moment ago
/// would be overwritten; with it the API server answers 409 and the reconcile looks again.
pub async fn apply_workload(
    ctx: &Context,
    target: &WorkloadRef,
    fields: &BTreeMap<WorkloadField, Value>,
    baseline: &Baseline,
    holder: Option<&str>,
    resource_version: Option<&str>,
) -> Result<()> {
    let resource = resource(target.kind);
    let mut body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": target.name, "namespace": target.namespace },
    });
    if let Some(rv) = resource_version {
        body["metadata"]["resourceVersion"] = json!(rv);
    }
    if let Some(holder) = holder {
        body["metadata"]["annotations"] = json!({
            BASELINE_ANNOTATION: baseline.to_annotation(),
            HOLDER_ANNOTATION: holder,
        });
    }
    for (field, value) in fields {
        field.insert(&mut body, value.clone());
    }
    workload_api(&ctx.client, target)
        .patch(&target.name, &ssa(), &Patch::Apply(&body))
        .await
        .map_err(|source| {
            Error::kube(format!("applying {} to {target}", describe(fields)), source)
        })?;
    Ok(())
}

fn describe(fields: &BTreeMap<WorkloadField, Value>) -> String {
    if fields.is_empty() {
        "an empty configuration (releasing Plumbline's fields)".to_string()
    } else {
        fields
            .keys()
            .map(|f| f.dotted())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Gives `field` back to the manager that owned it before Plumbline, with its old value. An
/// update (not an apply) under that manager's name moves ownership of a changed field to it.
/// Conditional on `resource_version` like [`apply_workload`]; returns the new version.
pub async fn hand_back(
    ctx: &Context,
    target: &WorkloadRef,
    field: WorkloadField,
    value: Value,
    manager: &str,
    resource_version: Option<&str>,
) -> Result<Option<String>> {
    let mut body = json!({});
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    field.insert(&mut body, value);
    let params = PatchParams {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    };
    workload_api(&ctx.client, target)
        .patch(&target.name, &params, &Patch::Merge(&body))
        .await
        .map(|updated| updated.resource_version())
        .map_err(|source| {
            Error::kube(
                format!("restoring {} of {target} for {manager}", field.dotted()),
                source,
            )
        })
}

/// The tier's PriorityClass. Shared by every intent of the tier, so it is never deleted on
/// revert; its `value` is immutable, so a class of the same name with another value fails here.
pub async fn apply_priority_class(
    ctx: &Context,
    name: &str,
    value: i32,
    preemption: &str,
    description: &str,
) -> Result<()> {
    let body = json!({
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": { "name": name, "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE } },
        "value": value,
        "globalDefault": false,
        "preemptionPolicy": preemption,
        "description": description,
    });
    Api::<PriorityClass>::all(ctx.client.clone())
        .patch(name, &ssa(), &Patch::Apply(&body))
        .await
        .map_err(|source| {
            Error::kube(
                format!("applying PriorityClass {name} (value {value})"),
                source,
            )
        })?;
    Ok(())
}

fn pdb_api(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), namespace, &ctx.apis.pdb)
}

/// The intent's PodDisruptionBudget, owned by the intent (so it is garbage-collected even if
/// the finalizer were removed by hand) and selecting the workload's pods.
pub async fn apply_pdb(
    ctx: &Context,
    wi: &WorkloadIntent,
    name: &str,
    selector: &Value,
    min_available: &Value,
) -> Result<()> {
    let namespace = wi.namespace().unwrap_or_default();
    let owner = wi
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(o).expect("owner reference serializes"));
    let body = json!({
        "apiVersion": ctx.apis.pdb.api_version,
        "kind": ctx.apis.pdb.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": managed_labels(wi),
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": { "minAvailable": min_available, "selector": selector },
    });
    pdb_api(ctx, &namespace)
        .patch(name, &ssa(), &Patch::Apply(&body))
        .await
        .map_err(|source| {
            Error::kube(
                format!(
                    "applying PodDisruptionBudget {namespace}/{name} ({})",
                    ctx.apis.pdb.api_version
                ),
                source,
            )
        })?;
    Ok(())
}

/// Deletes the intent's PodDisruptionBudget if it exists and is the intent's own.
pub async fn delete_pdb(ctx: &Context, wi: &WorkloadIntent, name: &str) -> Result<bool> {
    let namespace = wi.namespace().unwrap_or_default();
    let api = pdb_api(ctx, &namespace);
    let what = format!("PodDisruptionBudget {namespace}/{name}");
    let Some(pdb) = api
        .get_opt(name)
        .await
        .map_err(|source| Error::kube(format!("reading {what}"), source))?
    else {
        return Ok(false);
    };
    let ours = pdb.labels().get(INTENT_LABEL) == Some(&wi.name_any())
        && pdb.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
    if !ours {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::kube(format!("deleting {what}"), source)),
    }
}

/// PodDisruptionBudgets in the namespace that Plumbline made for `wi`.
pub async fn own_pdbs(ctx: &Context, wi: &WorkloadIntent) -> Result<Vec<DynamicObject>> {
    let namespace = wi.namespace().unwrap_or_default();
    let selector = format!(
        "{INTENT_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}",
        wi.name_any()
    );
    let list = pdb_api(ctx, &namespace)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(|source| {
            Error::kube(
                format!(
                    "listing PodDisruptionBudgets of intent {namespace}/{}",
                    wi.name_any()
                ),
                source,
            )
        })?;
    Ok(list.items)
}
