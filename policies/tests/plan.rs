//! Plans: what an intent asks for, given what was observed; and undoing it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plumbline_crds::{
    conditions::reason, names::STORAGE_READINESS_GATE, ActionKind, Availability, ChangeOwner,
    ChangePurpose, ChangeTarget, HostSpread, InfraChange, InfraChangeSpec, InfraChangeStatus,
    Infrastructure, Layer, NeighbourCandidateStatus, Placement, Priority, Storage, TargetKind,
    TimeWindow, Weekday, WorkloadIntent, WorkloadIntentSpec, WorkloadTarget,
};
use plumbline_policies::{
    actions_from_status, explain, explain_invalid, plan, plan_to_status, revert, Action, Change,
    CountOrPercent, Invalid, Observed, ObservedBackingVm, ObservedDisruptionBudget, ObservedInfra,
    ObservedWorkload, Plan, ValueChange, VmRef, WorkloadRef,
};
use proptest::prelude::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Monday 2026-11-23 10:00 Berlin.
fn monday_morning() -> DateTime<Utc> {
    utc("2026-11-23T09:00:00Z")
}

fn payments() -> WorkloadRef {
    WorkloadRef {
        kind: TargetKind::Deployment,
        namespace: "shop".into(),
        name: "payments".into(),
    }
}

fn intent(spec: WorkloadIntentSpec) -> WorkloadIntent {
    let mut wi = WorkloadIntent::new("payments-critical", spec);
    wi.metadata.namespace = Some("shop".into());
    wi
}

fn critical_spec() -> WorkloadIntentSpec {
    WorkloadIntentSpec {
        target: WorkloadTarget {
            kind: TargetKind::Deployment,
            name: "payments".into(),
        },
        priority: Priority::Critical,
        schedule: Some(vec![TimeWindow {
            days: Some(vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ]),
            start: "08:00".into(),
            end: "20:00".into(),
            time_zone: "Europe/Berlin".into(),
        }]),
        availability: Some(Availability {
            replica_floor: Some(3),
            min_available: Some(IntOrString::String("50%".into())),
        }),
        storage: Some(Storage {
            latency_budget: "20ms".into(),
            readiness_gate: true,
            max_unready: None,
        }),
        infrastructure: Some(Infrastructure {
            protect_backing_vms: true,
            throttle_noisy_neighbours: true,
            relocate_noisy_neighbours: false,
        }),
        placement: None,
        activation: None,
    }
}

fn vm(name: &str) -> VmRef {
    VmRef {
        provider: "lab-libvirt".into(),
        name: name.into(),
    }
}

fn observed_payments() -> ObservedWorkload {
    ObservedWorkload {
        workload: payments(),
        replicas: Some(2),
        priority_class_name: None,
        readiness_gates: vec![],
        host_spread: None,
        selector: BTreeMap::from([("app".to_string(), "payments".to_string())]),
        disruption_budgets: vec![],
    }
}

fn observed() -> Observed {
    Observed {
        workload: Some(observed_payments()),
        infra: ObservedInfra {
            backing: vec![ObservedBackingVm {
                vm: vm("worker-1"),
                host: Some("kvm-1".into()),
                datastores: vec![],
            }],
            changes: vec![],
            neighbours: vec![NeighbourCandidateStatus {
                vm: "batch-7".into(),
                vm_id: "id-batch-7".into(),
                provider: "lab-libvirt".into(),
                host: Some("kvm-1".into()),
                datastores: vec![],
                iops: 4000,
            }],
            placement: None,
        },
        applied: vec![],
    }
}

