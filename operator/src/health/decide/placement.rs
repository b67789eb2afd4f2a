//! Each intent's pods over hypervisor hosts, decided by `plumbline_policies::placement`:
//! `status.placement`, and the `SpreadAcrossHosts` condition when `placement.spreadAcrossHosts`
//! asks for it, merged into the intent's status body; and the distinct hosts per intent for
//! `plumbline_workload_hosts`.

use kube::ResourceExt;
use plumbline_crds::conditions::placement::SPREAD_ACROSS_HOSTS;
use plumbline_policies::placement::{host_spread, HostKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{memory::PassInput, writes::rfc3339};
use crate::health::{book::HealthBook, graph::IntentView};

/// Merges each intent's placement into its status body (creating one for an intent that asks
/// for spreading and has no other health status); returns the distinct hosts per intent
/// `(namespace, name)` whose pods' hosts are known.
pub(super) fn decide(
    input: &PassInput<'_>,
    b: &HealthBook,
    views: &[IntentView],
    bodies: &mut BTreeMap<(String, String), Value>,
) -> Vec<((String, String), i64)> {
    let mut hosts_per_intent = Vec::new();
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
        let (status, verdict) = host_spread(&hosts, asked, kind);
        let key = (view.namespace.clone(), view.name.clone());
        if status.distinct_hosts > 0 {
            hosts_per_intent.push((key.clone(), i64::from(status.distinct_hosts)));
        }
        if !asked && !bodies.contains_key(&key) {
            continue;
        }
        let body = bodies.entry(key).or_insert_with(|| json!({}));
        body["placement"] = json!(status);
        if let Some(v) = verdict {
            let previous = view.intent.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == SPREAD_ACROSS_HOSTS && c.status == v.status)
            });
            let since = previous
                .map(|c| json!(c.last_transition_time))
                .unwrap_or_else(|| json!(rfc3339(input.now)));
            body["conditions"] = json!([{
                "type": SPREAD_ACROSS_HOSTS,
                "status": v.status,
                "reason": v.reason,
                "message": v.message,
                "lastTransitionTime": since,
                "observedGeneration": view.intent.metadata.generation,
            }]);
        }
    }
    hosts_per_intent
}
