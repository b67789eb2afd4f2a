//! From decisions to ledger objects: the `InfraChange` specs that state what the health
//! decisions want in force now, and what to create, update or delete to get there.

use std::collections::{BTreeMap, BTreeSet};

use plumbline_crds::{
    ChangeOwner, ChangePurpose, ChangeTarget, InfraChange, InfraChangeSpec, RelocationRecord,
    ThrottleStep, VmRef,
};

use super::{from_time, to_time};
use crate::health::{Throttle, Wanted};
use crate::placement::{PastRelocation, Relocation, RuleWish};

/// The value of a taint change: the taint is there.
pub const PRESENT: &str = "present";
/// The original of a taint change when the node did not carry it.
pub const ABSENT: &str = "absent";
/// The setting of a Node's cordon (`spec.unschedulable`), `present` when cordoned.
pub const UNSCHEDULABLE: &str = "unschedulable";
/// The setting of a workload's `spec.replicas` (a maintenance surge).
pub const REPLICAS: &str = "replicas";
/// The setting of a hypervisor host's maintenance mode, `present` when in it.
pub const MAINTENANCE_MODE: &str = "maintenanceMode";

/// The setting of the host a VM runs on (a noisy neighbour's relocation), the host's name.
pub const HOST: &str = "host";

/// The setting name of a cluster's DRS rule: `drsRule/NAME`.
pub const DRS_RULE_PREFIX: &str = "drsRule/";

/// The setting name of a taint: `taint/KEY:EFFECT`.
pub fn taint_setting(key: &str, effect: &str) -> String {
    format!("taint/{key}:{effect}")
}

/// The setting name of a disk's total IOPS limit, as the adapters name the tunable.
fn iops_setting(disk: &str) -> String {
    format!("disk.{disk}.total_iops_sec")
}

const CPU_SHARES: &str = "cpu_shares";

fn vm_target(vm: &VmRef) -> ChangeTarget {
    ChangeTarget::vm(&vm.provider, &vm.id, &vm.name)
}

fn sorted(mut owners: Vec<ChangeOwner>) -> Vec<ChangeOwner> {
    owners.sort();
    owners.dedup_by(|a, b| a.intent == b.intent);
    owners
}

/// The IOPS limit of one disk of a throttled VM. Every disk of the VM carries the same step.
pub fn throttle_spec(
    vm: &VmRef,
    disk: &str,
    throttle: &Throttle<VmRef>,
    owners: Vec<ChangeOwner>,
    operator: &str,
) -> InfraChangeSpec {
    InfraChangeSpec {
        target: vm_target(vm),
        setting: iops_setting(disk),
        desired: throttle.limit_iops.to_string(),
        purpose: ChangePurpose::NeighbourThrottle,
        owners: sorted(owners),
        operator: operator.to_string(),
        throttle: Some(ThrottleStep {
            step: throttle.level as i32,
            baseline_iops: throttle.baseline_iops.round() as i64,
            stepped_at: to_time(throttle.stepped_at),
            victims: throttle.victims.iter().cloned().collect(),
            victim_latency_micros: throttle
                .victim_latency
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        }),
        relocation: None,
    }
}

/// The throttle a ledger object records, keyed by the throttled VM.
pub fn throttle_from_spec(spec: &InfraChangeSpec) -> Option<Throttle<VmRef>> {
    let step = spec.throttle.as_ref()?;
    let vm = VmRef {
        name: spec.target.name.clone(),
        id: spec.target.vm_id.clone()?,
        provider: spec.target.provider.clone()?,
    };
    Some(Throttle {
        vm,
        level: usize::try_from(step.step).ok().filter(|l| *l >= 1)?,
        baseline_iops: step.baseline_iops as f64,
        limit_iops: spec.desired.parse().ok()?,
        stepped_at: from_time(&step.stepped_at),
        victims: step.victims.iter().cloned().collect(),
        victim_latency: step
            .victim_latency_micros
            .and_then(|us| u64::try_from(us).ok())
            .map(std::time::Duration::from_micros),
    })
}

/// CPU shares for a VM backing protected intents: the highest claim's value.
pub fn protection_spec(
    vm: &VmRef,
    wanted: &Wanted,
    reason: &str,
    operator: &str,
) -> InfraChangeSpec {
    InfraChangeSpec {
        target: vm_target(vm),
        setting: CPU_SHARES.to_string(),
        desired: wanted.shares.to_string(),
        purpose: ChangePurpose::BackingVmProtection,
        owners: sorted(
            wanted
                .intents
                .iter()
                .map(|intent| ChangeOwner {
                    intent: intent.clone(),
                    reason: reason.to_string(),
                })
                .collect(),
        ),
        operator: operator.to_string(),
        throttle: None,
        relocation: None,
    }
}