/// A ledger entry of shop/payments-critical, in force.
fn entry(vm_name: &str, setting: &str, desired: &str, original: &str) -> InfraChange {
    let spec = InfraChangeSpec {
        target: ChangeTarget::vm("lab-libvirt", &format!("id-{vm_name}"), vm_name),
        setting: setting.into(),
        desired: desired.into(),
        purpose: if setting == "cpu_shares" {
            ChangePurpose::BackingVmProtection
        } else {
            ChangePurpose::NeighbourThrottle
        },
        owners: vec![ChangeOwner {
            intent: "shop/payments-critical".into(),
            reason: format!("{vm_name}: because"),
        }],
        operator: "cluster".into(),
        throttle: None,
        relocation: None,
    };
    let mut ic = InfraChange::new(&InfraChange::name_for(&spec.target, setting), spec);
    ic.status = Some(InfraChangeStatus {
        original: Some(original.into()),
        observed: Some(desired.into()),
        state: Some("Applied".into()),
        ..Default::default()
    });
    ic
}

fn kinds(actions: &[Action]) -> Vec<ActionKind> {
    actions.iter().map(Action::kind).collect()
}

#[test]
fn critical_intent_in_its_window() {
    let p = plan(&intent(critical_spec()), &observed(), monday_morning()).expect("valid");
    assert!(p.activity.active);
    assert_eq!(p.activity.reason, reason::WINDOW_OPEN);
    assert_eq!(
        p.activity.next_transition,
        Some(utc("2026-11-23T19:00:00Z"))
    );
    assert!(p.reverts.is_empty());
    assert_eq!(
        kinds(&p.actions),
        [
            ActionKind::PriorityClass,
            ActionKind::PriorityClassName,
            ActionKind::PodDisruptionBudget,
            ActionKind::ReplicaFloor,
            ActionKind::ReadinessGate,
        ]
    );
    let changes: Vec<&Change> = p.actions.iter().map(|a| &a.change).collect();
    assert!(
        matches!(changes[0], Change::PriorityClass { name, class } if name == "plumbline-critical" && class.value == 1_000_000)
    );
    assert_eq!(
        changes[1],
        &Change::PriorityClassName {
            workload: payments(),
            value: ValueChange::new(Some("plumbline-critical".into()), None)
        }
    );
    assert_eq!(
        changes[2],
        &Change::PodDisruptionBudget {
            namespace: "shop".into(),
            name: "payments-plumbline".into(),
            selector: BTreeMap::from([("app".into(), "payments".into())]),
            value: ValueChange::new(Some(CountOrPercent::Percent(50)), None)
        }
    );
    assert_eq!(
        changes[3],
        &Change::Replicas {
            workload: payments(),
            value: ValueChange::new(Some(3), Some(2))
        }
    );
    assert_eq!(
        changes[4],
        &Change::ReadinessGate {
            workload: payments(),
            value: ValueChange::new(Some(STORAGE_READINESS_GATE.into()), None)
        }
    );
    // Nothing in the ledger yet: the hypervisor half is what the health loop will do.
    assert_eq!(p.layer(Layer::Hypervisor).count(), 0);
    let notes: Vec<&str> = p.notes.iter().map(|n| n.text.as_str()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("VM lab-libvirt/worker-1") && n.contains("4096")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("if VM lab-libvirt/worker-1 went over")
                && n.contains("lab-libvirt/batch-7 (4000 IOPS)")
                && n.contains("limiting to 2000 IOPS, step 1 of 3")),
        "{notes:?}"
    );
}

#[test]
fn ledger_entries_are_the_hypervisor_actions_with_their_originals() {
    let mut o = observed();
    o.infra.changes = vec![
        entry("worker-1", "cpu_shares", "4096", "1024"),
        entry("batch-7", "disk.vda.total_iops_sec", "2000", "0"),
    ];
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    let hypervisor: Vec<&Change> = p.layer(Layer::Hypervisor).map(|a| &a.change).collect();
    assert_eq!(
        hypervisor,
        [
            &Change::CpuShares {
                vm: vm("worker-1"),
                value: ValueChange::new(Some(4096), Some(1024))
            },
            &Change::DiskIopsLimit {
                vm: vm("batch-7"),
                disk: "vda".into(),
                value: ValueChange::new(Some(2000), Some(0))
            }
        ]
    );
    assert!(p
        .actions
        .iter()
        .any(|a| a.reason.contains("(InfraChange worker-1.cpu-shares.")));
    // Held already: no "next" note for the VM's shares.
    assert!(!p.notes.iter().any(|n| n.text.starts_with("next,")));
    // Another intent's entries are not this one's.
    let mut theirs = entry("worker-1", "cpu_shares", "4096", "1024");
    theirs.spec.owners[0].intent = "shop/other".into();
    o.infra.changes = vec![theirs];
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    assert_eq!(p.layer(Layer::Hypervisor).count(), 0);
    // Outside the window the ledger still holds them until the health loop lets go: shown,
    // never reverted by the plan.
    o.infra.changes = vec![entry("worker-1", "cpu_shares", "4096", "1024")];
    let p = plan(&intent(critical_spec()), &o, utc("2026-11-23T19:30:00Z")).unwrap();
    assert!(!p.activity.active);
    assert_eq!(p.layer(Layer::Hypervisor).count(), 1);
    assert!(p.reverts.iter().all(|a| a.layer() == Layer::Kubernetes));
}

