//! I/O rates and contention through the vSphere adapter, against the stack's simulator: a VM
//! given a load reports it as `virtualDisk.numberWriteAveraged` (operations over the sample
//! window), a VM on the same host sees its latency rise by the load's contention, the VM's disk
//! IOPS limit caps the load, and a VM on another host is unaffected. Needs `e2e/stack up
//! vcsim`.
//!
//! `serial_`: it moves a VM and loads the simulator's host.

mod common;

use std::time::Duration;

use common::vsphere;
use plumbline_adapters::{connect, DiskLatency, DiskLimit, Setting, Tunable, VmId};
use plumbline_e2e::stack;

/// The VM's operations per second and mean write latency over its disks, as sampled now.
fn rate_and_latency(disks: &[DiskLatency], vm: &VmId) -> (f64, Duration) {
    let mine: Vec<&DiskLatency> = disks.iter().filter(|d| &d.vm == vm).collect();
    assert!(!mine.is_empty(), "no sample of {vm}");
    let rate = mine
        .iter()
        .map(|d| {
            // The simulator's SOAP encoder drops zeros from a series: no count is none done.
            let ops: u64 = [d.read, d.write]
                .into_iter()
                .flatten()
                .filter_map(|o| o.ops)
                .sum();
            ops as f64 / d.window.as_secs_f64()
        })
        .sum();
    let latency = mine
        .iter()
        .filter_map(|d| d.write)
        .map(|o| o.mean)
        .max()
        .unwrap();
    (rate, latency)
}

#[tokio::test]
async fn serial_a_loaded_vm_reports_its_rate_and_slows_its_host_neighbours() {
    let stack = stack();
    let hv = connect(vsphere(&stack)).await.unwrap();
    let vms = stack.vsphere_vms().await.unwrap();
    let clustered: Vec<_> = vms.iter().filter(|v| !v.cluster.is_empty()).collect();
    let (victim, noisy) = (clustered[0].clone(), clustered[1].clone());
    let apart = vms.iter().find(|v| v.cluster.is_empty()).unwrap().clone();
    let outcome = async {
        stack.relocate_vsphere_vm(&noisy.name, &victim.host).await?;
        stack
            .set_vsphere_load(&noisy.name, 1000, 30.0, 0.05)
            .await?;
        let loaded = hv.sample_storage().await?;
        let noisy_id = VmId::new(&noisy.uuid);
        let disk = hv
            .inventory()
            .await?
            .into_iter()
            .find(|v| v.id == noisy_id)
            .unwrap()
            .disks[0]
            .name
            .clone();
        let limit = Tunable::DiskLimit {
            disk,
            limit: DiskLimit::TotalIops,
        };
        hv.apply(&noisy_id, &[Setting::new(limit.clone(), 250)])
            .await?;
        let limited = hv.sample_storage().await?;
        hv.revert(&noisy_id, &[limit]).await?;
        Ok::<_, anyhow::Error>((loaded, limited))
    }
    .await;
    stack.clear_vsphere_load(&noisy.name).await.unwrap();
    stack
        .relocate_vsphere_vm(&noisy.name, &noisy.host)
        .await
        .unwrap();
    let (loaded, limited) = outcome.unwrap();

    let (rate, _) = rate_and_latency(&loaded.disks, &VmId::new(&noisy.uuid));
    assert_eq!(rate, 1000.0);
    let (_, slowed) = rate_and_latency(&loaded.disks, &VmId::new(&victim.uuid));
    assert_eq!(
        slowed,
        Duration::from_millis(1 + 30 + 50),
        "baseline + 30 ms + 0.05 ms × 1000"
    );
    let (rate, quiet) = rate_and_latency(&loaded.disks, &VmId::new(&apart.uuid));
    assert_eq!(
        (rate, quiet),
        (0.0, Duration::from_millis(1)),
        "another host"
    );

    let (rate, _) = rate_and_latency(&limited.disks, &VmId::new(&noisy.uuid));
    assert_eq!(rate, 250.0, "the IOPS limit caps the load");
    let (_, slowed) = rate_and_latency(&limited.disks, &VmId::new(&victim.uuid));
    assert_eq!(
        slowed,
        Duration::from_millis(1 + 30 + 13),
        "0.05 ms × 250, rounded"
    );
}