/// The storage taint on a node.
pub fn taint_spec(
    node: &str,
    setting: &str,
    owners: Vec<ChangeOwner>,
    operator: &str,
) -> InfraChangeSpec {
    InfraChangeSpec {
        target: ChangeTarget::node(node),
        setting: setting.to_string(),
        desired: PRESENT.to_string(),
        purpose: ChangePurpose::StorageTaint,
        owners: sorted(owners),
        operator: operator.to_string(),
        throttle: None,
        relocation: None,
    }
}

/// A DRS anti-affinity rule an intent wants in a cluster; the original of a rule that did not
/// exist is `absent`, and restoring it removes the rule.
pub fn rule_spec(wish: &RuleWish, intent: &str, workload: &str, operator: &str) -> InfraChangeSpec {
    InfraChangeSpec {
        target: ChangeTarget::cluster(&wish.provider, &wish.cluster),
        setting: format!("{DRS_RULE_PREFIX}{}", wish.name),
        desired: wish.value.encode(),
        purpose: ChangePurpose::HostAntiAffinity,
        owners: vec![ChangeOwner {
            intent: intent.to_string(),
            reason: format!(
                "keep the VMs under the pods of {workload} on different hosts ({}: {})",
                wish.value.mode(),
                wish.vm_names.join(", ")
            ),
        }],
        operator: operator.to_string(),
        throttle: None,
        relocation: None,
    }
}

/// A noisy neighbour's relocation, owned by the intent of the VM it competed with.
pub fn relocation_spec(
    relocation: &Relocation<VmRef>,
    intent: &str,
    operator: &str,
) -> InfraChangeSpec {
    InfraChangeSpec {
        target: vm_target(&relocation.vm),
        setting: HOST.to_string(),
        desired: relocation.to.clone(),
        purpose: ChangePurpose::NeighbourRelocation,
        owners: vec![ChangeOwner {
            intent: intent.to_string(),
            reason: relocation.reason.clone(),
        }],
        operator: operator.to_string(),
        throttle: None,
        relocation: Some(RelocationRecord {
            from: relocation.from.clone(),
            decided: relocation.decided.iter().map(|t| to_time(*t)).collect(),
        }),
    }
}

/// The relocation a ledger object records.
pub fn relocation_from_spec(spec: &InfraChangeSpec) -> Option<PastRelocation<VmRef>> {
    let record = spec.relocation.as_ref()?;
    Some(PastRelocation {
        vm: VmRef {
            name: spec.target.name.clone(),
            id: spec.target.vm_id.clone()?,
            provider: spec.target.provider.clone()?,
        },
        from: record.from.clone(),
        to: spec.desired.clone(),
        decided: record.decided.iter().map(from_time).collect(),
    })
}

/// `ns/a`, or `ns/a (+2)` when more intents want the change.
pub fn owner_summary(owners: &[ChangeOwner]) -> String {
    match owners {
        [] => "none".to_string(),
        [one] => one.intent.clone(),
        [first, rest @ ..] => format!("{} (+{})", first.intent, rest.len()),
    }
}

/// What to write so that the ledger says what is wanted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerDiff {
    /// Objects to create, or whose spec changed: (name, spec).
    pub apply: Vec<(String, InfraChangeSpec)>,
    /// Objects no longer wanted: deleting them restores their originals (finalizer).
    pub delete: Vec<String>,
    /// Wanted, but an object of that name is still being reverted: recreated once it is gone.
    pub waiting: Vec<String>,
}

