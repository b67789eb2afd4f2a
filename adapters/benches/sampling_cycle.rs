//! The cost of one storage-sampling cycle per host, against the running stack.
//!
//! `cargo bench -p plumbline-adapters --all-features --bench sampling_cycle [-- CYCLES]`
//!
//! For each endpoint of the stack (libvirt when built with the `libvirt` feature, and the
//! vSphere simulator) it connects, runs two warm-up cycles (the first libvirt cycle is only a
//! baseline), then times CYCLES calls of `Hypervisor::sample_storage` and prints wall time per
//! cycle and per sampled VM. Figures are printed, never asserted; see docs/adapters-benchmark.md.

use std::time::{Duration, Instant};

use plumbline_adapters::{connect, HypervisorConfig, Secret, TlsTrust, VSphereConfig};

struct Figures {
    endpoint: String,
    vms: usize,
    disks: usize,
    cycles: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Figures {
    fn print(&self) {
        let mut sorted = self.cycles.clone();
        sorted.sort();
        let n = sorted.len();
        let mean = sorted.iter().sum::<Duration>() / n as u32;
        let p50 = sorted[n / 2];
        let p95 = sorted[(n * 95 / 100).min(n - 1)];
        let per_vm = mean / self.vms.max(1) as u32;
        println!(
            "{:<34} vms={:<3} disks={:<3} cycles={:<4} mean={:>8.3} ms  p50={:>8.3} ms  p95={:>8.3} ms  max={:>8.3} ms  per-vm={:>7.3} ms",
            self.endpoint,
            self.vms,
            self.disks,
            n,
            ms(mean),
            ms(p50),
            ms(p95),
            ms(sorted[n - 1]),
            ms(per_vm),
        );
    }
}

async fn bench(config: HypervisorConfig, cycles: usize) -> Figures {
    let hv = connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    let mut last = None;
    for _ in 0..2 {
        last = Some(
            hv.sample_storage()
                .await
                .unwrap_or_else(|e| panic!("warm-up cycle: {e}")),
        );
    }
    let mut times = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let start = Instant::now();
        let samples = hv
            .sample_storage()
            .await
            .unwrap_or_else(|e| panic!("sampling: {e}"));
        times.push(start.elapsed());
        last = Some(samples);
    }
    let samples = last.expect("at least one cycle ran");
    let mut vms: Vec<_> = samples
        .disks
        .iter()
        .map(|d| &d.vm)
        .chain(samples.not_ready.iter().map(|u| &u.vm))
        .collect();
    vms.sort();
    vms.dedup();
    let figures = Figures {
        endpoint: hv.endpoint().url.clone(),
        vms: vms.len(),
        disks: samples.disks.len() + samples.not_ready.len(),
        cycles: times,
    };
    let _ = hv.close().await;
    figures
}

#[tokio::main]
async fn main() {
    let cycles: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let stack = plumbline_e2e::stack();
    let get = |key: &str| stack.get(key).unwrap_or_else(|e| panic!("{e}")).to_string();

    #[cfg(feature = "libvirt")]
    bench(
        HypervisorConfig::Libvirt(plumbline_adapters::LibvirtConfig {
            uri: get("LIBVIRT_URI"),
        }),
        cycles,
    )
    .await
    .print();
    #[cfg(not(feature = "libvirt"))]
    println!("libvirt: skipped (build with --features libvirt)");

    let ca = stack.vsphere_ca_pem().unwrap_or_else(|e| panic!("{e}"));
    bench(
        HypervisorConfig::VSphere(VSphereConfig {
            url: get("VSPHERE_URL"),
            username: get("VSPHERE_USERNAME"),
            password: Secret::new(get("VSPHERE_PASSWORD")),
            tls: TlsTrust::CaPem(ca),
        }),
        cycles,
    )
    .await
    .print();
}
