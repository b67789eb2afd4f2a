//! Makes the ledger say what the health pass wants: `InfraChange`s are created or updated by
//! server-side apply (each operator instance under its own field manager, so one instance's
//! apply over another's object is a conflict, never an overwrite) and deleted when no longer
//! wanted, which hands them to their finalizer. A HypervisorProvider gets a finalizer while
//! changes target it, so deleting it waits until their originals are back.

use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::reflector::Store,
    Api, ResourceExt,
};
use plumbline_crds::{
    names::{
        INFRA_CHANGE_FINALIZER, LEDGER_FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
        OPERATOR_LABEL, PROVIDER_FINALIZER, PROVIDER_LABEL,
    },
    HypervisorProvider, InfraChange, InfraChangeSpec,
};
use plumbline_policies::ledger::diff;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use tracing::{debug, info, warn};

use crate::context::Context;

pub struct Writer {
    /// `spec.operator` of this instance.
    operator: String,
    /// Its label value and field-manager suffix.
    label: String,
    /// Changes another instance holds, reported once each.
    held_by_others: HashSet<String>,
}

impl Writer {
    pub fn new(namespace: Option<&str>) -> Self {
        Self {
            operator: super::instance(namespace),
            label: super::instance_label(namespace),
            held_by_others: HashSet::new(),
        }
    }

    pub fn operator(&self) -> &str {
        &self.operator
    }

    fn field_manager(&self) -> String {
        format!("{LEDGER_FIELD_MANAGER}.{}", self.label)
    }

