//! Host maintenance mode through the vSphere adapter, against the stack's simulator: entering
//! and leaving it (once, however often asked), an `EnterMaintenanceMode_Task` someone else
//! started seen while it runs, the call's timeout honoured, and an unknown host refused by
//! name. What the simulator holds is checked through its control endpoint, not through the
//! adapter. Needs `e2e/stack up vcsim`.
//!
//! Every test that changes a host is `serial_`, and puts the host back out of maintenance
//! through the control endpoint when it ends, however it ends.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use common::vsphere;
use plumbline_adapters::{connect, Error, HostState, Hypervisor};
use plumbline_e2e::{poll::until, stack, vsphere_hosts::SimHost};

const ENTER_TASK: &str = "HostSystem.enterMaintenanceMode";
const EXIT_TASK: &str = "HostSystem.exitMaintenanceMode";
const TIMEOUT: Duration = Duration::from_secs(30);

async fn adapter() -> Arc<dyn Hypervisor> {
    connect(vsphere(&stack()))
        .await
        .unwrap_or_else(|e| panic!("connecting to the simulator: {e}"))
}

/// The host these tests put into maintenance: of those with the fewest VMs, the first by
/// name (the operator's maintenance test drains the host with the most).
async fn quiet_host(hv: &dyn Hypervisor) -> String {
    let mut vms: BTreeMap<String, usize> = hv
        .host_states()
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.name, 0))
        .collect();
    for vm in hv.inventory().await.unwrap() {
        *vms.entry(vm.host).or_default() += 1;
    }
    vms.into_iter()
        .min_by_key(|(name, count)| (*count, name.clone()))
        .map(|(name, _)| name)
        .expect("the simulator has hosts")
}

async fn sim_host(name: &str) -> SimHost {
    stack()
        .vsphere_host(name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The host's maintenance state (its cluster is checked by
/// `host_states_name_every_host_as_the_inventory_names_the_vms_hosts`).
async fn state_of(hv: &dyn Hypervisor, host: &str) -> HostState {
    let states = hv.host_states().await.unwrap();
    let state = states
        .iter()
        .find(|h| h.name == host)
        .cloned()
        .unwrap_or_else(|| panic!("{host} is not in {states:?}"));
    HostState {
        cluster: None,
        ..state
    }
}

fn state(name: &str, in_maintenance: bool, entering: bool) -> HostState {
    HostState {
        name: name.into(),
        in_maintenance,
        entering,
        cluster: None,
    }
}

/// Runs `test` on a host the simulator has put back out of maintenance first, and puts it
/// back again afterwards, whatever became of the test (a panic included).
async fn on_host<F, Fut>(test: F)
where
    F: FnOnce(Arc<dyn Hypervisor>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let hv = adapter().await;
    let host = quiet_host(hv.as_ref()).await;
    let stack = stack();
    stack
        .end_vsphere_maintenance(&host)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = tokio::spawn(test(hv, host.clone())).await;
    let cleanup = stack.end_vsphere_maintenance(&host).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test did not run to its end: {e}");
    }
    cleanup.unwrap_or_else(|e| panic!("putting {host} back out of maintenance: {e}"));
}

#[tokio::test]
async fn host_states_name_every_host_as_the_inventory_names_the_vms_hosts() {
    let hv = adapter().await;
    let states = hv.host_states().await.unwrap();
    let ours: BTreeSet<String> = states.iter().map(|h| h.name.clone()).collect();
    let theirs: BTreeSet<String> = stack()
        .vsphere_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 3, "one standalone host and two in the cluster");
    for vm in hv.inventory().await.unwrap() {
        assert!(ours.contains(&vm.host), "{}'s host {}", vm.name, vm.host);
        // Each host names the cluster its VMs are in (none for the standalone host).
        let host = states.iter().find(|h| h.name == vm.host).unwrap();
        assert_eq!(host.cluster, vm.cluster, "{}'s host {}", vm.name, vm.host);
    }
    assert_eq!(
        states.iter().filter(|h| h.cluster.is_some()).count(),
        2,
        "{states:?}"
    );
}

#[tokio::test]
async fn an_unknown_host_is_refused_by_name_with_the_hosts_there_are() {
    let hv = adapter().await;
    let known = stack().vsphere_hosts().await.unwrap();
    for result in [
        hv.enter_maintenance("no-such-host", TIMEOUT).await,
        hv.exit_maintenance("no-such-host", TIMEOUT).await,
    ] {
        let err = result.unwrap_err();
        let Error::HostNotFound {
            host,
            known: listed,
            ..
        } = &err
        else {
            panic!("expected HostNotFound, got {err:?}");
        };
        assert_eq!(host, "no-such-host");
        let names: Vec<&str> = known.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(listed, &names);
        let message = err.to_string();
        assert!(
            message.starts_with("host no-such-host not found on https://"),
            "{message}"
        );
        assert!(message.contains(&names.join(", ")), "{message}");
        assert_eq!(err.kind(), "not_found");
    }
}

