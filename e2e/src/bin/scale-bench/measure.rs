//! What the benchmark reads off the running processes: the operator's memory and CPU from
//! /proc, its histograms from /metrics, the simulator's SOAP counters, and the apiserver's
//! audit log of the operator's requests.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// Resident and peak resident memory (VmRSS, VmHWM) of `pid`, in MiB.
pub fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) `pid` has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command may hold spaces; fields after its closing parenthesis are plain.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux x86-64.
    Ok(ticks / 100.0)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One scrape of the operator's /metrics: every sample line, by name with labels.
#[derive(Debug, Default, Clone)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    pub async fn take(http: &reqwest::Client, url: &str) -> Result<Self> {
        let text = http
            .get(url)
            .send()
            .await
            .with_context(|| format!("scraping {url}"))?
            .text()
            .await?;
        Ok(Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        ))
    }

    /// A histogram's cumulative buckets (upper bound, count), from `name_bucket{...le="x"}`
    /// lines whose labels contain `labels`.
    fn buckets(&self, name: &str, labels: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut out: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.contains(labels))
            .filter_map(|(k, v)| {
                let le = k.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// A histogram's change between two scrapes.
#[derive(Debug, Clone, Default)]
pub struct HistogramDelta {
    pub count: f64,
    pub sum: f64,
    buckets: Vec<(f64, f64)>,
}

impl HistogramDelta {
    pub fn between(before: &Scrape, after: &Scrape, name: &str, labels: &str) -> Self {
        let find = |s: &Scrape, suffix: &str| {
            s.0.iter()
                .filter(|(k, _)| k.starts_with(&format!("{name}_{suffix}")) && k.contains(labels))
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        let b0 = before.buckets(name, labels);
        let buckets = after
            .buckets(name, labels)
            .into_iter()
            .map(|(le, n)| {
                let was = b0.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
                (le, n - was)
            })
            .collect();
        Self {
            count: find(after, "count") - find(before, "count"),
            sum: find(after, "sum") - find(before, "sum"),
            buckets,
        }
    }

    /// The `q` quantile, interpolated linearly inside its bucket (as Prometheus'
    /// histogram_quantile does).
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let span = n - lower.1;
                let frac = if span > 0.0 {
                    (rank - lower.1) / span
                } else {
                    1.0
                };
                return lower.0 + (le - lower.0) * frac;
            }
            lower = (le, n);
        }
        lower.0
    }

    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }
}

/// The simulator's SOAP counters (`GET /stats`, e2e/vcsim/stats.go).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SoapStats {
    pub requests: BTreeMap<String, i64>,
    pub request_bytes: i64,
    pub response_bytes: i64,
}

impl SoapStats {
    pub async fn take(http: &reqwest::Client, control_url: &str) -> Result<Self> {
        http.get(format!("{control_url}/stats"))
            .send()
            .await
            .context("reading the simulator's /stats")?
            .json()
            .await
            .context("decoding the simulator's /stats")
    }

    pub fn minus(&self, before: &Self) -> Self {
        Self {
            requests: self
                .requests
                .iter()
                .map(|(k, v)| (k.clone(), v - before.requests.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            request_bytes: self.request_bytes - before.request_bytes,
            response_bytes: self.response_bytes - before.response_bytes,
        }
    }
}

/// The operator's requests in the apiserver's audit log, from byte `offset` on: by
/// "verb resource[/subresource]", and how many were answered 429.
#[derive(Debug, Clone, Default)]
pub struct AuditWindow {
    pub by_verb_resource: BTreeMap<String, u64>,
    pub too_many_requests: u64,
    pub end_offset: u64,
}

#[derive(Deserialize)]
struct AuditEvent {
    verb: String,
    user: AuditUser,
    #[serde(rename = "objectRef")]
    object_ref: Option<AuditObject>,
    #[serde(rename = "responseStatus")]
    response_status: Option<AuditStatus>,
}

#[derive(Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Deserialize)]
struct AuditObject {
    resource: Option<String>,
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct AuditStatus {
    code: Option<u16>,
}

pub fn audit_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub fn audit_window(path: &Path, offset: u64, user: &str) -> Result<AuditWindow> {
    use std::io::{BufRead, Seek};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut out = AuditWindow {
        end_offset: offset,
        ..AuditWindow::default()
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        out.end_offset += n as u64;
        let Ok(event) = serde_json::from_str::<AuditEvent>(&line) else {
            continue;
        };
        if event.user.username != user {
            continue;
        }
        let resource = event.object_ref.as_ref().map_or_else(
            || "(non-resource)".to_string(),
            |o| {
                let r = o.resource.clone().unwrap_or_default();
                match &o.subresource {
                    Some(s) => format!("{r}/{s}"),
                    None => r,
                }
            },
        );
        *out.by_verb_resource
            .entry(format!("{} {resource}", event.verb))
            .or_default() += 1;
        if event.response_status.and_then(|s| s.code) == Some(429) {
            out.too_many_requests += 1;
        }
    }
    Ok(out)
}
