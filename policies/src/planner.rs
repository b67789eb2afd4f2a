//! From an intent, what was observed and the time, to a [`Plan`].
//!
//! Every target Plumbline may touch is decided the same way ([`decide`]): find the *baseline*
//! (the value before Plumbline: the recorded previous value if the field still shows what
//! Plumbline set, otherwise what is there now, since someone else changed it), then hold the
//! desired value if it differs from the baseline, or restore the baseline if Plumbline changed
//! it and no longer needs to.

use chrono::{DateTime, Utc};
use plumbline_crds::{conditions::reason, names::STORAGE_READINESS_GATE, Layer, WorkloadIntent};

use crate::{
    invalid::Invalid,
    observed::{Observed, ObservedWorkload},
    plan::{Action, Activity, Change, Note, Plan, Setting, WorkloadRef},
    revert::revert,
    schedule::Schedule,
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
    let activity = activity(valid.schedule.as_ref(), now);

    let mut plan = Plan {
        workload: target,
        priority: spec.priority,
        activity,
        actions: Vec::new(),
        reverts: Vec::new(),
        notes: Vec::new(),
    };
    if !plan.activity.active {
        let undo = revert(&observed.applied, observed, "the schedule window is closed");
        plan.reverts = undo.actions;
        plan.notes = undo.notes;
        return Ok(plan);
    }

    let mut planner = Planner {
        observed,
        plan,
        visited: Vec::new(),
    };
    planner.kubernetes(intent, &valid, workload);
    planner.hypervisor(intent, workload);
    planner.revert_the_rest();
    Ok(planner.plan)
}