#[tokio::test]
async fn serial_entering_and_leaving_shows_in_host_states_and_asking_again_calls_nothing() {
    on_host(|hv, host| async move {
        let before = sim_host(&host).await;
        assert!(!before.in_maintenance, "{before:?}");
        let others: Vec<HostState> = hv
            .host_states()
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.name != host)
            .collect();

        hv.enter_maintenance(&host, TIMEOUT).await.unwrap();
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, true, false)
        );
        let entered = sim_host(&host).await;
        assert!(entered.in_maintenance, "{entered:?}");
        assert_eq!(entered.tasks(ENTER_TASK), before.tasks(ENTER_TASK) + 1);

        hv.enter_maintenance(&host, TIMEOUT).await.unwrap();
        assert_eq!(
            sim_host(&host).await.tasks(ENTER_TASK),
            entered.tasks(ENTER_TASK),
            "entering again started a task"
        );
        let now: Vec<HostState> = hv
            .host_states()
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.name != host)
            .collect();
        assert_eq!(now, others, "only {host} changed");

        hv.exit_maintenance(&host, TIMEOUT).await.unwrap();
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, false, false)
        );
        let left = sim_host(&host).await;
        assert!(!left.in_maintenance, "{left:?}");
        assert_eq!(left.tasks(EXIT_TASK), before.tasks(EXIT_TASK) + 1);

        hv.exit_maintenance(&host, TIMEOUT).await.unwrap();
        assert_eq!(
            sim_host(&host).await.tasks(EXIT_TASK),
            left.tasks(EXIT_TASK),
            "leaving again started a task"
        );
    })
    .await;
}

#[tokio::test]
async fn serial_an_enter_task_started_elsewhere_shows_as_entering_while_it_runs() {
    on_host(|hv, host| async move {
        let task = stack()
            .start_vsphere_maintenance(&host, Duration::from_secs(4))
            .await
            .unwrap();
        // It runs for 4 s: this read comes well within them.
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, false, true)
        );
        let sim = sim_host(&host).await;
        assert_eq!(sim.lingering, std::slice::from_ref(&task), "{sim:?}");

        let done = until(
            format!("{host} in maintenance once {task} has ended"),
            Duration::from_secs(15),
            || async {
                let now = state_of(hv.as_ref(), &host).await;
                (now == state(&host, true, false)).then_some(())
            },
        )
        .await;
        done.unwrap_or_else(|e| panic!("{e:#}"));

        hv.exit_maintenance(&host, TIMEOUT).await.unwrap();
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, false, false)
        );
    })
    .await;
}

#[tokio::test]
async fn serial_a_call_while_an_enter_task_runs_waits_for_it_instead_of_starting_one() {
    on_host(|hv, host| async move {
        let stack = stack();
        let before = sim_host(&host).await.tasks(ENTER_TASK);

        // Entering: the task in flight does it.
        stack
            .start_vsphere_maintenance(&host, Duration::from_secs(3))
            .await
            .unwrap();
        let started = Instant::now();
        hv.enter_maintenance(&host, TIMEOUT).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2), "returned after {took:?}");
        let sim = sim_host(&host).await;
        assert!(sim.in_maintenance, "{sim:?}");
        assert_eq!(sim.tasks(ENTER_TASK), before + 1, "{sim:?}");

        // Leaving: after the task in flight, or the host would fall into maintenance later.
        hv.exit_maintenance(&host, TIMEOUT).await.unwrap();
        stack
            .start_vsphere_maintenance(&host, Duration::from_secs(2))
            .await
            .unwrap();
        hv.exit_maintenance(&host, TIMEOUT).await.unwrap();
        let sim = sim_host(&host).await;
        assert!(sim.lingering.is_empty(), "{sim:?}");
        assert!(!sim.in_maintenance, "{sim:?}");
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, false, false)
        );
    })
    .await;
}

#[tokio::test]
async fn serial_an_enter_task_outliving_its_timeout_fails_and_leaves_the_host_as_it_was() {
    on_host(|hv, host| async move {
        stack()
            .linger_vsphere_maintenance(&host, Duration::from_secs(20))
            .await
            .unwrap();
        let started = Instant::now();
        let err = hv
            .enter_maintenance(&host, Duration::from_secs(1))
            .await
            .unwrap_err();
        let took = started.elapsed();
        let Error::TaskFailed { fault, target, .. } = &err else {
            panic!("expected TaskFailed, got {err:?}");
        };
        assert_eq!(
            (fault.as_str(), target.as_str()),
            ("Timedout", host.as_str())
        );
        assert!(took < Duration::from_secs(10), "failed after {took:?}");
        assert!(
            err.to_string().contains("entering maintenance mode"),
            "{err}"
        );
        assert_eq!(
            state_of(hv.as_ref(), &host).await,
            state(&host, false, false)
        );
    })
    .await;
}