#[test]
fn explain_prints_each_layer_with_reasons() {
    let p = plan(&intent(critical_spec()), &observed(), monday_morning()).expect("valid");
    let text = explain(&p);
    let expected = "\
Plan for Deployment shop/payments (tier critical)
Active: yes (WindowOpen): inside window Mon-Fri 08:00-20:00 Europe/Berlin; closes at 2026-11-23 19:00 UTC

Kubernetes layer:
  1. ensure PriorityClass plumbline-critical: value 1000000, preemptionPolicy PreemptLowerPriority
     why: tier critical is PriorityClass plumbline-critical (value 1000000)
  2. Deployment shop/payments priorityClassName: unset -> plumbline-critical
     why: pods of a critical workload are scheduled with plumbline-critical
  3. create PodDisruptionBudget shop/payments-plumbline minAvailable 50%, selecting app=payments
     why: availability.minAvailable 50%: voluntary disruptions keep that many pods of Deployment shop/payments running
  4. Deployment shop/payments replicas: 2 -> 3
     why: replica floor 3 while active (was 2)
  5. add readiness gate plumbline.dev/storage-healthy to the pod template of Deployment shop/payments
     why: storage.readinessGate: pods on VMs over the 20ms latency budget leave Service endpoints
";
    assert!(text.starts_with(expected), "got:\n{text}");
    assert!(
        text.contains("Hypervisor layer:\n  no changes\n"),
        "nothing in the ledger yet: {text}"
    );
}

/// Applies changes to the observed state, as the operator would.
fn apply(o: &mut Observed, actions: &[Action]) {
    for a in actions {
        match &a.change {
            Change::PriorityClass { .. } => {}
            Change::PriorityClassName { value, .. } => {
                o.workload.as_mut().unwrap().priority_class_name = value.desired.clone()
            }
            Change::Replicas { value, .. } => o.workload.as_mut().unwrap().replicas = value.desired,
            Change::ReadinessGate { value, .. } => {
                let w = o.workload.as_mut().unwrap();
                w.readiness_gates.retain(|g| g != STORAGE_READINESS_GATE);
                if let Some(g) = &value.desired {
                    w.readiness_gates.push(g.clone());
                }
            }
            Change::HostSpread { value, .. } => {
                o.workload.as_mut().unwrap().host_spread = value.desired.clone()
            }
            Change::PodDisruptionBudget { name, value, .. } => {
                let w = o.workload.as_mut().unwrap();
                w.disruption_budgets
                    .retain(|b| !(b.managed_by_plumbline && &b.name == name));
                if let Some(m) = value.desired {
                    w.disruption_budgets.push(ObservedDisruptionBudget {
                        name: name.clone(),
                        managed_by_plumbline: true,
                        min_available: Some(m),
                    });
                }
            }
            // The change ledger carries these out, not the controller.
            Change::CpuShares { .. } | Change::DiskIopsLimit { .. } => {}
        }
    }
}

/// One reconcile: plan, apply reverts then actions, store the held actions in status.
fn reconcile(wi: &WorkloadIntent, o: &mut Observed, now: DateTime<Utc>) -> Plan {
    let p = plan(wi, o, now).expect("valid");
    apply(o, &p.reverts);
    apply(o, &p.actions);
    o.applied = actions_from_status(&plan_to_status(&p)).expect("status reads back");
    p
}

