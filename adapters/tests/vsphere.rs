//! The vSphere adapter against the stack's govmomi simulator (TLS with its own CA,
//! user/password, per-VM latency control). Needs `e2e/stack up vcsim`.

use std::{collections::BTreeMap, time::Duration};

use plumbline_adapters::{
    connect, vsphere::VSphereHypervisor, Capability, DiskLimit, Error, Hypervisor,
    HypervisorConfig, Secret, Setting, Support, TlsTrust, Tunable, VmId,
};
use plumbline_e2e::{
    latency::{SessionFault, SimReconfiguration},
    poll::until,
    stack, Stack,
};

mod common;

use common::{stack_value, vsphere, vsphere_config};

#[derive(Debug, Clone, serde::Deserialize)]
struct SimVm {
    name: String,
    uuid: String,
    host: String,
    /// Empty for the standalone host.
    cluster: String,
}

async fn simulator_vms() -> Vec<SimVm> {
    let url = format!("{}/vms", stack_value(&stack(), "VCSIM_CONTROL_URL"));
    let body = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    body.json()
        .await
        .unwrap_or_else(|e| panic!("decoding {url}: {e}"))
}

#[tokio::test]
async fn inventory_matches_the_simulator() {
    let hv = connect(vsphere(&stack())).await.unwrap();
    type Row = (String, String, Option<String>, String);
    let simulator = || async {
        simulator_vms()
            .await
            .into_iter()
            .map(|v| {
                let id = VmId::new(&v.uuid).to_string();
                let provider = format!("vsphere://{id}");
                let cluster = (!v.cluster.is_empty()).then_some(v.cluster);
                (id, (v.name, v.host, cluster, provider))
            })
            .collect::<BTreeMap<String, Row>>()
    };
    // The simulator read before and after the adapter's: a serial test may move a VM
    // (topology.rs) meanwhile, and then both are read again.
    let mut attempts = 0;
    let (vms, ours, theirs, samples) = loop {
        let before = simulator().await;
        let vms = hv.inventory().await.unwrap();
        let samples = hv.sample_storage().await.unwrap();
        let after = simulator().await;
        attempts += 1;
        if before == after || attempts == 5 {
            let ours: BTreeMap<String, Row> = vms
                .iter()
                .map(|v| {
                    (
                        v.id.to_string(),
                        (
                            v.name.clone(),
                            v.host.clone(),
                            v.cluster.clone(),
                            v.provider_id.clone(),
                        ),
                    )
                })
                .collect();
            break (vms, ours, after, samples);
        }
    };
    assert!(
        theirs.len() >= 4,
        "the simulator serves at least 4 VMs: {theirs:?}"
    );
    assert_eq!(ours, theirs);
    let hosts: std::collections::BTreeSet<_> = vms.iter().map(|v| v.host.as_str()).collect();
    assert!(
        hosts.len() >= 2,
        "VMs spread over at least 2 hosts: {hosts:?}"
    );
    assert!(
        vms.iter().any(|v| v.cluster.is_some()) && vms.iter().any(|v| v.cluster.is_none()),
        "VMs in the cluster and on the standalone host: {ours:?}"
    );
    // A sampling cycle places every VM as the inventory does.
    let placed: BTreeMap<String, (String, Option<String>)> = samples
        .placements
        .iter()
        .map(|p| (p.vm.to_string(), (p.host.clone(), p.cluster.clone())))
        .collect();
    let listed: BTreeMap<String, (String, Option<String>)> = vms
        .iter()
        .map(|v| (v.id.to_string(), (v.host.clone(), v.cluster.clone())))
        .collect();
    assert_eq!(placed, listed);
    for vm in &vms {
        assert!(!vm.disks.is_empty(), "{} has disks", vm.name);
        assert!(!vm.datastores.is_empty(), "{} has datastores", vm.name);
        for disk in &vm.disks {
            assert!(
                disk.name.contains(':'),
                "disk named by controller and unit: {disk:?}"
            );
            let path = disk.path.as_deref().unwrap_or_default();
            assert!(path.starts_with('['), "datastore path: {disk:?}");
            assert!(
                vm.datastores.contains(disk.datastore.as_ref().unwrap()),
                "{disk:?}"
            );
        }
        assert_eq!(
            VmId::from_provider_id(&vm.provider_id).as_ref(),
            Some(&vm.id)
        );
    }
}

