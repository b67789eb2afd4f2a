//! The plan, decided: unit tests.

use super::*;

fn spec() -> MaintenanceSpec {
    MaintenanceSpec {
        dry_run: false,
        drain_timeout: Duration::from_secs(600),
        on_timeout: OnTimeout::Wait,
        max_unavailable_nodes: 1,
        enter_maintenance: false,
    }
}

fn node(name: &str, unschedulable: bool) -> HostNode {
    HostNode {
        name: name.into(),
        vm: format!("vm-{name}"),
        unschedulable,
    }
}

fn pod(name: &str, node: &str, workload: &str) -> HostPod {
    HostPod {
        namespace: "shop".into(),
        name: name.into(),
        node: node.into(),
        workload: workload.into(),
        stays: false,
        ready: true,
        terminating: false,
    }
}

fn view(nodes: Vec<HostNode>, pods: Vec<HostPod>) -> MaintenanceView {
    MaintenanceView {
        spec: spec(),
        started_at: Some(SystemTime::UNIX_EPOCH),
        previous_phase: None,
        nodes,
        pods,
        workloads: BTreeMap::new(),
        cordoned_by_us: BTreeSet::new(),
        host_mode_by_us: false,
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn the_first_pass_cordons_every_node_and_evicts_nothing_yet() {
    let v = view(
        vec![node("b", false), node("a", false)],
        vec![
            pod("p1", "a", "shop/Deployment/web"),
            pod("p2", "b", "shop/Deployment/web"),
        ],
    );
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.phase, m::PENDING);
    assert_eq!(plan.cordon, vec!["a".to_string(), "b".to_string()]);
    assert!(plan.evict.is_empty(), "the cordon comes first: {plan:?}");
    assert_eq!(plan.pending_pods, 2);
}

#[test]
fn a_cordoned_node_is_emptied_then_the_next_one_goes() {
    let mut v = view(
        vec![node("a", true), node("b", true)],
        vec![
            pod("p1", "a", "shop/Deployment/web"),
            pod("p2", "b", "shop/Deployment/web"),
        ],
    );
    v.workloads.insert(
        "shop/Deployment/web".into(),
        WorkloadFacts {
            ready: 4,
            ..WorkloadFacts::default()
        },
    );
    v.cordoned_by_us.extend(["a".to_string(), "b".to_string()]);
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.phase, m::DRAINING);
    assert_eq!(
        plan.evict,
        vec![("shop".into(), "p1".into())],
        "one node at a time"
    );
    assert_eq!(plan.nodes[1].state, m::NODE_WAITING);

    // p1 left: a is drained, b is next.
    v.pods.remove(0);
    let plan = plan_maintenance(&v, at(2));
    assert_eq!(plan.evict, vec![("shop".into(), "p2".into())]);
    assert_eq!(plan.nodes[0].state, m::NODE_DRAINED);
    assert_eq!(plan.nodes[1].state, m::NODE_DRAINING);
}

#[test]
fn daemonset_and_mirror_pods_stay_and_do_not_hold_the_drain() {
    let mut v = view(
        vec![node("a", true)],
        vec![pod("ds", "a", "shop/DaemonSet/agent")],
    );
    v.pods[0].stays = true;
    v.cordoned_by_us.insert("a".into());
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.phase, m::DRAINED);
    assert!(plan.ready_for_maintenance());
    assert!(plan.evict.is_empty());
}

#[test]
fn a_budget_with_no_headroom_blocks_and_is_named() {
    let mut v = view(
        vec![node("a", true)],
        vec![pod("p1", "a", "shop/Deployment/web")],
    );
    v.workloads.insert(
        "shop/Deployment/web".into(),
        WorkloadFacts {
            ready: 3,
            intent: None,
            budgets: vec![("web-pdb".into(), 0)],
            ..WorkloadFacts::default()
        },
    );
    v.cordoned_by_us.insert("a".into());
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.phase, m::BLOCKED);
    assert!(plan.evict.is_empty());
    assert_eq!(plan.blockers[0].reason, m::DISRUPTION_BUDGET);
    assert!(plan.blockers[0].message.contains("web-pdb"), "{plan:?}");
    assert!(!plan.workloads[0].evictable);
}

#[test]
fn evictions_in_one_pass_never_go_below_the_replica_floor() {
    let mut v = view(
        vec![node("a", true)],
        vec![
            pod("p1", "a", "shop/Deployment/pay"),
            pod("p2", "a", "shop/Deployment/pay"),
            pod("p3", "a", "shop/Deployment/pay"),
        ],
    );
    v.workloads.insert(
        "shop/Deployment/pay".into(),
        WorkloadFacts {
            ready: 4,
            intent: Some(IntentFacts {
                name: "shop/pay".into(),
                priority: Priority::Critical,
                active: true,
                replica_floor: Some(2),
            }),
            budgets: Vec::new(),
            ..WorkloadFacts::default()
        },
    );
    v.cordoned_by_us.insert("a".into());
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.evict.len(), 2, "4 ready, floor 2: {plan:?}");
    assert_eq!(plan.blockers[0].reason, m::REPLICA_FLOOR);
    assert!(plan.blockers[0].message.contains("shop/pay"));
}