#[test]
fn reconciling_again_changes_nothing_and_keeps_the_originals() {
    let wi = intent(critical_spec());
    let mut o = observed();
    let first = reconcile(&wi, &mut o, monday_morning());
    let after_first = o.clone();
    let second = reconcile(&wi, &mut o, monday_morning());
    assert_eq!(o.workload, after_first.workload);
    assert!(second.reverts.is_empty());
    assert_eq!(
        plan_to_status(&second),
        plan_to_status(&first),
        "same actions, same previous values"
    );
}

#[test]
fn closing_the_window_restores_everything() {
    let wi = intent(critical_spec());
    let before = observed();
    let mut o = before.clone();
    reconcile(&wi, &mut o, monday_morning());
    // 20:00 Berlin.
    let evening = utc("2026-11-23T19:00:00Z");
    let p = reconcile(&wi, &mut o, evening);
    assert!(!p.activity.active);
    assert_eq!(p.activity.reason, reason::WINDOW_CLOSED);
    assert_eq!(
        p.activity.next_transition,
        Some(utc("2026-11-24T07:00:00Z"))
    );
    assert!(p.actions.is_empty());
    assert_eq!(
        kinds(&p.reverts),
        [
            ActionKind::ReadinessGate,
            ActionKind::ReplicaFloor,
            ActionKind::PodDisruptionBudget,
            ActionKind::PriorityClassName
        ],
        "Kubernetes in reverse; the ledger lets go of hypervisor changes"
    );
    assert_eq!(o.workload, before.workload);
    assert_eq!(o.infra, before.infra);
    assert!(o.applied.is_empty());
    assert!(explain(&p).contains("Deployment shop/payments replicas: 3 -> 2"));
}

#[test]
fn a_value_someone_else_changed_is_left_alone_on_revert() {
    let wi = intent(critical_spec());
    let mut o = observed();
    reconcile(&wi, &mut o, monday_morning());
    o.workload.as_mut().unwrap().replicas = Some(7); // an HPA or a human scaled up
    let undo = revert(&o.applied, &o, "the intent was deleted");
    assert!(!kinds(&undo.actions).contains(&ActionKind::ReplicaFloor));
    assert!(
        undo.notes.iter().any(|n| n.text == "replicas of Deployment shop/payments is now 7, not what Plumbline set: someone else changed it, leaving it"),
        "{:?}",
        undo.notes
    );
    assert!(undo
        .actions
        .iter()
        .all(|a| a.reason.starts_with("the intent was deleted")));
}

#[test]
fn scaling_above_the_floor_needs_no_floor() {
    let wi = intent(critical_spec());
    let mut o = observed();
    o.workload.as_mut().unwrap().replicas = Some(5);
    let p = plan(&wi, &o, monday_morning()).unwrap();
    assert!(!kinds(&p.actions).contains(&ActionKind::ReplicaFloor));
    assert!(p.notes.iter().any(|n| n
        .text
        .contains("runs 5 replicas, at or above the floor of 3")));
    // Unset replicas count as 1.
    o.workload.as_mut().unwrap().replicas = None;
    let p = plan(&wi, &o, monday_morning()).unwrap();
    assert!(p.actions.iter().any(|a| a.change
        == Change::Replicas {
            workload: payments(),
            value: ValueChange::new(Some(3), None)
        }));
}

#[test]
fn dropping_a_feature_from_the_spec_reverts_just_that() {
    let mut spec = critical_spec();
    let mut o = observed();
    reconcile(&intent(spec.clone()), &mut o, monday_morning());
    spec.storage.as_mut().unwrap().readiness_gate = false;
    spec.availability = None;
    let p = reconcile(&intent(spec), &mut o, monday_morning());
    assert_eq!(
        kinds(&p.reverts),
        [
            ActionKind::ReadinessGate,
            ActionKind::ReplicaFloor,
            ActionKind::PodDisruptionBudget
        ]
    );
    assert_eq!(
        kinds(&p.actions),
        [ActionKind::PriorityClass, ActionKind::PriorityClassName]
    );
    let w = o.workload.as_ref().unwrap();
    assert_eq!(
        (
            w.replicas,
            w.readiness_gates.len(),
            w.disruption_budgets.len()
        ),
        (Some(2), 0, 0)
    );
}