    /// Writes what differs between `wanted` and the ledger, and releases provider finalizers
    /// that guard nothing any more.
    pub async fn sync(
        &mut self,
        ctx: &Context,
        changes: &Store<InfraChange>,
        providers: &Store<HypervisorProvider>,
        wanted: Vec<InfraChangeSpec>,
    ) {
        let existing = changes.state();
        let by_name: BTreeMap<String, &InfraChange> = existing
            .iter()
            .map(|ic| (ic.name_any(), ic.as_ref()))
            .collect();
        let providers_now: BTreeMap<String, std::sync::Arc<HypervisorProvider>> = providers
            .state()
            .into_iter()
            .map(|p| (p.name_any(), p))
            .collect();
        let mut held = HashSet::new();
        let wanted: Vec<InfraChangeSpec> = wanted
            .into_iter()
            .filter(|spec| {
                let name = InfraChange::name_for(&spec.target, &spec.setting);
                if let Some(other) = by_name.get(&name).filter(|ic| ic.spec.operator != self.operator) {
                    if !self.held_by_others.contains(&name) {
                        info!(change = %name, holder = %other.spec.operator, "wanted, but another operator instance holds this setting; leaving it alone");
                    }
                    held.insert(name);
                    return false;
                }
                // No new changes on a provider that is going away (or gone).
                match (&spec.target.kind, spec.target.provider.as_deref()) {
                    (_, Some(p)) => providers_now
                        .get(p)
                        .is_some_and(|hp| hp.metadata.deletion_timestamp.is_none()),
                    _ => true,
                }
            })
            .collect();
        self.held_by_others = held;

        let refs: Vec<&InfraChange> = existing.iter().map(|ic| ic.as_ref()).collect();
        let plan = diff(wanted, &refs, &self.operator);
        let api = Api::<InfraChange>::all(ctx.client.clone());
        let mut guarded: BTreeSet<String> = BTreeSet::new();
        for (name, spec) in plan.apply {
            if let Some(p) = spec.target.provider.as_deref() {
                if !guarded.contains(p) {
                    if let Some(hp) = providers_now.get(p) {
                        if let Err(e) = add_provider_finalizer(ctx, hp).await {
                            warn!(provider = %p, error = %e, "adding the provider finalizer failed; not recording the change yet");
                            continue;
                        }
                    }
                    guarded.insert(p.to_string());
                }
            }
            let mut labels = json!({
                OPERATOR_LABEL: self.label,
                MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            });
            if let Some(p) = &spec.target.provider {
                labels[PROVIDER_LABEL] = json!(p);
            }
            let mut metadata =
                json!({"name": name, "labels": labels, "finalizers": [INFRA_CHANGE_FINALIZER]});
            // An update is for the object the cache shows, never a new one of the same name.
            if let Some(uid) = by_name.get(&name).and_then(|ic| ic.metadata.uid.as_ref()) {
                metadata["uid"] = json!(uid);
            }
            let body = plumbline_crds::apply::body::<InfraChange>(
                json!({"metadata": metadata, "spec": spec}),
            );
            match api
                .patch(
                    &name,
                    &PatchParams::apply(&self.field_manager()),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => debug!(change = %name, desired = %spec.desired, "ledger entry written"),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    info!(change = %name, "another operator instance holds this setting; leaving it alone");
                    self.held_by_others.insert(name);
                }
                Err(e) => warn!(change = %name, error = %e, "writing the ledger entry failed"),
            }
        }
        for name in plan.delete {
            // Only the object the cache shows: the cache may lag behind its deletion and
            // another instance's new object of the same name.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: by_name.get(&name).and_then(|ic| ic.metadata.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    debug!(change = %name, "ledger entry deleted; its finalizer restores the original")
                }
                // Gone already, or replaced by another instance's object.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => warn!(change = %name, error = %e, "deleting the ledger entry failed"),
            }
        }
        self.release_providers(ctx, &existing, &providers_now).await;
    }

    /// A provider being deleted keeps its finalizer while any change (of any instance)
    /// targets it; then it is let go.
    async fn release_providers(
        &self,
        ctx: &Context,
        existing: &[std::sync::Arc<InfraChange>],
        providers: &BTreeMap<String, std::sync::Arc<HypervisorProvider>>,
    ) {
        for (name, hp) in providers {
            if hp.metadata.deletion_timestamp.is_none()
                || !hp.finalizers().iter().any(|f| f == PROVIDER_FINALIZER)
            {
                continue;
            }
            let left = existing
                .iter()
                .filter(|ic| ic.spec.target.provider.as_deref() == Some(name.as_str()))
                .count();
            if left > 0 {
                debug!(provider = %name, left, "provider deletion waits for its changes to be reverted");
                continue;
            }
            match set_provider_finalizer(ctx, name, false).await {
                Ok(()) => {
                    info!(provider = %name, "no change targets the provider any more; letting it go")
                }
                Err(e) => {
                    warn!(provider = %name, error = %e, "removing the provider finalizer failed")
                }
            }
        }
    }
}

async fn add_provider_finalizer(ctx: &Context, hp: &HypervisorProvider) -> Result<(), kube::Error> {
    if hp.finalizers().iter().any(|f| f == PROVIDER_FINALIZER) {
        return Ok(());
    }
    set_provider_finalizer(ctx, &hp.name_any(), true).await
}

/// Adds or removes the provider finalizer by read-modify-write guarded by resourceVersion.
async fn set_provider_finalizer(
    ctx: &Context,
    name: &str,
    present: bool,
) -> Result<(), kube::Error> {
    let api = Api::<HypervisorProvider>::all(ctx.client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let hp = api.get(name).await?;
        let mut finalizers: Vec<String> = hp
            .finalizers()
            .iter()
            .filter(|f| f.as_str() != PROVIDER_FINALIZER)
            .cloned()
            .collect();
        if present {
            finalizers.push(PROVIDER_FINALIZER.to_string());
        }
        if finalizers.len() == hp.finalizers().len()
            && present == hp.finalizers().iter().any(|f| f == PROVIDER_FINALIZER)
        {
            return Ok(());
        }
        let patch = json!({"metadata": {"resourceVersion": hp.resource_version(), "finalizers": finalizers}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {}
            Err(e) => return Err(e),
        }
    }
}
