//! `infrastructure.protectBackingVms` through the ledger: the VMs under an active intent's
//! pods should have their tier's CPU shares. The decision is
//! `plumbline_policies::health::plan_protection`, fed with what the ledger has in force; the
//! result is the set of CPU-share changes wanted, carried out (and reverted) by the actuators.
//! This module reports: Events on the intents, and `status.protectedVms`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
    Api,
};
use plumbline_adapters::{Capability, Support};
use plumbline_crds::{
    conditions::{event, infra_change as state, protection as reason},
    names::PROTECT_FIELD_MANAGER,
    ChangePurpose, InfraChange, InfraChangeSpec, ProtectedVmStatus, WorkloadIntent,
};
use plumbline_policies::{
    health::{
        plan_protection, ProtectAction, Protection, ProtectionClaim, ProtectionPlan, SharesSupport,
    },
    ledger::{from_time, protection_spec},
};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::{info, warn};

use super::{
    book::HealthBook,
    caches::Caches,
    graph::{IntentView, VmKey},
};
use crate::context::Context;

/// What the loop remembers between passes: only what it told, never what is in force.
#[derive(Default)]
pub struct Protections {
    /// (VM, intent) pairs already told that the VM cannot be protected: told once.
    told_unsupported: BTreeSet<(VmKey, String)>,
    /// Intents by `namespace/name`, kept while a release Event may still concern them.
    intents: BTreeMap<String, Arc<WorkloadIntent>>,
    /// `status.protectedVms` last written per intent.
    written: HashMap<String, Value>,
}

/// The CPU-share changes of this operator instance, not being deleted, by VM.
fn share_objects(
    changes: &[Arc<InfraChange>],
    operator: &str,
) -> BTreeMap<VmKey, Arc<InfraChange>> {
    crate::ledger::entries(changes, operator, ChangePurpose::BackingVmProtection)
        .filter_map(|ic| {
            let t = &ic.spec.target;
            Some((
                VmKey::from_ref(&plumbline_crds::VmRef {
                    name: t.name.clone(),
                    id: t.vm_id.clone()?,
                    provider: t.provider.clone()?,
                }),
                ic.clone(),
            ))
        })
        .collect()
}

fn support(
    book: &HealthBook,
    objects: &BTreeMap<VmKey, Arc<InfraChange>>,
    vm: &VmKey,
) -> SharesSupport {
    if let Some(status) = objects.get(vm).and_then(|ic| ic.status.as_ref()) {
        if status.state.as_deref() == Some(state::UNSUPPORTED) {
            return SharesSupport::Unsupported(status.last_error.clone().unwrap_or_default());
        }
    }
    match book.providers().get(&vm.provider) {
        Some(p) if p.connected => match p.capabilities.support(Capability::CpuShares) {
            Support::Supported => SharesSupport::Supported,
            Support::Unsupported { reason } => SharesSupport::Unsupported(reason),
            Support::Unknown { .. } => SharesSupport::Unknown,
        },
        _ => SharesSupport::Unknown,
    }
}

fn claims(views: &[IntentView]) -> Vec<ProtectionClaim<VmKey>> {
    views
        .iter()
        .map(|v| {
            ProtectionClaim::new(
                v.label(),
                v.intent.spec.priority,
                v.intent
                    .spec
                    .infrastructure
                    .as_ref()
                    .is_some_and(|i| i.protect_backing_vms),
                v.active,
                v.pods.iter().filter_map(|p| p.vm.clone()).collect(),
            )
        })
        .collect()
}