#[tokio::test]
async fn serial_injected_latency_appears_in_samples_and_disappears_when_cleared() {
    let stack = stack();
    let hv = connect(vsphere(&stack)).await.unwrap();
    let vm = hv
        .inventory()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.running)
        .unwrap();
    let (read_ms, write_ms) = (240, 410);
    stack
        .set_vsphere_latency(vm.id.as_str(), read_ms, write_ms)
        .await
        .unwrap();

    // The simulator answers QueryPerf with the new value at once; one 20 s interval is the bound.
    let seen = until(
        "injected latency in the samples",
        Duration::from_secs(25),
        || async {
            let samples = hv.sample_storage().await.unwrap();
            let disk = samples.for_vm(&vm.id).next()?.clone();
            (disk.read?.mean == Duration::from_millis(read_ms)).then_some(disk)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(seen.write.unwrap().mean, Duration::from_millis(write_ms));
    assert_eq!(seen.window, Duration::from_secs(20));
    assert_eq!(seen.disk, vm.disks[0].name);

    stack.clear_vsphere_latency(vm.id.as_str()).await.unwrap();
    let cleared = until(
        "latency back to baseline",
        Duration::from_secs(25),
        || async {
            let samples = hv.sample_storage().await.unwrap();
            let disk = samples.for_vm(&vm.id).next()?.clone();
            (disk.worst()? < Duration::from_millis(read_ms)).then_some(disk)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        cleared.worst().unwrap() < Duration::from_millis(100),
        "{cleared:?}"
    );
}

#[tokio::test]
async fn serial_tuning_is_applied_read_back_and_reverted_by_a_fresh_instance() {
    let stack = stack();
    let hv = connect(vsphere(&stack)).await.unwrap();
    let vm = hv.inventory().await.unwrap().into_iter().next().unwrap();
    let disk = vm.disks[0].name.clone();
    let iops = Tunable::DiskLimit {
        disk: disk.clone(),
        limit: DiskLimit::TotalIops,
    };
    let shares = Tunable::DiskShares { disk };
    // A previous failed run may have left records; start from the VM's true originals.
    hv.revert_all(&vm.id).await.unwrap();
    let before = hv.tunables(&vm.id).await.unwrap();
    assert!(before.originals.is_empty(), "{before:?}");

    let wanted = [
        Setting::new(Tunable::CpuShares, 3333),
        Setting::new(Tunable::MemoryReservationMib, 64),
        Setting::new(iops.clone(), 150),
        Setting::new(shares.clone(), 500),
    ];
    hv.apply(&vm.id, &wanted).await.unwrap();
    let after = hv.tunables(&vm.id).await.unwrap();
    for s in &wanted {
        assert_eq!(
            after.current(&s.tunable),
            Some(s.value),
            "{} read back",
            s.tunable
        );
        assert_eq!(
            after.original(&s.tunable),
            before.current(&s.tunable),
            "{} original recorded",
            s.tunable
        );
    }

    // A second change keeps the first original.
    hv.apply(&vm.id, &[Setting::new(iops.clone(), 75)])
        .await
        .unwrap();
    let again = hv.tunables(&vm.id).await.unwrap();
    assert_eq!(again.current(&iops), Some(75));
    assert_eq!(again.original(&iops), before.current(&iops));

    // The record lives on the VM: a new adapter (an operator restart) can revert.
    hv.close().await.unwrap();
    drop(hv);
    let fresh = connect(vsphere(&stack)).await.unwrap();
    assert_eq!(
        fresh.tunables(&vm.id).await.unwrap().originals,
        after.originals
    );
    let restored = fresh.revert_all(&vm.id).await.unwrap();
    assert_eq!(restored.len(), wanted.len());
    let reverted = fresh.tunables(&vm.id).await.unwrap();
    assert_eq!(reverted.current, before.current);
    assert!(
        reverted.originals.is_empty(),
        "records are removed after revert: {reverted:?}"
    );
}

#[tokio::test]
async fn serial_terminated_session_logs_in_again() {
    let stack = stack();
    let hv = VSphereHypervisor::connect(vsphere_config(&stack))
        .await
        .unwrap();
    let first_key = hv.session_key().unwrap();
    let before = hv.inventory().await.unwrap().len();

    let terminated = stack.terminate_vsphere_sessions().await.unwrap();
    assert!(terminated >= 1, "the simulator ended our session");

    assert_eq!(hv.inventory().await.unwrap().len(), before);
    let second_key = hv.session_key().unwrap();
    assert_ne!(first_key, second_key, "a new session was created");
    assert!(hv.connection().is_connected());
    hv.keepalive().await.unwrap();
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let mut config = vsphere_config(&stack());
    config.tls = TlsTrust::PublicRoots;
    let err = connect(HypervisorConfig::VSphere(config.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    let chain = format!("{:?}", anyhow::Error::from(err));
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");

    // The insecure flag exists for labs: it accepts the same server.
    config.tls = TlsTrust::Insecure;
    connect(HypervisorConfig::VSphere(config)).await.unwrap();
}

#[tokio::test]
async fn a_ca_bundle_without_certificates_is_a_configuration_error() {
    let mut config = vsphere_config(&stack());
    config.tls = TlsTrust::CaPem(b"not a certificate".to_vec());
    let err = connect(HypervisorConfig::VSphere(config))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_credentials_give_a_clear_error() {
    let mut config = vsphere_config(&stack());
    config.password = Secret::new("definitely-wrong");
    let err = connect(HypervisorConfig::VSphere(config.clone()))
        .await
        .unwrap_err();
    let Error::Authentication {
        username, fault, ..
    } = &err
    else {
        panic!("expected an authentication error, got {err:?}")
    };
    assert_eq!(username, &config.username);
    assert_eq!(fault, "InvalidLogin");
    let message = err.to_string();
    assert!(
        message.contains("logging in to") && message.contains(&config.username),
        "{message}"
    );
    assert!(
        !message.contains("definitely-wrong"),
        "the password never appears: {message}"
    );
}

#[tokio::test]
async fn unsupported_capabilities_are_reported_not_raised() {
    let hv = connect(vsphere(&stack())).await.unwrap();
    let caps = hv.capabilities().await.unwrap();
    assert!(caps.supports(Capability::StorageLatency));
    assert!(caps.supports(Capability::DiskIopsLimit));
    assert!(matches!(
        caps.support(Capability::BlkioWeight),
        Support::Unsupported { .. }
    ));
    let vm = hv.inventory().await.unwrap().remove(0);
    let err = hv
        .apply(&vm.id, &[Setting::new(Tunable::BlkioWeight, 500)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                capability: Capability::BlkioWeight,
                ..
            }
        ),
        "{err:?}"
    );
    let report = hv.tunables(&vm.id).await.unwrap();
    assert!(report
        .unsupported
        .iter()
        .any(|(t, _)| *t == Tunable::BlkioWeight));
}

#[tokio::test]
async fn unknown_vm_is_a_not_found_error() {
    let hv = connect(vsphere(&stack())).await.unwrap();
    let err = hv
        .tunables(&VmId::new("00000000-0000-0000-0000-000000000000"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VmNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_as_disconnected() {
    let mut config = vsphere_config(&stack());
    config.url = "https://127.0.0.1:1/sdk".into();
    let err = connect(HypervisorConfig::VSphere(config))
        .await
        .unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(err.to_string().contains("https://127.0.0.1:1/sdk"), "{err}");
}

/// Where a test ends the adapter's session during `apply`.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    /// Before apply reads the VM.
    BeforeTheRead,
    /// At a point of the VM's next `ReconfigVM_Task`, by the simulator.
    Reconfigure(SessionFault),
}

const WANTED_SHARES: u64 = 4096;

/// The simulator VM these tests change: the standalone host's last VM, which the other
/// serial tests (the inventory's first VM) leave alone.
async fn shares_vm() -> SimVm {
    let mut vms = simulator_vms().await;
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    vms.into_iter()
        .rfind(|v| v.name.starts_with("DC0_H0_"))
        .expect("the simulator has a VM on its standalone host")
}

/// Runs `body` against the shares VM, then reverts every record on it (and disarms any
/// fault left armed) whether `body` passed or panicked.
async fn on_the_shares_vm<F, Fut>(body: F)
where
    F: FnOnce(Stack, SimVm) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stack = stack();
    let vm = shares_vm().await;
    let outcome = tokio::spawn(body(stack.clone(), vm.clone())).await;
    stack.disarm_vsphere_session_fault(&vm.name).await.unwrap();
    let hv = connect(vsphere(&stack)).await.unwrap();
    hv.revert_all(&VmId::new(&vm.uuid)).await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The reconfigurations `vm` received after the first `seen`.
async fn reconfigurations_since(stack: &Stack, vm: &str, seen: usize) -> Vec<SimReconfiguration> {
    let all = stack.vsphere_reconfigurations(vm).await.unwrap();
    all[seen.min(all.len())..].to_vec()
}

/// Applies CPU shares with the session ended at `interruption`, and checks that the change
/// landed exactly once, that the recorded original is the value from before the test, and
/// that revert brings it back.
async fn shares_applied_once_despite(interruption: Interruption) {
    on_the_shares_vm(move |stack, sim| async move {
        let hv = VSphereHypervisor::connect(vsphere_config(&stack))
            .await
            .unwrap();
        let vm = VmId::new(&sim.uuid);
        hv.revert_all(&vm).await.unwrap();
        let before = hv.tunables(&vm).await.unwrap();
        let held = stack.vsphere_vm_config(&sim.name).await.unwrap();
        let original = before.current(&Tunable::CpuShares).unwrap();
        assert_ne!(
            original, WANTED_SHARES,
            "a leftover of an earlier run: {held:?}"
        );
        assert_eq!(original, held.cpu_shares as u64);
        assert!(before.originals.is_empty(), "{before:?}");
        let record_key = "plumbline.original.cpu_shares";
        assert!(!held.extra_config.contains_key(record_key), "{held:?}");
        let seen = stack
            .vsphere_reconfigurations(&sim.name)
            .await
            .unwrap()
            .len();

        let first_session = hv.session_key().unwrap();
        match interruption {
            Interruption::BeforeTheRead => {
                let ended = stack
                    .terminate_vsphere_session(&first_session)
                    .await
                    .unwrap();
                assert_eq!(ended, 1, "the simulator ended our session");
            }
            Interruption::Reconfigure(at) => stack
                .arm_vsphere_session_fault(&sim.name, at)
                .await
                .unwrap(),
        }
        hv.apply(&vm, &[Setting::new(Tunable::CpuShares, WANTED_SHARES)])
            .await
            .unwrap_or_else(|e| panic!("apply after the session ended at {interruption:?}: {e}"));
        assert_ne!(
            hv.session_key().unwrap(),
            first_session,
            "the session really ended and the adapter logged in again"
        );

        let calls = reconfigurations_since(&stack, &sim.name, seen).await;
        if let Interruption::Reconfigure(_) = interruption {
            assert!(
                calls.iter().any(|c| c.session_ended.is_some()),
                "the fault fired: {calls:?}"
            );
        }
        let ran: Vec<_> = calls.iter().filter(|c| !c.refused).collect();
        assert_eq!(ran.len(), 1, "one ReconfigVM_Task ran: {calls:?}");
        assert!(ran[0].changed_cpu_shares(), "{calls:?}");
        assert_eq!(ran[0].cpu_shares_after, WANTED_SHARES as i64);

        let after = hv.tunables(&vm).await.unwrap();
        assert_eq!(after.current(&Tunable::CpuShares), Some(WANTED_SHARES));
        assert_eq!(
            after.original(&Tunable::CpuShares),
            Some(original),
            "the true original is recorded"
        );
        let held_after = stack.vsphere_vm_config(&sim.name).await.unwrap();
        assert_eq!(held_after.cpu_shares, WANTED_SHARES as i64);
        assert_eq!(
            held_after.extra_config.get(record_key),
            Some(&format!("{}:{}", held.cpu_shares_level, held.cpu_shares)),
            "the record in extraConfig is the true original, level included"
        );

        let seen = seen + calls.len();
        let restored = hv.revert(&vm, &[Tunable::CpuShares]).await.unwrap();
        assert_eq!(restored, [Setting::new(Tunable::CpuShares, original)]);
        let reverted = hv.tunables(&vm).await.unwrap();
        assert_eq!(reverted.current, before.current);
        assert!(reverted.originals.is_empty(), "{reverted:?}");
        let held_reverted = stack.vsphere_vm_config(&sim.name).await.unwrap();
        assert_eq!(
            (held_reverted.cpu_shares, &held_reverted.cpu_shares_level),
            (held.cpu_shares, &held.cpu_shares_level)
        );
        assert!(!held_reverted.extra_config.contains_key(record_key));
        let reverts = reconfigurations_since(&stack, &sim.name, seen).await;
        assert_eq!(
            reverts.len(),
            1,
            "one ReconfigVM_Task reverted: {reverts:?}"
        );
    })
    .await
}

#[tokio::test]
async fn serial_session_ended_before_apply_reads_the_vm_changes_shares_once() {
    shares_applied_once_despite(Interruption::BeforeTheRead).await
}

#[tokio::test]
async fn serial_reconfigure_refused_for_an_ended_session_is_planned_again_and_runs_once() {
    shares_applied_once_despite(Interruption::Reconfigure(SessionFault::BeforeReconfigure)).await
}

#[tokio::test]
async fn serial_task_result_after_the_session_ended_is_looked_up_not_resubmitted() {
    shares_applied_once_despite(Interruption::Reconfigure(SessionFault::AfterReconfigure)).await
}

#[tokio::test]
async fn serial_lost_reconfigure_answer_is_found_applied_and_not_resubmitted() {
    shares_applied_once_despite(Interruption::Reconfigure(
        SessionFault::LoseReconfigureAnswer,
    ))
    .await
}

#[tokio::test]
async fn serial_lost_revert_answer_still_reports_the_restored_original_once() {
    on_the_shares_vm(|stack, sim| async move {
        let hv = connect(vsphere(&stack)).await.unwrap();
        let vm = VmId::new(&sim.uuid);
        hv.revert_all(&vm).await.unwrap();
        let original = hv
            .tunables(&vm)
            .await
            .unwrap()
            .current(&Tunable::CpuShares)
            .unwrap();
        hv.apply(&vm, &[Setting::new(Tunable::CpuShares, WANTED_SHARES)])
            .await
            .unwrap();
        let seen = stack
            .vsphere_reconfigurations(&sim.name)
            .await
            .unwrap()
            .len();

        stack
            .arm_vsphere_session_fault(&sim.name, SessionFault::LoseReconfigureAnswer)
            .await
            .unwrap();
        let restored = hv.revert(&vm, &[Tunable::CpuShares]).await.unwrap();
        assert_eq!(restored, [Setting::new(Tunable::CpuShares, original)]);

        let calls = reconfigurations_since(&stack, &sim.name, seen).await;
        assert_eq!(calls.len(), 1, "the revert ran once: {calls:?}");
        assert_eq!(
            calls[0].session_ended.as_deref(),
            Some("lose-reconfigure-answer")
        );
        let report = hv.tunables(&vm).await.unwrap();
        assert_eq!(report.current(&Tunable::CpuShares), Some(original));
        assert!(report.originals.is_empty(), "{report:?}");
    })
    .await
}
