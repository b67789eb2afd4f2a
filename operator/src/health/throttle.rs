//! Noisy-neighbour throttles through the ledger: the throttles in force are read from the
//! `InfraChange`s (so a new leader continues where the last one stopped), the ladder decides
//! this pass's steps and releases, and the result is the set of IOPS-limit changes wanted —
//! one per disk of each throttled VM. Every step and release is an Event on the intents
//! concerned; what is in force goes to their `status.neighbourThrottles`.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType},
    Resource, ResourceExt,
};
use plumbline_crds::{
    conditions::{event, infra_change as state},
    ChangeOwner, ChangePurpose, InfraChange, InfraChangeSpec, NeighbourThrottleStatus, VmRef,
};
use plumbline_policies::{
    health::{apply_neighbour_actions, NeighbourAction, Throttle},
    ledger::{throttle_from_spec, throttle_spec},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::graph::IntentView;
use crate::context::Context;

/// The throttle objects of this operator instance that are in force or wanted (not being
/// deleted), by throttled VM.
fn throttle_objects<'a>(
    changes: &'a [Arc<InfraChange>],
    operator: &'a str,
) -> impl Iterator<Item = &'a Arc<InfraChange>> {
    crate::ledger::entries(changes, operator, ChangePurpose::NeighbourThrottle)
}

/// The throttles in force according to the ledger.
pub fn in_force(changes: &[Arc<InfraChange>], operator: &str) -> BTreeMap<VmRef, Throttle<VmRef>> {
    throttle_objects(changes, operator)
        .filter_map(|ic| throttle_from_spec(&ic.spec))
        .map(|t| (t.vm.clone(), t))
        .collect()
}

/// The intents whose pods run on any of `vms`.
pub(super) fn intents_on(views: &[IntentView], vms: &BTreeSet<VmRef>) -> BTreeSet<String> {
    views
        .iter()
        .filter(|v| {
            v.pods
                .iter()
                .filter_map(|p| p.vm.as_ref())
                .any(|vm| vms.contains(&vm.to_ref()))
        })
        .map(IntentView::label)
        .collect()
}

/// Applies this pass's actions to the throttles in force and returns the IOPS-limit changes
/// wanted now. `disks` names a VM's disks (from the inventory, or failing that from its
/// existing ledger entries).
pub fn wanted(
    changes: &[Arc<InfraChange>],
    operator: &str,
    views: &[IntentView],
    mut throttles: BTreeMap<VmRef, Throttle<VmRef>>,
    actions: &[NeighbourAction<VmRef>],
    now: std::time::SystemTime,
    disks: impl Fn(&VmRef) -> Vec<String>,
) -> Vec<InfraChangeSpec> {
    apply_neighbour_actions(&mut throttles, actions, now);
    // Reasons given before (kept when this pass took no step for the VM).
    let mut reasons: BTreeMap<(VmRef, String), String> = BTreeMap::new();
    let mut known_disks: BTreeMap<VmRef, BTreeSet<String>> = BTreeMap::new();
    for ic in throttle_objects(changes, operator) {
        let Some(t) = throttle_from_spec(&ic.spec) else {
            continue;
        };
        if let Some(disk) = ic
            .spec
            .setting
            .strip_prefix("disk.")
            .and_then(|s| s.strip_suffix(".total_iops_sec"))
        {
            known_disks
                .entry(t.vm.clone())
                .or_default()
                .insert(disk.to_string());
        }
        for o in &ic.spec.owners {
            reasons.insert((t.vm.clone(), o.intent.clone()), o.reason.clone());
        }
    }
    let step_reasons: BTreeMap<&VmRef, &str> = actions
        .iter()
        .filter(|a| matches!(a, NeighbourAction::Step { .. }))
        .map(|a| (a.vm(), a.reason()))
        .collect();
    let mut out = Vec::new();
    for (vm, t) in &throttles {
        let owners: Vec<ChangeOwner> = intents_on(views, &t.victims)
            .into_iter()
            .map(|intent| {
                let reason = step_reasons
                    .get(vm)
                    .map(|r| r.to_string())
                    .or_else(|| reasons.get(&(vm.clone(), intent.clone())).cloned())
                    .unwrap_or_else(|| format!("VM {vm} competes with a VM of {intent}"));
                ChangeOwner { intent, reason }
            })
            .collect();
        let mut vm_disks: BTreeSet<String> = disks(vm).into_iter().collect();
        if vm_disks.is_empty() {
            vm_disks = known_disks.get(vm).cloned().unwrap_or_default();
        }
        for disk in vm_disks {
            out.push(throttle_spec(vm, &disk, t, owners.clone(), operator));
        }
    }
    out
}

