//! The metric series of a feedback pass, with their values.

use plumbline_crds::{conditions::status, names::STORAGE_READINESS_GATE};
use plumbline_policies::health::{HealthState, LatencyBudget};
use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, Hash, Hasher},
};

use super::{
    fingerprint::HASH,
    memory::{PassInput, SeriesSeen},
    writes::{PassSeries, PodWrite},
};
use crate::{
    health::{book::HealthBook, graph::VmKey, intern::Pool},
    metrics::{
        health::{DiskLabels, VerdictLabels, VmLabels},
        pod_series::{BackingLabels, PodLabels},
    },
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
    memory: &mut SeriesSeen,
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
    let names = &mut memory.names;
    series.backing = unless_seen(&mut memory.backing, backing(input, b), |parts| {
        parts.map(|p| p.labels(names)).collect()
    });
    // Every pod written has a series: it belongs to an intent with a storage section.
    let written: HashMap<(&str, &str), bool> = pod_writes
        .iter()
        .map(|w| ((w.namespace.as_str(), w.pod.as_str()), w.verdict.ready))
        .collect();
    let written = &written;
    let pods = input
        .views
        .iter()
        .filter(|v| v.storage.is_some())
        .flat_map(|view| view.pods.iter().map(move |p| (view, p)))
        .filter_map(move |(view, p)| {
            let ready = p
                .pod
                .condition(STORAGE_READINESS_GATE)
                .map(|c| c.status == status::TRUE);
            let written = written
                .get(&(view.namespace.as_str(), p.name.as_str()))
                .copied();
            let ready = written.or(ready)?;
            Some((
                view.namespace.as_str(),
                p.name.as_str(),
                view.name.as_str(),
                ready as i64,
            ))
        });
    series.pods = unless_seen(&mut memory.pods, pods, |parts| {
        parts
            .map(|(namespace, pod, intent, v)| {
                let labels = PodLabels {
                    namespace: names.share(namespace),
                    pod: names.share(pod),
                    intent: names.share(intent),
                };
                (labels, v)
            })
            .collect()
    });
    series
}

/// A backing pod's series, its labels borrowed.
#[derive(Hash)]
struct BackingParts<'a> {
    provider: &'a str,
    host: &'a str,
    vm: &'a str,
    node: &'a str,
    namespace: &'a str,
    pod: &'a str,
    intent: &'a str,
}

impl BackingParts<'_> {
    fn labels(&self, names: &mut Pool<str>) -> BackingLabels {
        BackingLabels {
            provider: names.share(self.provider),
            host: names.share(self.host),
            vm: names.share(self.vm),
            node: names.share(self.node),
            namespace: names.share(self.namespace),
            pod: names.share(self.pod),
            intent: names.share(self.intent),
        }
    }
}

/// Each backing pod's series.
fn backing<'a>(
    input: &PassInput<'a>,
    b: &'a HealthBook,
) -> impl Iterator<Item = BackingParts<'a>> + Clone {
    input.views.iter().flat_map(move |view| {
        view.pods.iter().filter_map(move |p| {
            let vm = p.vm.as_ref()?;
            let place = b.vm(&vm.id)?;
            Some(BackingParts {
                provider: &vm.provider,
                host: &place.vm.host,
                vm: &vm.name,
                node: p.node.as_deref().unwrap_or_default(),
                namespace: &view.namespace,
                pod: &p.name,
                intent: &view.name,
            })
        })
    })
}

/// `None` when `parts` hash as they did last pass (the series stand), else the series `build`
/// makes of them.
fn unless_seen<I: Iterator + Clone, T>(
    seen: &mut Option<u64>,
    parts: I,
    build: impl FnOnce(I) -> T,
) -> Option<T>
where
    I::Item: Hash,
{
    let mut h = HASH.build_hasher();
    parts.clone().for_each(|p| p.hash(&mut h));
    let now = h.finish();
    if *seen == Some(now) {
        return None;
    }
    *seen = Some(now);
    Some(build(parts))
}