#[test]
fn an_existing_budget_is_not_doubled() {
    let mut o = observed();
    o.workload
        .as_mut()
        .unwrap()
        .disruption_budgets
        .push(ObservedDisruptionBudget {
            name: "payments-pdb".into(),
            managed_by_plumbline: false,
            min_available: Some(CountOrPercent::Count(1)),
        });
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    assert!(!kinds(&p.actions).contains(&ActionKind::PodDisruptionBudget));
    assert!(p
        .notes
        .iter()
        .any(|n| n.text.contains("payments-pdb already covers the pods")));
}

#[test]
fn lower_tiers_do_not_touch_hypervisors() {
    let mut spec = critical_spec();
    spec.priority = Priority::Standard;
    let p = plan(&intent(spec), &observed(), monday_morning()).unwrap();
    assert_eq!(p.layer(Layer::Hypervisor).count(), 0);
    let notes: Vec<&str> = p.notes.iter().map(|n| n.text.as_str()).collect();
    assert!(
        notes.contains(&"infrastructure.protectBackingVms: not now, its tier does not protect VMs"),
        "{notes:?}"
    );
    assert!(
        notes.contains(
            &"infrastructure.throttleNoisyNeighbours: tier standard may not throttle neighbours"
        ),
        "{notes:?}"
    );
    assert!(
        matches!(&p.actions[0].change, Change::PriorityClass { name, .. } if name == "plumbline-standard")
    );
}

#[test]
fn the_throttle_preview_continues_the_ladder_from_the_ledger() {
    let mut o = observed();
    let mut step = entry("batch-7", "disk.vda.total_iops_sec", "2000", "0");
    step.spec.throttle = Some(plumbline_crds::ThrottleStep {
        step: 1,
        baseline_iops: 4000,
        stepped_at: plumbline_policies::ledger::to_time(monday_morning().into()),
        victims: vec![plumbline_crds::VmRef {
            name: "worker-1".into(),
            id: "id-worker-1".into(),
            provider: "lab-libvirt".into(),
        }],
        victim_latency_micros: Some(31_000),
    });
    o.infra.changes = vec![step];
    o.infra.neighbours[0].iops = 2000;
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    assert!(
        p.notes
            .iter()
            .any(|n| n.text.contains("limiting to 1000 IOPS, step 2 of 3")),
        "{:?}",
        p.notes
    );
    // No neighbour at all: said so.
    o.infra.neighbours.clear();
    o.infra.changes.clear();
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    assert!(p
        .notes
        .iter()
        .any(|n| n.text.contains("no neighbour could be throttled")));
}

#[test]
fn a_missing_target_is_reported_not_planned() {
    let mut o = observed();
    o.workload = None;
    let err = plan(&intent(critical_spec()), &o, monday_morning()).unwrap_err();
    assert_eq!(err, Invalid::TargetNotFound(payments()));
    assert_eq!(err.reason(), reason::TARGET_NOT_FOUND);
    assert_eq!(
        err.to_string(),
        "spec.target: Deployment shop/payments not found"
    );
    // A StatefulSet of the same name is not the Deployment asked for.
    o.workload = Some(ObservedWorkload {
        workload: WorkloadRef {
            kind: TargetKind::StatefulSet,
            ..payments()
        },
        ..observed_payments()
    });
    assert!(matches!(
        plan(&intent(critical_spec()), &o, monday_morning()),
        Err(Invalid::TargetNotFound(_))
    ));
}

