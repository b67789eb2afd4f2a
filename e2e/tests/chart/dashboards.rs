//! The Grafana dashboards: generated and well-formed, and every PromQL expression in them
//! (panels, annotations, variables) returns data from the stack's real Prometheus while it
//! scrapes a running operator during a real latency injection on a libvirt guest.
//! (`promtool check metrics` on the same /metrics is `metrics.rs`.)

use crate::support::{http_get, poll, repo, run, unique_suffix, Cluster, OperatorProcess};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo().join("charts/plumbline/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

fn load(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One PromQL expression a dashboard asks Prometheus for.
#[derive(Debug, Clone)]
struct Query {
    /// Dashboard file, panel or annotation title, refId.
    origin: String,
    expr: String,
    instant: bool,
}

/// A variable's `label_values(selector, label)` query.
#[derive(Debug, Clone)]
struct VariableQuery {
    origin: String,
    selector: String,
    label: String,
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn queries(file: &str, dashboard: &Value) -> (Vec<Query>, Vec<VariableQuery>) {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(
            !targets.is_empty(),
            "{file}: panel {title:?} has no queries"
        );
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "{file}: panel {title:?} has an empty query"
            );
            queries.push(Query {
                origin: format!(
                    "{file} / panel {title:?} / {}",
                    t["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
                instant: t["instant"] == true,
            });
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            queries.push(Query {
                origin: format!(
                    "{file} / annotation {:?}",
                    a["name"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
                instant: false,
            });
        }
    }
    let mut variables = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let definition = v["definition"].as_str().unwrap_or_default();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!(
                    "{file}: variable {} is not label_values(...): {definition}",
                    v["name"]
                )
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        variables.push(VariableQuery {
            origin: format!("{file} / variable ${}", v["name"].as_str().unwrap_or("?")),
            selector: selector.trim().to_string(),
            label: label.trim().to_string(),
        });
    }
    (queries, variables)
}

#[test]
fn dashboards_are_generated_well_formed_and_use_the_variables() {
    run(
        Command::new(repo().join("charts/generate-dashboards")).arg("--check"),
        None,
    )
    .unwrap_or_else(|e| panic!("the committed dashboards are stale: {e}"));
    let mut uids = BTreeSet::new();
    for path in dashboard_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard = load(&path);
        assert!(
            uids.insert(dashboard["uid"].as_str().unwrap().to_string()),
            "{file}: duplicate uid"
        );
        let ids: Vec<i64> = panels(&dashboard)
            .iter()
            .filter_map(|p| p["id"].as_i64())
            .collect();
        assert_eq!(
            ids.len(),
            ids.iter().collect::<BTreeSet<_>>().len(),
            "{file}: duplicate panel ids"
        );
        let (queries, variables) = queries(&file, &dashboard);
        assert!(!queries.is_empty() && !variables.is_empty(), "{file}");
        let names: BTreeSet<&str> = dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for q in &queries {
            for var in ["provider", "namespace", "intent"] {
                if q.expr.contains(&format!("${var}")) {
                    assert!(
                        names.contains(var),
                        "{}: uses ${var} but the dashboard has no such variable",
                        q.origin
                    );
                }
            }
        }
    }
    let cross_layer = load(&repo().join("charts/plumbline/dashboards/cross-layer-health.json"));
    let names: Vec<&str> = cross_layer["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for var in ["provider", "namespace", "intent"] {
        assert!(
            names.contains(&var),
            "cross-layer health lacks ${var}: {names:?}"
        );
    }
}

/// Grafana's placeholders, filled as Grafana would for the scenario's namespace and intent.
fn substitute(expr: &str, namespace: &str, intent: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "10m")
        .replace("$__interval", "5s")
        .replace("$provider", ".*")
        .replace("$namespace", namespace)
        .replace("$intent", intent)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Ok(number of series with at least one finite value), Err(why not).
fn series_with_data(prometheus: &str, query: &Query, expr: &str) -> Result<usize, String> {
    let url = if query.instant {
        format!("{prometheus}/api/v1/query?query={}", percent_encode(expr))
    } else {
        let end = now_secs();
        format!(
            "{prometheus}/api/v1/query_range?query={}&start={}&end={end}&step=5",
            percent_encode(expr),
            end - 600
        )
    };
    let body = http_get(&url)?;
    let response: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if response["status"] != "success" {
        return Err(format!("Prometheus refused it: {body}"));
    }
    let finite = |v: &Value| {
        v[1].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    };
    let count = response["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|series| {
            if query.instant {
                finite(&series["value"])
            } else {
                series["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(finite)
            }
        })
        .count();
    if count == 0 {
        Err("no data".into())
    } else {
        Ok(count)
    }
}

fn label_values(
    prometheus: &str,
    v: &VariableQuery,
    namespace: &str,
    intent: &str,
) -> Result<usize, String> {
    let selector = substitute(&v.selector, namespace, intent);
    let url = format!(
        "{prometheus}/api/v1/label/{}/values?match[]={}&start={}",
        v.label,
        percent_encode(&selector),
        now_secs() - 600
    );
    let body = http_get(&url)?;
    let response: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    match response["data"].as_array() {
        Some(values) if !values.is_empty() => Ok(values.len()),
        _ => Err(format!("no values: {body}")),
    }
}

/// Metric names an expression refers to (identifiers starting with `plumbline_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("plumbline_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Removes the operator's file_sd target, clears injected latency and releases what the
/// scenario changed, even when the test fails. Declared after the operator, so it runs while
/// the operator still does.
struct Scenario<'a> {
    cluster: &'a Cluster,
    target_file: PathBuf,
    provider: String,
    victim: String,
    namespace: String,
    released: bool,
}

impl Scenario<'_> {
    /// The noisy neighbour's throttle and the victim's CPU shares are InfraChanges of this
    /// operator: deleting the intent has it delete them, and their finalizers restore the
    /// originals through the provider's connection. Only then does the provider go (it is
    /// held by `plumbline.dev/infra-changes` until no change targets it).
    fn release(&mut self) -> Result<(), String> {
        self.released = true;
        let _ = self
            .cluster
            .kubectl([
                "delete",
                "hostmaintenance",
                &self.provider,
                "--ignore-not-found",
            ])
            .output();
        let _ = run(
            Command::new(repo().join("e2e/stack")).args(["clear-latency", &self.victim]),
            None,
        );
        self.cluster
            .release_ledger(&self.namespace, &[self.provider.as_str()])
    }
}

