//! The libvirt adapter against the stack's libvirtd and its four QEMU guests doing direct
//! I/O. Needs `e2e/stack up libvirt`.
#![cfg(feature = "libvirt")]

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use plumbline_adapters::{
    connect, Capability, DiskLatency, DiskLimit, Error, HostState, HypervisorConfig, LibvirtConfig,
    NotReady, Setting, StorageSamples, Support, Tunable, VmId,
};
use plumbline_e2e::{poll::until, stack, Stack};
use tokio::process::Command;

fn libvirt(stack: &Stack) -> HypervisorConfig {
    HypervisorConfig::Libvirt(LibvirtConfig {
        uri: stack
            .libvirt_uri()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string(),
    })
}

async fn virsh(stack: &Stack, args: &[&str]) -> String {
    let uri = stack.libvirt_uri().unwrap();
    let out = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where the adapter records originals: one namespace per tunable under this one, and, in
/// earlier versions, one element holding them all under this one itself.
const LEGACY_NAMESPACE: &str = "https://plumbline.dev/xmlns/libvirt-originals/v1";

async fn uuid_of(stack: &Stack, domain: &str) -> VmId {
    VmId::new(virsh(stack, &["domuuid", domain]).await)
}

/// Reads+writes per-op latency of one disk, weighted by operations.
fn per_op(d: &DiskLatency) -> Option<(Duration, u64)> {
    let ops: Vec<_> = [d.read, d.write].into_iter().flatten().collect();
    let n: u64 = ops.iter().map(|o| o.ops.unwrap_or(0)).sum();
    let total: u128 = ops
        .iter()
        .map(|o| o.mean.as_nanos() * u128::from(o.ops.unwrap_or(0)))
        .sum();
    (n > 0).then(|| (Duration::from_nanos((total / u128::from(n)) as u64), n))
}

fn vda<'a>(samples: &'a StorageSamples, vm: &'a VmId) -> Option<&'a DiskLatency> {
    samples.for_vm(vm).find(|d| d.disk == "vda")
}

#[tokio::test]
async fn inventory_matches_virsh() {
    let stack = stack();
    let hv = connect(libvirt(&stack)).await.unwrap();
    let vms = hv.inventory().await.unwrap();
    let host = virsh(&stack, &["hostname"]).await;
    let ours: BTreeMap<&str, &plumbline_adapters::BackingVm> =
        vms.iter().map(|v| (v.name.as_str(), v)).collect();
    let listed = virsh(&stack, &["list", "--all", "--name"]).await;
    let theirs: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(ours.keys().copied().collect::<Vec<_>>(), {
        let mut t = theirs.clone();
        t.sort();
        t
    });
    for domain in stack.libvirt_domains().unwrap() {
        let vm = ours
            .get(domain.as_str())
            .unwrap_or_else(|| panic!("{domain} in the inventory"));
        let uuid = uuid_of(&stack, &domain).await;
        assert_eq!(vm.id, uuid);
        assert_eq!(vm.provider_id, format!("libvirt:///{uuid}"));
        assert_eq!(vm.host, host);
        assert!(vm.running);
        // `virsh domblklist` prints "<target> <source>" per disk.
        let blk = virsh(&stack, &["domblklist", &domain]).await;
        let expected: Vec<(String, String)> = blk
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect();
        let got: Vec<(String, String)> = vm
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.path.clone().unwrap_or_default()))
            .collect();
        assert_eq!(got, expected, "{domain}'s disks");
        assert_eq!(vm.datastores.len(), 1, "{domain}: {:?}", vm.datastores);
    }
}

