//! Carrying out `infrastructure.protectBackingVms`: the VMs under an active intent's pods get
//! their tier's CPU shares through the provider's adapter (which records the original on the VM
//! itself), and get the original back when they stop being wanted. The decisions are
//! `plumbline_policies::health::plan_protection`; this module reads the live graph, calls the
//! adapters, and reports in Events, `status.protectedVms` and `plumbline_actions_total`.

use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
    Api,
};
use plumbline_adapters::{Capability, Setting, Support, Tunable};
use plumbline_crds::{conditions::protection as reason, ProtectedVmStatus, WorkloadIntent};
use plumbline_policies::health::{
    plan_protection, restore_leftover, ProtectAction, ProtectFailure, Protection, ProtectionClaim,
    ProtectionPlan, SharesSupport,
};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tracing::{debug, info, warn};

use super::{
    book::HealthBook,
    caches::Caches,
    graph::{self, IntentView, VmKey},
};
use crate::{
    context::Context,
    metrics::{ActionResult, Layer},
};

/// Field manager of `status.protectedVms`. Not `plumbline-health`: that manager's apply of the
/// backing map and guard would otherwise remove the list, and this one's would remove theirs.
pub const PROTECT_FIELD_MANAGER: &str = "plumbline-protect";

const METRIC_ACTION: &str = "cpu_shares";
/// How often the shares in force are read back, so a change made behind Plumbline's back (or a
/// restore by another operator's leftover recovery) is corrected.
const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How long to wait before retrying an incomplete leftover recovery of a provider.
const RECOVERY_RETRY: Duration = Duration::from_secs(30);

mod event {
    pub const PROTECTED: &str = "BackingVmProtected";
    pub const PROTECT_FAILED: &str = "BackingVmProtectFailed";
    pub const RELEASED: &str = "BackingVmReleased";
    pub const RELEASE_FAILED: &str = "BackingVmReleaseFailed";
    pub const UNSUPPORTED: &str = "CpuSharesUnsupported";
}

/// What the loop remembers between passes.
#[derive(Default)]
pub struct Protections {
    in_force: BTreeMap<VmKey, Protection>,
    failures: BTreeMap<VmKey, ProtectFailure>,
    last_error: BTreeMap<VmKey, String>,
    /// VMs whose adapter refused CPU shares at call time; treated as unsupported from then on.
    refused: BTreeMap<VmKey, String>,
    /// Intents told (by an Event) that a VM is protected for them, for the release Event.
    told: BTreeMap<VmKey, BTreeSet<String>>,
    /// (VM, intent) pairs already told that the VM cannot be protected: told once.
    told_unsupported: BTreeSet<(VmKey, String)>,
    /// Intents by `namespace/name`, kept while an Event may still concern them (after deletion).
    intents: BTreeMap<String, Arc<WorkloadIntent>>,
    /// Providers whose leftovers from an earlier run were handled, or when to try again.
    recovered: BTreeMap<String, Option<Instant>>,
    verified_at: Option<Instant>,
    /// `status.protectedVms` last written per intent.
    written: HashMap<String, Value>,
}

fn support(book: &HealthBook, refused: &BTreeMap<VmKey, String>, vm: &VmKey) -> SharesSupport {
    if let Some(why) = refused.get(vm) {
        return SharesSupport::Unsupported(why.clone());
    }
    match book.providers.get(&vm.provider) {
        Some(p) if p.connected => match p.capabilities.support(Capability::CpuShares) {
            Support::Supported => SharesSupport::Supported,
            Support::Unsupported { reason } => SharesSupport::Unsupported(reason),
            Support::Unknown { .. } => SharesSupport::Unknown,
        },
        _ => SharesSupport::Unknown,
    }
}

/// Whole seconds, as status shows them, so a rewrite compares equal to what was read back.
fn status_time(t: SystemTime) -> Option<Time> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .ok()
        .map(Time)
}

