//! From an intent, what was observed and the time, to a [`Plan`].
//!
//! Every target Plumbline may touch is decided the same way ([`decide`]): find the *baseline*
//! (the value before Plumbline: the recorded previous value if the field still shows what
//! Plumbline set, otherwise what is there now, since someone else changed it), then hold the
//! desired value if it differs from the baseline, or restore the baseline if Plumbline changed
//! it and no longer needs to.

use chrono::{DateTime, Utc};
use plumbline_crds::{names::STORAGE_READINESS_GATE, Layer, WorkloadIntent};

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use crate::{
    health::{
        plan_neighbour_throttles, plan_protection, HealthState, NeighbourAction,
        NeighbourCandidate, NeighbourHistory, ProtectAction, ProtectionClaim, SharesSupport,
        Throttle, ThrottleLadder, Tier, Victim,
    },
    invalid::Invalid,
    ledger::throttle_from_spec,
    observed::{Observed, ObservedInfra, ObservedWorkload},
    plan::{Action, Change, Note, Plan, ValueChange, VmRef, WorkloadRef},
    revert::{revert, sort_reverts},
    tiers::tier,
    validate::{validate_intent, ValidIntent},
};

/// The plan for `intent` at `now`, given what was observed (including what Plumbline applied
/// before). Pure: the same inputs always give the same plan.
///
/// Errors when the spec is invalid beyond its schema, or when the target does not exist; then
/// nothing at all should be applied.
pub fn plan(
    intent: &WorkloadIntent,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Result<Plan, Invalid> {
    let spec = &intent.spec;
    let unreadable = plumbline_crds::lenient::decode_errors(&intent.metadata);
    if !unreadable.is_empty() {
        // The object could not be read as written (e.g. a number beyond int32 stored before
        // the schema bounded it): nothing of it is planned.
        return Err(crate::Invalid::Spec(
            unreadable
                .into_iter()
                .map(|e| crate::invalid::FieldError::new(e.path, e.message))
                .collect(),
        ));
    }
    let valid = validate_intent(spec)?;
    let target = WorkloadRef {
        kind: spec.target.kind,
        namespace: intent
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        name: spec.target.name.clone(),
    };
    let workload = observed
        .workload
        .as_ref()
        .filter(|w| w.workload == target)
        .ok_or_else(|| Invalid::TargetNotFound(target.clone()))?;
    let activity = crate::activation::evaluate_intent(
        valid.schedule.as_ref(),
        valid.activation.as_ref(),
        intent,
        now,
    )
    .activity;

    let mut plan = Plan {
        workload: target,
        priority: spec.priority,
        activity,
        actions: Vec::new(),
        reverts: Vec::new(),
        notes: Vec::new(),
    };
    if !plan.activity.active {
        let undo = revert(&observed.applied, observed, "the intent is not active");
        plan.reverts = undo.actions;
        plan.notes = undo.notes;
        // The ledger releases what it holds for the intent; until then it is still in force.
        plan.actions = ledger_actions(intent, &observed.infra);
        return Ok(plan);
    }

    let mut planner = Planner {
        observed,
        plan,
        visited: Vec::new(),
    };
    planner.kubernetes(intent, &valid, workload);
    planner.hypervisor(intent, now);
    planner.revert_the_rest();
    Ok(planner.plan)
}

/// What to do with one target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision<T> {
    /// Set `desired`; `previous` is the baseline a revert restores.
    Hold(ValueChange<T>),
    /// Plumbline set it earlier and no longer needs to: put the baseline back.
    Restore(ValueChange<T>),
    /// Already as wanted, and Plumbline owes nothing.
    Nothing,
}

/// The single rule behind every target; see the module documentation.
pub(crate) fn decide<T: PartialEq + Clone>(
    desired: Option<T>,
    observed: Option<T>,
    applied: Option<ValueChange<T>>,
) -> Decision<T> {
    let ours_still_there = applied.as_ref().is_some_and(|a| a.desired == observed);
    let baseline = match applied {
        Some(a) if ours_still_there => a.previous,
        _ => observed.clone(),
    };
    if desired != baseline {
        Decision::Hold(ValueChange::new(desired, baseline))
    } else if observed != baseline {
        Decision::Restore(ValueChange::new(baseline, observed))
    } else {
        Decision::Nothing
    }
}

struct Planner<'a> {
    observed: &'a Observed,
    plan: Plan,
    /// Targets already decided, whatever the decision.
    visited: Vec<(plumbline_crds::ActionKind, String)>,
}