impl Protections {
    /// One pass: decide from the ledger, report, and return the CPU-share changes wanted.
    /// `views` are the pass's graph (`graph::build`), of the intents their tenant policies
    /// allow: only those may protect VMs.
    pub async fn pass(
        &mut self,
        ctx: &Context,
        caches: &Caches,
        views: &[IntentView],
        book: &Arc<Mutex<HealthBook>>,
        operator: &str,
        now: SystemTime,
    ) -> Vec<InfraChangeSpec> {
        let changes = caches.changes.state();
        let objects = share_objects(&changes, operator);
        let in_force: BTreeMap<VmKey, Protection> = objects
            .iter()
            .filter_map(|(vm, ic)| {
                Some((
                    vm.clone(),
                    Protection {
                        shares: ic.spec.desired.parse().ok()?,
                        original: ic.status.as_ref()?.original.as_deref()?.parse().ok(),
                        since: ic
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(from_time)
                            .unwrap_or(now),
                    },
                ))
            })
            .collect();
        let (plan, supported) = {
            let b = match book.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            let plan = plan_protection(
                now,
                &claims(views),
                |vm| support(&b, &objects, vm),
                &in_force,
                &BTreeMap::new(),
            );
            let supported: BTreeSet<VmKey> = plan
                .wanted
                .keys()
                .filter(|vm| support(&b, &objects, vm) == SharesSupport::Supported)
                .cloned()
                .collect();
            (plan, supported)
        };
        for v in views {
            self.intents.insert(v.label(), v.intent.clone());
        }

        // Wanted where the provider can do it, and kept (not reverted) while its support is
        // unknown, e.g. the provider is disconnected.
        let wanted: Vec<InfraChangeSpec> = plan
            .wanted
            .iter()
            .filter(|(vm, _)| supported.contains(*vm) || objects.contains_key(*vm))
            .map(|(vm, w)| {
                let why = format!(
                    "VM {vm} backs pods of {}: tier CPU shares {}",
                    w.by, w.shares
                );
                protection_spec(&vm.to_ref(), w, &why, operator)
            })
            .collect();

        self.report_unsupported(ctx, &plan).await;
        for action in &plan.actions {
            match action {
                ProtectAction::Apply { vm, reason, .. } => {
                    let told: BTreeSet<String> = objects
                        .get(vm)
                        .map(|ic| ic.spec.owners.iter().map(|o| o.intent.clone()).collect())
                        .unwrap_or_default();
                    let to: BTreeSet<String> = plan
                        .wanted
                        .get(vm)
                        .map(|w| w.intents.clone())
                        .unwrap_or_default();
                    let new = if objects
                        .get(vm)
                        .and_then(|ic| ic.spec.desired.parse::<u64>().ok())
                        == plan.wanted.get(vm).map(|w| w.shares)
                    {
                        to.difference(&told).cloned().collect()
                    } else {
                        to
                    };
                    info!(vm = %vm, provider = %vm.provider, %reason, "backing VM to be protected");
                    self.publish(
                        ctx,
                        &new,
                        EventType::Normal,
                        event::BACKING_VM_PROTECTED,
                        reason,
                    )
                    .await;
                }
                ProtectAction::Release { vm, reason } => {
                    let owners: BTreeSet<String> = objects
                        .get(vm)
                        .map(|ic| ic.spec.owners.iter().map(|o| o.intent.clone()).collect())
                        .unwrap_or_default();
                    info!(vm = %vm, %reason, "backing VM to be released");
                    self.publish(
                        ctx,
                        &owners,
                        EventType::Normal,
                        event::BACKING_VM_RELEASED,
                        reason,
                    )
                    .await;
                }
            }
        }
        self.write_status(ctx, views, &plan, &objects).await;

        // Deleted intents are kept while a release Event may still concern them.
        let current: BTreeSet<String> = views.iter().map(IntentView::label).collect();
        self.intents.retain(|label, _| {
            current.contains(label)
                || objects
                    .values()
                    .any(|ic| ic.spec.owners.iter().any(|o| &o.intent == label))
        });
        wanted
    }

    /// Unsupported VMs are told once per intent: an Event, and the reason in status.
    async fn report_unsupported(&mut self, ctx: &Context, plan: &ProtectionPlan<VmKey>) {
        for (vm, why) in &plan.unsupported {
            let Some(wanted) = plan.wanted.get(vm) else {
                continue;
            };
            let new: BTreeSet<String> = wanted
                .intents
                .iter()
                .filter(|i| !self.told_unsupported.contains(&(vm.clone(), (*i).clone())))
                .cloned()
                .collect();
            if new.is_empty() {
                continue;
            }
            info!(vm = %vm, provider = %vm.provider, reason = %why, "cannot protect the backing VM: no CPU shares");
            let note = format!(
                "VM {vm} (provider {}) cannot be given CPU shares: {why}; it is not protected",
                vm.provider
            );
            self.publish(
                ctx,
                &new,
                EventType::Warning,
                reason::CPU_SHARES_UNSUPPORTED,
                &note,
            )
            .await;
            self.told_unsupported
                .extend(new.into_iter().map(|i| (vm.clone(), i)));
        }
        let wanted = &plan.wanted;
        self.told_unsupported
            .retain(|(vm, intent)| wanted.get(vm).is_some_and(|w| w.intents.contains(intent)));
    }

