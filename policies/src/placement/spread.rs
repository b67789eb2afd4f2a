//! How a workload's pods are spread over hypervisor hosts, and whether that is enough for an
//! intent's `placement.spreadAcrossHosts`. Plain data in (each pod's host, if known), a report
//! out.

use plumbline_crds::{conditions::placement as p, conditions::status, HostPods, PlacementStatus};
use std::collections::BTreeMap;

/// The `SpreadAcrossHosts` condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadVerdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What kind of hypervisor the pods' one host is, for saying what would fix a bad spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A libvirt provider is one host, and libvirt has no DRS: Plumbline changes nothing there.
    Libvirt,
    VSphere,
}

/// The placement status of pods on `hosts` (one entry per pod, `None` when its host is not
/// known), and the verdict when the intent asks for spreading. `one_host_kind` is the kind of
/// hypervisor behind the pods when one provider backs them all.
pub fn host_spread(
    hosts: &[Option<String>],
    asked: bool,
    one_host_kind: Option<HostKind>,
) -> (PlacementStatus, Option<SpreadVerdict>) {
    let mut per_host: BTreeMap<&str, i32> = BTreeMap::new();
    for h in hosts.iter().flatten() {
        *per_host.entry(h).or_default() += 1;
    }
    let mut listed: Vec<HostPods> = per_host
        .iter()
        .map(|(host, pods)| HostPods {
            host: host.to_string(),
            pods: *pods,
        })
        .collect();
    listed.sort_by(|a, b| b.pods.cmp(&a.pods).then(a.host.cmp(&b.host)));
    let known: i32 = listed.iter().map(|h| h.pods).sum();
    let total = hosts.len() as i32;
    let status = PlacementStatus {
        distinct_hosts: listed.len() as i32,
        pods_on_unknown_hosts: total - known,
        hosts: listed,
        ..PlacementStatus::default()
    };
    let verdict = asked.then(|| {
        let shown = status
            .hosts
            .iter()
            .map(|h| format!("{}: {}", h.host, h.pods))
            .collect::<Vec<_>>()
            .join(", ");
        match (total, status.hosts.as_slice()) {
            (_, []) if total > 0 => SpreadVerdict {
                status: status::UNKNOWN,
                reason: p::HOSTS_UNKNOWN,
                message: format!("the host of none of the {total} pods is known yet"),
            },
            (0 | 1, _) => SpreadVerdict {
                status: status::TRUE,
                reason: p::SINGLE_POD,
                message: format!("{total} pod: nothing to spread"),
            },
            (_, [only]) => SpreadVerdict {
                status: status::FALSE,
                reason: p::ONE_HOST,
                message: format!(
                    "{} of {total} pods run on VMs on host {}: one host failure stops the service{}",
                    only.pods,
                    only.host,
                    match one_host_kind {
                        Some(HostKind::Libvirt) => format!(
                            ". Host {} is a libvirt host (no DRS, nothing is changed there): \
                             nodes on VMs of another host, allowed for the workload, would let \
                             the scheduler spread it",
                            only.host
                        ),
                        _ => String::new(),
                    }
                ),
            },
            (_, many) => SpreadVerdict {
                status: status::TRUE,
                reason: p::SPREAD,
                message: format!("{known} of {total} pods on {} hosts ({shown})", many.len()),
            },
        }
    });
    (status, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(hosts: &[&str]) -> Vec<Option<String>> {
        hosts
            .iter()
            .map(|h| (!h.is_empty()).then(|| h.to_string()))
            .collect()
    }

    #[test]
    fn pods_on_one_host_are_not_spread_and_the_message_says_why() {
        let (status, verdict) = host_spread(
            &on(&["esx-1", "esx-1", "esx-1"]),
            true,
            Some(HostKind::VSphere),
        );
        assert_eq!(status.distinct_hosts, 1);
        let v = verdict.unwrap();
        assert_eq!((v.status, v.reason), (status::FALSE, p::ONE_HOST));
        assert_eq!(
            v.message,
            "3 of 3 pods run on VMs on host esx-1: one host failure stops the service"
        );
    }

    #[test]
    fn on_a_libvirt_host_the_message_says_what_would_fix_it_and_nothing_is_changed() {
        let v = host_spread(&on(&["kvm-1", "kvm-1"]), true, Some(HostKind::Libvirt))
            .1
            .unwrap();
        assert_eq!((v.status, v.reason), (status::FALSE, p::ONE_HOST));
        assert!(
            v.message.starts_with(
                "2 of 2 pods run on VMs on host kvm-1: one host failure stops the service. \
                 Host kvm-1 is a libvirt host (no DRS"
            ),
            "{}",
            v.message
        );
    }

    #[test]
    fn two_hosts_are_spread_most_loaded_first() {
        let (status, verdict) = host_spread(&on(&["b", "a", "b", ""]), true, None);
        assert_eq!(
            status.hosts,
            vec![
                HostPods {
                    host: "b".into(),
                    pods: 2
                },
                HostPods {
                    host: "a".into(),
                    pods: 1
                }
            ]
        );
        assert_eq!(status.pods_on_unknown_hosts, 1);
        let v = verdict.unwrap();
        assert_eq!((v.status, v.reason), (status::TRUE, p::SPREAD));
        assert_eq!(v.message, "3 of 4 pods on 2 hosts (b: 2, a: 1)");
    }

    #[test]
    fn unknown_hosts_are_unknown_and_one_pod_is_fine() {
        let v = host_spread(&on(&["", ""]), true, None).1.unwrap();
        assert_eq!((v.status, v.reason), (status::UNKNOWN, p::HOSTS_UNKNOWN));
        let v = host_spread(&on(&["a"]), true, None).1.unwrap();
        assert_eq!((v.status, v.reason), (status::TRUE, p::SINGLE_POD));
        assert!(
            host_spread(&on(&["a", "a"]), false, None).1.is_none(),
            "not asked for"
        );
    }
}
