//! The readiness flip: disk latency on the VMs behind Deployment 0's pods (1,000 of the
//! 10,000), timed from the injection until the guard has let every one of them but the last
//! go False, and back after clearing it. The pods' conditions are followed by a watch, so
//! each change is timed when the apiserver announces it, without listing thousands of pods.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, ResourceExt,
};
use plumbline_e2e::scale::{PodState, ScaleBed, NAMESPACE};
use serde_json::{json, Value};

use crate::measure::{self, HistogramDelta, Scrape};

/// Injected read and write latency, four times the intents' 20 ms budget.
const INJECTED_MS: u32 = 80;
const PATIENCE: Duration = Duration::from_secs(600);

/// Each watched pod's gate status, when it last changed, and whether the pod is Ready.
type Seen = Arc<Mutex<BTreeMap<String, (String, Instant, bool)>>>;

pub async fn run(
    bed: &ScaleBed,
    http: &reqwest::Client,
    metrics_url: &str,
    audit: &Path,
    user: &str,
    rounds: usize,
    expected: usize,
) -> Result<Value> {
    let app = ScaleBed::deployment_name(0);
    let vms = bed.vms_of(0);
    let seen: Seen = Arc::default();
    let pods: Api<Pod> = Api::namespaced(bed.admin.clone(), NAMESPACE);
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(pods, config).applied_objects());
            while let Some(event) = events.next().await {
                let Ok(pod) = event else { continue };
                let state = PodState::of(&pod);
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = seen
                    .entry(pod.name_any())
                    .or_insert_with(|| (String::new(), Instant::now(), false));
                if entry.0 != state.gate {
                    entry.0 = state.gate;
                    entry.1 = Instant::now();
                }
                entry.2 = state.ready;
            }
        })
    };
    let result = async {
        let total = wait(&seen, "the flip's pods listed, all True and Ready", |s| {
            s.len() >= expected && s.values().all(|(st, _, ready)| st == "True" && *ready)
        })
        .await?;
        println!(
            "\n== readiness flip: {total} pods of {app} on {} VMs, {INJECTED_MS} ms injected, {rounds} rounds",
            vms.len()
        );
        let scrape0 = Scrape::take(http, metrics_url).await?;
        let audit0 = measure::audit_offset(audit);
        let mut out = Vec::new();
        for round in 1..=rounds {
            let injected = Instant::now();
            bed.set_latency(&vms, Some(INJECTED_MS)).await?;
            // The guard keeps the last ready pod: every other one goes False.
            wait(&seen, "all but one of the flip's pods False", |s| {
                s.values().filter(|(st, _, _)| st == "False").count() + 1 >= s.len()
            })
            .await?;
            let (first_false, last_false) = span(&seen, "False", injected);
            let cleared = Instant::now();
            bed.set_latency(&vms, None).await?;
            wait(&seen, "every flip pod True again", |s| {
                s.values().all(|(st, _, _)| st == "True")
            })
            .await?;
            let (first_true, last_true) = span(&seen, "True", cleared);
            // The next round starts from Ready pods: the guard counts a pod kubelet-sim has not
            // yet made Ready again as unready for another reason.
            wait(&seen, "every flip pod Ready again", |s| {
                s.values().all(|(_, _, ready)| *ready)
            })
            .await?;
            let r = json!({
                "round": round,
                "detection_s": first_false,
                "flip_after_detection_s": last_false - first_false,
                "injection_to_last_false_s": last_false,
                "recovery_detection_s": first_true,
                "recovery_after_detection_s": last_true - first_true,
                "clear_to_last_true_s": last_true,
            });
            println!(
                "round {round}: detected {first_false:.1} s after injection, last pod False {:.2} s after detection ({last_false:.1} s in all); recovery detected {first_true:.1} s after clearing, last pod True {:.2} s later ({last_true:.1} s in all)",
                last_false - first_false,
                last_true - first_true
            );
            out.push(r);
        }
        let scrape1 = Scrape::take(http, metrics_url).await?;
        let requests = measure::audit_window(audit, audit0, user)?;
        let detection = HistogramDelta::between(
            &scrape0,
            &scrape1,
            "plumbline_detection_latency_seconds",
            "",
        );
        let stat = |key: &str| -> Value {
            let mut v: Vec<f64> = out.iter().filter_map(|r| r[key].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            json!({"p50": v.get(v.len() / 2), "max": v.last()})
        };
        let summary = json!({
            "pods": total,
            "vms": vms.len(),
            "injected_ms": INJECTED_MS,
            "rounds": out,
            "detection_s": stat("detection_s"),
            "flip_after_detection_s": stat("flip_after_detection_s"),
            "injection_to_last_false_s": stat("injection_to_last_false_s"),
            "recovery_after_detection_s": stat("recovery_after_detection_s"),
            "clear_to_last_true_s": stat("clear_to_last_true_s"),
            "operator_detection_latency_mean_s": detection.mean(),
            "apiserver_requests_during_flips": requests.by_verb_resource,
            "apiserver_429_during_flips": requests.too_many_requests,
        });
        println!(
            "flip summary: detection p50 {} max {} s; last pod False after detection p50 {} max {} s; recovery after detection p50 {} max {} s; 429s during the flips: {}",
            summary["detection_s"]["p50"],
            summary["detection_s"]["max"],
            summary["flip_after_detection_s"]["p50"],
            summary["flip_after_detection_s"]["max"],
            summary["recovery_after_detection_s"]["p50"],
            summary["recovery_after_detection_s"]["max"],
            requests.too_many_requests
        );
        anyhow::Ok(summary)
    }
    .await;
    watch.abort();
    let _ = bed.set_latency(&vms, None).await;
    result
}

/// Waits until `done` holds for the watched pods; returns how many there are.
async fn wait(
    seen: &Seen,
    what: &str,
    done: impl Fn(&BTreeMap<String, (String, Instant, bool)>) -> bool,
) -> Result<usize> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            if done(&s) {
                return Ok(s.len());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from `since` to the first and the last change to `status` since then (a pod the
/// guard held True all along is not a change).
fn span(seen: &Seen, status: &str, since: Instant) -> (f64, f64) {
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let times: Vec<f64> = s
        .values()
        .filter(|(st, at, _)| st == status && *at >= since)
        .map(|(_, at, _)| at.duration_since(since).as_secs_f64())
        .collect();
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(0.0, f64::max);
    (first, last)
}
