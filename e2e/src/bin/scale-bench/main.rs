//! scale-bench: the scale benchmark (docs/scale.md). Run by `e2e/scale bench`, against the
//! scale bed that script starts; never part of the test run.
//!
//! For each pod count it grows the bed's workload, starts the real operator binary, waits
//! until every gated pod has its condition, and then watches a steady window: memory, CPU,
//! health-pass durations, vSphere sampling cycles with their SOAP requests and bytes, and the
//! operator's apiserver requests from the audit log. At the largest count it then runs the
//! readiness flip: latency on the VMs behind one Deployment's pods, until the guard has let
//! all of them but the last go False, and back.
//!
//! Prints every figure, and writes them as JSON for `docs/scale-chart.py`.

mod flip;
mod measure;
mod operator;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use plumbline_e2e::scale::ScaleBed;
use serde_json::{json, Value};

use measure::{HistogramDelta, Scrape, SoapStats};

#[derive(Debug, Parser)]
#[command(about = "Measures the operator on the scale bed (e2e/scale bench)")]
struct Args {
    /// The scale bed's state dir.
    #[arg(long, default_value = "/var/tmp/plumbline-scale")]
    stack_dir: PathBuf,
    /// The operator binary (a release build).
    #[arg(long)]
    operator: PathBuf,
    /// Pod counts, measured in this order (the workload only grows).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pods: Vec<usize>,
    /// Deployments (and intents) the pods are spread over.
    #[arg(long, default_value_t = 10)]
    deployments: usize,
    /// Length of each steady-state window.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Rounds of the readiness flip at the largest pod count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The provider's sampleInterval (the default one: vSphere's realtime samples are 20 s).
    #[arg(long, default_value = "10s")]
    sample_interval: String,
    /// Where the figures go as JSON.
    #[arg(long, default_value = "scale-results.json")]
    out: PathBuf,
}

const OPERATOR_USER: &str = "plumbline-operator";
const METRICS_ADDR: &str = "127.0.0.1:18080";
/// Two 10 s sample intervals and the start-up.
const WARM_UP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let bed = ScaleBed::load(&args.stack_dir, args.deployments).await?;
    let http = reqwest::Client::new();
    let control = bed.stack.get("VCSIM_CONTROL_URL")?.to_string();
    let audit = args.stack_dir.join("k8s/audit.log");
    let kubeconfig = bed.stack.operator_kubeconfig()?.to_path_buf();
    println!(
        "scale bed: {} VM-backed nodes, {} deployments; load {}",
        bed.nodes.len(),
        args.deployments,
        measure::loadavg()
    );
    bed.prepare(&args.sample_interval).await?;
    bed.apply_intents().await?;

    let mut sizes = Vec::new();
    let mut flip = Value::Null;
    let largest = args.pods.iter().copied().max().unwrap_or(0);
    for &pods in &args.pods {
        let started = Instant::now();
        let created = bed.grow_to(pods).await?;
        println!(
            "\n== {pods} pods ({created} created in {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        let log = args.stack_dir.join(format!("logs/operator-{pods}.log"));
        let op = operator::Operator::start(&args.operator, &kubeconfig, METRICS_ADDR, &log)?;
        let metrics_url = format!("http://{METRICS_ADDR}/metrics");
        let outcome = async {
            let started = Instant::now();
            // A starting operator has no confirmed samples yet: it first turns every condition
            // to LatencyUnknown (fail-open), then back. Wait past that before waiting to settle.
            tokio::time::sleep(WARM_UP).await;
            let all = wait_all_conditions(&bed, pods, Duration::from_secs(900)).await?;
            let to_all = started.elapsed().as_secs_f64();
            let (_, peak) = measure::memory_mib(op.pid)?;
            println!("every gated pod True within budget and Ready after {to_all:.1} s ({all} pods); peak RSS so far {peak:.1} MiB");
            // The start-up's last writes: steady state begins once every node is labelled.
            let nodes = bed.nodes.len();
            wait_topology_labels(&http, &metrics_url, nodes, Duration::from_secs(600)).await?;
            let to_labels = started.elapsed().as_secs_f64();
            println!("topology labels on all {nodes} nodes after {to_labels:.1} s");
            let size = steady_window(
                &http,
                &op,
                &metrics_url,
                &control,
                &audit,
                Duration::from_secs(args.steady_seconds),
            )
            .await?;
            let mut size = size;
            size["pods"] = json!(pods);
            size["peak_rss_mib"] = json!(peak);
            size["time_to_all_conditions_s"] = json!(to_all);
            size["time_to_all_topology_labels_s"] = json!(to_labels);
            print_size(&size);
            if pods == largest && args.rounds > 0 {
                let expected = pods / args.deployments;
                flip = flip::run(
                    &bed,
                    &http,
                    &metrics_url,
                    &audit,
                    OPERATOR_USER,
                    args.rounds,
                    expected,
                )
                .await?;
            }
            anyhow::Ok(size)
        };
        // Whatever ends the measurement, the operator is stopped by its pid below.
        let outcome = tokio::select! {
            outcome = outcome => outcome,
            () = operator::Operator::exited(op.pid) => {
                Err(anyhow::anyhow!("the operator exited; see {}", log.display()))
            }
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
        };
        op.stop().await;
        sizes.push(outcome?);
        // After every pod count, so an interrupted run keeps what it measured.
        write_results(&args, &bed, &sizes, &flip)?;
    }
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}

