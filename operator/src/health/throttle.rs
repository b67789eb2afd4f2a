//! Carrying out noisy-neighbour decisions: set or remove a VM's per-disk IOPS limit through
//! its provider's adapter (which records the original on the VM itself), and record every step
//! as an Event on the intents concerned and in their status.

use kube::runtime::events::{Event, EventType};
use plumbline_adapters::{DiskLimit, Setting, Tunable, VmId};
use plumbline_policies::health::{apply_neighbour_actions, NeighbourAction, Throttle};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::{info, warn};

use super::{
    book::HealthBook,
    graph::{IntentView, VmKey},
};
use crate::{
    context::Context,
    metrics::{ActionResult, Layer},
};

const METRIC_ACTION: &str = "disk_iops_limit";

/// A throttle in force and whom it is for.
#[derive(Debug, Clone)]
struct Record {
    intents: BTreeSet<(String, String)>,
    disks: Vec<String>,
    reason: String,
}

#[derive(Default)]
pub struct Throttles {
    pub state: BTreeMap<VmKey, Throttle<VmKey>>,
    records: BTreeMap<VmKey, Record>,
    /// Providers whose VMs were checked for limits left over from an earlier operator run.
    recovered: HashSet<String>,
}

fn iops_tunable(disk: &str) -> Tunable {
    Tunable::DiskLimit {
        disk: disk.to_string(),
        limit: DiskLimit::TotalIops,
    }
}

