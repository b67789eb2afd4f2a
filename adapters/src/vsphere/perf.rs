//! Storage latency from the PerformanceManager: `virtualDisk.totalReadLatency.average` and
//! `totalWriteLatency.average` (ms over the 20 s realtime interval), with the disks' I/O rates
//! `numberReadAveraged.average` and `numberWriteAveraged.average` (operations per second, for
//! finding noisy neighbours) where the server has them; counter IDs resolved by name once,
//! queries batched within `maxQueryMetrics`.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use super::{
    inventory::{self, VmRecord},
    session::Session,
};
use crate::xml::{Element, MoRef};
use crate::{DiskLatency, Error, NotReady, OpLatency, Result, UnreadyDisk};

pub const READ_LATENCY: &str = "virtualDisk.totalReadLatency.average";
pub const WRITE_LATENCY: &str = "virtualDisk.totalWriteLatency.average";
pub const READ_RATE: &str = "virtualDisk.numberReadAveraged.average";
pub const WRITE_RATE: &str = "virtualDisk.numberWriteAveraged.average";
/// The realtime interval.
pub const INTERVAL_SECS: i64 = 20;
/// vCenter's default `config.vpxd.stats.maxQueryMetrics`, used when the server does not say.
const DEFAULT_MAX_QUERY_METRICS: usize = 64;
/// The longest sample interval believed from the server (a realtime interval is 20 s; the
/// longest historical one is a day). Anything beyond would overflow the freshness window.
const MAX_INTERVAL_SECS: i64 = 86_400;

/// The sample interval vCenter reports, bounded to 1 s … 1 day; absent or out of range: the
/// realtime interval (logged once, since a server reporting nonsense intervals is worth knowing).
fn bounded_interval(reported: Option<i64>) -> u64 {
    match reported {
        Some(i) if (1..=MAX_INTERVAL_SECS).contains(&i) => i as u64,
        None => INTERVAL_SECS as u64,
        Some(i) => {
            // Once per process: every VM of every sample would report it again.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return INTERVAL_SECS as u64;
            }
            tracing::warn!(
                reported = i,
                using = INTERVAL_SECS,
                "vCenter reported a sample interval outside 1 s … 1 day; using the realtime interval"
            );
            INTERVAL_SECS as u64
        }
    }
}

/// A sample older than this many intervals is not reported as current.
const STALE_AFTER_INTERVALS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyCounters {
    pub read: i64,
    pub write: i64,
    /// The I/O rate counters (operations per second), when the server has both.
    pub rates: Option<(i64, i64)>,
}

impl LatencyCounters {
    /// Every counter asked for each disk.
    fn ids(&self) -> Vec<i64> {
        let mut ids = vec![self.read, self.write];
        if let Some((r, w)) = self.rates {
            ids.extend([r, w]);
        }
        ids
    }
}

/// Maps `group.name.rollup` to counter IDs.
pub fn counter_ids(perf_counters: &Element) -> HashMap<String, i64> {
    perf_counters
        .children
        .iter()
        .filter_map(|c| {
            let name = format!(
                "{}.{}.{}",
                c.path_text(&["groupInfo", "key"])?,
                c.path_text(&["nameInfo", "key"])?,
                c.path_text(&["rollupType"])?
            );
            Some((name, c.path_i64(&["key"])?))
        })
        .collect()
}

pub async fn resolve_counters(session: &Session) -> Result<LatencyCounters> {
    let spec = Element::new("specSet")
        .child(
            Element::new("propSet")
                .child(Element::text("type", "PerformanceManager"))
                .child(Element::text("pathSet", "perfCounter")),
        )
        .child(
            Element::new("objectSet").child(Element::moref("obj", &session.services.perf_manager)),
        );
    let contents = inventory::retrieve(session, "resolving performance counters", spec).await?;
    let ids = contents
        .iter()
        .find_map(|(_, props)| props.get("perfCounter"))
        .map(counter_ids)
        .unwrap_or_default();
    let find = |name: &str| {
        ids.get(name).copied().ok_or_else(|| Error::Protocol {
            action: "resolving performance counters".into(),
            url: session.url().to_string(),
            message: format!("the server has no counter {name}"),
        })
    };
    let rates = ids
        .get(READ_RATE)
        .copied()
        .zip(ids.get(WRITE_RATE).copied());
    if rates.is_none() {
        tracing::info!(
            url = %session.url(),
            "the server has no {READ_RATE} / {WRITE_RATE}: its VMs' I/O rates are unknown, so none counts as a noisy neighbour"
        );
    }
    Ok(LatencyCounters {
        read: find(READ_LATENCY)?,
        write: find(WRITE_LATENCY)?,
        rates,
    })
}

