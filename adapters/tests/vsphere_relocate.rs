//! vMotion through the vSphere adapter, against the stack's simulator: a clustered VM moved to
//! the cluster's other host (where it runs is read from the simulator's control endpoint, not
//! through the adapter), a move to where it already runs sending nothing, and an unknown host
//! refused by name. The VM is put back where it was however the test ends. Needs
//! `e2e/stack up vcsim`.
//!
//! `serial_`: other tests (topology labels, spreading) depend on where the VMs run.

mod common;

use std::time::Duration;

use common::vsphere;
use plumbline_adapters::{connect, Error};
use plumbline_e2e::stack;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn serial_a_vm_is_moved_to_another_host_of_its_cluster_once() {
    let stack = stack();
    let hv = connect(vsphere(&stack)).await.unwrap();
    let vms = stack.vsphere_vms().await.unwrap();
    let vm = vms
        .iter()
        .find(|v| !v.cluster.is_empty())
        .expect("a clustered VM")
        .clone();
    let other = stack
        .vsphere_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .find(|h| h != &vm.host && h.starts_with(&vm.cluster))
        .expect("another host in the cluster");
    let id = plumbline_adapters::VmId::new(&vm.uuid);
    let moved = hv.relocate(&id, &other, TIMEOUT).await;
    let there = stack.vsphere_vms().await.unwrap();
    let again = hv.relocate(&id, &other, TIMEOUT).await;
    let unknown = hv.relocate(&id, "no-such-host", TIMEOUT).await;
    // Back where it was, whatever happened above.
    stack.relocate_vsphere_vm(&vm.name, &vm.host).await.unwrap();
    moved.unwrap();
    let now = there.iter().find(|v| v.uuid == vm.uuid).unwrap();
    assert_eq!(now.host, other, "{now:?}");
    assert_eq!(now.cluster, vm.cluster);
    again.unwrap();
    match unknown {
        Err(Error::HostNotFound { host, known, .. }) => {
            assert_eq!(host, "no-such-host");
            assert!(known.contains(&other), "{known:?}");
        }
        other => panic!("expected HostNotFound, got {other:?}"),
    }
}
