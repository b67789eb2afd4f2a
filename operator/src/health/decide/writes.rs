//! What one feedback pass writes: pod and node conditions, intent statuses, the changes wanted
//! in the ledger with their Events, and the metric series.

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use plumbline_crds::{conditions::status, names::STORAGE_READINESS_GATE, InfraChangeSpec, VmRef};
use plumbline_policies::{
    health::{NeighbourAction, ReadinessVerdict},
    placement::Relocation,
};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

use crate::{
    health::taint::TaintPlan,
    metrics::{
        health::{DiskLabels, IntentLabels, VerdictLabels, VmLabels},
        pod_series::{BackingLabels, PodLabels},
    },
};

use super::fingerprint::Fingerprint;

/// Everything one pass writes, in the order it is written.
pub struct PassDecision {
    pub pods: Vec<PodWrite>,
    pub nodes: Vec<NodeWrite>,
    pub statuses: Vec<StatusWrite>,
    /// The noisy-neighbour throttles wanted in the ledger.
    pub throttles: Vec<InfraChangeSpec>,
    /// This pass's steps, undos and releases on the ladder, each an Event.
    pub actions: Vec<NeighbourAction<VmRef>>,
    /// The taints wanted in the ledger, and the nodes newly held back (each an Event).
    pub taints: TaintPlan,
    /// The DRS anti-affinity rules wanted in the ledger.
    pub rules: Vec<InfraChangeSpec>,
    /// The noisy neighbours' relocations kept in the ledger, and this pass's (each an Event).
    pub moves: Vec<InfraChangeSpec>,
    pub relocations: Vec<Relocation<VmRef>>,
    pub series: PassSeries,
}

/// A pod condition to write.
pub struct PodWrite {
    pub namespace: String,
    pub pod: String,
    pub intent: String,
    pub verdict: ReadinessVerdict,
    /// The condition's status changes.
    pub transition: bool,
    /// From the onset of degradation to this write, for a pod newly marked unready.
    pub detection: Option<Duration>,
}

impl PodWrite {
    /// The condition's status: `"True"` or `"False"`.
    pub fn status(&self) -> &'static str {
        status_word(self.verdict.ready)
    }

    /// The pod status to apply.
    pub fn body(&self, now: SystemTime) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "conditions": [{
                    "type": STORAGE_READINESS_GATE,
                    "status": self.status(),
                    "reason": self.verdict.reason,
                    "message": self.verdict.message,
                    "lastTransitionTime": rfc3339(now),
                }]
            }
        })
    }
}

/// A node condition to write.
pub struct NodeWrite {
    pub node: String,
    pub condition: Value,
}

impl NodeWrite {
    /// The node status to apply.
    pub fn body(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "status": { "conditions": [self.condition] }
        })
    }
}

/// An intent's status (backing map, guard report, throttles and candidates) to write.
pub struct StatusWrite {
    /// `(namespace, name)`.
    pub intent: (String, String),
    pub body: Value,
    /// What the pass remembers of `body` once written.
    pub fingerprint: Fingerprint,
}

/// The metric series of one pass, with their values; series not among them go.
#[derive(Default)]
pub struct PassSeries {
    pub verdicts: Vec<(VerdictLabels, i64)>,
    pub iops: Vec<(VmLabels, f64)>,
    pub disks: Vec<(DiskLabels, f64)>,
    /// `None`: as last pass (`series::SeriesSeen`).
    pub backing: Option<Vec<BackingLabels>>,
    /// `None`: as last pass.
    pub pods: Option<Vec<(PodLabels, i64)>>,
    /// Deserving nodes the taint cap holds back.
    pub taints_held: i64,
    /// Distinct hosts running each intent's pods.
    pub hosts: Vec<(IntentLabels, i64)>,
}

pub(super) fn node_condition_of<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

pub(super) fn status_word(ready: bool) -> &'static str {
    if ready {
        status::TRUE
    } else {
        status::FALSE
    }
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