/// `config.vpxd.stats.maxQueryMetrics`, or the vCenter default when the server has no
/// such setting (ESXi, the simulator). `-1` means no limit.
pub async fn max_query_metrics(session: &Session) -> usize {
    let Some(setting) = &session.services.setting else {
        return DEFAULT_MAX_QUERY_METRICS;
    };
    let request = Element::new("QueryOptions")
        .child(Element::moref("_this", setting))
        .child(Element::text("name", "config.vpxd.stats.maxQueryMetrics"));
    match session.invoke("reading maxQueryMetrics", request).await {
        Ok(body) => match body.path_i64(&["returnval", "value"]) {
            Some(n) if n < 0 => usize::MAX,
            Some(n) if n > 0 => n as usize,
            _ => DEFAULT_MAX_QUERY_METRICS,
        },
        Err(e) => {
            tracing::debug!(error = %e, "no maxQueryMetrics setting; using the default");
            DEFAULT_MAX_QUERY_METRICS
        }
    }
}

/// One QuerySpec per VM, grouped into batches that each stay within `max_metrics`
/// (a VM with more metrics than the limit gets a batch of its own).
pub fn batches(
    vms: &[&VmRecord],
    counters: LatencyCounters,
    max_metrics: usize,
) -> Vec<Vec<Element>> {
    let mut out: Vec<Vec<Element>> = Vec::new();
    let mut in_batch = 0usize;
    for vm in vms
        .iter()
        .filter(|vm| vm.powered_on && !vm.disks.is_empty())
    {
        let metric_ids: Vec<Element> = vm
            .disks
            .iter()
            .flat_map(|d| {
                counters.ids().into_iter().map(|id| {
                    Element::new("metricId")
                        .child(Element::text("counterId", id.to_string()))
                        .child(Element::text("instance", &d.name))
                })
            })
            .collect();
        let n = metric_ids.len();
        let spec = Element::new("querySpec")
            .child(Element::moref("entity", &vm.moref))
            .child(Element::text("maxSample", "1"))
            .children(metric_ids)
            .child(Element::text("intervalId", INTERVAL_SECS.to_string()));
        if out.is_empty() || in_batch + n > max_metrics {
            out.push(Vec::new());
            in_batch = 0;
        }
        in_batch += n;
        out.last_mut().expect("a batch was just pushed").push(spec);
    }
    out
}

pub async fn query(session: &Session, specs: Vec<Element>) -> Result<Element> {
    let request = Element::new("QueryPerf")
        .child(Element::moref("_this", &session.services.perf_manager))
        .children(specs);
    session.invoke("querying disk latency", request).await
}

/// What one disk's series said: latencies in ms, rates in operations per second.
#[derive(Default)]
struct DiskSeries {
    read_ms: Option<u64>,
    write_ms: Option<u64>,
    read_rate: Option<u64>,
    write_rate: Option<u64>,
}

