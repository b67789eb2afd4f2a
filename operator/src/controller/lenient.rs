//! The intent watch, decoded leniently: one intent the types cannot read (e.g. a number beyond
//! int32 stored before the schema bounded it) never stops the watch of all the others
//! (kube-rs#774). Intents are watched as `DynamicObject`s and decoded one by one with
//! [`plumbline_crds::lenient::decode`]; an unreadable field is dropped and recorded, and the
//! controller reports it in the intent's `Degraded` condition with its field path. Fields the
//! apiserver pruned as unknown are found the same way when `kubectl apply` recorded what it sent.

use futures::{Stream, StreamExt};
use kube::{
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::watcher,
    Api, Client, ResourceExt,
};
use plumbline_crds::{
    conditions::{intent as condition, reason, status},
    lenient::{self, DecodeError},
    names::FIELD_MANAGER,
    WorkloadIntent,
};
use serde_json::json;
use tracing::warn;

/// Spec fields kept from an intent with unreadable fields: what finds the workload whose
/// changes must be undone. Everything else is dropped, so nothing acts on half an intent.
const KEPT: &[&str] = &["target", "priority"];

pub fn resource() -> ApiResource {
    ApiResource::erase::<WorkloadIntent>(&())
}

pub fn api(client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource()),
        None => Api::all_with(client.clone(), &resource()),
    }
}

/// An intent that cannot be represented at all, with why.
type Unrepresentable = Box<(DynamicObject, Vec<DecodeError>)>;

/// The intent as far as it can be read; `Err` when not even its target can be.
pub fn decode(obj: DynamicObject) -> Result<WorkloadIntent, Unrepresentable> {
    let value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            let errors = vec![DecodeError {
                path: "(object)".into(),
                message: e.to_string(),
            }];
            return Err(Box::new((obj, errors)));
        }
    };
    let unknown = written_spec(&obj)
        .map(|spec| lenient::unknown_fields::<plumbline_crds::WorkloadIntentSpec>(&spec, "spec"))
        .unwrap_or_default();
    match lenient::decode_with::<WorkloadIntent>(value, KEPT, unknown) {
        Ok((wi, errors)) => {
            if !errors.is_empty() {
                warn!(
                    intent = %format!("{}/{}", wi.namespace().unwrap_or_default(), wi.name_any()),
                    errors = %errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "WorkloadIntent has fields that cannot be read; reporting it as invalid"
                );
            }
            Ok(wi)
        }
        Err(errors) => Err(Box::new((obj, errors))),
    }
}

/// An intent from a manifest (`explain -f`), decoded as the watch decodes a stored one, with
/// the manifest's own unknown fields counted (nothing pruned them yet).
pub fn decode_manifest(value: serde_json::Value) -> Result<WorkloadIntent, Vec<DecodeError>> {
    let unknown = value
        .get("spec")
        .map(|spec| lenient::unknown_fields::<plumbline_crds::WorkloadIntentSpec>(spec, "spec"))
        .unwrap_or_default();
    lenient::decode_with::<WorkloadIntent>(value, KEPT, unknown).map(|(wi, _)| wi)
}

/// The spec as `kubectl apply` last sent it (its `last-applied-configuration` annotation): the
/// one record of fields the apiserver pruned as unknown.
fn written_spec(obj: &DynamicObject) -> Option<serde_json::Value> {
    let text = obj
        .annotations()
        .get("kubectl.kubernetes.io/last-applied-configuration")?;
    let mut applied: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(applied.get_mut("spec")?.take())
}