#[test]
fn an_invalid_spec_lists_every_problem_and_plans_nothing() {
    let mut spec = critical_spec();
    spec.schedule.as_mut().unwrap()[0].time_zone = "Mars/Base".into();
    spec.schedule.as_mut().unwrap()[0].end = "07:00".into();
    spec.storage.as_mut().unwrap().latency_budget = "fast".into();
    spec.availability.as_mut().unwrap().min_available = Some(IntOrString::Int(5));
    let err = plan(&intent(spec), &observed(), monday_morning()).unwrap_err();
    assert_eq!(err.reason(), reason::INVALID_SPEC);
    let text = explain_invalid(&err);
    assert_eq!(
        text,
        "Nothing would be applied (InvalidSpec):
  spec.schedule[0].end: \"07:00\" is not after start \"08:00\"; a window cannot cross midnight, so split it in two (e.g. 08:00-24:00 and 00:00-07:00 on the next day)
  spec.schedule[0].timeZone: unknown time zone \"Mars/Base\" (use an IANA name such as Europe/Berlin or UTC)
  spec.availability.minAvailable: 5 is more than replicaFloor 3; no pod could ever be evicted
  spec.storage.latencyBudget: \"fast\" is not a latency such as 20ms, 500us or 1.5s
"
    );
}

#[test]
fn status_round_trip_is_lossless_but_for_the_budget_selector() {
    let mut o = observed();
    o.infra.changes = vec![entry("batch-7", "disk.vdb.total_iops_sec", "150", "5000")];
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    let back = actions_from_status(&plan_to_status(&p)).unwrap();
    let without_selector = |a: &Action| match &a.change {
        Change::PodDisruptionBudget {
            namespace,
            name,
            value,
            ..
        } => Action {
            change: Change::PodDisruptionBudget {
                namespace: namespace.clone(),
                name: name.clone(),
                selector: BTreeMap::new(),
                value: value.clone(),
            },
            reason: a.reason.clone(),
        },
        _ => a.clone(),
    };
    assert_eq!(
        back,
        p.actions.iter().map(without_selector).collect::<Vec<_>>()
    );
}

#[test]
fn a_corrupt_status_entry_is_an_error_with_its_index() {
    let p = plan(&intent(critical_spec()), &observed(), monday_morning()).unwrap();
    let mut entries = plan_to_status(&p);
    entries[3].desired = Some("three".into());
    let err = actions_from_status(&entries).unwrap_err();
    assert_eq!(
        err.to_string(),
        "reading status.plan[3] (ReplicaFloor on Deployment payments): desired \"three\": invalid digit found in string"
    );
}

// ---- properties: any sequence of specs, applied and then reverted, restores the original ----

fn arb_spec() -> impl Strategy<Value = WorkloadIntentSpec> {
    (
        proptest::sample::select(Priority::ALL.to_vec()),
        proptest::option::of(1i32..6),
        proptest::option::of(prop_oneof![
            (0i32..4).prop_map(IntOrString::Int),
            (0u32..=100).prop_map(|p| IntOrString::String(format!("{p}%")))
        ]),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::of(proptest::sample::select(vec![
            HostSpread::Preferred,
            HostSpread::Required,
        ])),
    )
        .prop_map(|(priority, floor, min_available, gate, protect, spread)| {
            WorkloadIntentSpec {
                target: WorkloadTarget {
                    kind: TargetKind::Deployment,
                    name: "payments".into(),
                },
                priority,
                schedule: None,
                availability: Some(Availability {
                    replica_floor: floor,
                    // A count above the floor is invalid; keep the property about valid specs.
                    min_available: min_available.filter(|m| match (m, floor) {
                        (IntOrString::Int(n), Some(f)) => *n <= f,
                        _ => true,
                    }),
                }),
                storage: gate.map(|g| Storage {
                    latency_budget: "20ms".into(),
                    readiness_gate: g,
                    max_unready: None,
                }),
                infrastructure: Some(Infrastructure {
                    protect_backing_vms: protect,
                    throttle_noisy_neighbours: false,
                    relocate_noisy_neighbours: false,
                }),
                placement: spread.map(|s| Placement {
                    spread_across_hosts: Some(s),
                }),
                activation: None,
            }
        })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        proptest::option::of(0i32..8),
        proptest::option::of(proptest::sample::select(vec![
            "plumbline-high".to_string(),
            "system-node-critical".to_string(),
            "batch".to_string(),
        ])),
        any::<bool>(),
        0usize..3,
        proptest::option::of(proptest::sample::select(vec![
            "ScheduleAnyway".to_string(),
            "DoNotSchedule".to_string(),
        ])),
    )
        .prop_map(|(replicas, class, gate, vms, spread)| {
            let mut w = observed_payments();
            w.replicas = replicas;
            w.priority_class_name = class;
            w.host_spread = spread;
            if gate {
                w.readiness_gates.push(STORAGE_READINESS_GATE.into());
            }
            w.readiness_gates.push("example.com/other".into());
            Observed {
                workload: Some(w),
                infra: ObservedInfra {
                    backing: (0..vms)
                        .map(|i| ObservedBackingVm {
                            vm: vm(&format!("worker-{i}")),
                            host: Some("kvm-1".into()),
                            datastores: vec![],
                        })
                        .collect(),
                    ..ObservedInfra::default()
                },
                applied: vec![],
            }
        })
}

