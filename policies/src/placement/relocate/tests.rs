use super::*;
use std::time::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn victim(degraded_for: u64) -> Victim<String> {
    Victim {
        vm: "db".into(),
        tier: Tier::Critical,
        intent: "shop/db".into(),
        state: HealthState::Degraded,
        healthy_for: Duration::ZERO,
        unknown_for: Duration::ZERO,
        degraded_for: Duration::from_secs(degraded_for),
        may_relocate: true,
        latency: Some(Duration::from_millis(60)),
        sample_interval: Duration::from_secs(20),
        active: true,
        host: Some("h1".into()),
        datastores: BTreeSet::new(),
    }
}

fn vm(name: &str, host: &str, iops: f64, protected_by: Option<Tier>) -> NeighbourCandidate<String> {
    NeighbourCandidate {
        vm: name.into(),
        host: Some(host.into()),
        datastores: BTreeSet::new(),
        iops,
        protected_by,
        can_limit_io: true,
    }
}

fn host(name: &str) -> HostChoice {
    HostChoice {
        name: name.into(),
        cluster: Some("c1".into()),
        in_maintenance: false,
    }
}

/// `noisy` on h1 with `db`, at the bottom of the ladder since `floored_at`; h2 quiet, h3
/// busier, h4 backs a critical workload.
struct Scene {
    victims: Vec<Victim<String>>,
    candidates: Vec<NeighbourCandidate<String>>,
    throttles: BTreeMap<String, Throttle<String>>,
    hosts: Vec<HostChoice>,
    past: Vec<PastRelocation<String>>,
    ladder: ThrottleLadder,
    policy: RelocationPolicy,
}

impl Scene {
    fn new(floored_at: SystemTime, level: usize) -> Self {
        let ladder = ThrottleLadder::default();
        let throttle = Throttle {
            vm: "noisy".to_string(),
            level,
            baseline_iops: 1000.0,
            limit_iops: (1000.0 * ladder.steps[level - 1]) as u64,
            stepped_at: floored_at,
            victims: ["db".to_string()].into(),
            victim_latency: None,
        };
        Self {
            victims: vec![victim(0)],
            candidates: vec![
                vm("db", "h1", 50.0, Some(Tier::Critical)),
                vm("noisy", "h1", 100.0, None),
                vm("quiet", "h2", 5.0, None),
                vm("busy", "h3", 400.0, None),
                vm("pay", "h4", 1.0, Some(Tier::Critical)),
            ],
            throttles: [("noisy".to_string(), throttle)].into(),
            hosts: ["h1", "h2", "h3", "h4"].map(host).to_vec(),
            past: vec![],
            ladder,
            policy: RelocationPolicy::default(),
        }
    }

    fn degraded_for(mut self, secs: u64) -> Self {
        self.victims[0].degraded_for = Duration::from_secs(secs);
        self
    }

    fn plan(&self, now: SystemTime) -> Vec<Relocation<String>> {
        plan_relocations(
            now,
            &self.victims,
            &self.candidates,
            &self.throttles,
            &self.ladder,
            &self.hosts,
            &self.past,
            &self.policy,
        )
    }
}

#[test]
fn the_neighbour_moves_after_the_dwell_at_the_floor_to_the_quietest_host_backing_no_critical_workload(
) {
    let scene = Scene::new(at(0), 3).degraded_for(600);
    assert!(scene.plan(at(119)).is_empty(), "within the dwell");
    let moves = scene.plan(at(120));
    assert_eq!(moves.len(), 1);
    let m = &moves[0];
    assert_eq!(
        (m.vm.as_str(), m.from.as_str(), m.to.as_str()),
        ("noisy", "h1", "h2")
    );
    assert_eq!(m.decided, vec![at(120)]);
    assert!(
        m.reason
            .contains("h2 has the least I/O in cluster c1 (5 IOPS)"),
        "{}",
        m.reason
    );
    assert!(m.reason.contains("VM db of shop/db"), "{}", m.reason);
}

#[test]
fn nothing_moves_above_the_floor_or_when_the_victim_recovered_in_between() {
    assert!(Scene::new(at(0), 2)
        .degraded_for(600)
        .plan(at(600))
        .is_empty());
    // Degraded for 100 s only: it recovered after the floor was reached.
    assert!(Scene::new(at(0), 3)
        .degraded_for(100)
        .plan(at(600))
        .is_empty());
    let mut healthy = Scene::new(at(0), 3).degraded_for(600);
    healthy.victims[0].state = HealthState::Healthy;
    assert!(healthy.plan(at(600)).is_empty());
}

#[test]
fn only_an_active_critical_victim_that_may_relocate_moves_anything() {
    for change in [
        |v: &mut Victim<String>| v.may_relocate = false,
        |v: &mut Victim<String>| v.active = false,
        |v: &mut Victim<String>| v.tier = Tier::High,
    ] {
        let mut scene = Scene::new(at(0), 3).degraded_for(600);
        change(&mut scene.victims[0]);
        assert!(scene.plan(at(600)).is_empty());
    }
}

