//! Detection benchmark on the real stack (not a test: it prints figures, asserts nothing).
//!
//! `cargo bench -p plumbline-operator --features libvirt --bench health_detection`
//!
//! Runs the operator in-process against the stack, with a critical workload's pods on the
//! libvirt guest `pl-vm2` and a 1 s sample interval, then for each round: waits a random
//! fraction of a second (so injections fall anywhere in the sampling cycle), injects latency
//! for real (`blkdeviotune --total-iops-sec`), and measures
//! - detection: injection → first pod's `plumbline.dev/storage-healthy` False;
//! - recovery: clearing → every pod's condition True;
//!
//! then a steady period without injection, counting condition flips (flaps), and finally the
//! same injection through what a user would otherwise build: Debian's
//! prometheus-libvirt-exporter scraped by a Prometheus of our own at the usual 15 s, with an
//! alert rule `for: 1m`, timing injection → alert firing.
//!
//! Environment: PLUMBLINE_BENCH_ROUNDS (default 10), PLUMBLINE_BENCH_STEADY_SECS (default 600),
//! PLUMBLINE_BENCH_BUDGET (default 20ms), PLUMBLINE_BENCH_PROMETHEUS=0 skips the comparison. Method and figures: docs/health.md.

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_e2e::{cluster::TestNamespace, Stack};
use plumbline_operator::{
    clock::SystemClock,
    run::{Operator, Settings},
};
use serde_json::json;
use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

const VICTIM: &str = "pl-vm2";
const GATE: &str = "plumbline.dev/storage-healthy";
const INJECT_IOPS: u32 = 20;
const PATIENCE: Duration = Duration::from_secs(120);

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn pod_states(admin: &Client, ns: &str) -> Result<BTreeMap<String, Option<String>>> {
    let pods = Api::<Pod>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels("app=bench"))
        .await
        .context("listing pods")?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| !g.is_empty())
        })
        .map(|p| {
            let s = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == GATE))
                .map(|c| c.status.clone());
            (p.name_any(), s)
        })
        .collect())
}

async fn wait_until(
    admin: &Client,
    ns: &str,
    what: &str,
    f: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let s = pod_states(admin, ns).await?;
        if f(&s) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > PATIENCE {
            bail!("timed out waiting for {what}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all(s: &BTreeMap<String, Option<String>>, status: &str) -> bool {
    s.len() == 3 && s.values().all(|v| v.as_deref() == Some(status))
}

fn any(s: &BTreeMap<String, Option<String>>, status: &str) -> bool {
    s.len() == 3 && s.values().any(|v| v.as_deref() == Some(status))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<10} n={:<3} min={:.2}s p50={:.2}s p90={:.2}s p99={:.2}s max={:.2}s",
        v.len(),
        v.first().copied().unwrap_or(f64::NAN),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// A sub-second pseudo-random delay from the clock, so injections land anywhere in the cycle.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    Duration::from_millis((nanos as u64 * 7919) % 1000)
}

#[tokio::main]
async fn main() -> Result<()> {
    let stack = Stack::load().context("the benchmark needs the real stack: e2e/stack up")?;
    let admin = stack.admin_client().await?;
    let operator_client = stack.operator_client().await?;
    let rounds = env_num("PLUMBLINE_BENCH_ROUNDS", 10);
    let steady = Duration::from_secs(env_num("PLUMBLINE_BENCH_STEADY_SECS", 600));

    for (_, crd) in plumbline_crds::generate::crds() {
        Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(admin.clone())
            .patch(&crd.name_any(), &PatchParams::apply("plumbline-bench").force(), &Patch::Apply(&crd))
            .await
            .context("installing CRDs")?;
    }
    let namespace = TestNamespace::create(&admin, "bench-health").await?;
    let ns = namespace.name.clone();
    let provider = format!("{ns}-kvm");
    let hp = json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "HypervisorProvider",
        "metadata": {"name": provider},
        "spec": {"libvirt": {"uri": stack.libvirt_uri()?}, "sampleInterval": "1s"},
    });
    Api::<plumbline_crds::HypervisorProvider>::all(admin.clone())
        .patch(
            &provider,
            &PatchParams::apply("plumbline-bench").force(),
            &Patch::Apply(&hp),
        )
        .await?;

    let operator = Operator::start(
        operator_client,
        Settings {
            metrics_addr: "127.0.0.1:0".parse()?,
            leader_election: None,
            concurrency: 2,
            identity: "bench".into(),
            namespace: Some(ns.clone()),
            health: Default::default(),
            prometheus: None,
        },
        Arc::new(SystemClock),
    )
    .await?;

    // Interrupted or not, clean up: the provider is cluster-scoped and every operator samples it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run(&stack, &admin, &ns, rounds, steady, &operator) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };

    let _ = stack.clear_libvirt_latency(VICTIM).await;
    operator.stop().await;
    let _ = Api::<plumbline_crds::HypervisorProvider>::all(admin.clone())
        .delete(&provider, &DeleteParams::default())
        .await;
    namespace.delete().await;
    result
}

