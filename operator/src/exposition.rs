//! The Prometheus text format (0.0.4) for scrapers that do not ask for OpenMetrics.
//! `prometheus-client` writes only OpenMetrics; `promtool check metrics` and older scrapers
//! read only the classic format, which names counter families with their `_total` suffix and
//! has no `info` type, `# UNIT` or `# EOF`.

use std::collections::HashMap;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus itself does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text as the classic Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let classic_name = |family: &str| -> (String, &'static str) {
        match types.get(family).copied() {
            Some("counter") if !family.ends_with("_total") => {
                (format!("{family}_total"), "counter")
            }
            Some("counter") => (family.to_string(), "counter"),
            Some("info") => (format!("{family}_info"), "gauge"),
            Some("gauge") => (family.to_string(), "gauge"),
            Some("histogram") => (family.to_string(), "histogram"),
            Some("summary") => (family.to_string(), "summary"),
            _ => (family.to_string(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((family, help)) = line.strip_prefix("# HELP ").and_then(|l| l.split_once(' ')) {
            out.push_str(&format!("# HELP {} {help}\n", classic_name(family).0));
        } else if let Some(family) = line
            .strip_prefix("# TYPE ")
            .and_then(|l| l.split_once(' '))
            .map(|(f, _)| f)
        {
            let (name, kind) = classic_name(family);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else {
            // Exemplars (` # {...}`) are OpenMetrics-only.
            out.push_str(line.split(" # {").next().unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_info_units_and_eof_become_classic_text() {
        let om = "# HELP plumbline_runs Reconciles.\n# TYPE plumbline_runs counter\nplumbline_runs_total{c=\"wi\"} 3 # {trace=\"x\"} 1.0\n\
# HELP plumbline_build Build.\n# TYPE plumbline_build info\nplumbline_build_info{version=\"0.1.0\"} 1\n\
# HELP plumbline_lat_seconds Latency.\n# TYPE plumbline_lat_seconds gauge\n# UNIT plumbline_lat_seconds seconds\nplumbline_lat_seconds 0.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP plumbline_runs_total Reconciles.\n# TYPE plumbline_runs_total counter\nplumbline_runs_total{c=\"wi\"} 3\n\
# HELP plumbline_build_info Build.\n# TYPE plumbline_build_info gauge\nplumbline_build_info{version=\"0.1.0\"} 1\n\
# HELP plumbline_lat_seconds Latency.\n# TYPE plumbline_lat_seconds gauge\nplumbline_lat_seconds 0.5\n"
        );
    }

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_does_not() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