/// Turns QueryPerf results into latencies (with operation counts, where the rates were
/// asked for) for the VMs asked about.
pub fn latencies(
    response: &Element,
    counters: LatencyCounters,
    vms: &HashMap<MoRef, &VmRecord>,
    now: SystemTime,
) -> (Vec<DiskLatency>, Vec<UnreadyDisk>) {
    let mut disks = Vec::new();
    let mut unready = Vec::new();
    for metric in response.all("returnval") {
        let Some(vm) = metric
            .first("entity")
            .and_then(Element::as_moref)
            .and_then(|m| vms.get(&m))
        else {
            continue;
        };
        // maxSample=1: the newest sample is the last one.
        let sample = metric.all("sampleInfo").last();
        let interval = bounded_interval(sample.and_then(|s| s.path_i64(&["interval"])));
        let observed_at = sample
            .and_then(|s| s.path_text(&["timestamp"]))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
            .map(SystemTime::from);
        let window = Duration::from_secs(interval);
        let fresh = observed_at
            .map(|at| now.duration_since(at).unwrap_or_default() <= window * STALE_AFTER_INTERVALS)
            .unwrap_or(false);
        let mut per_disk: HashMap<&str, DiskSeries> = HashMap::new();
        for series in metric.all("value") {
            let (Some(counter), Some(instance)) = (
                series.path_i64(&["id", "counterId"]),
                series.path_text(&["id", "instance"]),
            ) else {
                continue;
            };
            // -1 means "no data" for this sample.
            let latest = series
                .all("value")
                .last()
                .and_then(|v| v.text.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .map(|v| v as u64);
            let slot = per_disk.entry(instance).or_default();
            let rates = counters.rates.unwrap_or((-1, -1));
            if counter == counters.read {
                slot.read_ms = latest;
            } else if counter == counters.write {
                slot.write_ms = latest;
            } else if counter == rates.0 {
                slot.read_rate = latest;
            } else if counter == rates.1 {
                slot.write_rate = latest;
            }
        }
        for disk in &vm.disks {
            match (per_disk.get(disk.name.as_str()), observed_at) {
                (Some(s), Some(at)) if fresh && (s.read_ms.is_some() || s.write_ms.is_some()) => {
                    // A rate over the interval is that many operations per second of it.
                    let op = |ms: Option<u64>, rate: Option<u64>| {
                        ms.map(|ms| OpLatency {
                            mean: Duration::from_millis(ms),
                            ops: rate.map(|r| r * interval),
                        })
                    };
                    disks.push(DiskLatency {
                        vm: vm.id.clone(),
                        disk: disk.name.clone(),
                        read: op(s.read_ms, s.read_rate),
                        write: op(s.write_ms, s.write_rate),
                        flush: None,
                        window,
                        observed_at: at,
                    })
                }
                _ => unready.push(UnreadyDisk {
                    vm: vm.id.clone(),
                    disk: disk.name.clone(),
                    reason: NotReady::NoRecentSample,
                }),
            }
        }
    }
    (disks, unready)
}

#[cfg(test)]
mod interval_tests {
    use super::*;

    #[test]
    fn reported_intervals_are_bounded() {
        assert_eq!(bounded_interval(Some(20)), 20);
        assert_eq!(bounded_interval(None), INTERVAL_SECS as u64);
        for nonsense in [0, -5, i64::MAX, MAX_INTERVAL_SECS + 1] {
            assert_eq!(bounded_interval(Some(nonsense)), INTERVAL_SECS as u64);
        }
        // The freshness window of the largest accepted interval does not overflow.
        let _ =
            Duration::from_secs(bounded_interval(Some(MAX_INTERVAL_SECS))) * STALE_AFTER_INTERVALS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmId;

    fn vm(n: usize, disks: usize) -> VmRecord {
        VmRecord {
            moref: MoRef::new("VirtualMachine", &format!("vm-{n}")),
            id: VmId::new(format!("00000000-0000-0000-0000-{n:012}")),
            name: format!("vm{n}"),
            host: None,
            datastores: vec![],
            powered_on: true,
            disks: (0..disks)
                .map(|u| inventory::DiskRecord {
                    name: format!("scsi0:{u}"),
                    file: None,
                    datastore: None,
                    device: Element::new("VirtualDevice"),
                })
                .collect(),
            extra_config: HashMap::new(),
            cpu_allocation: None,
            memory_allocation: None,
        }
    }

    const COUNTERS: LatencyCounters = LatencyCounters {
        read: 131,
        write: 132,
        rates: None,
    };

    #[test]
    fn batches_never_exceed_max_query_metrics() {
        let vms: Vec<VmRecord> = (0..10).map(|n| vm(n, 2)).collect();
        let refs: Vec<&VmRecord> = vms.iter().collect();
        // 4 metrics per VM; 10 per batch fits 2 VMs.
        let b = batches(&refs, COUNTERS, 10);
        assert_eq!(b.len(), 5);
        for batch in &b {
            let metrics: usize = batch.iter().map(|s| s.all("metricId").count()).sum();
            assert!(metrics <= 10, "{metrics}");
        }
        assert_eq!(batches(&refs, COUNTERS, usize::MAX).len(), 1);
    }

    #[test]
    fn counter_ids_are_resolved_by_full_name() {
        let xml = br#"<val><PerfCounterInfo><key>131</key><nameInfo><key>totalReadLatency</key></nameInfo><groupInfo><key>virtualDisk</key></groupInfo><rollupType>average</rollupType></PerfCounterInfo>
<PerfCounterInfo><key>7</key><nameInfo><key>totalReadLatency</key></nameInfo><groupInfo><key>datastore</key></groupInfo><rollupType>average</rollupType></PerfCounterInfo></val>"#;
        let ids = counter_ids(&Element::parse(xml).unwrap());
        assert_eq!(ids.get(READ_LATENCY), Some(&131));
        assert_eq!(ids.get("datastore.totalReadLatency.average"), Some(&7));
    }

    #[test]
    fn latest_sample_becomes_per_disk_latency_and_stale_or_missing_data_is_not_ready() {
        let record = vm(1, 2);
        let vms: HashMap<MoRef, &VmRecord> = [(record.moref.clone(), &record)].into();
        let now =
            SystemTime::from(chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:10Z").unwrap());
        let response = |ts: &str| {
            Element::parse(format!(r#"<QueryPerfResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><returnval xsi:type="PerfEntityMetric">
<entity type="VirtualMachine">vm-1</entity><sampleInfo><timestamp>{ts}</timestamp><interval>20</interval></sampleInfo>
<value xsi:type="PerfMetricIntSeries"><id><counterId>131</counterId><instance>scsi0:0</instance></id><value>45</value></value>
<value xsi:type="PerfMetricIntSeries"><id><counterId>132</counterId><instance>scsi0:0</instance></id><value>-1</value></value>
</returnval></QueryPerfResponse>"#).as_bytes()).unwrap()
        };
        let (disks, unready) = latencies(&response("2026-11-22T10:00:00Z"), COUNTERS, &vms, now);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].disk, "scsi0:0");
        assert_eq!(disks[0].read.unwrap().mean, Duration::from_millis(45));
        assert_eq!(disks[0].write, None, "-1 is no data, not zero");
        assert_eq!(disks[0].window, Duration::from_secs(20));
        assert_eq!(unready.len(), 1, "scsi0:1 had no series");

        let (disks, unready) = latencies(&response("2026-11-22T09:50:00Z"), COUNTERS, &vms, now);
        assert!(disks.is_empty(), "a ten-minute-old sample is not current");
        assert_eq!(unready.len(), 2);
        assert!(unready.iter().all(|u| u.reason == NotReady::NoRecentSample));
    }

    #[test]
    fn rates_become_operation_counts_over_the_interval() {
        let record = vm(1, 1);
        let vms: HashMap<MoRef, &VmRecord> = [(record.moref.clone(), &record)].into();
        let now =
            SystemTime::from(chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:10Z").unwrap());
        let counters = LatencyCounters {
            rates: Some((140, 141)),
            ..COUNTERS
        };
        let response = Element::parse(br#"<QueryPerfResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><returnval xsi:type="PerfEntityMetric">
<entity type="VirtualMachine">vm-1</entity><sampleInfo><timestamp>2026-11-22T10:00:00Z</timestamp><interval>20</interval></sampleInfo>
<value xsi:type="PerfMetricIntSeries"><id><counterId>131</counterId><instance>scsi0:0</instance></id><value>4</value></value>
<value xsi:type="PerfMetricIntSeries"><id><counterId>132</counterId><instance>scsi0:0</instance></id><value>6</value></value>
<value xsi:type="PerfMetricIntSeries"><id><counterId>140</counterId><instance>scsi0:0</instance></id><value>0</value></value>
<value xsi:type="PerfMetricIntSeries"><id><counterId>141</counterId><instance>scsi0:0</instance></id><value>250</value></value>
</returnval></QueryPerfResponse>"#).unwrap();
        let (disks, _) = latencies(&response, counters, &vms, now);
        assert_eq!(disks[0].read.unwrap().ops, Some(0));
        assert_eq!(
            disks[0].write.unwrap().ops,
            Some(250 * 20),
            "250/s over 20 s"
        );
        assert_eq!(disks[0].write.unwrap().mean, Duration::from_millis(6));
        // Without the rate counters nothing is counted.
        let (disks, _) = latencies(&response, COUNTERS, &vms, now);
        assert_eq!(disks[0].write.unwrap().ops, None);
        // Four metrics per disk when the rates are asked for.
        assert_eq!(
            batches(&[&record], counters, 64)[0][0]
                .all("metricId")
                .count(),
            4
        );
    }
}