proptest! {
    #[test]
    fn apply_then_revert_restores_the_original(start in arb_observed(), specs in proptest::collection::vec(arb_spec(), 1..4)) {
        let mut o = start.clone();
        for spec in &specs {
            reconcile(&intent(spec.clone()), &mut o, monday_morning());
            // Reconciling twice is a fixpoint.
            let again = plan(&intent(spec.clone()), &o, monday_morning()).unwrap();
            prop_assert!(again.reverts.is_empty(), "{:?}", again.reverts);
            prop_assert_eq!(plan_to_status(&again), plan_to_status(&plan(&intent(spec.clone()), &o, monday_morning()).unwrap()));
        }
        let undo = revert(&o.applied, &o, "the intent was deleted");
        prop_assert!(undo.notes.is_empty(), "{:?}", undo.notes);
        apply(&mut o, &undo.actions);
        prop_assert_eq!(o.workload, start.workload);
        prop_assert_eq!(o.infra, start.infra);
    }

    #[test]
    fn reverting_a_revert_gives_the_action_back(start in arb_observed(), spec in arb_spec()) {
        let p = plan(&intent(spec), &start, monday_morning()).unwrap();
        for a in &p.actions {
            match a.reverted("undo") {
                None => prop_assert_eq!(a.kind(), ActionKind::PriorityClass),
                Some(r) => prop_assert_eq!(r.reverted(a.reason.clone()).unwrap(), a.clone()),
            }
        }
    }

    #[test]
    fn every_tier_gets_its_priority_class_first(start in arb_observed(), spec in arb_spec()) {
        let p = plan(&intent(spec.clone()), &start, monday_morning()).unwrap();
        let expected = format!("plumbline-{}", spec.priority);
        let first_is_class = matches!(&p.actions[0].change, Change::PriorityClass { name, .. } if *name == expected);
        prop_assert!(first_is_class);
        prop_assert!(p.actions.iter().all(|a| !a.reason.is_empty()));
        // Kubernetes before hypervisor.
        let layers: Vec<Layer> = p.actions.iter().map(Action::layer).collect();
        let mut sorted = layers.clone();
        sorted.sort();
        prop_assert_eq!(layers, sorted);
    }
}

#[test]
fn without_observed_vms_the_plan_says_who_protects_them() {
    let mut o = observed();
    o.infra.backing.clear();
    let p = plan(&intent(critical_spec()), &o, monday_morning()).unwrap();
    assert_eq!(
        p.layer(Layer::Hypervisor).count(),
        0,
        "nothing left pending"
    );
    assert!(p.notes.iter().any(|n| n.layer == Layer::Hypervisor
        && n.text.contains("4096 CPU shares")
        && n.text.contains("status.protectedVms")));

    let mut spec = critical_spec();
    spec.priority = Priority::Standard;
    let p = plan(&intent(spec), &o, monday_morning()).unwrap();
    assert!(!p
        .notes
        .iter()
        .any(|n| n.text.contains("status.protectedVms")));
}