impl Planner<'_> {
    fn applied(&self, probe: &Change) -> Option<&Change> {
        self.observed
            .applied
            .iter()
            .map(|a| &a.change)
            .find(|c| c.same_target(probe))
    }

    /// Records a decision as a held action, a restore, or a note.
    fn record<T: PartialEq + Clone>(
        &mut self,
        decision: Decision<T>,
        change: impl Fn(ValueChange<T>) -> Change,
        reason: String,
        already: String,
    ) {
        self.visited
            .push(change(ValueChange::new(None, None)).target_key());
        match decision {
            Decision::Hold(s) => self.plan.actions.push(Action {
                change: change(s),
                reason,
            }),
            Decision::Restore(s) => self.plan.reverts.push(Action {
                change: change(s),
                reason:
                    "no longer asked for by the intent: restoring the value from before Plumbline"
                        .to_string(),
            }),
            Decision::Nothing if already.is_empty() => {}
            Decision::Nothing => {
                let layer = change(ValueChange::new(None, None)).layer();
                self.plan.notes.push(Note {
                    layer,
                    text: already,
                });
            }
        }
    }

    fn kubernetes(
        &mut self,
        intent: &WorkloadIntent,
        valid: &ValidIntent,
        workload: &ObservedWorkload,
    ) {
        let tier = tier(intent.spec.priority);
        let w = &workload.workload;
        let class_name = tier.priority_class_name();

        self.plan.actions.push(Action {
            change: Change::PriorityClass {
                name: class_name.clone(),
                class: tier.priority_class(),
            },
            reason: format!(
                "tier {} is PriorityClass {} (value {})",
                tier.priority, class_name, tier.priority_value
            ),
        });

        let probe = Change::PriorityClassName {
            workload: w.clone(),
            value: ValueChange::new(None, None),
        };
        let applied = match self.applied(&probe) {
            Some(Change::PriorityClassName { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let decision = decide(
            Some(class_name.clone()),
            workload.priority_class_name.clone(),
            applied,
        );
        self.record(
            decision,
            |value| Change::PriorityClassName {
                workload: w.clone(),
                value,
            },
            format!(
                "pods of a {} workload are scheduled with {class_name}",
                tier.priority
            ),
            format!("{w} already uses PriorityClass {class_name}"),
        );

        self.disruption_budget(valid, workload);

        let probe = Change::Replicas {
            workload: w.clone(),
            value: ValueChange::new(None, None),
        };
        let applied = match self.applied(&probe) {
            Some(Change::Replicas { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let baseline = match &applied {
            Some(a) if a.desired == workload.replicas => a.previous,
            _ => workload.replicas,
        };
        let (desired, why, already) = match valid.replica_floor {
            // Unset replicas means 1 to Kubernetes.
            Some(floor) if baseline.unwrap_or(1) < floor => (
                Some(floor),
                format!(
                    "replica floor {floor} while active (was {})",
                    show(baseline.map(|r| r.to_string()), "unset = 1")
                ),
                String::new(),
            ),
            Some(floor) => (
                baseline,
                String::new(),
                format!(
                    "{w} runs {} replicas, at or above the floor of {floor}",
                    baseline.unwrap_or(1)
                ),
            ),
            None => (
                baseline,
                String::new(),
                format!("no replica floor asked for {w}"),
            ),
        };
        let decision = decide(desired, workload.replicas, applied);
        self.record(
            decision,
            |value| Change::Replicas {
                workload: w.clone(),
                value,
            },
            why,
            already,
        );

        let probe = Change::ReadinessGate {
            workload: w.clone(),
            value: ValueChange::new(None, None),
        };
        let applied = match self.applied(&probe) {
            Some(Change::ReadinessGate { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let present = workload
            .readiness_gates
            .iter()
            .any(|g| g == STORAGE_READINESS_GATE)
            .then(|| STORAGE_READINESS_GATE.to_string());
        let wanted = valid.storage.is_some_and(|s| s.readiness_gate);
        let baseline = match &applied {
            Some(a) if a.desired == present => a.previous.clone(),
            _ => present.clone(),
        };
        let desired = if wanted {
            Some(STORAGE_READINESS_GATE.to_string())
        } else {
            baseline
        };
        let decision = decide(desired, present, applied);
        let budget = intent
            .spec
            .storage
            .as_ref()
            .map(|s| s.latency_budget.clone())
            .unwrap_or_default();
        self.record(
            decision,
            |value| Change::ReadinessGate { workload: w.clone(), value },
            format!("storage.readinessGate: pods on VMs over the {budget} latency budget leave Service endpoints"),
            if wanted {
                format!("{w} already has the readiness gate {STORAGE_READINESS_GATE}")
            } else {
                "storage.readinessGate is off: no readiness gate".to_string()
            },
        );

        let probe = Change::HostSpread {
            workload: w.clone(),
            value: ValueChange::new(None, None),
        };
        let applied = match self.applied(&probe) {
            Some(Change::HostSpread { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let present = workload.host_spread.clone();
        let wanted = valid.spread.map(|s| s.when_unsatisfiable().to_string());
        let baseline = match &applied {
            Some(a) if a.desired == present => a.previous.clone(),
            _ => present.clone(),
        };
        let decision = decide(wanted.clone().or(baseline), present, applied);
        self.record(
            decision,
            |value| Change::HostSpread {
                workload: w.clone(),
                value,
            },
            format!(
                "placement.spreadAcrossHosts: at most one more pod on any hypervisor host than on another ({})",
                wanted.as_deref().unwrap_or_default()
            ),
            match &wanted {
                Some(how) => format!("{w} already spreads its pods across hypervisor hosts ({how})"),
                None => "placement.spreadAcrossHosts is off".to_string(),
            },
        );
    }

    fn disruption_budget(&mut self, valid: &ValidIntent, workload: &ObservedWorkload) {
        let w = &workload.workload;
        let name = disruption_budget_name(w);
        let foreign: Vec<&str> = workload
            .disruption_budgets
            .iter()
            .filter(|b| !b.managed_by_plumbline)
            .map(|b| b.name.as_str())
            .collect();
        let ours = workload
            .disruption_budgets
            .iter()
            .find(|b| b.managed_by_plumbline && b.name == name);
        let probe = Change::PodDisruptionBudget {
            namespace: w.namespace.clone(),
            name: name.clone(),
            selector: workload.selector.clone(),
            value: ValueChange::new(None, None),
        };
        let applied = match self.applied(&probe) {
            Some(Change::PodDisruptionBudget { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let current = ours.and_then(|b| b.min_available);
        let (desired, already): (_, Option<String>) = match valid.min_available {
            Some(m) if !foreign.is_empty() => {
                // Two budgets over the same pods make every eviction fail.
                self.plan.notes.push(Note {
                    layer: Layer::Kubernetes,
                    text: format!(
                        "not adding a PodDisruptionBudget (minAvailable {m}): {} already covers the pods of {w}",
                        foreign.join(", ")
                    ),
                });
                (None, Some(String::new()))
            }
            Some(m) => (
                Some(m),
                Some(format!(
                    "PodDisruptionBudget {name} already has minAvailable {m}"
                )),
            ),
            None => (
                None,
                Some("no availability.minAvailable: no PodDisruptionBudget".to_string()),
            ),
        };
        let decision = decide(desired, current, applied);
        let selector = workload.selector.clone();
        let namespace = w.namespace.clone();
        self.record(
            decision,
            |value| Change::PodDisruptionBudget {
                namespace: namespace.clone(),
                name: name.clone(),
                selector: selector.clone(),
                value,
            },
            format!(
                "availability.minAvailable {}: voluntary disruptions keep that many pods of {w} running",
                show(desired.map(|d| d.to_string()), "")
            ),
            already.unwrap_or_default(),
        );
    }

    /// The hypervisor half: the changes the ledger holds for this intent, as actions with the
    /// original each restores, and notes on what the storage-health loop would do next — with
    /// the same decision functions it runs (`plan_protection`, `plan_neighbour_throttles`).
    /// The DRS rule kept for `spreadAcrossHosts` and the noisy neighbours' relocations, as the
    /// storage-health loop reports them (it decides both; the plan only tells).
    fn placement_notes(&mut self, intent: &WorkloadIntent) {
        let placement = self.observed.infra.placement.clone().unwrap_or_default();
        let spread = intent
            .spec
            .placement
            .as_ref()
            .and_then(|p| p.spread_across_hosts);
        for rule in &placement.drs_rules {
            self.note(format!(
                "placement.spreadAcrossHosts: DRS VM-VM anti-affinity rule {} in cluster {} ({}) keeps {} on different hosts ({}, InfraChange of purpose HostAntiAffinity)",
                rule.rule,
                rule.cluster,
                rule.mode,
                rule.vms.join(", "),
                rule.state.as_deref().unwrap_or("Pending")
            ));
        }
        if spread.is_some() && placement.drs_rules.is_empty() {
            self.note(
                "placement.spreadAcrossHosts: on vSphere, a DRS VM-VM anti-affinity rule over the VMs under the pods (one per compute cluster holding two or more of them), kept by the storage-health loop as they move (status.placement.drsRules); libvirt has no DRS, so nothing changes there".to_string(),
            );
        }
        if !intent
            .spec
            .infrastructure
            .as_ref()
            .is_some_and(|i| i.relocate_noisy_neighbours)
        {
            return;
        }
        for t in &placement.relocation_targets {
            self.note(match &t.to {
                Some(to) => format!(
                    "infrastructure.relocateNoisyNeighbours: a noisy neighbour on host {} that throttling cannot tame would be moved to {to}: {}",
                    t.host, t.reason
                ),
                None => format!(
                    "infrastructure.relocateNoisyNeighbours: a noisy neighbour on host {} could not be moved now: {}",
                    t.host, t.reason
                ),
            });
        }
        if placement.relocation_targets.is_empty() {
            self.note("infrastructure.relocateNoisyNeighbours: where a noisy neighbour would go is decided by the storage-health loop once it maps the pods to hosts (status.placement.relocationTargets)".to_string());
        }
        for r in &placement.relocations {
            self.note(format!(
                "infrastructure.relocateNoisyNeighbours: VM {} ({}) was moved from {} to {} at {} ({}); a move is never undone",
                r.vm,
                r.provider,
                r.from,
                r.to,
                r.decided.0,
                r.state.as_deref().unwrap_or("Pending")
            ));
        }
    }

    fn hypervisor(&mut self, intent: &WorkloadIntent, now: DateTime<Utc>) {
        self.placement_notes(intent);
        let infra = &self.observed.infra;
        self.plan.actions.extend(ledger_actions(intent, infra));
        let tier = tier(intent.spec.priority);
        let infra_spec = intent.spec.infrastructure.clone().unwrap_or_default();
        let label = intent_label(intent);
        let now: SystemTime = now.into();
        let vms: BTreeSet<VmRef> = infra.backing.iter().map(|b| b.vm.clone()).collect();
        let held = |setting: &str, vm: &VmRef| {
            infra.changes.iter().any(|ic| {
                ic.spec.setting == setting
                    && ic.spec.target.name == vm.name
                    && ic.spec.target.provider.as_deref() == Some(vm.provider.as_str())
            })
        };

        if infra_spec.protect_backing_vms {
            let claim = ProtectionClaim::new(
                label.clone(),
                intent.spec.priority,
                true,
                self.plan.activity.active,
                vms.clone(),
            );
            if let Err(why) = claim.shares {
                self.note(format!("infrastructure.protectBackingVms: not now, {why}"));
            }
            let protection = plan_protection(
                now,
                std::slice::from_ref(&claim),
                |_| SharesSupport::Supported,
                &BTreeMap::new(),
                &BTreeMap::new(),
            );
            for action in &protection.actions {
                if let ProtectAction::Apply { vm, reason, .. } = action {
                    if !held("cpu_shares", vm) {
                        self.note(format!(
                            "next, by the storage-health loop (an InfraChange records the original first, where the hypervisor supports CPU shares): {reason}"
                        ));
                    }
                }
            }
            if let (true, Ok(shares)) = (vms.is_empty(), claim.shares) {
                self.note(format!(
                    "infrastructure.protectBackingVms: every VM backing the pods gets {shares} CPU shares while active, set by the storage-health loop once it maps the pods to VMs (see status.backing and status.protectedVms)"
                ));
            }
        }

        if !infra_spec.throttle_noisy_neighbours {
            return;
        }
        if !tier.may_throttle_neighbours {
            self.note(format!(
                "infrastructure.throttleNoisyNeighbours: tier {} may not throttle neighbours",
                tier.priority
            ));
            return;
        }
        let victims: Vec<Victim<VmRef>> = infra
            .backing
            .iter()
            .map(|b| Victim {
                vm: b.vm.clone(),
                tier: Tier::from(intent.spec.priority),
                intent: label.clone(),
                state: HealthState::Degraded,
                healthy_for: Duration::ZERO,
                unknown_for: Duration::ZERO,
                degraded_for: Duration::ZERO,
                may_relocate: false,
                latency: None,
                sample_interval: Duration::ZERO,
                active: true,
                host: b.host.clone(),
                datastores: b.datastores.iter().cloned().collect(),
            })
            .collect();
        let candidates: Vec<NeighbourCandidate<VmRef>> = infra
            .neighbours
            .iter()
            .map(|n| NeighbourCandidate {
                vm: VmRef {
                    provider: n.provider.clone(),
                    name: n.vm.clone(),
                },
                host: n.host.clone(),
                datastores: n.datastores.iter().cloned().collect(),
                iops: n.iops as f64,
                protected_by: None,
                can_limit_io: true,
            })
            .collect();
        let throttles: BTreeMap<VmRef, Throttle<VmRef>> = infra
            .changes
            .iter()
            .filter_map(|ic| throttle_from_spec(&ic.spec))
            .map(|t| {
                let key = |v: &plumbline_crds::VmRef| VmRef {
                    provider: v.provider.clone(),
                    name: v.name.clone(),
                };
                let vm = key(&t.vm);
                (
                    vm.clone(),
                    Throttle {
                        vm,
                        level: t.level,
                        baseline_iops: t.baseline_iops,
                        limit_iops: t.limit_iops,
                        // As if the last step were long enough ago: the preview shows the next.
                        stepped_at: now - Duration::from_secs(3600),
                        victims: t.victims.iter().map(key).collect(),
                        // Not judged in a preview.
                        victim_latency: None,
                    },
                )
            })
            .collect();
        let steps = plan_neighbour_throttles(
            now,
            &victims,
            &candidates,
            &throttles,
            &NeighbourHistory::default(),
            &ThrottleLadder::default(),
        );
        let mut previewed = false;
        for action in &steps {
            if let NeighbourAction::Step { victim, reason, .. } = action {
                previewed = true;
                self.note(format!(
                    "if VM {victim} went over its storage latency budget now: {reason}"
                ));
            }
        }
        if !previewed && !victims.is_empty() {
            self.note(format!(
                "if a backing VM went over its storage latency budget now, no neighbour could be throttled: {}",
                if candidates.is_empty() {
                    "none busy enough shares a host or datastore with them (status.neighbourCandidates)"
                } else {
                    "the busiest neighbours are at their ladder's last step or below a useful limit"
                }
            ));
        }
    }

    fn note(&mut self, text: String) {
        self.plan.notes.push(Note {
            layer: Layer::Hypervisor,
            text,
        });
    }

    /// Applied actions whose target this plan no longer mentions (a VM that stopped backing the
    /// workload, a renamed PDB, a released throttle) are reverted.
    fn revert_the_rest(&mut self) {
        let mentioned: Vec<_> = self
            .plan
            .actions
            .iter()
            .chain(&self.plan.reverts)
            .map(|a| a.change.target_key())
            .chain(self.visited.iter().cloned())
            .collect();
        let forgotten: Vec<Action> = self
            .observed
            .applied
            .iter()
            .filter(|a| !mentioned.contains(&a.change.target_key()))
            .cloned()
            .collect();
        // Restores were recorded in holding order; undo in the reverse.
        self.plan.reverts.reverse();
        let undo = revert(&forgotten, self.observed, "no longer part of the plan");
        self.plan.reverts.extend(undo.actions);
        self.plan.notes.extend(undo.notes);
        sort_reverts(&mut self.plan.reverts);
    }
}

/// Name of the PodDisruptionBudget Plumbline owns for a workload.
pub fn disruption_budget_name(w: &WorkloadRef) -> String {
    format!("{}-plumbline", w.name)
}

/// `value` or `(none)`-style placeholder for explanations.
fn show(value: Option<String>, absent: &str) -> String {
    match value {
        Some(v) => v,
        None if absent.is_empty() => "none".to_string(),
        None => absent.to_string(),
    }
}

fn intent_label(intent: &WorkloadIntent) -> String {
    format!(
        "{}/{}",
        intent.metadata.namespace.as_deref().unwrap_or("default"),
        intent.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The hypervisor changes the ledger holds for the intent, one action each: the value in the
/// ledger and the original its finalizer restores.
pub fn ledger_actions(intent: &WorkloadIntent, infra: &ObservedInfra) -> Vec<Action> {
    let label = intent_label(intent);
    infra
        .changes
        .iter()
        .filter_map(|ic| {
            let owner = ic.spec.owners.iter().find(|o| o.intent == label)?;
            let vm = VmRef {
                provider: ic.spec.target.provider.clone()?,
                name: ic.spec.target.name.clone(),
            };
            let original = ic
                .status
                .as_ref()
                .and_then(|s| s.original.as_deref())
                .and_then(|o| o.parse().ok());
            let value = ValueChange::new(ic.spec.desired.parse().ok(), original);
            let change = match ic.spec.setting.as_str() {
                "cpu_shares" => Change::CpuShares { vm, value },
                setting => Change::DiskIopsLimit {
                    vm,
                    disk: setting
                        .strip_prefix("disk.")
                        .and_then(|s| s.strip_suffix(".total_iops_sec"))?
                        .to_string(),
                    value,
                },
            };
            Some(Action {
                change,
                reason: format!(
                    "{} (InfraChange {})",
                    owner.reason,
                    ic.metadata.name.as_deref().unwrap_or_default()
                ),
            })
        })
        .collect()
}