impl Drop for Scenario<'_> {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.release() {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_file(&self.target_file);
    }
}

#[test]
fn serial_every_dashboard_query_returns_data_during_latency_injection() {
    let cluster = Cluster::load();
    cluster.ensure_crds();
    let prometheus = cluster
        .stack
        .get("PROMETHEUS_URL")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let targets_dir = PathBuf::from(
        cluster
            .stack
            .get("PROMETHEUS_TARGETS_DIR")
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let libvirt_uri = cluster
        .stack
        .get("LIBVIRT_URI")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let operator_kubeconfig = cluster
        .stack
        .get("PLUMBLINE_OPERATOR_KUBECONFIG")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    // The critical workload runs on pl-vm2; pl-noisy is the busy neighbour on the same host.
    let victim = "pl-vm2".to_string();

    let ns = cluster.namespace("chart-dashboards");
    let suffix = unique_suffix();
    let provider = format!("dashboards-{suffix}");
    let identity = format!("dashboards-test-{suffix}");

    let operator = OperatorProcess::start(
        Path::new(&operator_kubeconfig),
        &ns.name,
        &identity,
        &[
            "--leader-elect=true",
            &format!("--lease-name=dashboards-{suffix}"),
            &format!("--watch-namespace={}", ns.name),
            // The maintenance row: a dry-run HostMaintenance (below) moves nothing.
            "--host-maintenance=true",
            // The activation row: the intent's signal is read from the stack's Prometheus.
            &format!("--prometheus-url={prometheus}"),
        ],
    );
    let instance = operator
        .metrics_url
        .trim_start_matches("http://")
        .to_string();
    let mut scenario = Scenario {
        cluster: &cluster,
        target_file: targets_dir.join(format!("chart-dashboards-{suffix}.json")),
        provider: provider.clone(),
        victim: victim.clone(),
        namespace: ns.name.clone(),
        released: false,
    };
    std::fs::write(
        &scenario.target_file,
        serde_json::json!([{"targets": [instance], "labels": {"component": "operator", "test": "chart-dashboards"}}])
            .to_string(),
    )
    .expect("writing the file_sd target");

    let manifests = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
        {{"apiVersion":"plumbline.dev/v1alpha1","kind":"HypervisorProvider","metadata":{{"name":"{provider}"}},
          "spec":{{"libvirt":{{"uri":"{libvirt_uri}"}},"sampleInterval":"1s"}}}},
        {{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"payments","namespace":"{ns}"}},
          "spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"payments"}}}},
          "template":{{"metadata":{{"labels":{{"app":"payments"}}}},
          "spec":{{"nodeName":"{victim}","containers":[{{"name":"api","image":"registry.invalid/payments:1"}}]}}}}}}}},
        {{"apiVersion":"plumbline.dev/v1alpha1","kind":"WorkloadIntent","metadata":{{"name":"payments","namespace":"{ns}"}},
          "spec":{{"target":{{"kind":"Deployment","name":"payments"}},"priority":"critical",
          "storage":{{"latencyBudget":"20ms","readinessGate":true,"maxUnready":"100%"}},
          "infrastructure":{{"protectBackingVms":true,"throttleNoisyNeighbours":true}},
          "activation":{{"signals":[{{"name":"scrapes","query":"sum(up)","activateAbove":0,"deactivateBelow":0,"interval":"5s"}}]}}}}}},
        {{"apiVersion":"plumbline.dev/v1alpha1","kind":"HostMaintenance","metadata":{{"name":"{provider}"}},
          "spec":{{"provider":"{provider}","host":"dashboards-dry-run","dryRun":true}}}}]}}"#,
        ns = ns.name
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&manifests));

    // Prometheus scrapes the operator...
    let up = Query {
        origin: "up".into(),
        expr: format!(r#"up{{instance="{instance}"}} == 1"#),
        instant: true,
    };
    poll(
        "Prometheus to scrape the operator",
        Duration::from_secs(60),
        || {
            operator.assert_alive();
            series_with_data(&prometheus, &up, &up.expr)
        },
    );
    // ... while the victim's disk is slowed down for real.
    run(
        Command::new(repo().join("e2e/stack")).args(["inject-latency", &victim, "--iops", "20"]),
        None,
    )
    .unwrap_or_else(|e| panic!("injecting latency: {e}"));

    let mut all_queries = Vec::new();
    let mut all_variables = Vec::new();
    for path in dashboard_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (q, v) = queries(&file, &load(&path));
        all_queries.extend(q);
        all_variables.extend(v);
    }

    // Every query must return data at some point while the scenario runs; poll all of them
    // together and report every one that never did.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut pending: Vec<Query> = all_queries.clone();
    let mut pending_vars: Vec<VariableQuery> = all_variables.clone();
    let mut last_errors = std::collections::BTreeMap::new();
    while (!pending.is_empty() || !pending_vars.is_empty()) && std::time::Instant::now() < deadline
    {
        operator.assert_alive();
        pending.retain(|q| {
            match series_with_data(&prometheus, q, &substitute(&q.expr, &ns.name, "payments")) {
                Ok(_) => false,
                Err(e) => {
                    last_errors.insert(q.origin.clone(), e);
                    true
                }
            }
        });
        pending_vars.retain(
            |v| match label_values(&prometheus, v, &ns.name, "payments") {
                Ok(_) => false,
                Err(e) => {
                    last_errors.insert(v.origin.clone(), e);
                    true
                }
            },
        );
        if !pending.is_empty() || !pending_vars.is_empty() {
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    // promtool's verdict on the same output is metrics.rs's test.
    let metrics = operator.metrics();

    if !pending.is_empty() || !pending_vars.is_empty() {
        let served: BTreeSet<String> = metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        let mut missing = BTreeSet::new();
        for q in &pending {
            for name in metric_names(&q.expr) {
                let base = name.trim_end_matches("_bucket").trim_end_matches("_total");
                if !served.iter().any(|s| s.starts_with(base)) {
                    missing.insert(name);
                }
            }
        }
        let report: Vec<String> = pending
            .iter()
            .map(|q| {
                format!(
                    "{}: {} ({})",
                    q.origin,
                    q.expr,
                    last_errors.get(&q.origin).map(String::as_str).unwrap_or("")
                )
            })
            .chain(pending_vars.iter().map(|v| {
                format!(
                    "{}: {} ({})",
                    v.origin,
                    v.selector,
                    last_errors.get(&v.origin).map(String::as_str).unwrap_or("")
                )
            }))
            .collect();
        panic!(
            "{} of {} dashboard queries and {} of {} variables returned no data during the scenario.\n\
             Metrics the dashboards use that the operator does not serve: {missing:?}\n{}",
            pending.len(),
            all_queries.len(),
            pending_vars.len(),
            all_variables.len(),
            report.join("\n")
        );
    }
    eprintln!(
        "all {} dashboard queries and {} variables returned data",
        all_queries.len(),
        all_variables.len()
    );
    // Stopping the operator releases nothing: the ledger is emptied first.
    scenario
        .release()
        .unwrap_or_else(|e| panic!("cleanup: {e}\noperator log:\n{}", operator.logs()));
    drop(scenario);
    drop(operator);
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names =
        metric_names(r#"sum by (le) (rate(plumbline_a_bucket{x="$y"}[5m])) or plumbline_b"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["plumbline_a_bucket", "plumbline_b"]
    );
}