    /// The entries of one intent's `status.protectedVms`: what the ledger has in force.
    fn status_for(
        view: &IntentView,
        plan: &ProtectionPlan<VmKey>,
        objects: &BTreeMap<VmKey, Arc<InfraChange>>,
    ) -> Vec<ProtectedVmStatus> {
        let label = view.label();
        let vms: BTreeSet<&VmKey> = view.pods.iter().filter_map(|p| p.vm.as_ref()).collect();
        vms.into_iter()
            .filter(|vm| {
                plan.wanted
                    .get(vm)
                    .is_some_and(|w| w.intents.contains(&label))
            })
            .filter_map(|vm| {
                let entry = |reason: &str, message: Option<String>| ProtectedVmStatus {
                    vm: vm.name.clone(),
                    provider: vm.provider.clone(),
                    reason: reason.to_string(),
                    shares: None,
                    original: None,
                    since: None,
                    message,
                };
                if let Some(why) = plan.unsupported.get(vm) {
                    return Some(entry(reason::CPU_SHARES_UNSUPPORTED, Some(why.clone())));
                }
                let ic = objects.get(vm)?;
                let status = ic.status.clone().unwrap_or_default();
                match status.state.as_deref() {
                    Some(state::APPLIED) => Some(ProtectedVmStatus {
                        shares: status.observed.as_deref().and_then(|o| o.parse().ok()),
                        original: status.original.as_deref().and_then(|o| o.parse().ok()),
                        since: status_time(ic),
                        ..entry(reason::PROTECTED, None)
                    }),
                    Some(state::FAILED) => Some(entry(reason::PROTECT_FAILED, status.last_error)),
                    _ => None,
                }
            })
            .collect()
    }

    async fn write_status(
        &mut self,
        ctx: &Context,
        views: &[IntentView],
        plan: &ProtectionPlan<VmKey>,
        objects: &BTreeMap<VmKey, Arc<InfraChange>>,
    ) {
        for view in views {
            let entries = serde_json::to_value(Self::status_for(view, plan, objects))
                .expect("status entries serialize");
            let label = view.label();
            let shown = match self.written.get(&label) {
                Some(v) => v.clone(),
                None => serde_json::to_value(
                    view.intent
                        .status
                        .as_ref()
                        .map(|s| s.protected_vms.clone())
                        .unwrap_or_default(),
                )
                .expect("status entries serialize"),
            };
            if shown == entries {
                continue;
            }
            let patch =
                plumbline_crds::apply::status::<WorkloadIntent>(json!({ "protectedVms": entries }));
            match Api::<WorkloadIntent>::namespaced(ctx.client.clone(), &view.namespace)
                .patch_status(
                    &view.name,
                    &PatchParams::apply(PROTECT_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.written.insert(label, entries);
                }
                Err(e) => {
                    warn!(intent = %label, error = %e, "writing status.protectedVms failed")
                }
            }
        }
        let current: BTreeSet<String> = views.iter().map(IntentView::label).collect();
        self.written.retain(|label, _| current.contains(label));
    }

    async fn publish(
        &self,
        ctx: &Context,
        intents: &BTreeSet<String>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        for label in intents {
            let Some(wi) = self.intents.get(label) else {
                continue;
            };
            let event = Event {
                type_,
                reason: reason.to_string(),
                note: Some(note.chars().take(1000).collect()),
                action: "ProtectBackingVm".into(),
                secondary: None,
            };
            ctx.publish(wi.as_ref(), event).await;
        }
    }
}

/// When the shares were set: when the change was recorded, in whole seconds.
fn status_time(ic: &InfraChange) -> Option<Time> {
    ic.metadata.creation_timestamp.clone()
}
