//! The per-pod series, `backing_info` and `pod_storage_healthy`, encoded on each scrape from
//! the lists the last pass made.
//!
//! As families, each of the 20,000 series at 10,000 pods was a label set and a gauge in the
//! family's map, and its label set again in the pass's own map (to set only what changed and
//! remove what went): 11 MB, the largest part of the live heap once the pod cache was compact
//! (docs/scale.md). Here a series is one label set in a list, its values shared strings.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet},
    metrics::MetricType,
};
use std::sync::{Arc, Mutex};

use crate::locks::lock;

/// Joins the layers: one series per pod with the node, VM and host under it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackingLabels {
    pub provider: Arc<str>,
    pub host: Arc<str>,
    pub vm: Arc<str>,
    pub node: Arc<str>,
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub intent: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub intent: Arc<str>,
}

/// The lists, shared with the registry's encoder.
#[derive(Clone, Debug, Default)]
pub struct PodSeries(Arc<Mutex<Lists>>);

#[derive(Clone, Debug, Default)]
struct Lists {
    backing: Arc<[BackingLabels]>,
    /// 1 True, 0 False.
    healthy: Arc<[(PodLabels, i64)]>,
}

impl PodSeries {
    pub fn set_backing(&self, backing: Vec<BackingLabels>) {
        lock(&self.0).backing = backing.into();
    }

    pub fn set_healthy(&self, healthy: Vec<(PodLabels, i64)>) {
        lock(&self.0).healthy = healthy.into();
    }
}

impl Collector for PodSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // The lists as they are now; a pass replacing them does not wait for the scrape.
        let lists = lock(&self.0).clone();
        let mut family = encoder.encode_descriptor(
            "backing_info",
            "Which provider, host, VM and node back each pod covered by an intent (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for labels in lists.backing.iter() {
            family.encode_family(labels)?.encode_gauge(&1i64)?;
        }
        let mut family = encoder.encode_descriptor(
            "pod_storage_healthy",
            "The plumbline.dev/storage-healthy condition of each pod: 1 True, 0 False",
            None,
            MetricType::Gauge,
        )?;
        for (labels, value) in lists.healthy.iter() {
            family.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_series_are_the_last_lists_under_the_registry_prefix() {
        let mut registry = Registry::with_prefix("plumbline");
        let series = PodSeries::default();
        registry.register_collector(Box::new(series.clone()));
        let pod = |name: &str| PodLabels {
            namespace: "ns".into(),
            pod: name.into(),
            intent: "i".into(),
        };
        series.set_healthy(vec![(pod("a"), 1), (pod("b"), 0)]);
        series.set_healthy(vec![(pod("b"), 0)]);
        series.set_backing(vec![BackingLabels {
            provider: "kvm".into(),
            host: "h".into(),
            vm: "pl-vm1".into(),
            node: "n".into(),
            namespace: "ns".into(),
            pod: "b".into(),
            intent: "i".into(),
        }]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE plumbline_backing_info gauge"),
            "{text}"
        );
        assert!(text.contains("plumbline_backing_info{provider=\"kvm\",host=\"h\",vm=\"pl-vm1\",node=\"n\",namespace=\"ns\",pod=\"b\",intent=\"i\"} 1"), "{text}");
        assert!(
            text.contains(
                "plumbline_pod_storage_healthy{namespace=\"ns\",pod=\"b\",intent=\"i\"} 0"
            ),
            "{text}"
        );
        assert!(
            !text.contains("pod=\"a\""),
            "a pod gone from the list keeps no series:\n{text}"
        );
    }
}
