//! Noisy neighbours throttling cannot tame, moved through the ledger
//! (`infrastructure.relocateNoisyNeighbours`): the budgets read the relocations the ledger
//! records (so a new leader keeps them), `plumbline_policies::placement::plan_relocations`
//! decides, and each move is an `InfraChange` (purpose `NeighbourRelocation`, setting `host`)
//! kept for the repeat window and then let go without moving anything back. Each move is an
//! Event on the intents whose VM it was for.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType},
    Resource,
};
use plumbline_crds::{
    conditions::{event, infra_change as state},
    ChangePurpose, InfraChange, InfraChangeSpec, RelocationStatus, VmRef,
};
use plumbline_policies::{
    ledger::{from_time, relocation_from_spec},
    placement::{HostChoice, PastRelocation, Relocation, RelocationPolicy},
};
use std::{collections::BTreeSet, sync::Arc, time::SystemTime};

use super::{book::HealthBook, graph::IntentView, throttle::intents_on};
use crate::context::Context;

/// This instance's relocation entries (not being deleted).
fn entries<'a>(
    changes: &'a [Arc<InfraChange>],
    operator: &'a str,
) -> impl Iterator<Item = &'a Arc<InfraChange>> {
    crate::ledger::entries(changes, operator, ChangePurpose::NeighbourRelocation)
}

/// The relocations the ledger records, and those this instance decided that its cache may not
/// show yet.
pub fn past(
    changes: &[Arc<InfraChange>],
    operator: &str,
    recent: &[PastRelocation<VmRef>],
) -> Vec<PastRelocation<VmRef>> {
    let mut out: Vec<PastRelocation<VmRef>> = entries(changes, operator)
        .filter_map(|ic| relocation_from_spec(&ic.spec))
        .collect();
    for r in recent {
        let known = out
            .iter()
            .any(|p| p.vm == r.vm && p.decided.last() >= r.decided.last());
        if !known {
            out.retain(|p| p.vm != r.vm);
            out.push(r.clone());
        }
    }
    out
}

/// The entries still within the repeat window whose intent is still there, kept as they are
/// (except the VMs moving again now): the budgets need them. Deleting one moves nothing
/// back; the pass remembers the relocations it decided for the budgets anyway.
pub fn kept(
    changes: &[Arc<InfraChange>],
    operator: &str,
    now: SystemTime,
    policy: &RelocationPolicy,
    moving: &BTreeSet<&VmRef>,
    views: &[IntentView],
) -> Vec<InfraChangeSpec> {
    let intents: BTreeSet<String> = views.iter().map(IntentView::label).collect();
    entries(changes, operator)
        .filter(|ic| ic.spec.owners.iter().any(|o| intents.contains(&o.intent)))
        .filter(|ic| relocation_from_spec(&ic.spec).is_some_and(|p| !moving.contains(&p.vm)))
        .filter(|ic| {
            ic.spec
                .relocation
                .as_ref()
                .and_then(|r| r.decided.last())
                .is_some_and(|at| {
                    now.duration_since(from_time(at)).unwrap_or_default() < policy.repeat_window
                })
        })
        .map(|ic| ic.spec.clone())
        .collect()
}

/// The relocations made for `intent` (`namespace/name`), as its status lists them.
pub fn status_for(
    changes: &[Arc<InfraChange>],
    operator: &str,
    intent: &str,
) -> Vec<RelocationStatus> {
    entries(changes, operator)
        .filter(|ic| ic.spec.owners.iter().any(|o| o.intent == intent))
        .filter_map(|ic| {
            let record = ic.spec.relocation.as_ref()?;
            let status = ic.status.clone().unwrap_or_default();
            Some(RelocationStatus {
                vm: ic.spec.target.name.clone(),
                provider: ic.spec.target.provider.clone().unwrap_or_default(),
                from: record.from.clone(),
                to: ic.spec.desired.clone(),
                decided: record.decided.last()?.clone(),
                state: Some(status.state.unwrap_or_else(|| state::PENDING.into())),
                message: status.last_error,
            })
        })
        .collect()
}

/// The hosts of the providers the pass may act on, with their cluster and maintenance state.
pub fn hosts(b: &HealthBook, leaving: &std::collections::HashSet<String>) -> Vec<HostChoice> {
    b.providers()
        .iter()
        .filter(|(name, _)| !leaving.contains(*name))
        .flat_map(|(_, view)| view.hosts.iter())
        .map(|h| HostChoice {
            name: h.name.clone(),
            cluster: h.cluster.clone(),
            in_maintenance: h.in_maintenance || h.entering,
        })
        .collect()
}

/// One Event per relocation, on the intents whose VM it was for, with the relocation's
/// `InfraChange` as the related object.
pub async fn publish(ctx: &Context, views: &[IntentView], relocations: &[Relocation<VmRef>]) {
    for r in relocations {
        let related = ObjectReference {
            api_version: Some(InfraChange::api_version(&()).into_owned()),
            kind: Some(InfraChange::kind(&()).into_owned()),
            name: Some(InfraChange::name_for(
                &plumbline_crds::ChangeTarget::vm(&r.vm.provider, &r.vm.id, &r.vm.name),
                plumbline_policies::ledger::HOST,
            )),
            ..ObjectReference::default()
        };
        let intents = intents_on(views, &BTreeSet::from([r.victim.clone()]));
        for view in views.iter().filter(|v| intents.contains(&v.label())) {
            let e = Event {
                type_: EventType::Warning,
                reason: event::NOISY_NEIGHBOUR_RELOCATED.to_string(),
                note: Some(r.reason.chars().take(1000).collect()),
                action: "Relocate".into(),
                secondary: Some(related.clone()),
            };
            ctx.publish(view.intent.as_ref(), e).await;
        }
    }
}