/// The Event for one action on one aggressor: its reason, its action, and the throttle's
/// `InfraChange` as the related object, so Kubernetes keeps a separate Event per aggressor
/// and action instead of folding them into one series.
fn event_for(action: &NeighbourAction<VmRef>, related: Option<ObjectReference>) -> Event {
    let (reason, kind) = match action {
        NeighbourAction::Step { level: 1, .. } => {
            (event::NOISY_NEIGHBOUR_THROTTLED, "Throttle".into())
        }
        NeighbourAction::Step { level, .. } => {
            (event::NOISY_NEIGHBOUR_STEPPED, format!("StepTo{level}"))
        }
        NeighbourAction::Undo { level: 0, .. } => {
            (event::NOISY_NEIGHBOUR_STEP_UNDONE, "Release".into())
        }
        NeighbourAction::Undo { level, .. } => (
            event::NOISY_NEIGHBOUR_STEP_UNDONE,
            format!("StepBackTo{level}"),
        ),
        NeighbourAction::Release { .. } => (event::NOISY_NEIGHBOUR_RELEASED, "Release".into()),
    };
    Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(action.reason().chars().take(1000).collect()),
        action: kind,
        secondary: related,
    }
}

/// One Event per aggressor and action, on every intent concerned: for a step or an undo the
/// intents on its victim, for a release those that owned the throttle.
pub async fn publish(
    ctx: &Context,
    views: &[IntentView],
    changes: &[Arc<InfraChange>],
    wanted: &[InfraChangeSpec],
    operator: &str,
    actions: &[NeighbourAction<VmRef>],
) {
    for action in actions {
        let vm = action.vm();
        let owned: Vec<&Arc<InfraChange>> = throttle_objects(changes, operator)
            .filter(|ic| throttle_from_spec(&ic.spec).is_some_and(|t| &t.vm == vm))
            .collect();
        let intents = match action {
            NeighbourAction::Step { victim, .. } | NeighbourAction::Undo { victim, .. } => {
                intents_on(views, &BTreeSet::from([victim.clone()]))
            }
            NeighbourAction::Release { .. } => owned
                .iter()
                .flat_map(|ic| ic.spec.owners.iter().map(|o| o.intent.clone()))
                .collect(),
        };
        let related = wanted
            .iter()
            .find(|spec| {
                spec.purpose == ChangePurpose::NeighbourThrottle
                    && spec.target.vm_id.as_deref() == Some(vm.id.as_str())
            })
            .map(|spec| InfraChange::name_for(&spec.target, &spec.setting))
            .or_else(|| owned.first().map(|ic| ic.name_any()))
            .map(|name| ObjectReference {
                api_version: Some(InfraChange::api_version(&()).into_owned()),
                kind: Some(InfraChange::kind(&()).into_owned()),
                name: Some(name),
                ..ObjectReference::default()
            });
        for view in views.iter().filter(|v| intents.contains(&v.label())) {
            ctx.publish(view.intent.as_ref(), event_for(action, related.clone()))
                .await;
        }
    }
}