#[test]
fn after_the_timeout_force_deletes_all_but_critical_pods_in_their_window() {
    let mut v = view(
        vec![node("a", true)],
        vec![
            pod("crit", "a", "shop/Deployment/pay"),
            pod("other", "a", "shop/Deployment/web"),
        ],
    );
    let intent = |name: &str, priority| IntentFacts {
        name: name.into(),
        priority,
        active: true,
        replica_floor: Some(1),
    };
    v.workloads.insert(
        "shop/Deployment/pay".into(),
        WorkloadFacts {
            ready: 1,
            intent: Some(intent("shop/pay", Priority::Critical)),
            budgets: Vec::new(),
            ..WorkloadFacts::default()
        },
    );
    v.workloads.insert(
        "shop/Deployment/web".into(),
        WorkloadFacts {
            ready: 1,
            intent: Some(intent("shop/web", Priority::High)),
            budgets: Vec::new(),
            ..WorkloadFacts::default()
        },
    );
    v.cordoned_by_us.insert("a".into());
    v.spec.on_timeout = OnTimeout::Force;
    let before = plan_maintenance(&v, at(599));
    assert!(before.delete.is_empty() && before.evict.is_empty());
    assert_eq!(before.phase, m::BLOCKED);
    let after = plan_maintenance(&v, at(600));
    assert_eq!(after.delete, vec![("shop".into(), "other".into())]);
    assert_eq!(after.phase, m::TIMED_OUT);
}

#[test]
fn abort_after_the_timeout_uncordons_and_ends_for_good() {
    let mut v = view(
        vec![node("a", true)],
        vec![pod("p1", "a", "shop/Deployment/web")],
    );
    v.workloads.insert(
        "shop/Deployment/web".into(),
        WorkloadFacts {
            ready: 1,
            intent: None,
            budgets: vec![("web-pdb".into(), 0)],
            ..WorkloadFacts::default()
        },
    );
    v.cordoned_by_us.insert("a".into());
    v.spec.on_timeout = OnTimeout::Abort;
    let plan = plan_maintenance(&v, at(601));
    assert_eq!(plan.phase, m::ENDED);
    assert!(plan.cordon.is_empty());
    assert_eq!(plan.blockers[0].reason, m::ABORTED);
    v.previous_phase = Some(m::ENDED.into());
    v.pods.clear();
    assert_eq!(plan_maintenance(&v, at(700)).phase, m::ENDED);
}

#[test]
fn a_dry_run_shows_the_preflight_and_touches_nothing() {
    let mut v = view(
        vec![node("a", false)],
        vec![pod("p1", "a", "shop/Deployment/web")],
    );
    v.spec.dry_run = true;
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(plan.phase, m::PENDING);
    assert!(plan.cordon.is_empty() && plan.evict.is_empty());
    assert_eq!(plan.pending_pods, 1);
    assert_eq!(plan.workloads[0].workload, "shop/Deployment/web");
}

#[test]
fn two_nodes_at_once_when_allowed() {
    let mut v = view(
        vec![node("a", true), node("b", true), node("c", true)],
        vec![
            pod("p1", "a", "w"),
            pod("p2", "b", "w"),
            pod("p3", "c", "w"),
        ],
    );
    v.spec.max_unavailable_nodes = 2;
    v.cordoned_by_us.extend(["a", "b", "c"].map(String::from));
    v.workloads.insert(
        "w".into(),
        WorkloadFacts {
            ready: 6,
            ..WorkloadFacts::default()
        },
    );
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(
        plan.evict,
        vec![("shop".into(), "p1".into()), ("shop".into(), "p2".into())]
    );
}

fn critical(floor: usize) -> IntentFacts {
    IntentFacts {
        name: "shop/pay".into(),
        priority: Priority::Critical,
        active: true,
        replica_floor: Some(floor),
    }
}

