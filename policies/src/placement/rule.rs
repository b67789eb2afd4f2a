//! The DRS VM-VM anti-affinity rule for an intent's `placement.spreadAcrossHosts`: which VMs
//! it keeps apart, in which clusters, and how strictly. The rule is derived from where the
//! pods run (the VMs under their nodes), never from VM names a user typed.
//!
//! - One rule per compute cluster that holds two or more of the VMs: DRS rules only bind VMs
//!   of one cluster, and a rule over one VM means nothing (vCenter refuses it). VMs on
//!   standalone hosts, and libvirt's, get none.
//! - `preferred` → a "should" rule (DRS keeps the VMs apart when it can); `required` → a
//!   "must" rule (never on one host, also not after an HA restart or for maintenance mode).
//! - The rule is named after the intent: `plumbline-<namespace>-<name>`.

use std::collections::{BTreeMap, BTreeSet};

use plumbline_crds::{HostSpread, VmRef};

/// vSphere's limit on a rule's name.
const MAX_NAME: usize = 80;

/// A VM under one of the workload's pods, where it runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleVm {
    pub vm: VmRef,
    /// The VM's compute cluster; `None` on a standalone host or a hypervisor without DRS.
    pub cluster: Option<String>,
}

/// One rule wanted: keep `vms` of `cluster` (of `provider`) on different hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleWish {
    pub provider: String,
    pub cluster: String,
    pub name: String,
    pub value: RuleValue,
    /// The VMs, by name, for messages.
    pub vm_names: Vec<String>,
}

/// What a rule holds, as a ledger entry's value carries it: `should:ID,ID` or `must:ID,ID`,
/// VM UUIDs sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleValue {
    pub mandatory: bool,
    pub vms: Vec<String>,
}

impl RuleValue {
    pub fn mode(&self) -> &'static str {
        if self.mandatory {
            "must"
        } else {
            "should"
        }
    }

    /// The value a ledger entry carries.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.mode(), self.vms.join(","))
    }

    /// `None` for anything that is not `should:…` or `must:…` with two or more VMs.
    pub fn decode(value: &str) -> Option<Self> {
        let (mode, vms) = value.split_once(':')?;
        let mandatory = match mode {
            "must" => true,
            "should" => false,
            _ => return None,
        };
        let mut vms: Vec<String> = vms
            .split(',')
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        vms.sort();
        vms.dedup();
        (vms.len() >= 2).then_some(Self { mandatory, vms })
    }
}

/// The rule's name for an intent: `plumbline-<namespace>-<name>`, cut to vSphere's 80
/// characters with a hash of the whole keeping it unique.
pub fn rule_name(namespace: &str, intent: &str) -> String {
    let full = format!("plumbline-{namespace}-{intent}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = plumbline_crds::fnv1a(full.as_bytes());
    format!("{}-{hash:08x}", &full[..MAX_NAME - 9])
}

/// The rules an intent asking for `spread` wants over the VMs under its pods (one entry per
/// pod; a VM under several pods counts once).
pub fn anti_affinity_rules(
    namespace: &str,
    intent: &str,
    spread: HostSpread,
    vms: &[RuleVm],
) -> Vec<RuleWish> {
    let mut by_cluster: BTreeMap<(&str, &str), BTreeSet<&VmRef>> = BTreeMap::new();
    for v in vms {
        if let Some(cluster) = &v.cluster {
            by_cluster
                .entry((v.vm.provider.as_str(), cluster.as_str()))
                .or_default()
                .insert(&v.vm);
        }
    }
    by_cluster
        .into_iter()
        .map(|((provider, cluster), vms)| {
            let mut ids: Vec<String> = vms.iter().map(|v| v.id.clone()).collect();
            ids.sort();
            ids.dedup();
            let mut vm_names: Vec<String> = vms.iter().map(|v| v.name.clone()).collect();
            vm_names.sort();
            RuleWish {
                provider: provider.to_string(),
                cluster: cluster.to_string(),
                name: rule_name(namespace, intent),
                value: RuleValue {
                    mandatory: spread == HostSpread::Required,
                    vms: ids,
                },
                vm_names,
            }
        })
        // Two or more distinct VMs.
        .filter(|w| w.value.vms.len() >= 2)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(name: &str, provider: &str, cluster: Option<&str>) -> RuleVm {
        RuleVm {
            vm: VmRef {
                name: name.into(),
                id: format!("id-{name}"),
                provider: provider.into(),
            },
            cluster: cluster.map(str::to_string),
        }
    }

    #[test]
    fn one_rule_per_cluster_with_two_or_more_vms_each_vm_once() {
        let vms = [
            on("vm0", "vc", Some("C0")),
            on("vm1", "vc", Some("C0")),
            on("vm1", "vc", Some("C0")),
            on("lonely", "vc", Some("C1")),
            on("standalone", "vc", None),
            on("standalone2", "vc", None),
        ];
        let rules = anti_affinity_rules("shop", "web", HostSpread::Preferred, &vms);
        assert_eq!(
            rules,
            [RuleWish {
                provider: "vc".into(),
                cluster: "C0".into(),
                name: "plumbline-shop-web".into(),
                value: RuleValue {
                    mandatory: false,
                    vms: vec!["id-vm0".into(), "id-vm1".into()],
                },
                vm_names: vec!["vm0".into(), "vm1".into()],
            }]
        );
        assert_eq!(rules[0].value.encode(), "should:id-vm0,id-vm1");
        let must = anti_affinity_rules("shop", "web", HostSpread::Required, &vms);
        assert_eq!(must[0].value.encode(), "must:id-vm0,id-vm1");
        assert!(
            anti_affinity_rules("shop", "web", HostSpread::Required, &vms[..1]).is_empty(),
            "one VM: no rule"
        );
    }

    #[test]
    fn two_providers_of_one_cluster_name_get_a_rule_each() {
        let vms = [
            on("a", "vc1", Some("C0")),
            on("b", "vc1", Some("C0")),
            on("c", "vc2", Some("C0")),
            on("d", "vc2", Some("C0")),
        ];
        let rules = anti_affinity_rules("ns", "i", HostSpread::Preferred, &vms);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (rules[0].provider.as_str(), rules[1].provider.as_str()),
            ("vc1", "vc2")
        );
    }

    #[test]
    fn values_round_trip_and_nonsense_is_refused() {
        let v = RuleValue {
            mandatory: true,
            vms: vec!["a".into(), "b".into()],
        };
        assert_eq!(RuleValue::decode(&v.encode()), Some(v));
        assert_eq!(
            RuleValue::decode("should:b,a,a"),
            Some(RuleValue {
                mandatory: false,
                vms: vec!["a".into(), "b".into()]
            })
        );
        for bad in ["absent", "may:a,b", "must:a", "must:", ""] {
            assert_eq!(RuleValue::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_fit_vsphere_and_stay_unique() {
        assert_eq!(rule_name("shop", "web"), "plumbline-shop-web");
        let long = rule_name(&"n".repeat(63), &"x".repeat(200));
        let other = rule_name(&"n".repeat(63), &format!("{}y", "x".repeat(199)));
        assert_eq!(long.len(), MAX_NAME);
        assert_ne!(long, other);
    }
}
