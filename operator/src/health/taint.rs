//! The optional `NoSchedule` taint on nodes whose storage is confirmed over budget
//! (`--taint-degraded-nodes`), as ledger entries: a node that should carry the taint gets an
//! `InfraChange`, and the taint goes when the entry does — on recovery, when the node's health
//! turns unknown, when this operator's pods leave the node, or when the flag is switched off.
//! The node actuator carries it out (see `crate::ledger::target`).

use plumbline_crds::{names::NODE_STORAGE_TAINT, ChangeOwner, InfraChangeSpec};
use plumbline_policies::{
    health::TAINT_EFFECT,
    ledger::{taint_setting, taint_spec},
};

/// A node that should carry the storage taint now.
pub struct TaintWant {
    pub node: String,
    /// The intents whose pods run on the node (`namespace/name`).
    pub intents: Vec<String>,
    /// Why, stable while the node stays degraded (no latency figures).
    pub because: String,
}

/// The taint changes wanted.
pub fn wanted(wants: &[TaintWant], operator: &str) -> Vec<InfraChangeSpec> {
    let setting = taint_setting(NODE_STORAGE_TAINT, TAINT_EFFECT);
    wants
        .iter()
        .map(|w| {
            let owners = w
                .intents
                .iter()
                .map(|intent| ChangeOwner {
                    intent: intent.clone(),
                    reason: w.because.clone(),
                })
                .collect();
            taint_spec(&w.node, &setting, owners, operator)
        })
        .collect()
}