#[tokio::test]
async fn samples_report_every_guest_disk_after_a_baseline() {
    let stack = stack();
    let hv = connect(libvirt(&stack)).await.unwrap();
    let first = hv.sample_storage().await.unwrap();
    assert!(
        first.disks.is_empty(),
        "the first cycle only records a baseline"
    );
    assert!(first
        .not_ready
        .iter()
        .all(|u| u.reason == NotReady::Baseline));
    for domain in stack.libvirt_domains().unwrap() {
        let id = uuid_of(&stack, &domain).await;
        let d = until(
            &format!("{domain}'s vda has a latency window"),
            Duration::from_secs(30),
            || async {
                let s = hv.sample_storage().await.unwrap();
                vda(&s, &id).filter(|d| per_op(d).is_some()).cloned()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let (latency, _) = per_op(&d).unwrap();
        assert!(
            latency > Duration::ZERO && latency < Duration::from_secs(1),
            "{domain}: {latency:?}"
        );
    }
}

#[tokio::test]
async fn serial_injected_latency_appears_at_the_right_magnitude_and_clears() {
    let stack = stack();
    let domain = "pl-vm2";
    let id = uuid_of(&stack, domain).await;
    let hv = connect(libvirt(&stack)).await.unwrap();
    stack.clear_libvirt_latency(domain).await.unwrap();

    // Below the guest's own rate (about 35 IOPS, spread evenly), so requests queue.
    let iops = 20;
    stack.inject_libvirt_latency(domain, iops).await.unwrap();
    let result = async {
        // Let the throttle take hold, then measure one window with the adapter and, over the
        // same window, independently with `virsh domstats`.
        until(
            "the limit shows in the samples",
            Duration::from_secs(60),
            || async {
                let s = hv.sample_storage().await.unwrap();
                vda(&s, &id)
                    .and_then(per_op)
                    .filter(|(l, _)| *l >= Duration::from_millis(5))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        hv.sample_storage().await.unwrap();
        let independent = stack
            .measure_latency(domain, Duration::from_secs(3), 20, Duration::from_secs(60))
            .await
            .unwrap();
        let ours = per_op(vda(&hv.sample_storage().await.unwrap(), &id).unwrap()).unwrap();
        (ours, independent)
    }
    .await;
    stack.clear_libvirt_latency(domain).await.unwrap();
    let ((ours, ops), independent) = result;
    // One request at a time against a 20 IOPS budget: about 50 ms per operation.
    assert!(
        ours >= Duration::from_millis(8) && ours <= Duration::from_millis(200),
        "{ours:?} per op over {ops} ops with a {iops} IOPS limit"
    );
    let ratio = ours.as_secs_f64() / independent.per_op.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "adapter {ours:?} vs virsh {:?}",
        independent.per_op
    );

    let cleared = until(
        "latency back to normal",
        Duration::from_secs(60),
        || async {
            let s = hv.sample_storage().await.unwrap();
            vda(&s, &id)
                .and_then(per_op)
                .filter(|(l, _)| *l < Duration::from_millis(5))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        cleared.0 < ours / 2,
        "{cleared:?} after clearing, {ours:?} under the limit"
    );
}

#[tokio::test]
async fn serial_tuning_is_applied_read_back_and_reverted_by_a_fresh_instance() {
    let stack = stack();
    let domain = "pl-vm3";
    let id = uuid_of(&stack, domain).await;
    let hv = connect(libvirt(&stack)).await.unwrap();
    hv.revert_all(&id).await.unwrap();
    let before = hv.tunables(&id).await.unwrap();
    assert!(before.originals.is_empty(), "{before:?}");

    let iops = Tunable::DiskLimit {
        disk: "vda".into(),
        limit: DiskLimit::TotalIops,
    };
    let bytes = Tunable::DiskLimit {
        disk: "vda".into(),
        limit: DiskLimit::TotalBytesPerSec,
    };
    let wanted = [
        Setting::new(iops.clone(), 400),
        Setting::new(bytes.clone(), 50_000_000),
    ];
    hv.apply(&id, &wanted).await.unwrap();

    let after = hv.tunables(&id).await.unwrap();
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
            "{} original",
            s.tunable
        );
    }
    // libvirt itself agrees, and the record sits in the domain's metadata.
    let tune = virsh(&stack, &["blkdeviotune", domain, "vda"]).await;
    assert!(
        tune.contains("total_iops_sec") && tune.contains("400"),
        "{tune}"
    );
    let xml = virsh(&stack, &["dumpxml", domain]).await;
    for t in [&iops, &bytes] {
        assert!(
            xml.contains(&format!("{LEGACY_NAMESPACE}/{t}\"")),
            "{t}: {xml}"
        );
    }

    // A later change keeps the first original.
    hv.apply(&id, &[Setting::new(iops.clone(), 300)])
        .await
        .unwrap();
    assert_eq!(
        hv.tunables(&id).await.unwrap().original(&iops),
        before.current(&iops)
    );

    hv.close().await.unwrap();
    drop(hv);
    let fresh = connect(libvirt(&stack)).await.unwrap();
    assert_eq!(
        fresh.tunables(&id).await.unwrap().originals,
        after.originals
    );
    let restored = fresh
        .revert(&id, &[iops.clone(), bytes.clone()])
        .await
        .unwrap();
    assert_eq!(restored.len(), 2);
    let reverted = fresh.tunables(&id).await.unwrap();
    assert_eq!(reverted.current, before.current);
    assert!(reverted.originals.is_empty(), "{reverted:?}");
    let xml = virsh(&stack, &["dumpxml", domain]).await;
    assert!(
        !xml.contains("libvirt-originals"),
        "the record is removed after revert"
    );
}

#[tokio::test]
async fn unsupported_capabilities_are_reported_not_raised() {
    let stack = stack();
    let hv = connect(libvirt(&stack)).await.unwrap();
    let caps = hv.capabilities().await.unwrap();
    assert!(caps.supports(Capability::StorageLatency));
    assert!(caps.supports(Capability::DiskIopsLimit));
    for c in [Capability::MemoryReservation, Capability::DiskShares] {
        let Support::Unsupported { reason } = caps.support(c) else {
            panic!("{c} should be unsupported on libvirt: {caps:?}")
        };
        assert!(reason.starts_with("libvirt has no"), "{c}: {reason}");
    }
    // Asking again is cheap and still not an error; sampling is unaffected.
    assert_eq!(hv.capabilities().await.unwrap(), caps);
    hv.sample_storage().await.unwrap();

    let id = uuid_of(&stack, "pl-vm1").await;
    let report = hv.tunables(&id).await.unwrap();
    assert!(report
        .current(&Tunable::DiskLimit {
            disk: "vda".into(),
            limit: DiskLimit::TotalIops
        })
        .is_some());
    let err = hv
        .apply(&id, &[Setting::new(Tunable::MemoryReservationMib, 64)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                capability: Capability::MemoryReservation,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The cgroup controllers the stack's qemu.conf gives guests: it configures cpu, cpuacct and
/// blkio where the host mounts cgroup v1 cpu and blkio read-write, and none otherwise.
fn cgroup_controllers(stack: &Stack) -> Vec<String> {
    stack
        .get("LIBVIRT_CGROUP_CONTROLLERS")
        .unwrap_or_else(|e| panic!("{e}"))
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// `cpu.shares` of the domain's own cgroup, as the kernel has it. libvirt puts QEMU's main
/// thread in the `emulator` child of that group; the domain's shares are on the group itself.
fn kernel_cpu_shares(stack: &Stack, domain: &str) -> u64 {
    let pid = stack.qemu_pid(domain).unwrap_or_else(|e| panic!("{e}"));
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let group = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "cpu").then_some(path)
        })
        .unwrap_or_else(|| panic!("{domain}'s QEMU (pid {pid}) in no cpu cgroup: {cgroups}"));
    let group = group.strip_suffix("/emulator").unwrap_or(group);
    let file = format!("/sys/fs/cgroup/cpu{group}/cpu.shares");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// `virsh schedinfo DOM --live`'s cpu_shares.
async fn virsh_cpu_shares(stack: &Stack, domain: &str) -> u64 {
    let out = virsh(stack, &["schedinfo", domain, "--live"]).await;
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "cpu_shares").then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no cpu_shares in {out}"))
}

#[tokio::test]
async fn serial_cpu_shares_are_real_where_the_host_mounts_cgroup_controllers() {
    let stack = stack();
    let domain = "pl-vm1";
    let id = uuid_of(&stack, domain).await;
    let hv = connect(libvirt(&stack)).await.unwrap();
    let caps = hv.capabilities().await.unwrap();
    let controllers = cgroup_controllers(&stack);
    println!("qemu.conf cgroup_controllers: {controllers:?}");

    if !controllers.iter().any(|c| c == "cpu") {
        // No cgroup for the guests: both are reported with libvirt's reason, never raised.
        for c in [Capability::CpuShares, Capability::BlkioWeight] {
            let Support::Unsupported { reason } = caps.support(c) else {
                panic!("{c} should be unsupported without cgroup controllers: {caps:?}")
            };
            assert!(reason.contains("cgroup"), "{c}: {reason}");
        }
        let report = hv.tunables(&id).await.unwrap();
        assert!(
            report
                .unsupported
                .iter()
                .any(|(t, _)| *t == Tunable::CpuShares),
            "{report:?}"
        );
        let err = hv
            .apply(&id, &[Setting::new(Tunable::CpuShares, 2048)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unsupported {
                    capability: Capability::CpuShares,
                    ..
                }
            ),
            "{err:?}"
        );
        return;
    }

    for c in [Capability::CpuShares, Capability::BlkioWeight] {
        assert_eq!(caps.support(c), Support::Supported, "{c}: {caps:?}");
    }
    hv.revert_all(&id).await.unwrap();
    let before = hv.tunables(&id).await.unwrap();
    assert!(before.originals.is_empty(), "{before:?}");
    assert!(before.unsupported.is_empty(), "{before:?}");
    let original = before.current(&Tunable::CpuShares).unwrap();
    assert_ne!(original, 2048, "the test needs a change to see");
    assert_eq!(virsh_cpu_shares(&stack, domain).await, original);
    assert_eq!(kernel_cpu_shares(&stack, domain), original);

    hv.apply(&id, &[Setting::new(Tunable::CpuShares, 2048)])
        .await
        .unwrap();
    let after = hv.tunables(&id).await.unwrap();
    assert_eq!(after.current(&Tunable::CpuShares), Some(2048));
    assert_eq!(after.original(&Tunable::CpuShares), Some(original));
    assert_eq!(virsh_cpu_shares(&stack, domain).await, 2048);
    assert_eq!(kernel_cpu_shares(&stack, domain), 2048);

    let restored = hv.revert(&id, &[Tunable::CpuShares]).await.unwrap();
    assert_eq!(restored, vec![Setting::new(Tunable::CpuShares, original)]);
    let reverted = hv.tunables(&id).await.unwrap();
    assert_eq!(reverted.current(&Tunable::CpuShares), Some(original));
    assert!(reverted.originals.is_empty(), "{reverted:?}");
    assert_eq!(virsh_cpu_shares(&stack, domain).await, original);
    assert_eq!(kernel_cpu_shares(&stack, domain), original);
    println!(
        "cpu_shares {original} -> 2048 -> {original} (virsh and the kernel's cpu.shares agree)"
    );
}

fn disk_limit(limit: DiskLimit) -> Tunable {
    Tunable::DiskLimit {
        disk: "vda".into(),
        limit,
    }
}

/// Two operator processes (two adapters, two connections) changing different tunables of one
/// domain at the same moment, then reverting them at the same moment, several times over. With
/// one shared record rewritten by read-modify-write, one of the two originals got lost.
#[tokio::test]
async fn serial_concurrent_changes_of_different_tunables_keep_each_others_originals() {
    let stack = stack();
    let domain = "pl-vm3";
    let id = uuid_of(&stack, domain).await;
    let a = connect(libvirt(&stack)).await.unwrap();
    let b = connect(libvirt(&stack)).await.unwrap();
    a.revert_all(&id).await.unwrap();
    let iops = disk_limit(DiskLimit::TotalIops);
    // CPU shares where the host has the cgroup for them, another disk limit elsewhere.
    let (other, other_value) = if a
        .capabilities()
        .await
        .unwrap()
        .supports(Capability::CpuShares)
    {
        (Tunable::CpuShares, 2048)
    } else {
        (disk_limit(DiskLimit::WriteBytesPerSec), 50_000_000)
    };
    println!("changing {iops} and {other} concurrently");
    let before = a.tunables(&id).await.unwrap();
    assert!(before.originals.is_empty(), "{before:?}");
    let orig_iops = before.current(&iops).unwrap();
    let orig_other = before.current(&other).unwrap();

    for round in 0..5u64 {
        let to_a = [Setting::new(iops.clone(), 500 + round)];
        let to_b = [Setting::new(other.clone(), other_value + round)];
        let (ra, rb) = tokio::join!(a.apply(&id, &to_a), b.apply(&id, &to_b));
        ra.unwrap();
        rb.unwrap();
        let changed = a.tunables(&id).await.unwrap();
        assert_eq!(changed.current(&iops), Some(500 + round), "round {round}");
        assert_eq!(
            changed.current(&other),
            Some(other_value + round),
            "round {round}"
        );
        assert_eq!(changed.original(&iops), Some(orig_iops), "round {round}");
        assert_eq!(changed.original(&other), Some(orig_other), "round {round}");

        let (ra, rb) = tokio::join!(
            a.revert(&id, std::slice::from_ref(&iops)),
            b.revert(&id, std::slice::from_ref(&other)),
        );
        assert_eq!(
            ra.unwrap(),
            vec![Setting::new(iops.clone(), orig_iops)],
            "round {round}"
        );
        assert_eq!(
            rb.unwrap(),
            vec![Setting::new(other.clone(), orig_other)],
            "round {round}"
        );
        let reverted = a.tunables(&id).await.unwrap();
        assert_eq!(reverted.current(&iops), Some(orig_iops), "round {round}");
        assert_eq!(reverted.current(&other), Some(orig_other), "round {round}");
        assert!(reverted.originals.is_empty(), "round {round}: {reverted:?}");
    }
    let xml = virsh(&stack, &["dumpxml", domain]).await;
    assert!(!xml.contains(LEGACY_NAMESPACE), "no record is left: {xml}");
}

/// A domain changed by an earlier version carries its originals in one shared element. They
/// are still reported and reverted, and each leaves that element once restored.
#[tokio::test]
async fn serial_originals_recorded_in_the_old_single_element_are_still_reverted() {
    let stack = stack();
    let domain = "pl-vm3";
    let id = uuid_of(&stack, domain).await;
    let hv = connect(libvirt(&stack)).await.unwrap();
    hv.revert_all(&id).await.unwrap();
    let iops = disk_limit(DiskLimit::TotalIops);
    let wbytes = disk_limit(DiskLimit::WriteBytesPerSec);
    let before = hv.tunables(&id).await.unwrap();
    let (orig_iops, orig_wbytes) = (
        before.current(&iops).unwrap(),
        before.current(&wbytes).unwrap(),
    );

    // What an earlier version leaves behind: the changes, and both originals in one element.
    let old_record = format!(
        "<originals><original tunable='{iops}' value='{orig_iops}'/><original tunable='{wbytes}' value='{orig_wbytes}'/></originals>"
    );
    virsh(
        &stack,
        &[
            "metadata",
            domain,
            "--live",
            "--uri",
            LEGACY_NAMESPACE,
            "--key",
            "plumbline",
            "--set",
            &old_record,
        ],
    )
    .await;
    virsh(
        &stack,
        &[
            "blkdeviotune",
            domain,
            "vda",
            "--live",
            "--total-iops-sec",
            "250",
            "--write-bytes-sec",
            "40000000",
        ],
    )
    .await;

    let report = hv.tunables(&id).await.unwrap();
    assert_eq!(report.original(&iops), Some(orig_iops), "{report:?}");
    assert_eq!(report.original(&wbytes), Some(orig_wbytes), "{report:?}");
    // A later change keeps the first original, wherever it was recorded.
    hv.apply(&id, &[Setting::new(iops.clone(), 300)])
        .await
        .unwrap();
    assert_eq!(
        hv.tunables(&id).await.unwrap().original(&iops),
        Some(orig_iops)
    );

    let restored = hv.revert(&id, std::slice::from_ref(&iops)).await.unwrap();
    assert_eq!(restored, vec![Setting::new(iops.clone(), orig_iops)]);
    let old = virsh(
        &stack,
        &["metadata", domain, "--live", "--uri", LEGACY_NAMESPACE],
    )
    .await;
    assert!(
        !old.contains(&iops.to_string()) && old.contains(&wbytes.to_string()),
        "only the restored record leaves the old element: {old}"
    );
    let report = hv.tunables(&id).await.unwrap();
    assert_eq!(report.current(&iops), Some(orig_iops));
    assert_eq!(report.current(&wbytes), Some(40_000_000));
    assert_eq!(
        report.originals,
        vec![Setting::new(wbytes.clone(), orig_wbytes)]
    );

    hv.revert(&id, std::slice::from_ref(&wbytes)).await.unwrap();
    let reverted = hv.tunables(&id).await.unwrap();
    assert_eq!(reverted.current, before.current);
    assert!(reverted.originals.is_empty(), "{reverted:?}");
    let xml = virsh(&stack, &["dumpxml", domain]).await;
    assert!(
        !xml.contains(LEGACY_NAMESPACE),
        "the emptied element is removed: {xml}"
    );
}

async fn assert_unknown_domain_is_not_found() {
    let hv = connect(libvirt(&stack())).await.unwrap();
    let err = hv
        .tunables(&VmId::new("00000000-0000-4000-a000-000000000000"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VmNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_domain_is_a_not_found_error() {
    assert_unknown_domain_is_not_found().await;
}

#[tokio::test]
async fn the_one_host_is_never_in_maintenance_and_maintenance_mode_is_unsupported() {
    let stack = stack();
    let hv = connect(libvirt(&stack)).await.unwrap();
    let host = virsh(&stack, &["hostname"]).await;
    assert_eq!(
        hv.host_states().await.unwrap(),
        [HostState {
            name: host.clone(),
            in_maintenance: false,
            entering: false,
            cluster: None,
        }]
    );
    let vms = hv.inventory().await.unwrap();
    assert!(vms.iter().all(|vm| vm.host == host), "{vms:?}");
    for result in [
        hv.enter_maintenance(&host, Duration::from_secs(5)).await,
        hv.exit_maintenance(&host, Duration::from_secs(5)).await,
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedOperation { .. }) && err.is_unsupported(),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("no host maintenance mode"),
            "{err}"
        );
    }
}

/// Set in the child process of the test below.
const ERRORS_CHILD: &str = "PLUMBLINE_TEST_LIBVIRT_ERRORS_CHILD";

/// libvirt's default handler prints every error to stderr, even the ones the adapter handles
/// and returns. The adapter sends them to `tracing` instead. Checked in a child process (this
/// test again), whose stderr and tracing output this test can read.
#[tokio::test]
async fn libvirt_errors_go_to_tracing_not_stderr() {
    const NAME: &str = "libvirt_errors_go_to_tracing_not_stderr";
    if std::env::var_os(ERRORS_CHILD).is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(std::io::stdout)
            .init();
        // libvirt fails the lookup, which its default handler would print.
        assert_unknown_domain_is_not_found().await;
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args([NAME, "--exact", "--nocapture"])
        .env(ERRORS_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {NAME}: {stdout}\n{stderr}",
        exe.display()
    );
    assert!(!stderr.contains("libvirt:"), "libvirt printed: {stderr}");
    assert!(
        stdout.contains("DEBUG") && stdout.contains("no domain with matching uuid"),
        "the lookup failure reaches tracing at debug level: {stdout}"
    );
}

#[tokio::test]
async fn unreachable_daemon_is_a_clear_connect_error() {
    let err = connect(HypervisorConfig::Libvirt(LibvirtConfig {
        uri: "qemu+tcp://127.0.0.1:1/system".into(),
    }))
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Libvirt { .. }), "{err:?}");
    assert!(
        message.starts_with(
            "opening a connection on the libvirt daemon via qemu+tcp://127.0.0.1:1/system"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn serial_libvirtd_restart_is_seen_as_disconnected_then_sampling_resumes() {
    let stack = stack();
    let hv = connect(libvirt(&stack)).await.unwrap();
    let id = uuid_of(&stack, "pl-vm1").await;
    hv.sample_storage().await.unwrap();
    assert!(hv.connection().is_connected());

    stack
        .stop_libvirtd()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outage = async {
        let err = until(
            "the adapter reports the daemon gone",
            Duration::from_secs(30),
            || async { hv.sample_storage().await.err() },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(err.is_disconnected(), "{err:?}");
        assert!(!hv.connection().is_connected(), "{:?}", hv.connection());
        // While the daemon is down every call fails fast, without panicking or stale data.
        for _ in 0..3 {
            assert!(hv.sample_storage().await.unwrap_err().is_disconnected());
        }
    }
    .await;
    stack
        .start_libvirtd()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let () = outage;

    let first = until(
        "sampling resumes after the restart",
        Duration::from_secs(90),
        || async { hv.sample_storage().await.ok() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(hv.connection().is_connected());
    assert!(
        first.disks.is_empty(),
        "no window spans the reconnect: {first:?}"
    );
    assert!(first
        .not_ready
        .iter()
        .all(|u| u.reason == NotReady::Baseline));
    until(
        "fresh latency after the restart",
        Duration::from_secs(30),
        || async {
            let s = hv.sample_storage().await.unwrap();
            vda(&s, &id).and_then(per_op)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The adapter's deadline for one libvirt call (`CALL_TIMEOUT` in src/libvirt/mod.rs).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for scheduling on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(5);

fn summary(samples: &Result<StorageSamples, Error>) -> String {
    match samples {
        Ok(s) => format!(
            "ok, {} disks with latency, {} not ready",
            s.disks.len(),
            s.not_ready.len()
        ),
        Err(e) => format!("error: {e}"),
    }
}

/// A call on the frozen guest gave up by itself: at the adapter's deadline, or earlier with
/// libvirt's own error (it waits up to 30 s for a domain job that a call stuck in the guest's
/// monitor holds).
fn assert_gave_up<T: std::fmt::Debug>(what: &str, result: &Result<T, Error>, took: Duration) {
    println!("{what} on the frozen guest: {result:?} after {took:?}");
    assert!(took <= CALL_TIMEOUT + SLACK, "{what} took {took:?}");
    match result {
        Err(Error::Timeout { after, .. }) => assert_eq!(*after, CALL_TIMEOUT),
        Err(Error::Libvirt { .. }) => {}
        other => panic!("{what} on a frozen guest should fail, not {other:?}"),
    }
}

/// One guest's QEMU stops (SIGSTOP) while libvirtd and the other guests carry on. Calls that
/// need that guest's monitor fail at a deadline instead of hanging, and sampling goes on for
/// the other guests. The guest is thawed at the end whatever happens (the guard thaws on drop).
#[tokio::test]
async fn serial_a_frozen_guest_fails_its_own_calls_in_time_while_the_others_are_sampled() {
    let stack = stack();
    let frozen = "pl-vm1";
    let frozen_id = uuid_of(&stack, frozen).await;
    let mut others = Vec::new();
    for domain in stack.libvirt_domains().unwrap() {
        if domain != frozen {
            others.push((uuid_of(&stack, &domain).await, domain));
        }
    }
    let hv = connect(libvirt(&stack)).await.unwrap();
    // Probed while every guest answers: the probe asks the first running guest, which may be
    // the one about to freeze.
    hv.capabilities().await.unwrap();
    hv.revert_all(&frozen_id).await.unwrap();
    let before = hv.tunables(&frozen_id).await.unwrap();
    hv.sample_storage().await.unwrap();
    let iops = disk_limit(DiskLimit::TotalIops);

    let guard = stack
        .freeze_guest(frozen)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("froze {frozen} (QEMU pid {})", guard.pid);
    async {
        // The first bulk call after the freeze asks the frozen QEMU too (the no-wait flag skips
        // only guests whose job is already taken), and that answer does not come.
        let t = Instant::now();
        let first = hv.sample_storage().await;
        let first_took = t.elapsed();
        println!(
            "first sample_storage after the freeze: {} after {first_took:?}",
            summary(&first)
        );
        assert!(first_took <= CALL_TIMEOUT + SLACK, "{first_took:?}");
        if let Err(e) = &first {
            assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        }

        let done = AtomicBool::new(false);
        let frozen_calls = async {
            let t = Instant::now();
            let (report, applied) = tokio::join!(
                async { (hv.tunables(&frozen_id).await, t.elapsed()) },
                async {
                    let r = hv
                        .apply(&frozen_id, &[Setting::new(iops.clone(), 123)])
                        .await;
                    (r, t.elapsed())
                },
            );
            done.store(true, Ordering::SeqCst);
            (report, applied)
        };
        let sampling = async {
            let mut cycles = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                let samples = hv.sample_storage().await;
                cycles.push((t.elapsed(), samples));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            cycles
        };
        let (((report, report_took), (applied, apply_took)), cycles) =
            tokio::join!(frozen_calls, sampling);
        assert_gave_up("tunables", &report, report_took);
        assert_gave_up("apply", &applied, apply_took);

        let took: Vec<Duration> = cycles.iter().map(|(took, _)| *took).collect();
        println!(
            "{} sample_storage calls while those waited, taking {took:?}",
            cycles.len()
        );
        assert!(cycles.len() >= 5, "{} cycles", cycles.len());
        for (took, samples) in &cycles {
            let samples = samples.as_ref().unwrap_or_else(|e| panic!("sampling: {e}"));
            assert!(*took < SLACK, "a cycle took {took:?}");
            // Skipped, not reported: neither a latency nor a not-ready entry.
            assert!(samples.for_vm(&frozen_id).next().is_none(), "{samples:?}");
            assert!(
                samples.not_ready.iter().all(|u| u.vm != frozen_id),
                "{samples:?}"
            );
        }
        let (_, last) = cycles.last().unwrap();
        let last = last.as_ref().unwrap();
        for (id, domain) in &others {
            assert!(
                vda(last, id).and_then(per_op).is_some(),
                "{domain} is sampled while {frozen} is frozen: {last:?}"
            );
        }
    }
    .await;
    stack
        .thaw_guest(frozen)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(guard);

    until(
        &format!("{frozen} is sampled again after the thaw"),
        Duration::from_secs(60),
        || async {
            let s = hv.sample_storage().await.ok()?;
            vda(&s, &frozen_id).and_then(per_op)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The change that timed out may still land once the guest answers again (the blocked call
    // is not cancelled, only abandoned); its record lets revert undo it.
    let late = hv.tunables(&frozen_id).await.unwrap();
    println!(
        "after the thaw: {iops} = {:?}, recorded original {:?}",
        late.current(&iops),
        late.original(&iops)
    );
    hv.revert_all(&frozen_id).await.unwrap();
    assert_eq!(
        hv.tunables(&frozen_id).await.unwrap().current,
        before.current
    );
}