/// The throttles an intent owns, as its status lists them: what the VM has when Applied,
/// what is wanted otherwise, with the ledger state.
pub fn status_for(
    changes: &[Arc<InfraChange>],
    operator: &str,
    intent: &str,
) -> Vec<NeighbourThrottleStatus> {
    let mut by_vm: BTreeMap<VmRef, NeighbourThrottleStatus> = BTreeMap::new();
    for ic in throttle_objects(changes, operator) {
        let Some(owner) = ic.spec.owners.iter().find(|o| o.intent == intent) else {
            continue;
        };
        let (Some(t), Some(step)) = (throttle_from_spec(&ic.spec), &ic.spec.throttle) else {
            continue;
        };
        let status = ic.status.clone().unwrap_or_default();
        let ic_state = status
            .state
            .clone()
            .unwrap_or_else(|| state::PENDING.into());
        let limit = match ic_state.as_str() {
            state::APPLIED => status.observed.as_deref().and_then(|o| o.parse().ok()),
            _ => None,
        }
        .unwrap_or(t.limit_iops as i64);
        let disk = ic
            .spec
            .setting
            .strip_prefix("disk.")
            .and_then(|s| s.strip_suffix(".total_iops_sec"))
            .unwrap_or(&ic.spec.setting)
            .to_string();
        let entry = by_vm
            .entry(t.vm.clone())
            .or_insert_with(|| NeighbourThrottleStatus {
                vm: t.vm.name.clone(),
                provider: t.vm.provider.clone(),
                disks: Vec::new(),
                step: step.step,
                limit_iops: limit,
                baseline_iops: step.baseline_iops,
                since: step.stepped_at.clone(),
                reason: owner.reason.clone(),
                state: Some(ic_state.clone()),
            });
        entry.disks.push(disk);
        // A VM whose disks differ shows the least settled state.
        if ic_state != state::APPLIED {
            entry.state = Some(ic_state);
            entry.limit_iops = limit;
        }
    }
    by_vm.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str) -> VmRef {
        VmRef {
            name: name.into(),
            id: format!("id-{name}"),
            provider: "kvm".into(),
        }
    }

    fn related(name: &str) -> Option<ObjectReference> {
        Some(ObjectReference {
            name: Some(name.into()),
            ..ObjectReference::default()
        })
    }

    /// Two aggressors' actions give Events that differ in their related object (so the
    /// recorder keeps them apart), and each says which step it is.
    #[test]
    fn each_aggressor_and_action_has_its_own_event() {
        let step = |name: &str, level| NeighbourAction::Step {
            vm: vm(name),
            victim: vm("victim"),
            level,
            limit_iops: 100,
            baseline_iops: 400.0,
            victim_latency: None,
            reason: format!("step {level} on VM {name}"),
        };
        let events = [
            event_for(&step("loud", 1), related("loud-ic")),
            event_for(&step("louder", 1), related("louder-ic")),
            event_for(&step("loud", 2), related("loud-ic")),
            event_for(
                &NeighbourAction::Undo {
                    vm: vm("loud"),
                    victim: vm("victim"),
                    level: 1,
                    limit_iops: 200,
                    reason: "undo on VM loud".into(),
                },
                related("loud-ic"),
            ),
            event_for(
                &NeighbourAction::Release {
                    vm: vm("louder"),
                    reason: "released VM louder".into(),
                },
                related("louder-ic"),
            ),
        ];
        let seen: Vec<(&str, &str, Option<&str>)> = events
            .iter()
            .map(|e| {
                (
                    e.reason.as_str(),
                    e.action.as_str(),
                    e.secondary.as_ref().and_then(|r| r.name.as_deref()),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    event::NOISY_NEIGHBOUR_THROTTLED,
                    "Throttle",
                    Some("loud-ic")
                ),
                (
                    event::NOISY_NEIGHBOUR_THROTTLED,
                    "Throttle",
                    Some("louder-ic")
                ),
                (event::NOISY_NEIGHBOUR_STEPPED, "StepTo2", Some("loud-ic")),
                (
                    event::NOISY_NEIGHBOUR_STEP_UNDONE,
                    "StepBackTo1",
                    Some("loud-ic")
                ),
                (
                    event::NOISY_NEIGHBOUR_RELEASED,
                    "Release",
                    Some("louder-ic")
                ),
            ]
        );
        assert!(events
            .iter()
            .all(|e| e.note.as_deref().is_some_and(|n| n.contains("VM "))));
    }
}
