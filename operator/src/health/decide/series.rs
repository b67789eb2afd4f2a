//! The metric series of a feedback pass, with their values.

use plumbline_crds::{conditions::status, names::STORAGE_READINESS_GATE};
use plumbline_policies::health::{HealthState, LatencyBudget};
use std::collections::{BTreeMap, HashMap};

use super::{
    memory::PassInput,
    writes::{PassSeries, PodWrite},
};
use crate::{
    health::{book::HealthBook, graph::VmKey},
    metrics::health::{BackingLabels, DiskLabels, PodLabels, VerdictLabels, VmLabels},
};

/// The pass's metric series: per VM its verdict, I/O rate and disk latencies; per pod what
/// backs it and whether its storage is healthy.
pub(super) fn decide_series(
    input: &PassInput<'_>,
    b: &mut HealthBook,
    all_vms: &[VmKey],
    strictest: &BTreeMap<plumbline_adapters::VmId, LatencyBudget>,
    pod_writes: &[PodWrite],
    taints_held: i64,
) -> PassSeries {
    let mut series = PassSeries {
        taints_held,
        ..PassSeries::default()
    };
    for vm in all_vms {
        let budget = *strictest
            .get(&vm.id)
            .unwrap_or(&input.settings.default_node_budget);
        let state = b.verdict(&vm.id, budget, input.now).state();
        for s in [
            HealthState::Healthy,
            HealthState::Degraded,
            HealthState::Unknown,
        ] {
            let labels = VerdictLabels {
                provider: vm.provider.clone(),
                vm: vm.name.clone(),
                state: s.as_str().into(),
            };
            series.verdicts.push((labels, (s == state) as i64));
        }
        if let Some(iops) = b.iops.get(&vm.id) {
            let labels = VmLabels {
                provider: vm.provider.clone(),
                vm: vm.name.clone(),
            };
            series.iops.push((labels, *iops));
        }
        let disks = b
            .disks
            .range((vm.id.clone(), String::new())..)
            .take_while(|((id, _), _)| *id == vm.id);
        for ((_, disk), s) in disks {
            if let Some(latest) = s.recent.back() {
                let labels = DiskLabels {
                    provider: vm.provider.clone(),
                    vm: vm.name.clone(),
                    disk: disk.clone(),
                };
                let secs = latest.per_op.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                series.disks.push((labels, secs));
            }
        }
    }
    for view in input.views {
        for p in &view.pods {
            let Some(vm) = &p.vm else { continue };
            let Some(place) = b.vm(&vm.id) else { continue };
            series.backing.push(BackingLabels {
                provider: vm.provider.clone(),
                host: place.vm.host.clone(),
                vm: vm.name.clone(),
                node: p.node.clone().unwrap_or_default(),
                namespace: view.namespace.clone(),
                pod: p.name.clone(),
                intent: view.name.clone(),
            });
        }
    }
    // Every pod written has a series: it belongs to an intent with a storage section.
    let written: HashMap<(&str, &str), bool> = pod_writes
        .iter()
        .map(|w| ((w.namespace.as_str(), w.pod.as_str()), w.verdict.ready))
        .collect();
    for view in input.views.iter().filter(|v| v.storage.is_some()) {
        for p in &view.pods {
            let ready = p
                .pod
                .condition(STORAGE_READINESS_GATE)
                .map(|c| c.status == status::TRUE);
            let written = written
                .get(&(view.namespace.as_str(), p.name.as_str()))
                .copied();
            if let Some(ready) = written.or(ready) {
                let labels = PodLabels {
                    namespace: view.namespace.clone(),
                    pod: p.name.clone(),
                    intent: view.name.clone(),
                };
                series.pods.push((labels, ready as i64));
            }
        }
    }
    series
}