/// The metric result, Event type and Event reason of an adapter call that succeeded or not.
fn outcome(
    ok: bool,
    done: ActionResult,
    ok_reason: &'static str,
    failed_reason: &'static str,
) -> (ActionResult, EventType, &'static str) {
    if ok {
        (done, EventType::Normal, ok_reason)
    } else {
        (ActionResult::failed, EventType::Warning, failed_reason)
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Throttles {
    pub async fn carry_out(
        &mut self,
        ctx: &Context,
        book: &Arc<Mutex<HealthBook>>,
        views: &[IntentView],
        actions: Vec<NeighbourAction<VmKey>>,
        now: SystemTime,
    ) {
        let disks: BTreeMap<VmId, Vec<String>> = {
            let b = book.lock().expect("health book");
            actions
                .iter()
                .filter_map(|a| {
                    let vm = a.vm();
                    b.vm(&vm.id).map(|p| {
                        (
                            vm.id.clone(),
                            p.vm.disks.iter().map(|d| d.name.clone()).collect(),
                        )
                    })
                })
                .collect()
        };
        for action in actions {
            let vm = action.vm().clone();
            let Some(adapter) = ctx.adapters.get(&vm.provider) else {
                warn!(vm = %vm, provider = %vm.provider, "no adapter for the provider; throttle decision skipped");
                continue;
            };
            match &action {
                NeighbourAction::Step {
                    victim,
                    limit_iops,
                    level,
                    ..
                } => {
                    let vm_disks = disks.get(&vm.id).cloned().unwrap_or_default();
                    if vm_disks.is_empty() {
                        warn!(vm = %vm, "VM has no disks to limit");
                        continue;
                    }
                    let settings: Vec<Setting> = vm_disks
                        .iter()
                        .map(|d| Setting::new(iops_tunable(d), *limit_iops))
                        .collect();
                    let result = adapter.apply(&vm.id, &settings).await;
                    let ok = result.is_ok();
                    let (label, type_, reason) = outcome(
                        ok,
                        ActionResult::applied,
                        "NoisyNeighbourThrottled",
                        "NoisyNeighbourThrottleFailed",
                    );
                    ctx.metrics.action(Layer::hypervisor, METRIC_ACTION, label);
                    let intents: BTreeSet<(String, String)> = views
                        .iter()
                        .filter(|v| v.pods.iter().any(|p| p.vm.as_ref() == Some(victim)))
                        .map(|v| (v.namespace.clone(), v.name.clone()))
                        .collect();
                    let note = match &result {
                        Ok(()) => action.reason().to_string(),
                        Err(e) => format!("{} — failed: {e}", action.reason()),
                    };
                    info!(vm = %vm, level, limit_iops, ok, "noisy-neighbour throttle step");
                    self.publish(ctx, views, &intents, type_, reason, &note)
                        .await;
                    if ok {
                        apply_neighbour_actions(
                            &mut self.state,
                            std::slice::from_ref(&action),
                            now,
                        );
                        let record = self.records.entry(vm.clone()).or_insert_with(|| Record {
                            intents: BTreeSet::new(),
                            disks: vm_disks.clone(),
                            reason: String::new(),
                        });
                        record.intents.extend(intents);
                        record.reason = action.reason().to_string();
                    }
                }
                NeighbourAction::Release { .. } => {
                    let vm_disks = self
                        .records
                        .get(&vm)
                        .map(|r| r.disks.clone())
                        .or_else(|| disks.get(&vm.id).cloned())
                        .unwrap_or_default();
                    let tunables: Vec<Tunable> = vm_disks.iter().map(|d| iops_tunable(d)).collect();
                    let result = adapter.revert(&vm.id, &tunables).await;
                    let ok = result.is_ok();
                    let (label, type_, reason) = outcome(
                        ok,
                        ActionResult::reverted,
                        "NoisyNeighbourReleased",
                        "NoisyNeighbourReleaseFailed",
                    );
                    ctx.metrics.action(Layer::hypervisor, METRIC_ACTION, label);
                    let intents = self
                        .records
                        .get(&vm)
                        .map(|r| r.intents.clone())
                        .unwrap_or_default();
                    let note = match &result {
                        Ok(restored) => format!(
                            "{}; restored {}",
                            action.reason(),
                            restored
                                .iter()
                                .map(|s| format!("{}={}", s.tunable, s.value))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Err(e) => format!("{} — failed: {e}", action.reason()),
                    };
                    info!(vm = %vm, ok, "noisy-neighbour throttle released");
                    self.publish(ctx, views, &intents, type_, reason, &note)
                        .await;
                    if ok {
                        apply_neighbour_actions(
                            &mut self.state,
                            std::slice::from_ref(&action),
                            now,
                        );
                        self.records.remove(&vm);
                    }
                }
            }
        }
    }

    /// Releases every throttle in force, restoring the recorded originals. Called when the loop
    /// stops (shutdown or lost leadership): an operator that no longer watches the victims has
    /// no grounds to keep their neighbours slowed down, and the next leader throttles again if a
    /// victim is still degraded. No Events: the intents are no longer watched.
    pub async fn release_all(&mut self, ctx: &Context, book: &Arc<Mutex<HealthBook>>) {
        let actions: Vec<_> = self
            .state
            .keys()
            .map(|vm| NeighbourAction::Release {
                vm: vm.clone(),
                reason: "the operator is stopping".into(),
            })
            .collect();
        if !actions.is_empty() {
            info!(
                count = actions.len(),
                "releasing noisy-neighbour throttles before stopping"
            );
            self.carry_out(ctx, book, &[], actions, SystemTime::now())
                .await;
        }
    }

    async fn publish(
        &self,
        ctx: &Context,
        views: &[IntentView],
        intents: &BTreeSet<(String, String)>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        for v in views
            .iter()
            .filter(|v| intents.contains(&(v.namespace.clone(), v.name.clone())))
        {
            let event = Event {
                type_,
                reason: reason.to_string(),
                note: Some(note.chars().take(1000).collect()),
                action: "ThrottleNoisyNeighbour".into(),
                secondary: None,
            };
            ctx.publish(v.intent.as_ref(), event).await;
        }
    }

    /// The throttles made for an intent, as its status lists them.
    pub fn status_for(&self, namespace: &str, name: &str) -> Vec<Value> {
        let key = (namespace.to_string(), name.to_string());
        self.records
            .iter()
            .filter(|(_, r)| r.intents.contains(&key))
            .filter_map(|(vm, r)| {
                let t = self.state.get(vm)?;
                Some(json!({
                    "vm": vm.name,
                    "provider": vm.provider,
                    "disks": r.disks,
                    "step": t.level,
                    "limitIops": t.limit_iops,
                    "baselineIops": t.baseline_iops.round() as u64,
                    "since": rfc3339(t.stepped_at),
                    "reason": r.reason,
                }))
            })
            .collect()
    }

    /// After a restart the decisions are gone but the limits are still on the VMs, with their
    /// originals recorded there by the adapter: restore them once per provider.
    pub async fn recover_leftovers(&mut self, ctx: &Context, book: &Arc<Mutex<HealthBook>>) {
        let todo: Vec<(String, Vec<(VmId, String)>)> = {
            let b = book.lock().expect("health book");
            b.providers
                .values()
                .filter(|p| {
                    p.connected && !p.inventory.is_empty() && !self.recovered.contains(&p.name)
                })
                .map(|p| {
                    (
                        p.name.clone(),
                        p.inventory
                            .iter()
                            .map(|vm| (vm.id.clone(), vm.name.clone()))
                            .collect(),
                    )
                })
                .collect()
        };
        for (provider, vms) in todo {
            let Some(adapter) = ctx.adapters.get(&provider) else {
                continue;
            };
            let mut complete = true;
            for (id, name) in vms {
                if self.state.keys().any(|k| k.id == id) {
                    continue;
                }
                let report = match adapter.tunables(&id).await {
                    Ok(r) => r,
                    Err(e) => {
                        complete = false;
                        warn!(vm = %name, error = %e, "reading tunables for leftover throttles failed");
                        continue;
                    }
                };
                let leftovers: Vec<Tunable> = report
                    .originals
                    .iter()
                    .map(|s| s.tunable.clone())
                    .filter(|t| {
                        matches!(
                            t,
                            Tunable::DiskLimit {
                                limit: DiskLimit::TotalIops,
                                ..
                            }
                        )
                    })
                    .collect();
                if leftovers.is_empty() {
                    continue;
                }
                match adapter.revert(&id, &leftovers).await {
                    Ok(restored) => {
                        ctx.metrics.action(
                            Layer::hypervisor,
                            METRIC_ACTION,
                            ActionResult::reverted,
                        );
                        info!(vm = %name, ?restored, "restored I/O limits left by an earlier run");
                    }
                    Err(e) => {
                        complete = false;
                        ctx.metrics
                            .action(Layer::hypervisor, METRIC_ACTION, ActionResult::failed);
                        warn!(vm = %name, error = %e, "restoring leftover I/O limits failed");
                    }
                }
            }
            if complete {
                self.recovered.insert(provider);
            }
        }
    }
}