#[test]
fn a_neighbour_sharing_only_a_datastore_is_not_moved() {
    let mut scene = Scene::new(at(0), 3).degraded_for(600);
    scene.candidates[1].host = Some("h3".into());
    assert!(scene.plan(at(600)).is_empty());
}

#[test]
fn hosts_in_maintenance_other_clusters_and_busy_hosts_are_not_targets() {
    let mut scene = Scene::new(at(0), 3).degraded_for(10_000);
    scene.hosts[1].in_maintenance = true;
    scene.hosts.push(HostChoice {
        name: "elsewhere".into(),
        cluster: Some("c2".into()),
        in_maintenance: false,
    });
    assert_eq!(
        scene.plan(at(600))[0].to,
        "h3",
        "h2 in maintenance, c2 not the cluster"
    );
    // h3 received a VM 10 minutes ago.
    scene.past.push(PastRelocation {
        vm: "other".into(),
        from: "h9".into(),
        to: "h3".into(),
        decided: vec![at(0)],
    });
    assert!(
        scene.plan(at(600)).is_empty(),
        "h4 backs a critical workload"
    );
    let why = pick_host(
        at(600),
        "h1",
        Some("c1"),
        &scene.hosts,
        &scene.candidates,
        &scene.past,
        &scene.policy,
    )
    .unwrap_err();
    assert_eq!(
        why,
        "no host of cluster c1 can take it: h2 is in maintenance, h3 had a relocation within 15 min, h4 backs a critical workload"
    );
    assert_eq!(
        scene.plan(at(900))[0].to,
        "h3",
        "after 15 minutes h3 may take one again"
    );
}

#[test]
fn one_relocation_per_host_per_fifteen_minutes_counts_the_source_and_this_pass() {
    let mut scene = Scene::new(at(0), 3).degraded_for(10_000);
    scene.past.push(PastRelocation {
        vm: "other".into(),
        from: "h1".into(),
        to: "h9".into(),
        decided: vec![at(100)],
    });
    assert!(scene.plan(at(600)).is_empty());
    assert_eq!(scene.plan(at(1000)).len(), 1);
    // Two victims on h1 with two floored neighbours: one move per pass from h1.
    let mut two = Scene::new(at(0), 3).degraded_for(600);
    let mut second = two.throttles["noisy"].clone();
    second.vm = "noisy2".into();
    second.victims = ["db2".to_string()].into();
    two.throttles.insert("noisy2".into(), second);
    two.candidates.push(vm("noisy2", "h1", 90.0, None));
    let mut v2 = victim(600);
    v2.vm = "db2".into();
    two.victims.push(v2);
    assert_eq!(two.plan(at(600)).len(), 1);
}

#[test]
fn the_cooldown_doubles_per_repeat_within_a_day_and_stops_at_six_hours() {
    let policy = RelocationPolicy::default();
    let minutes = |n: u64| Duration::from_secs(n * 60);
    assert_eq!(policy.cooldown_after(1), minutes(15));
    assert_eq!(policy.cooldown_after(2), minutes(30));
    assert_eq!(policy.cooldown_after(3), minutes(60));
    assert_eq!(policy.cooldown_after(6), minutes(360));
    assert_eq!(policy.cooldown_after(30), minutes(360));

    // Moved twice already (the last 20 minutes ago): the third waits 30 minutes.
    let mut scene = Scene::new(at(10_000), 3).degraded_for(100_000);
    scene.past.push(PastRelocation {
        vm: "noisy".into(),
        from: "h2".into(),
        to: "h1".into(),
        decided: vec![at(8_000), at(9_200)],
    });
    assert!(scene.plan(at(10_400)).is_empty(), "20 min after the last");
    let m = scene.plan(at(9_200 + 1_800));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].decided, vec![at(8_000), at(9_200), at(11_000)]);
    // Relocations older than a day do not count.
    scene.past[0].decided = vec![at(0)];
    let m = scene.plan(at(100_000));
    assert_eq!(m[0].decided, vec![at(100_000)]);
}

#[test]
fn a_standalone_host_or_a_lone_host_has_nowhere_to_go() {
    let mut scene = Scene::new(at(0), 3).degraded_for(600);
    for h in &mut scene.hosts {
        h.cluster = None;
    }
    assert!(scene.plan(at(600)).is_empty());
    let err = pick_host(
        at(0),
        "h1",
        None,
        &scene.hosts,
        &scene.candidates,
        &[],
        &scene.policy,
    )
    .unwrap_err();
    assert!(err.contains("in no compute cluster"), "{err}");
    let err = pick_host(
        at(0),
        "h1",
        Some("c1"),
        &[host("h1")],
        &scene.candidates,
        &[],
        &scene.policy,
    )
    .unwrap_err();
    assert_eq!(err, "cluster c1 has no other host");
}