async fn run(
    stack: &Stack,
    admin: &Client,
    ns: &str,
    rounds: u64,
    steady: Duration,
    operator: &Operator,
) -> Result<()> {
    let budget = std::env::var("PLUMBLINE_BENCH_BUDGET").unwrap_or_else(|_| "20ms".into());
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"nodeName": VICTIM, "automountServiceAccountToken": false,
                         "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    });
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), ns)
        .patch(
            "bench",
            &PatchParams::apply("plumbline-bench"),
            &Patch::Apply(&deployment),
        )
        .await?;
    let intent = json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
        "metadata": {"name": "bench", "namespace": ns},
        "spec": {
            "target": {"kind": "Deployment", "name": "bench"},
            "priority": "critical",
            // Every pod may go: the benchmark times the signal, not the guard.
            "storage": {"latencyBudget": budget, "readinessGate": true, "maxUnready": "100%"}
        }
    });
    Api::<plumbline_crds::WorkloadIntent>::namespaced(admin.clone(), ns)
        .patch(
            "bench",
            &PatchParams::apply("plumbline-bench"),
            &Patch::Apply(&intent),
        )
        .await?;
    wait_until(admin, ns, "every pod healthy", |s| all(s, "True")).await?;
    println!("health benchmark: 3 pods on {VICTIM}, budget {budget}, sample interval 1s, injection {INJECT_IOPS} IOPS, {rounds} rounds");

    let mut detection = Vec::new();
    let mut recovery = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_secs(3) + jitter()).await;
        let t0 = Instant::now();
        stack.inject_libvirt_latency(VICTIM, INJECT_IOPS).await?;
        let inject_call = t0.elapsed();
        wait_until(admin, ns, "a pod unready", |s| any(s, "False")).await?;
        let d = t0.elapsed();
        // Let the episode settle before clearing, as an incident would.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t1 = Instant::now();
        stack.clear_libvirt_latency(VICTIM).await?;
        wait_until(admin, ns, "every pod healthy", |s| all(s, "True")).await?;
        let r = t1.elapsed();
        println!(
            "round {round:>2}: detection {:.2}s recovery {:.2}s (virsh call {:.0}ms)",
            d.as_secs_f64(),
            r.as_secs_f64(),
            inject_call.as_secs_f64() * 1000.0
        );
        detection.push(d.as_secs_f64());
        recovery.push(r.as_secs_f64());
    }
    report("detection", detection);
    report("recovery", recovery);

    // Steady state: nothing injected; every change of a pod's condition is a flap.
    let mut flaps = 0;
    let mut last = pod_states(admin, ns).await?;
    let start = Instant::now();
    while start.elapsed() < steady {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = pod_states(admin, ns).await?;
        for (pod, s) in &now {
            if last.get(pod).is_some_and(|prev| prev != s) {
                flaps += 1;
                println!(
                    "flap: {pod} {:?} -> {s:?} after {:.0}s",
                    last.get(pod),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        last = now;
    }
    println!(
        "steady     {:.0}s without injection: {flaps} flaps",
        steady.as_secs_f64()
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &operator.registry)?;
    for line in text.lines().filter(|l| {
        l.starts_with("plumbline_detection_latency_seconds_")
            || l.starts_with("plumbline_sample_duration_seconds_sum")
            || l.starts_with("plumbline_sample_duration_seconds_count")
    }) {
        println!("metric     {line}");
    }

    if std::env::var("PLUMBLINE_BENCH_PROMETHEUS").as_deref() != Ok("0") {
        compare_with_prometheus(stack, admin, ns).await?;
    }
    Ok(())
}

/// The pipeline a user would build from Debian packages: prometheus-libvirt-exporter (already
/// run by the stack), Prometheus at 15 s scrape and evaluation, an alert `for: 1m`.
async fn compare_with_prometheus(stack: &Stack, admin: &Client, ns: &str) -> Result<()> {
    let exporter = stack
        .get("LIBVIRT_EXPORTER_URL")?
        .trim_start_matches("http://")
        .to_string();
    let dir = tempfile::tempdir()?;
    // prometheus-libvirt-exporter 0.2.0 exports request and byte counters but no block times,
    // so no per-operation latency can be computed from it. The nearest rule a user can write is
    // on the guest's I/O rate collapsing below a fraction of its normal rate.
    let rules = format!(
        r#"groups:
- name: storage
  rules:
  - alert: GuestStorageSlow
    expr: |
      sum by (domain) (rate(libvirt_domain_block_stats_read_requests_total{{domain="{VICTIM}"}}[1m])
                     + rate(libvirt_domain_block_stats_write_requests_total{{domain="{VICTIM}"}}[1m]))
        < 0.75 * sum by (domain) (rate(libvirt_domain_block_stats_read_requests_total{{domain="{VICTIM}"}}[10m] offset 2m)
                     + rate(libvirt_domain_block_stats_write_requests_total{{domain="{VICTIM}"}}[10m] offset 2m))
    for: 1m
"#
    );
    std::fs::write(dir.path().join("rules.yml"), rules)?;
    let listen = "127.0.0.1:9095";
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nrule_files: [\"{}\"]\nscrape_configs:\n- job_name: libvirt\n  static_configs:\n  - targets: [\"{exporter}\"]\n",
            dir.path().join("rules.yml").display()
        ),
    )?;
    let mut prom = tokio::process::Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting /usr/bin/prometheus (Debian package prometheus)")?;
    let result = async {
        // The rule compares with the previous 10 minutes: let it see a normal baseline first.
        println!("comparison: baseline for 12 minutes at 15 s scrapes");
        tokio::time::sleep(Duration::from_secs(12 * 60)).await;
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        stack.inject_libvirt_latency(VICTIM, INJECT_IOPS).await?;
        let ours = wait_until(admin, ns, "a pod unready", |s| any(s, "False")).await?;
        let mut fired = None;
        while t0.elapsed() < Duration::from_secs(600) {
            let alerts: serde_json::Value = http.get(format!("http://{listen}/api/v1/alerts")).send().await?.json().await?;
            let firing = alerts["data"]["alerts"].as_array().is_some_and(|a| a.iter().any(|x| x["state"] == "firing"));
            if firing {
                fired = Some(t0.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stack.clear_libvirt_latency(VICTIM).await?;
        match fired {
            Some(f) => println!(
                "comparison: plumbline {:.1}s, prometheus-libvirt-exporter + Prometheus (15s, for: 1m) {:.1}s: {:.0}x faster",
                ours.as_secs_f64(),
                f.as_secs_f64(),
                f.as_secs_f64() / ours.as_secs_f64()
            ),
            None => println!("comparison: plumbline {:.1}s; the Prometheus alert did not fire within 600 s", ours.as_secs_f64()),
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = prom.kill().await;
    result
}