#[test]
fn a_critical_workload_that_would_run_short_is_surged_first_then_leaves_one_pod_at_a_time() {
    let mut v = view(
        vec![node("a", true)],
        vec![
            pod("p1", "a", "shop/Deployment/pay"),
            pod("p2", "a", "shop/Deployment/pay"),
        ],
    );
    v.cordoned_by_us.insert("a".into());
    let facts = |ready, allowed, surge| WorkloadFacts {
        ready,
        intent: Some(critical(2)),
        budgets: vec![("pay-pdb".into(), allowed)],
        replicas: Some(2),
        surge,
    };
    // Both ready pods are on the host and the budget allows none: surge by 2 first.
    v.workloads
        .insert("shop/Deployment/pay".into(), facts(2, 0, None));
    let plan = plan_maintenance(&v, at(1));
    assert_eq!(
        plan.surge,
        vec![Surge {
            workload: "shop/Deployment/pay".into(),
            replicas: 4,
            by: 2,
            intent: "shop/pay".into(),
        }]
    );
    assert!(plan.evict.is_empty(), "{plan:?}");
    assert_eq!(plan.blockers[0].reason, m::SURGE_PENDING);
    assert_eq!(
        plan.phase,
        m::DRAINING,
        "waiting for a surge is not blocked"
    );
    assert!(plan.workloads[0].message.contains("surged by 2 to 4"));

    // In force, the new pods not ready yet: still waiting, and the surge is kept as is.
    v.workloads
        .insert("shop/Deployment/pay".into(), facts(3, 1, Some(4)));
    let plan = plan_maintenance(&v, at(2));
    assert!(plan.evict.is_empty());
    assert_eq!(plan.surge[0].replicas, 4);

    // All 4 ready: one pod leaves, the next waits for its replacement.
    v.workloads
        .insert("shop/Deployment/pay".into(), facts(4, 2, Some(4)));
    let plan = plan_maintenance(&v, at(3));
    assert_eq!(plan.evict, vec![("shop".into(), "p1".into())]);

    // Drained: the surge stays until the maintenance ends.
    v.pods.clear();
    let plan = plan_maintenance(&v, at(4));
    assert_eq!(plan.phase, m::DRAINED);
    assert_eq!(plan.surge.len(), 1);
}

#[test]
fn only_active_critical_or_high_intents_that_would_run_short_are_surged() {
    let mut v = view(
        vec![node("a", true)],
        vec![pod("p1", "a", "shop/Deployment/pay")],
    );
    v.cordoned_by_us.insert("a".into());
    let mut facts = WorkloadFacts {
        ready: 1,
        intent: Some(critical(1)),
        replicas: Some(1),
        ..WorkloadFacts::default()
    };
    let mut with = |f: &WorkloadFacts| {
        v.workloads.insert("shop/Deployment/pay".into(), f.clone());
        plan_maintenance(&v, at(1)).surge.len()
    };
    assert_eq!(with(&facts), 1, "its only ready pod is on the host");
    facts.intent.as_mut().unwrap().priority = Priority::Standard;
    assert_eq!(with(&facts), 0, "standard tier");
    facts.intent.as_mut().unwrap().priority = Priority::High;
    facts.intent.as_mut().unwrap().active = false;
    assert_eq!(with(&facts), 0, "outside its window");
    facts.intent.as_mut().unwrap().active = true;
    facts.ready = 3;
    assert_eq!(with(&facts), 0, "enough ready elsewhere");
    facts.ready = 1;
    facts.replicas = None;
    assert_eq!(with(&facts), 0, "replicas unknown");
}

#[test]
fn the_host_enters_maintenance_mode_once_drained_and_stays_until_the_end() {
    let mut v = view(
        vec![node("a", true)],
        vec![pod("p1", "a", "shop/Deployment/web")],
    );
    v.spec.enter_maintenance = true;
    v.cordoned_by_us.insert("a".into());
    v.workloads.insert(
        "shop/Deployment/web".into(),
        WorkloadFacts {
            ready: 3,
            ..WorkloadFacts::default()
        },
    );
    assert!(!plan_maintenance(&v, at(1)).host_mode, "not drained yet");
    v.pods.clear();
    assert!(plan_maintenance(&v, at(2)).host_mode, "drained");
    // A pod lands again (someone uncordoned by hand): the host stays in maintenance mode.
    v.host_mode_by_us = true;
    v.pods.push(pod("p2", "a", "shop/Deployment/web"));
    assert!(plan_maintenance(&v, at(3)).host_mode);
    v.spec.enter_maintenance = false;
    assert!(!plan_maintenance(&v, at(4)).host_mode, "not asked for");
    v.spec.enter_maintenance = true;
    v.previous_phase = Some(m::ENDED.into());
    assert!(!plan_maintenance(&v, at(5)).host_mode, "ended");
}

#[test]
fn durations_parse_and_bad_ones_are_named() {
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_duration("10"), None);
    let bad = plumbline_crds::HostMaintenanceSpec {
        provider: "p".into(),
        host: "h".into(),
        reason: None,
        drain_timeout: Some("soon".into()),
        on_timeout: OnTimeout::Wait,
        max_unavailable_nodes: None,
        dry_run: false,
        enter_maintenance: false,
    };
    assert!(MaintenanceSpec::from_crd(&bad)
        .unwrap_err()
        .starts_with("spec.drainTimeout"));
}