impl LedgerDiff {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// Diffs the wanted specs against the objects `operator` owns. Objects of other operators are
/// never touched: they are neither updated nor deleted, whatever is wanted.
pub fn diff(wanted: Vec<InfraChangeSpec>, existing: &[&InfraChange], operator: &str) -> LedgerDiff {
    let mut by_name: BTreeMap<String, InfraChangeSpec> = BTreeMap::new();
    for spec in wanted {
        let name = InfraChange::name_for(&spec.target, &spec.setting);
        by_name.insert(name, spec);
    }
    let mine: BTreeMap<String, &InfraChange> = existing
        .iter()
        .filter(|ic| ic.spec.operator == operator)
        .filter_map(|ic| ic.metadata.name.clone().map(|n| (n, *ic)))
        .collect();
    let mut out = LedgerDiff::default();
    for (name, spec) in by_name.iter() {
        match mine.get(name) {
            Some(ic) if ic.metadata.deletion_timestamp.is_some() => out.waiting.push(name.clone()),
            Some(ic) if ic.spec == *spec => {}
            _ => out.apply.push((name.clone(), spec.clone())),
        }
    }
    let wanted_names: BTreeSet<&String> = by_name.keys().collect();
    for (name, ic) in mine {
        if ic.metadata.deletion_timestamp.is_none() && !wanted_names.contains(&name) {
            out.delete.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn vm(name: &str) -> VmRef {
        VmRef {
            name: name.into(),
            id: format!("id-{name}"),
            provider: "kvm".into(),
        }
    }

    fn throttle(level: usize, limit: u64) -> Throttle<VmRef> {
        Throttle {
            victim_latency: Some(Duration::from_micros(31_500)),
            vm: vm("noisy"),
            level,
            baseline_iops: 562.4,
            limit_iops: limit,
            stepped_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            victims: [vm("victim")].into_iter().collect(),
        }
    }

    fn owner(intent: &str) -> ChangeOwner {
        ChangeOwner {
            intent: intent.into(),
            reason: "because".into(),
        }
    }

    fn object(spec: InfraChangeSpec, deleting: bool) -> InfraChange {
        let mut ic = InfraChange::new(&InfraChange::name_for(&spec.target, &spec.setting), spec);
        if deleting {
            ic.metadata = ObjectMeta {
                deletion_timestamp: Some(to_time(SystemTime::now())),
                ..ic.metadata
            };
        }
        ic
    }

    #[test]
    fn a_throttle_round_trips_through_its_ledger_object() {
        let t = throttle(2, 141);
        let spec = throttle_spec(&vm("noisy"), "vda", &t, vec![owner("shop/pay")], "cluster");
        assert_eq!(spec.setting, "disk.vda.total_iops_sec");
        assert_eq!(spec.desired, "141");
        let back = throttle_from_spec(&spec).unwrap();
        assert_eq!(back.level, 2);
        assert_eq!(back.limit_iops, 141);
        assert_eq!(back.baseline_iops, 562.0);
        assert_eq!(back.stepped_at, t.stepped_at);
        assert_eq!(back.victims, t.victims);
        assert_eq!(back.vm, vm("noisy"));
    }

    #[test]
    fn diff_creates_updates_and_deletes_only_its_own_objects() {
        let a = throttle_spec(&vm("noisy"), "vda", &throttle(1, 281), vec![], "cluster");
        let a_next = throttle_spec(&vm("noisy"), "vda", &throttle(2, 141), vec![], "cluster");
        let b = taint_spec(
            "node-1",
            "taint/x:NoSchedule",
            vec![owner("s/a")],
            "cluster",
        );
        let theirs = taint_spec("node-2", "taint/x:NoSchedule", vec![], "namespace/other");
        let existing = [
            object(a.clone(), false),
            object(b.clone(), false),
            object(theirs, false),
        ];
        let refs: Vec<&InfraChange> = existing.iter().collect();

        let same = diff(vec![a.clone(), b.clone()], &refs, "cluster");
        assert!(same.is_empty(), "{same:?}");

        let next = diff(vec![a_next.clone()], &refs, "cluster");
        assert_eq!(next.apply.len(), 1);
        assert_eq!(next.apply[0].1, a_next);
        assert_eq!(
            next.delete,
            vec![InfraChange::name_for(&b.target, &b.setting)],
            "the other operator's taint is not deleted"
        );
    }

    #[test]
    fn a_change_being_reverted_is_not_rewritten_until_it_is_gone() {
        let a = throttle_spec(&vm("noisy"), "vda", &throttle(1, 281), vec![], "cluster");
        let existing = [object(a.clone(), true)];
        let refs: Vec<&InfraChange> = existing.iter().collect();
        let d = diff(vec![a.clone()], &refs, "cluster");
        assert!(d.apply.is_empty() && d.delete.is_empty());
        assert_eq!(d.waiting.len(), 1);
        let d = diff(vec![], &refs, "cluster");
        assert!(d.delete.is_empty(), "already being deleted");
    }

    #[test]
    fn owner_summary_names_the_first_and_counts_the_rest() {
        assert_eq!(owner_summary(&[]), "none");
        assert_eq!(owner_summary(&[owner("a/b")]), "a/b");
        assert_eq!(owner_summary(&[owner("a/b"), owner("c/d")]), "a/b (+1)");
    }
}