fn claims(views: &[IntentView]) -> Vec<ProtectionClaim<VmKey>> {
    views
        .iter()
        .map(|v| {
            ProtectionClaim::new(
                v.label(),
                v.intent.spec.priority,
                v.intent
                    .spec
                    .infrastructure
                    .as_ref()
                    .is_some_and(|i| i.protect_backing_vms),
                v.active,
                v.pods.iter().filter_map(|p| p.vm.clone()).collect(),
            )
        })
        .collect()
}

impl Protections {
    /// One pass: decide, carry out, recover leftovers, report.
    pub async fn pass(
        &mut self,
        ctx: &Context,
        caches: &Caches,
        book: &Arc<Mutex<HealthBook>>,
        recover_leftovers: bool,
    ) {
        let now = SystemTime::now();
        let intents = ctx.intents.state();
        // Leftovers are judged against the wanted set, which is only complete once the caches
        // have listed everything; before that a VM that should stay protected looks unwanted.
        let synced = [
            ctx.intents.wait_until_ready().now_or_never(),
            caches.pods.wait_until_ready().now_or_never(),
            caches.nodes.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))));
        let (views, plan, leftovers) = {
            let b = book.lock().expect("health book");
            let views = graph::build(caches, &b, ctx.clock.now(), &intents);
            let plan = plan_protection(
                now,
                &claims(&views),
                |vm| support(&b, &self.refused, vm),
                &self.in_force,
                &self.failures,
            );
            // From the same snapshot as the plan: a provider whose inventory arrives after the
            // graph was built would otherwise have its wanted VMs look unwanted.
            let leftovers = if synced && recover_leftovers {
                self.leftover_candidates(&b)
            } else {
                Vec::new()
            };
            (views, plan, leftovers)
        };
        for v in &views {
            self.intents.insert(v.label(), v.intent.clone());
        }

        self.report_unsupported(ctx, &plan).await;
        self.tell_new_intents(ctx, &plan).await;
        for action in &plan.actions {
            match action {
                ProtectAction::Apply { vm, shares, reason } => {
                    self.protect(ctx, &plan, vm, *shares, reason, now).await
                }
                ProtectAction::Release { vm, reason } => self.release(ctx, vm, reason).await,
            }
        }
        self.recover_leftovers(ctx, leftovers, &plan).await;
        self.verify(ctx).await;
        self.write_status(ctx, &views, &plan).await;

        // Deleted intents are kept while a release Event may still concern them.
        let current: BTreeSet<String> = views.iter().map(IntentView::label).collect();
        let told = &self.told;
        self.intents.retain(|label, _| {
            current.contains(label) || told.values().any(|intents| intents.contains(label))
        });
    }

    async fn protect(
        &mut self,
        ctx: &Context,
        plan: &ProtectionPlan<VmKey>,
        vm: &VmKey,
        shares: u64,
        why: &str,
        now: SystemTime,
    ) {
        let Some(adapter) = ctx.adapters.get(&vm.provider) else {
            debug!(vm = %vm, provider = %vm.provider, "no adapter for the provider yet");
            return;
        };
        let intents = plan
            .wanted
            .get(vm)
            .map(|w| w.intents.clone())
            .unwrap_or_default();
        // (original, whether the VM was changed)
        let result = async {
            let original = match self.in_force.get(vm) {
                Some(p) => p.original,
                None => {
                    // A VM protected by an earlier run is adopted with its recorded original,
                    // not reverted and set again.
                    let report = adapter.tunables(&vm.id).await?;
                    let current = report.current(&Tunable::CpuShares);
                    let recorded = report.original(&Tunable::CpuShares);
                    if recorded.is_some() && current == Some(shares) {
                        return Ok((recorded, false));
                    }
                    recorded.or(current)
                }
            };
            adapter
                .apply(&vm.id, &[Setting::new(Tunable::CpuShares, shares)])
                .await?;
            Ok::<_, plumbline_adapters::Error>((original, true))
        }
        .await;
        match result {
            Ok((original, changed)) => {
                self.in_force.insert(
                    vm.clone(),
                    Protection {
                        shares,
                        original,
                        since: now,
                    },
                );
                self.failures.remove(vm);
                self.last_error.remove(vm);
                if changed {
                    ctx.metrics
                        .action(Layer::hypervisor, METRIC_ACTION, ActionResult::applied);
                    info!(vm = %vm, provider = %vm.provider, shares, ?original, "backing VM protected");
                    let note = match original {
                        Some(o) => format!("{why} (was {o})"),
                        None => why.to_string(),
                    };
                    self.publish(ctx, &intents, EventType::Normal, event::PROTECTED, &note)
                        .await;
                } else {
                    info!(vm = %vm, shares, ?original, "backing VM already protected by an earlier run; adopted");
                }
                self.told.entry(vm.clone()).or_default().extend(intents);
            }
            Err(plumbline_adapters::Error::Unsupported { reason, .. }) => {
                // Reported once as unsupported by the next pass, never retried.
                info!(vm = %vm, %reason, "CPU shares unsupported for the VM");
                self.refused.insert(vm.clone(), reason);
            }
            Err(e) => {
                ctx.metrics
                    .action(Layer::hypervisor, METRIC_ACTION, ActionResult::failed);
                let attempts = self.failures.get(vm).map_or(0, |f| f.attempts) + 1;
                warn!(vm = %vm, error = %e, attempts, "protecting a backing VM failed");
                self.failures
                    .insert(vm.clone(), ProtectFailure { attempts, at: now });
                self.last_error.insert(vm.clone(), e.to_string());
                let note = format!("{why} — failed: {e}");
                self.publish(
                    ctx,
                    &intents,
                    EventType::Warning,
                    event::PROTECT_FAILED,
                    &note,
                )
                .await;
            }
        }
    }

    async fn release(&mut self, ctx: &Context, vm: &VmKey, why: &str) {
        let intents = self.told.get(vm).cloned().unwrap_or_default();
        let Some(adapter) = ctx.adapters.get(&vm.provider) else {
            warn!(vm = %vm, provider = %vm.provider, "provider gone; forgetting the VM's protection");
            self.forget(vm);
            return;
        };
        match adapter.revert(&vm.id, &[Tunable::CpuShares]).await {
            Ok(restored) => {
                ctx.metrics
                    .action(Layer::hypervisor, METRIC_ACTION, ActionResult::reverted);
                let restored = restored
                    .iter()
                    .map(|s| format!("{}={}", s.tunable, s.value))
                    .collect::<Vec<_>>();
                info!(vm = %vm, ?restored, "backing VM released");
                let note = match restored.is_empty() {
                    true => format!("{why}; no original was recorded, shares left as they are"),
                    false => format!("{why}; restored {}", restored.join(", ")),
                };
                self.publish(ctx, &intents, EventType::Normal, event::RELEASED, &note)
                    .await;
                self.forget(vm);
            }
            Err(e) => {
                ctx.metrics
                    .action(Layer::hypervisor, METRIC_ACTION, ActionResult::failed);
                let attempts = self.failures.get(vm).map_or(0, |f| f.attempts) + 1;
                warn!(vm = %vm, error = %e, attempts, "releasing a backing VM failed");
                self.failures.insert(
                    vm.clone(),
                    ProtectFailure {
                        attempts,
                        at: SystemTime::now(),
                    },
                );
                let note = format!("{why} — failed: {e}");
                self.publish(
                    ctx,
                    &intents,
                    EventType::Warning,
                    event::RELEASE_FAILED,
                    &note,
                )
                .await;
            }
        }
    }

    fn forget(&mut self, vm: &VmKey) {
        self.in_force.remove(vm);
        self.failures.remove(vm);
        self.last_error.remove(vm);
        self.told.remove(vm);
    }

    /// Unsupported VMs are told once per intent: an Event, and the reason in status.
    async fn report_unsupported(&mut self, ctx: &Context, plan: &ProtectionPlan<VmKey>) {
        for (vm, why) in &plan.unsupported {
            let Some(wanted) = plan.wanted.get(vm) else {
                continue;
            };
            let new: BTreeSet<String> = wanted
                .intents
                .iter()
                .filter(|i| !self.told_unsupported.contains(&(vm.clone(), (*i).clone())))
                .cloned()
                .collect();
            if new.is_empty() {
                continue;
            }
            info!(vm = %vm, provider = %vm.provider, reason = %why, "cannot protect the backing VM: no CPU shares");
            let note = format!(
                "VM {vm} (provider {}) cannot be given CPU shares: {why}; it is not protected",
                vm.provider
            );
            self.publish(ctx, &new, EventType::Warning, event::UNSUPPORTED, &note)
                .await;
            self.told_unsupported
                .extend(new.into_iter().map(|i| (vm.clone(), i)));
        }
    }

    /// An intent that starts sharing a VM already protected at the right value is told so.
    async fn tell_new_intents(&mut self, ctx: &Context, plan: &ProtectionPlan<VmKey>) {
        for (vm, wanted) in &plan.wanted {
            let Some(p) = self.in_force.get(vm) else {
                continue;
            };
            if p.shares != wanted.shares {
                continue; // an Apply this pass tells everyone
            }
            let told = self.told.entry(vm.clone()).or_default();
            let new: BTreeSet<String> = wanted.intents.difference(told).cloned().collect();
            if new.is_empty() {
                continue;
            }
            told.extend(new.iter().cloned());
            let note = format!(
                "VM {vm} already has {} CPU shares (for {})",
                p.shares, wanted.by
            );
            self.publish(ctx, &new, EventType::Normal, event::PROTECTED, &note)
                .await;
        }
    }

    /// Shares found changed since they were set are forgotten, so the next pass applies them
    /// again.
    async fn verify(&mut self, ctx: &Context) {
        if self
            .verified_at
            .is_some_and(|at| at.elapsed() < VERIFY_EVERY)
        {
            return;
        }
        self.verified_at = Some(Instant::now());
        let vms: Vec<(VmKey, u64)> = self
            .in_force
            .iter()
            .map(|(vm, p)| (vm.clone(), p.shares))
            .collect();
        for (vm, shares) in vms {
            let Some(adapter) = ctx.adapters.get(&vm.provider) else {
                continue;
            };
            match adapter.tunables(&vm.id).await {
                Ok(report) => {
                    let current = report.current(&Tunable::CpuShares);
                    if current != Some(shares) {
                        warn!(vm = %vm, ?current, shares, "CPU shares changed outside this operator; setting them again");
                        self.in_force.remove(&vm);
                    }
                }
                Err(e) => debug!(vm = %vm, error = %e, "reading back CPU shares failed"),
            }
        }
    }

    /// After a restart the decisions are gone but the shares are still on the VMs, with their
    /// originals recorded there by the adapter: once per provider, restore those of VMs not
    /// wanted now. Wanted ones are kept; the next apply adopts their recorded original.
    async fn recover_leftovers(
        &mut self,
        ctx: &Context,
        todo: Vec<(String, Vec<VmKey>)>,
        plan: &ProtectionPlan<VmKey>,
    ) {
        for (provider, vms) in todo {
            let Some(adapter) = ctx.adapters.get(&provider) else {
                continue;
            };
            let mut complete = true;
            for vm in vms {
                if self.in_force.contains_key(&vm) || !restore_leftover(&vm, &plan.wanted) {
                    continue;
                }
                let report = match adapter.tunables(&vm.id).await {
                    Ok(r) => r,
                    Err(e) => {
                        complete = false;
                        debug!(vm = %vm, error = %e, "reading tunables for leftover CPU shares failed");
                        continue;
                    }
                };
                if report.original(&Tunable::CpuShares).is_none() {
                    continue;
                }
                match adapter.revert(&vm.id, &[Tunable::CpuShares]).await {
                    Ok(restored) => {
                        ctx.metrics.action(
                            Layer::hypervisor,
                            METRIC_ACTION,
                            ActionResult::reverted,
                        );
                        info!(vm = %vm, ?restored, "restored CPU shares left by an earlier run");
                    }
                    Err(e) => {
                        complete = false;
                        ctx.metrics
                            .action(Layer::hypervisor, METRIC_ACTION, ActionResult::failed);
                        warn!(vm = %vm, error = %e, "restoring leftover CPU shares failed");
                    }
                }
            }
            self.recovered
                .insert(provider, (!complete).then(Instant::now));
        }
    }

    /// Providers due for leftover recovery, with the VMs each owns.
    fn leftover_candidates(&self, b: &HealthBook) -> Vec<(String, Vec<VmKey>)> {
        b.providers
            .values()
            .filter(|p| p.connected && !p.inventory.is_empty())
            .filter(|p| match self.recovered.get(&p.name) {
                None => true,
                Some(None) => false,
                Some(Some(retry)) => retry.elapsed() >= RECOVERY_RETRY,
            })
            .map(|p| {
                let vms = p
                    .inventory
                    .iter()
                    .filter(|vm| b.owner_of(&vm.id) == Some(p.name.as_str()))
                    .map(|vm| VmKey {
                        id: vm.id.clone(),
                        name: vm.name.clone(),
                        provider: p.name.clone(),
                    })
                    .collect();
                (p.name.clone(), vms)
            })
            .collect()
    }

    /// The entries of one intent's `status.protectedVms`.
    fn status_for(
        &self,
        view: &IntentView,
        plan: &ProtectionPlan<VmKey>,
    ) -> Vec<ProtectedVmStatus> {
        let label = view.label();
        let vms: BTreeSet<&VmKey> = view.pods.iter().filter_map(|p| p.vm.as_ref()).collect();
        vms.into_iter()
            .filter(|vm| {
                plan.wanted
                    .get(vm)
                    .is_some_and(|w| w.intents.contains(&label))
            })
            .filter_map(|vm| {
                let entry = |reason: &str, message: Option<String>| ProtectedVmStatus {
                    vm: vm.name.clone(),
                    provider: vm.provider.clone(),
                    reason: reason.to_string(),
                    shares: None,
                    original: None,
                    since: None,
                    message,
                };
                if let Some(p) = self.in_force.get(vm) {
                    return Some(ProtectedVmStatus {
                        shares: Some(p.shares as i64),
                        original: p.original.map(|o| o as i64),
                        since: status_time(p.since),
                        ..entry(reason::PROTECTED, None)
                    });
                }
                if let Some(why) = plan.unsupported.get(vm) {
                    return Some(entry(reason::CPU_SHARES_UNSUPPORTED, Some(why.clone())));
                }
                self.last_error
                    .get(vm)
                    .map(|e| entry(reason::PROTECT_FAILED, Some(e.clone())))
            })
            .collect()
    }

    async fn write_status(
        &mut self,
        ctx: &Context,
        views: &[IntentView],
        plan: &ProtectionPlan<VmKey>,
    ) {
        for view in views {
            let entries = serde_json::to_value(self.status_for(view, plan))
                .expect("status entries serialize");
            let label = view.label();
            let shown = match self.written.get(&label) {
                Some(v) => v.clone(),
                None => serde_json::to_value(
                    view.intent
                        .status
                        .as_ref()
                        .map(|s| s.protected_vms.clone())
                        .unwrap_or_default(),
                )
                .expect("status entries serialize"),
            };
            if shown == entries {
                continue;
            }
            let patch = json!({
                "apiVersion": "plumbline.dev/v1alpha1",
                "kind": "WorkloadIntent",
                "status": { "protectedVms": entries },
            });
            match Api::<WorkloadIntent>::namespaced(ctx.client.clone(), &view.namespace)
                .patch_status(
                    &view.name,
                    &PatchParams::apply(PROTECT_FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.written.insert(label, entries);
                }
                Err(e) => {
                    warn!(intent = %label, error = %e, "writing status.protectedVms failed")
                }
            }
        }
        let current: BTreeSet<String> = views.iter().map(IntentView::label).collect();
        self.written.retain(|label, _| current.contains(label));
    }

    async fn publish(
        &self,
        ctx: &Context,
        intents: &BTreeSet<String>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        for label in intents {
            let Some(wi) = self.intents.get(label) else {
                continue;
            };
            let event = Event {
                type_,
                reason: reason.to_string(),
                note: Some(note.chars().take(1000).collect()),
                action: "ProtectBackingVm".into(),
                secondary: None,
            };
            ctx.publish(wi.as_ref(), event).await;
        }
    }
}