/// Whether the schedule applies at `now`, in the words of the `Active` condition.
pub fn activity(schedule: Option<&Schedule>, now: DateTime<Utc>) -> Activity {
    let Some(schedule) = schedule else {
        return Activity {
            active: true,
            reason: reason::ALWAYS_ACTIVE,
            message: "no schedule: always active".to_string(),
            next_transition: None,
        };
    };
    let next_transition = schedule.next_transition(now);
    match schedule.active_window(now) {
        Some(w) => Activity {
            active: true,
            reason: reason::WINDOW_OPEN,
            message: format!("inside window {}", w.describe()),
            next_transition,
        },
        None => Activity {
            active: false,
            reason: reason::WINDOW_CLOSED,
            message: format!(
                "outside every window ({})",
                schedule
                    .windows()
                    .iter()
                    .map(|w| w.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            next_transition,
        },
    }
}

/// What to do with one target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision<T> {
    /// Set `desired`; `previous` is the baseline a revert restores.
    Hold(Setting<T>),
    /// Plumbline set it earlier and no longer needs to: put the baseline back.
    Restore(Setting<T>),
    /// Already as wanted, and Plumbline owes nothing.
    Nothing,
}

/// The single rule behind every target; see the module documentation.
pub(crate) fn decide<T: PartialEq + Clone>(
    desired: Option<T>,
    observed: Option<T>,
    applied: Option<Setting<T>>,
) -> Decision<T> {
    let ours_still_there = applied.as_ref().is_some_and(|a| a.desired == observed);
    let baseline = match applied {
        Some(a) if ours_still_there => a.previous,
        _ => observed.clone(),
    };
    if desired != baseline {
        Decision::Hold(Setting::new(desired, baseline))
    } else if observed != baseline {
        Decision::Restore(Setting::new(baseline, observed))
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
        change: impl Fn(Setting<T>) -> Change,
        reason: String,
        already: String,
    ) {
        self.visited
            .push(change(Setting::new(None, None)).target_key());
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
                let layer = change(Setting::new(None, None)).layer();
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
            value: Setting::new(None, None),
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
            value: Setting::new(None, None),
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
            value: Setting::new(None, None),
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
            value: Setting::new(None, None),
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

    fn hypervisor(&mut self, intent: &WorkloadIntent, _workload: &ObservedWorkload) {
        let tier = tier(intent.spec.priority);
        let infra_spec = intent.spec.infrastructure.clone().unwrap_or_default();
        let infra = &self.observed.infra;

        if let (true, Some(shares), true) = (
            infra_spec.protect_backing_vms,
            tier.protected_cpu_shares,
            infra.backing_vms.is_empty(),
        ) {
            // The controller does not see VMs; the storage-health loop, which holds the live
            // graph and the adapters, carries this out.
            self.plan.notes.push(Note {
                layer: Layer::Hypervisor,
                text: format!(
                    "infrastructure.protectBackingVms: every VM backing the pods gets {shares} CPU shares while active, set by the storage-health loop (see status.protectedVms)"
                ),
            });
        }
        for vm in &infra.backing_vms {
            let probe = Change::CpuShares {
                vm: vm.vm.clone(),
                value: Setting::new(None, None),
            };
            let applied = match self.applied(&probe) {
                Some(Change::CpuShares { value, .. }) => Some(value.clone()),
                _ => None,
            };
            let wanted = if infra_spec.protect_backing_vms {
                tier.protected_cpu_shares
            } else {
                None
            };
            if wanted.is_some() && !vm.cpu_shares_supported {
                self.plan.notes.push(Note {
                    layer: Layer::Hypervisor,
                    text: format!(
                        "VM {} cannot set CPU shares on its hypervisor: not protected",
                        vm.vm
                    ),
                });
                continue;
            }
            // Unknown current shares (a failed read) are taken to be what Plumbline set, so the
            // recorded original is not lost.
            let current = vm
                .cpu_shares
                .or_else(|| applied.as_ref().and_then(|a| a.desired));
            let baseline = match &applied {
                Some(a) if a.desired == current => a.previous,
                _ => current,
            };
            let desired = wanted.or(baseline);
            let decision = decide(desired, current, applied);
            let already = match (infra_spec.protect_backing_vms, tier.protected_cpu_shares) {
                (false, _) => format!(
                    "infrastructure.protectBackingVms is off: VM {} keeps its CPU shares",
                    vm.vm
                ),
                (true, None) => format!(
                    "tier {} does not protect VMs: VM {} keeps its CPU shares",
                    tier.priority, vm.vm
                ),
                (true, Some(s)) => format!("VM {} already has {s} CPU shares", vm.vm),
            };
            let vm_ref = vm.vm.clone();
            self.record(
                decision,
                |value| Change::CpuShares { vm: vm_ref.clone(), value },
                format!(
                    "infrastructure.protectBackingVms: VM {} backs pods of a {} workload; more CPU shares than its neighbours",
                    vm.vm, tier.priority
                ),
                already,
            );
        }

        let allowed = infra_spec.throttle_noisy_neighbours && tier.may_throttle_neighbours;
        for t in &infra.neighbour_throttles {
            if !allowed {
                self.plan.notes.push(Note {
                    layer: Layer::Hypervisor,
                    text: format!(
                        "not throttling VM {} disk {}: {}",
                        t.vm,
                        t.disk,
                        if infra_spec.throttle_noisy_neighbours {
                            format!("tier {} may not throttle neighbours", tier.priority)
                        } else {
                            "infrastructure.throttleNoisyNeighbours is off".to_string()
                        }
                    ),
                });
                continue;
            }
            let change = Change::DiskIopsLimit {
                vm: t.vm.clone(),
                disk: t.disk.clone(),
                value: Setting::new(t.limit_iops, t.previous_iops),
            };
            let action = Action {
                change,
                reason: t.reason.clone(),
            };
            if t.limit_iops.is_some() {
                self.plan.actions.push(action);
            } else {
                self.plan.reverts.push(action);
            }
        }
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

/// Reverts run hypervisor first, then Kubernetes (the reverse of holding).
pub(crate) fn sort_reverts(reverts: &mut [Action]) {
    reverts.sort_by_key(|a| std::cmp::Reverse(a.layer()));
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
