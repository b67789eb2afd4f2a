//! Activation metrics: each signal's value and data state, whether each intent is active, and
//! activation transitions by cause. Names and labels are what the Grafana dashboards query
//! (`charts/generate-dashboards`): change both together.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use super::health::IntentLabels;
use plumbline_policies::activation::{DataState, SignalMemory, SignalRule};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub namespace: String,
    pub intent: String,
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalStateLabels {
    pub namespace: String,
    pub intent: String,
    pub signal: String,
    /// value, empty, error or stale; the series of the current state is 1, the others 0.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThresholdLabels {
    pub namespace: String,
    pub intent: String,
    pub signal: String,
    /// `activateAbove` or `deactivateBelow`.
    pub edge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub namespace: String,
    pub intent: String,
    /// `active` or `inactive`.
    pub to: String,
    /// What activated it: `window`, a signal's name, `allOf`; empty when deactivating.
    pub cause: String,
}

#[derive(Clone)]
pub struct SignalMetrics {
    pub value: Family<SignalLabels, Gauge<f64, AtomicU64>>,
    pub threshold: Family<ThresholdLabels, Gauge<f64, AtomicU64>>,
    pub state: Family<SignalStateLabels, Gauge>,
    pub active: Family<IntentLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
}

impl SignalMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            value: Family::default(),
            threshold: Family::default(),
            state: Family::default(),
            active: Family::default(),
            transitions: Family::default(),
        };
        registry.register(
            "signal_value",
            "The last value of an activation signal (spec.activation.signals), by intent and signal",
            m.value.clone(),
        );
        registry.register(
            "signal_threshold",
            "The band of an activation signal: its activateAbove and deactivateBelow (label edge)",
            m.threshold.clone(),
        );
        registry.register(
            "signal_state",
            "1 for an activation signal's current data state (value, empty, error, stale), else 0",
            m.state.clone(),
        );
        registry.register(
            "intent_active",
            "1 while an intent with signals is active (window or signal), else 0",
            m.active.clone(),
        );
        registry.register(
            "activation_transitions",
            "Intents with signals becoming active or inactive, by cause (window, the signal's name, allOf)",
            m.transitions.clone(),
        );
        m
    }

    /// The gauges of one intent's signals after an evaluation.
    pub fn observe(
        &self,
        namespace: &str,
        intent: &str,
        rules: &[SignalRule],
        memories: &[SignalMemory],
        active: bool,
    ) {
        for r in rules {
            for (edge, v) in [
                ("activateAbove", r.activate_above),
                ("deactivateBelow", r.deactivate_below),
            ] {
                self.threshold
                    .get_or_create(&ThresholdLabels {
                        namespace: namespace.to_string(),
                        intent: intent.to_string(),
                        signal: r.name.clone(),
                        edge: edge.to_string(),
                    })
                    .set(v);
            }
        }
        for m in memories {
            let labels = SignalLabels {
                namespace: namespace.to_string(),
                intent: intent.to_string(),
                signal: m.name.clone(),
            };
            if let Some(v) = m.value {
                self.value.get_or_create(&labels).set(v);
            }
            for s in DataState::ALL {
                self.state
                    .get_or_create(&SignalStateLabels {
                        namespace: namespace.to_string(),
                        intent: intent.to_string(),
                        signal: m.name.clone(),
                        state: s.as_str().to_lowercase(),
                    })
                    .set(i64::from(s == m.state));
            }
        }
        self.active
            .get_or_create(&IntentLabels {
                namespace: namespace.to_string(),
                intent: intent.to_string(),
            })
            .set(i64::from(active));
    }

    /// Drops the series of an intent that is gone (`signals`: its signals' names).
    pub fn forget(&self, namespace: &str, intent: &str, signals: &[String]) {
        for signal in signals {
            let labels = SignalLabels {
                namespace: namespace.to_string(),
                intent: intent.to_string(),
                signal: signal.clone(),
            };
            self.value.remove(&labels);
            for edge in ["activateAbove", "deactivateBelow"] {
                self.threshold.remove(&ThresholdLabels {
                    namespace: namespace.to_string(),
                    intent: intent.to_string(),
                    signal: signal.clone(),
                    edge: edge.to_string(),
                });
            }
            for s in DataState::ALL {
                self.state.remove(&SignalStateLabels {
                    namespace: namespace.to_string(),
                    intent: intent.to_string(),
                    signal: signal.clone(),
                    state: s.as_str().to_lowercase(),
                });
            }
        }
        self.active.remove(&IntentLabels {
            namespace: namespace.to_string(),
            intent: intent.to_string(),
        });
    }

    pub fn transition(&self, namespace: &str, intent: &str, active: bool, cause: &str) {
        self.transitions
            .get_or_create(&TransitionLabels {
                namespace: namespace.to_string(),
                intent: intent.to_string(),
                to: if active { "active" } else { "inactive" }.to_string(),
                cause: cause.to_string(),
            })
            .inc();
    }
}
