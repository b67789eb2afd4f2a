//! Each intent's pods over hypervisor hosts, decided by `plumbline_policies::placement`:
//! `status.placement`, with the `SpreadAcrossHosts` verdict when `placement.spreadAcrossHosts`
//! asks for it (the controller shows it as the condition), merged into the intent's status
//! body; the DRS anti-affinity rules such an
//! intent wants in the ledger while it is active; with `relocateNoisyNeighbours`, where a noisy
//! neighbour would be moved and the moves made; and the distinct hosts per intent for
//! `plumbline_workload_hosts`.

use kube::ResourceExt;
use plumbline_crds::{
    DrsRuleStatus, InfraChange, InfraChangeSpec, RelocationTargetStatus, SpreadVerdictStatus, VmRef,
};
use plumbline_policies::{
    ledger::rule_spec,
    placement::{anti_affinity_rules, host_spread, pick_host, HostKind, RuleVm},
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

use super::{body::StatusBody, memory::PassInput};
use crate::health::{book::HealthBook, graph::IntentView, relocate};

/// What a pass decided about placement besides the status bodies.
pub(super) struct Placed {
    /// The distinct hosts per intent `(namespace, name)` whose pods' hosts are known.
    pub hosts: Vec<((String, String), i64)>,
    /// The DRS rules wanted in the ledger.
    pub rules: Vec<InfraChangeSpec>,
}

/// Merges each intent's placement into its status body (creating one for an intent that asks
/// for spreading and has no other health status).
pub(super) fn decide(
    input: &PassInput<'_>,
    b: &HealthBook,
    views: &[IntentView],
    bodies: &mut BTreeMap<(String, String), StatusBody<'_>>,
    relocating: &super::Relocating<'_>,
) -> Placed {
    let mut hosts_per_intent = Vec::new();
    let mut rules = Vec::new();
    for view in views {
        let hosts: Vec<Option<String>> = view
            .pods
            .iter()
            .map(|p| {
                let vm = p.vm.as_ref()?;
                Some(b.vm(&vm.id)?.vm.host.clone())
            })
            .collect();
        let asked = view
            .intent
            .spec
            .placement
            .as_ref()
            .is_some_and(|p| p.spread_across_hosts.is_some());
        // The kind of hypervisor behind the pods, when one provider backs them all.
        let providers: std::collections::BTreeSet<&str> = view
            .pods
            .iter()
            .filter_map(|p| Some(p.vm.as_ref()?.provider.as_str()))
            .collect();
        let kind = match providers.into_iter().collect::<Vec<_>>().as_slice() {
            [only] => input
                .providers
                .iter()
                .find(|hp| hp.name_any() == *only)
                .map(|hp| match hp.spec.libvirt {
                    Some(_) => HostKind::Libvirt,
                    None => HostKind::VSphere,
                }),
            _ => None,
        };
        let (mut status, verdict) = host_spread(&hosts, asked, kind);
        let spread = view
            .intent
            .spec
            .placement
            .as_ref()
            .and_then(|p| p.spread_across_hosts);
        if let Some(spread) = spread.filter(|_| view.active) {
            let vms: Vec<RuleVm> = view
                .pods
                .iter()
                .filter_map(|p| {
                    let vm = p.vm.as_ref()?;
                    Some(RuleVm {
                        vm: VmRef {
                            name: vm.name.clone(),
                            id: vm.id.as_str().to_string(),
                            provider: vm.provider.clone(),
                        },
                        cluster: b.vm(&vm.id)?.vm.cluster.clone(),
                    })
                })
                .collect();
            let workload = format!(
                "{:?} {}/{}",
                view.intent.spec.target.kind, view.namespace, view.intent.spec.target.name
            );
            for wish in anti_affinity_rules(&view.namespace, &view.name, spread, &vms) {
                let spec = rule_spec(&wish, &view.label(), &workload, input.operator);
                status
                    .drs_rules
                    .push(rule_status(input.changes, &spec, wish));
                rules.push(spec);
            }
        }
        if view.may_relocate {
            let under: BTreeSet<&String> = hosts.iter().flatten().collect();
            for host in under {
                status
                    .relocation_targets
                    .push(relocation_target(input, relocating, host));
            }
            status.relocations = relocate::status_for(input.changes, input.operator, &view.label());
        }
        let key = (view.namespace.clone(), view.name.clone());
        if status.distinct_hosts > 0 {
            hosts_per_intent.push((key.clone(), i64::from(status.distinct_hosts)));
        }
        if !asked && !bodies.contains_key(&key) {
            continue;
        }
        status.spread = verdict.map(|v| SpreadVerdictStatus {
            status: v.status.to_string(),
            reason: v.reason.to_string(),
            message: v.message,
        });
        bodies.entry(key).or_default().rest["placement"] = json!(status);
    }
    Placed {
        hosts: hosts_per_intent,
        rules,
    }
}

/// Where a noisy neighbour on `host` would be moved now, by the function the relocations
/// themselves use.
fn relocation_target(
    input: &PassInput<'_>,
    relocating: &super::Relocating<'_>,
    host: &str,
) -> RelocationTargetStatus {
    let cluster = relocating
        .hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| h.cluster.as_deref());
    let (to, reason) = match pick_host(
        input.now,
        host,
        cluster,
        &relocating.hosts,
        relocating.candidates,
        &relocating.past,
        &input.settings.relocation,
    ) {
        Ok((to, why)) => (Some(to), why),
        Err(why) => (None, why),
    };
    RelocationTargetStatus {
        host: host.to_string(),
        to,
        reason,
    }
}

/// A wanted rule as the intent's status shows it, with its ledger entry's state and error.
fn rule_status(
    changes: &[std::sync::Arc<InfraChange>],
    spec: &InfraChangeSpec,
    wish: plumbline_policies::placement::RuleWish,
) -> DrsRuleStatus {
    let name = InfraChange::name_for(&spec.target, &spec.setting);
    let entry = changes
        .iter()
        .find(|ic| ic.metadata.name.as_deref() == Some(name.as_str()))
        .and_then(|ic| ic.status.as_ref());
    DrsRuleStatus {
        provider: wish.provider,
        cluster: wish.cluster,
        rule: wish.name,
        mode: wish.value.mode().to_string(),
        vms: wish.vm_names,
        state: entry.and_then(|s| s.state.clone()),
        message: entry.and_then(|s| s.last_error.clone()),
    }
}