/// SIGINT or SIGTERM: the benchmark stops its operator before it goes.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn write_results(args: &Args, bed: &ScaleBed, sizes: &[Value], flip: &Value) -> Result<()> {
    let result = json!({
        "vms": bed.nodes.len(),
        "deployments": args.deployments,
        "sample_interval": args.sample_interval,
        "steady_seconds": args.steady_seconds,
        "machine": {"nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                    "loadavg_end": measure::loadavg()},
        "sizes": sizes,
        "flip": flip,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", args.out.display()))
}

/// Waits until each of the bed's `pods` pods has the gate condition True for a latency within
/// budget, and is Ready (kubelet-sim caught up). Polls every 5 s: a list of 10,000 pods is itself a load on the apiserver.
async fn wait_all_conditions(bed: &ScaleBed, pods: usize, patience: Duration) -> Result<usize> {
    let deadline = Instant::now() + patience;
    loop {
        let states = bed.gate_states().await?;
        // Settled: every pod judged on confirmed samples, not fail-open while they come in.
        let judged = states.values().filter(|p| p.settled()).count();
        if states.len() >= pods && judged == states.len() {
            return Ok(judged);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {judged} of {} pods were True within budget and Ready after {patience:?}",
            states.len()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Waits until the operator reports topology labels written on `nodes` nodes: a fresh
/// operator applies them to every node once (its memory of what it wrote starts empty).
async fn wait_topology_labels(
    http: &reqwest::Client,
    metrics_url: &str,
    nodes: usize,
    patience: Duration,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let scrape = Scrape::take(http, metrics_url).await?;
        let labelled = scrape
            .0
            .get("plumbline_topology_labelled_nodes")
            .copied()
            .unwrap_or(0.0);
        if labelled >= nodes as f64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "topology labels on only {labelled} of {nodes} nodes after {patience:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Memory (sampled every second), CPU, passes, sampling cycles, SOAP traffic and the
/// operator's apiserver requests over one window.
async fn steady_window(
    http: &reqwest::Client,
    op: &operator::Operator,
    metrics_url: &str,
    control: &str,
    audit: &std::path::Path,
    window: Duration,
) -> Result<Value> {
    let load_before = measure::loadavg();
    let scrape0 = Scrape::take(http, metrics_url).await?;
    let soap0 = SoapStats::take(http, control).await?;
    let cpu0 = measure::cpu_seconds(op.pid)?;
    let audit0 = measure::audit_offset(audit);
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < window {
        rss.push(measure::memory_mib(op.pid)?.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let scrape1 = Scrape::take(http, metrics_url).await?;
    let soap = SoapStats::take(http, control).await?.minus(&soap0);
    let cpu = measure::cpu_seconds(op.pid)? - cpu0;
    let requests = measure::audit_window(audit, audit0, OPERATOR_USER)?;
    rss.sort_by(f64::total_cmp);
    let passes = HistogramDelta::between(
        &scrape0,
        &scrape1,
        "plumbline_health_pass_duration_seconds",
        "",
    );
    let cycles = HistogramDelta::between(
        &scrape0,
        &scrape1,
        "plumbline_sample_duration_seconds",
        "provider=\"scale-vc\"",
    );
    let per_cycle = |n: i64| {
        if cycles.count > 0.0 {
            n as f64 / cycles.count
        } else {
            f64::NAN
        }
    };
    let soap_requests: i64 = soap.requests.values().sum();
    let by_method: serde_json::Map<String, Value> = soap
        .requests
        .iter()
        .map(|(m, n)| (m.clone(), json!(per_cycle(*n))))
        .collect();
    let apiserver: serde_json::Map<String, Value> = requests
        .by_verb_resource
        .iter()
        .map(|(k, n)| (k.clone(), json!(*n as f64 / secs)))
        .collect();
    Ok(json!({
        "window_s": secs,
        "steady_rss_mib": rss.get(rss.len() / 2).copied().unwrap_or(f64::NAN),
        "steady_rss_max_mib": rss.last().copied().unwrap_or(f64::NAN),
        "cpu_s_per_min": cpu / secs * 60.0,
        "passes": passes.count,
        "pass_p50_ms": passes.quantile(0.5) * 1e3,
        "pass_p99_ms": passes.quantile(0.99) * 1e3,
        "pass_mean_ms": passes.mean() * 1e3,
        "sampling_cycles": cycles.count,
        "sampling_cycle_mean_ms": cycles.mean() * 1e3,
        "sampling_cycle_p99_ms": cycles.quantile(0.99) * 1e3,
        "soap_requests_per_cycle": per_cycle(soap_requests),
        "soap_requests_per_cycle_by_method": by_method,
        "soap_request_kib_per_cycle": per_cycle(soap.request_bytes) / 1024.0,
        "soap_response_kib_per_cycle": per_cycle(soap.response_bytes) / 1024.0,
        "apiserver_requests_per_s": apiserver,
        "apiserver_requests_per_s_total": requests.by_verb_resource.values().sum::<u64>() as f64 / secs,
        "apiserver_429": requests.too_many_requests,
        "loadavg_before": load_before,
        "loadavg_after": measure::loadavg(),
    }))
}

fn print_size(size: &Value) {
    let f = |k: &str| size[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "RSS steady {:.1} MiB (max {:.1}), peak {:.1} MiB",
        f("steady_rss_mib"),
        f("steady_rss_max_mib"),
        f("peak_rss_mib")
    );
    println!(
        "health pass p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms over {} passes; CPU {:.2} s/min",
        f("pass_p50_ms"),
        f("pass_p99_ms"),
        f("pass_mean_ms"),
        f("passes"),
        f("cpu_s_per_min")
    );
    println!(
        "vSphere sampling cycle mean {:.0} ms, p99 {:.0} ms over {} cycles; per cycle {:.1} SOAP requests {}, {:.1} KiB sent, {:.1} KiB received",
        f("sampling_cycle_mean_ms"),
        f("sampling_cycle_p99_ms"),
        f("sampling_cycles"),
        f("soap_requests_per_cycle"),
        size["soap_requests_per_cycle_by_method"],
        f("soap_request_kib_per_cycle"),
        f("soap_response_kib_per_cycle")
    );
    println!(
        "apiserver requests from the operator: {:.2}/s, 429s: {}; by verb and resource (/s): {}",
        f("apiserver_requests_per_s_total"),
        size["apiserver_429"],
        size["apiserver_requests_per_s"]
    );
    println!(
        "load average {} -> {}",
        size["loadavg_before"], size["loadavg_after"]
    );
}