/// Every intent the watch sees, decoded leniently. One that cannot be represented at all is
/// left out of the cache, logged, and marked `Degraded` directly on the API server.
pub fn watch(
    client: Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<watcher::Event<WorkloadIntent>, watcher::Error>> + Send + 'static {
    use watcher::Event;
    watcher(api(&client, namespace), watcher::Config::default()).filter_map(move |event| {
        let client = client.clone();
        async move {
            let typed = |obj: DynamicObject| match decode(obj) {
                Ok(wi) => Some(wi),
                Err(bad) => {
                    let (obj, errors) = *bad;
                    tokio::spawn(report_unrepresentable(client.clone(), obj, errors));
                    None
                }
            };
            Some(event.map(|e| match e {
                Event::Apply(o) => typed(o).map(Event::Apply),
                Event::InitApply(o) => typed(o).map(Event::InitApply),
                // A deleted object needs no decoding beyond its identity; unreadable ones were
                // never cached.
                Event::Delete(o) => decode(o).ok().map(Event::Delete),
                Event::Init => Some(Event::Init),
                Event::InitDone => Some(Event::InitDone),
            }))
            .and_then(|r| r.transpose())
        }
    })
}

/// `wi` with `finalizer` added on the API server (a JSON patch guarded by the resourceVersion,
/// as kube's finalizer helper does, but untyped, so the response needs no decoding). Unchanged
/// when it is already there or the intent is being deleted.
pub async fn ensure_finalizer(
    client: &Client,
    wi: std::sync::Arc<WorkloadIntent>,
    finalizer: &str,
) -> kube::Result<std::sync::Arc<WorkloadIntent>> {
    if wi.metadata.deletion_timestamp.is_some() || wi.finalizers().iter().any(|f| f == finalizer) {
        return Ok(wi);
    }
    let namespace = wi.namespace().unwrap_or_default();
    let patch: json_patch::Patch = serde_json::from_value(match &wi.metadata.finalizers {
        Some(list) if !list.is_empty() => json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": wi.resource_version() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer },
        ]),
        _ => json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": wi.resource_version() },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer] },
        ]),
    })
    .expect("a well-formed JSON patch");
    api(client, Some(&namespace))
        .patch(
            &wi.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    let mut updated = (*wi).clone();
    updated
        .metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(finalizer.to_string());
    Ok(std::sync::Arc::new(updated))
}

/// Intents in `namespace`, read from the API and decoded leniently (for `explain`).
pub async fn list(client: &Client, namespace: &str) -> kube::Result<Vec<WorkloadIntent>> {
    Ok(api(client, Some(namespace))
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|o| decode(o).ok())
        .collect())
}

/// Marks an intent that cannot be represented at all `Degraded` with the field paths (there is
/// nothing of it to plan or undo).
async fn report_unrepresentable(client: Client, obj: DynamicObject, errors: Vec<DecodeError>) {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    warn!(intent = %format!("{namespace}/{name}"), %message, "WorkloadIntent cannot be read at all; it is not reconciled");
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let generation = obj.metadata.generation;
    let body = plumbline_crds::apply::status::<WorkloadIntent>(json!({
        "observedGeneration": generation,
        "conditions": [
            { "type": condition::DEGRADED, "status": status::TRUE, "reason": reason::INVALID_SPEC,
              "message": message, "lastTransitionTime": now, "observedGeneration": generation },
            { "type": condition::READY, "status": status::FALSE, "reason": reason::INVALID_SPEC,
              "message": "nothing is applied", "lastTransitionTime": now, "observedGeneration": generation },
        ],
    }));
    if let Err(e) = api(&client, Some(&namespace))
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        warn!(intent = %format!("{namespace}/{name}"), error = %e, "writing the status of an unreadable WorkloadIntent failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_with_unknown_and_unreadable_fields_is_marked_with_their_paths() {
        let manifest = json!({
            "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
            "metadata": {"name": "web"},
            "spec": {"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                     "replicaFloor": 3, "availability": {"replicaFloor": 2147483648u64}},
        });
        let wi = decode_manifest(manifest).expect("representable");
        let paths: Vec<String> = lenient::decode_errors(&wi.metadata)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            ["spec.replicaFloor", "spec.availability.replicaFloor"]
        );
        assert!(
            wi.spec.availability.is_none(),
            "nothing of a bad spec is kept"
        );
    }
}
