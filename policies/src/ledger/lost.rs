//! Lost changes: an original that an adapter recorded on a VM (libvirt domain metadata,
//! vSphere extraConfig) while no `InfraChange` object holds the change any more — the CRD
//! was deleted, or an object went away with its finalizer stripped. Nothing would ever
//! restore such a change, so `plumbline recover` restores it from the record on the VM.

use plumbline_crds::{ChangeTargetKind, InfraChange};

/// What becomes of one original recorded on a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// No object holds the change: restore the recorded original.
    Lost,
    /// An object holds the change; restoring is its finalizer's job.
    Held {
        /// The object's name.
        change: String,
        /// The object's provider when it is not the one being recovered: two providers that
        /// reach the same VM (one endpoint configured twice) share its records, and the
        /// other provider's operator still holds this one.
        other_provider: Option<String>,
        /// What deleting the object does to the change.
        on_delete: OnDelete,
    },
}

/// What deleting a holding object does to the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Its finalizer restores the original.
    RestoresOriginal,
    /// Nothing: it has no finalizer.
    NoFinalizer,
    /// Nothing: it is annotated to be dropped without restoring the original.
    Abandoned,
}

/// The fate of the original recorded for `setting` (a tunable's text form, as
/// `spec.setting` names it: `disk.vda.total_iops_sec`, `cpu_shares`) on the VM `vm_id` of
/// `provider`, given every `InfraChange` in the cluster (none when the API has no
/// InfraChanges at all). An object of this provider holds it when it targets the same VM id
/// (compared ignoring case, as UUIDs are) and setting; failing that, an object of another
/// provider for the same VM id and setting does.
pub fn fate(provider: &str, vm_id: &str, setting: &str, ledger: &[InfraChange]) -> Fate {
    let same_vm_and_setting = |ic: &&InfraChange| {
        ic.spec.target.kind == ChangeTargetKind::VirtualMachine
            && ic.spec.setting == setting
            && ic
                .spec
                .target
                .vm_id
                .as_deref()
                .is_some_and(|id| id.trim().eq_ignore_ascii_case(vm_id.trim()))
    };
    let candidates: Vec<&InfraChange> = ledger.iter().filter(same_vm_and_setting).collect();
    let of_this_provider = candidates
        .iter()
        .find(|ic| ic.spec.target.provider.as_deref() == Some(provider));
    let holder = of_this_provider.or_else(|| candidates.first());
    match holder {
        None => Fate::Lost,
        Some(ic) => Fate::Held {
            change: ic.metadata.name.clone().unwrap_or_default(),
            other_provider: ic.spec.target.provider.clone().filter(|p| p != provider),
            on_delete: if !ic.has_finalizer() {
                OnDelete::NoFinalizer
            } else if ic.abandoned() {
                OnDelete::Abandoned
            } else {
                OnDelete::RestoresOriginal
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_crds::{
        names::{ABANDON_ANNOTATION, INFRA_CHANGE_FINALIZER},
        ChangePurpose, ChangeTarget, InfraChangeSpec,
    };

    const ID: &str = "8c1e0d2a-0000-4000-8000-000000000001";
    const IOPS: &str = "disk.vda.total_iops_sec";

    fn change(target: ChangeTarget, setting: &str) -> InfraChange {
        let name = InfraChange::name_for(&target, setting);
        let mut ic = InfraChange::new(
            &name,
            InfraChangeSpec {
                target,
                setting: setting.into(),
                desired: "55".into(),
                purpose: ChangePurpose::NeighbourThrottle,
                owners: vec![],
                operator: "cluster".into(),
                throttle: None,
                relocation: None,
            },
        );
        ic.metadata.finalizers = Some(vec![INFRA_CHANGE_FINALIZER.into()]);
        ic
    }

    fn held_by(ic: &InfraChange) -> Fate {
        Fate::Held {
            change: ic.metadata.name.clone().unwrap(),
            other_provider: None,
            on_delete: OnDelete::RestoresOriginal,
        }
    }

    #[test]
    fn without_any_object_every_record_is_lost() {
        assert_eq!(fate("kvm", ID, IOPS, &[]), Fate::Lost);
        assert_eq!(fate("kvm", ID, "cpu_shares", &[]), Fate::Lost);
    }

    #[test]
    fn an_object_for_the_same_provider_vm_and_setting_holds_the_record() {
        let ic = change(ChangeTarget::vm("kvm", ID, "pl-noisy"), IOPS);
        assert_eq!(
            fate("kvm", ID, IOPS, std::slice::from_ref(&ic)),
            held_by(&ic)
        );
    }

    #[test]
    fn vm_ids_are_compared_ignoring_case_and_the_vm_name_does_not_matter() {
        let ic = change(
            ChangeTarget::vm("kvm", &ID.to_ascii_uppercase(), "renamed-since"),
            IOPS,
        );
        assert_eq!(
            fate("kvm", ID, IOPS, std::slice::from_ref(&ic)),
            held_by(&ic)
        );
    }

    #[test]
    fn another_setting_another_vm_or_a_node_leaves_the_record_lost() {
        let ledger = [
            change(ChangeTarget::vm("kvm", ID, "pl-noisy"), "cpu_shares"),
            change(
                ChangeTarget::vm("kvm", ID, "pl-noisy"),
                "disk.vdb.total_iops_sec",
            ),
            change(
                ChangeTarget::vm("kvm", "8c1e0d2a-0000-4000-8000-000000000002", "pl-vm1"),
                IOPS,
            ),
            change(ChangeTarget::node("pl-noisy"), IOPS),
        ];
        assert_eq!(fate("kvm", ID, IOPS, &ledger), Fate::Lost);
        // A node target that happens to carry the VM id is still not a VM change.
        let mut node = change(ChangeTarget::node("pl-noisy"), IOPS);
        node.spec.target.vm_id = Some(ID.into());
        node.spec.target.provider = Some("kvm".into());
        assert_eq!(fate("kvm", ID, IOPS, &[node]), Fate::Lost);
    }

    #[test]
    fn a_target_without_a_vm_id_holds_nothing() {
        let mut ic = change(ChangeTarget::vm("kvm", ID, "pl-noisy"), IOPS);
        ic.spec.target.vm_id = None;
        assert_eq!(fate("kvm", ID, IOPS, &[ic]), Fate::Lost);
    }

    #[test]
    fn an_object_of_another_provider_for_the_same_vm_holds_it_but_this_providers_wins() {
        let other = change(ChangeTarget::vm("kvm-b", ID, "pl-noisy"), IOPS);
        assert_eq!(
            fate("kvm", ID, IOPS, std::slice::from_ref(&other)),
            Fate::Held {
                change: other.metadata.name.clone().unwrap(),
                other_provider: Some("kvm-b".into()),
                on_delete: OnDelete::RestoresOriginal,
            }
        );
        let mine = change(ChangeTarget::vm("kvm", ID, "pl-noisy"), IOPS);
        assert_eq!(
            fate("kvm", ID, IOPS, &[other, mine.clone()]),
            held_by(&mine)
        );
    }

    #[test]
    fn an_object_without_finalizer_or_abandoned_holds_it_but_will_not_restore_it() {
        let on_delete = |ic: InfraChange| match fate("kvm", ID, IOPS, &[ic]) {
            Fate::Held { on_delete, .. } => on_delete,
            Fate::Lost => panic!("held"),
        };
        let mut bare = change(ChangeTarget::vm("kvm", ID, "pl-noisy"), IOPS);
        bare.metadata.finalizers = None;
        assert_eq!(on_delete(bare.clone()), OnDelete::NoFinalizer);
        let mut abandoned = change(ChangeTarget::vm("kvm", ID, "pl-noisy"), IOPS);
        abandoned.metadata.annotations = Some([(ABANDON_ANNOTATION.into(), "true".into())].into());
        assert_eq!(on_delete(abandoned.clone()), OnDelete::Abandoned);
        // Abandoning without a finalizer changes nothing more.
        abandoned.metadata.finalizers = None;
        assert_eq!(on_delete(abandoned), OnDelete::NoFinalizer);
    }
}
