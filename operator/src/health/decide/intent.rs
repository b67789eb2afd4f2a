//! One intent's share of a feedback pass: its pods' readiness through the guard, the pod
//! conditions to write, its status (backing map, guard report, throttles, candidates), and the
//! victims among its VMs for the noisy-neighbour ladder.

use plumbline_crds::{
    conditions::{status, verdict},
    names::STORAGE_READINESS_GATE,
    NeighbourCandidateStatus, VmRef,
};
use plumbline_policies::health::{
    format_latency, guard, neighbours_of, pod_readiness, GuardCandidate, GuardPods, HealthState,
    LatencyBudget, NeighbourCandidate, ReadinessVerdict, ThrottleLadder, UnknownCause, Verdict,
    Victim, VmVerdict,
};
use serde_json::{json, Map, Value};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use super::{
    body::{Backing, StatusBody},
    memory::{refresh_due, PassInput, PassMemory},
    writes::{rfc3339, status_word, PodWrite, StatusWrite},
};
use crate::health::{
    book::HealthBook,
    graph::{IntentView, StorageView, VmKey},
    throttle,
};

/// How many neighbours an intent's status lists.
const LISTED_NEIGHBOURS: usize = 5;

/// What the intents' share of a pass decided so far.
#[derive(Default)]
pub(super) struct IntentsDecided<'a> {
    pub(super) pods: Vec<PodWrite>,
    /// The status bodies, per intent `(namespace, name)`; written when due (see
    /// [`status_write`]).
    pub(super) bodies: BTreeMap<(String, String), StatusBody<'a>>,
    /// Victims for the noisy-neighbour logic: merged per VM, worst state and highest tier.
    pub(super) victims: BTreeMap<VmKey, Victim<VmRef>>,
}

/// One intent with a storage section: its pods' readiness through the guard, its status, and
/// the victims among its VMs.
pub(super) fn decide_intent<'a>(
    memory: &mut PassMemory,
    input: &PassInput<'_>,
    b: &mut HealthBook,
    view: &'a IntentView,
    storage: StorageView,
    neighbours: &[NeighbourCandidate<VmRef>],
    out: &mut IntentsDecided<'a>,
) {
    let (now, settings) = (input.now, input.settings);
    let throttles = throttle::status_for(input.changes, input.operator, &view.label());
    // Once per VM: the pods on one VM share its verdict and most of their backing entry (ten
    // of them each at the scale bed).
    let mut per_vm: HashMap<Option<&VmKey>, usize> = HashMap::new();
    let mut vms: Vec<VmShare> = Vec::new();
    let shares: Vec<usize> = view
        .pods
        .iter()
        .map(|p| {
            *per_vm.entry(p.vm.as_ref()).or_insert_with(|| {
                vms.push(VmShare::of(b, p.vm.as_ref(), storage, input));
                vms.len() - 1
            })
        })
        .collect();
    for share in &vms {
        if let Some(vm) = share.vm {
            track_vm(memory, b, view, storage.budget, (vm, share), now, out);
        }
    }
    let candidates = view
        .pods
        .iter()
        .zip(&shares)
        .filter(|(_, i)| !vms[**i].readiness.ready)
        .map(|(p, i)| GuardCandidate {
            pod: p.name.clone(),
            severity: vms[*i].readiness.severity,
            currently_unready: p
                .pod
                .condition(STORAGE_READINESS_GATE)
                .is_some_and(|c| c.status == status::FALSE),
        })
        .collect();
    // Not Ready, and not because of us: these use up the guard's budget first.
    let unready_elsewhere = view
        .pods
        .iter()
        .filter(|p| {
            p.pod
                .condition("Ready")
                .is_none_or(|c| c.status != status::TRUE)
                && p.pod
                    .condition(STORAGE_READINESS_GATE)
                    .is_none_or(|c| c.status != status::FALSE)
        })
        .count();
    let decision = guard(
        GuardPods {
            total: view.pods.len(),
            unready_elsewhere,
        },
        storage.limit,
        candidates,
    );
    let held: HashSet<&String> = decision.held_back.iter().collect();

    let mut backing = Vec::with_capacity(view.pods.len());
    for (p, i) in view.pods.iter().zip(shares) {
        let share = &vms[i];
        backing.push((p.name.as_str(), p.node.as_deref(), i));

        if !storage.gate {
            continue;
        }
        let held_readiness;
        let readiness = if held.contains(&p.name) {
            held_readiness = share.readiness.clone().held_by_guard(&decision.budget);
            &held_readiness
        } else {
            &share.readiness
        };
        let current = p.pod.condition(STORAGE_READINESS_GATE);
        let want = status_word(readiness.ready);
        let differs = current
            .is_none_or(|c| c.status != want || c.reason.as_deref() != Some(readiness.reason));
        let stale_message = current
            .is_some_and(|c| c.message.as_deref() != Some(readiness.message.as_str()))
            && refresh_due(
                memory
                    .pod_written
                    .get(&(view.namespace.clone(), p.name.clone())),
                input.instant,
            );
        if differs || stale_message {
            let transition = current.is_some_and(|c| c.status != want);
            let detection = match share.verdict.verdict {
                Verdict::Degraded { onset, .. }
                    if !readiness.ready && (transition || current.is_none()) =>
                {
                    let window =
                        p.vm.as_ref()
                            .and_then(|vm| b.vm(&vm.id))
                            .map(|place| place.provider.interval)
                            .unwrap_or_default();
                    now.duration_since(onset).ok().map(|d| d + window)
                }
                _ => None,
            };
            out.pods.push(PodWrite {
                namespace: view.namespace.clone(),
                pod: p.name.clone(),
                intent: view.name.clone(),
                verdict: readiness.clone(),
                transition,
                detection,
            });
        }
    }

    let guard_report = json!({
        "allowedUnready": decision.budget.allowed,
        "unreadyElsewhere": decision.budget.unready_elsewhere,
        "markedUnready": decision.marked,
        "heldReady": decision.held_back,
    });
    let mut rest = json!({ "guard": guard_report });
    if !throttles.is_empty() {
        rest["neighbourThrottles"] = json!(throttles);
    }
    if view.may_throttle {
        let near = neighbour_candidates(view, b, neighbours, &settings.ladder);
        if !near.is_empty() {
            rest["neighbourCandidates"] = json!(near);
        }
    }
    let body = StatusBody {
        rest,
        backing: Some(Backing {
            shares: vms.into_iter().map(|share| share.entry).collect(),
            pods: backing,
        }),
    };
    out.bodies
        .insert((view.namespace.clone(), view.name.clone()), body);
}

/// What the pods on one VM (or on no known VM) share within an intent.
struct VmShare<'a> {
    vm: Option<&'a VmKey>,
    verdict: VmVerdict,
    readiness: ReadinessVerdict,
    latest: Option<(Duration, SystemTime)>,
    /// Their backing entry but for the pod and its node.
    entry: Map<String, Value>,
}

impl<'a> VmShare<'a> {
    fn of(
        b: &mut HealthBook,
        vm: Option<&'a VmKey>,
        storage: StorageView,
        input: &PassInput<'_>,
    ) -> Self {
        let verdict = match vm {
            Some(vm) => b.verdict(&vm.id, storage.budget, input.now),
            None => VmVerdict::unknown(UnknownCause::NotBacked),
        };
        let readiness = pod_readiness(
            vm.map(|v| v.name.as_str()),
            &verdict,
            storage.budget,
            input.settings.unknown,
        );
        let latest = vm.and_then(|vm| b.latest_latency(&vm.id));
        let mut entry = Map::new();
        entry.insert("verdict".into(), verdict_word(verdict.state()).into());
        if let Some(vm) = vm {
            entry.insert("vm".into(), vm.name.clone().into());
            entry.insert("provider".into(), vm.provider.clone().into());
            if let Some(place) = b.vm(&vm.id) {
                entry.insert("host".into(), place.vm.host.clone().into());
                if !place.vm.datastores.is_empty() {
                    entry.insert("datastores".into(), json!(place.vm.datastores));
                }
            }
        }
        if let Some((latency, at)) = latest {
            entry.insert("latency".into(), format_latency(latency).into());
            entry.insert("sampledAt".into(), rfc3339(at).into());
        }
        Self {
            vm,
            verdict,
            readiness,
            latest,
            entry,
        }
    }
}

/// Since when the VM is in its state against the intent's budget, and the VM as a victim for
/// the noisy-neighbour ladder if the intent may throttle.
fn track_vm(
    memory: &mut PassMemory,
    b: &HealthBook,
    view: &IntentView,
    budget: LatencyBudget,
    (vm, share): (&VmKey, &VmShare<'_>),
    now: SystemTime,
    out: &mut IntentsDecided<'_>,
) {
    let state = share.verdict.state();
    let key = (vm.id.clone(), budget);
    let entered = match memory.state_since.get(&key) {
        Some((was, at)) if *was == state => *at,
        _ => now,
    };
    memory.state_since.insert(key, (state, entered));
    if !view.may_throttle {
        return;
    }
    let Some(place) = b.vm(&vm.id) else { return };
    let in_state = now.duration_since(entered).unwrap_or_default();
    let only_in = |s: HealthState| if state == s { in_state } else { Duration::ZERO };
    let (healthy_for, unknown_for, degraded_for) = (
        only_in(HealthState::Healthy),
        only_in(HealthState::Unknown),
        only_in(HealthState::Degraded),
    );
    let latency = share.latest.map(|(l, _)| l);
    let v = out.victims.entry(vm.clone()).or_insert_with(|| Victim {
        vm: vm.to_ref(),
        tier: view.tier,
        intent: view.label(),
        state,
        healthy_for,
        unknown_for,
        degraded_for,
        may_relocate: view.may_relocate,
        latency,
        sample_interval: place.provider.interval,
        active: view.disrupt,
        host: Some(place.vm.host.clone()),
        datastores: place.vm.datastores.iter().cloned().collect(),
    });
    v.state = v.state.max(state);
    v.tier = v.tier.max(view.tier);
    v.active |= view.disrupt;
    v.healthy_for = v.healthy_for.min(healthy_for);
    v.unknown_for = v.unknown_for.min(unknown_for);
    v.degraded_for = v.degraded_for.max(degraded_for);
    v.may_relocate |= view.may_relocate;
    v.latency = v.latency.max(latency);
}

/// The write of an intent's status body, if due: its shape changed, or its figures after a
/// while. The pass remembers only the [`Fingerprint`] of the body last written.
pub(super) fn status_write(
    memory: &PassMemory,
    input: &PassInput<'_>,
    key: (String, String),
    body: StatusBody<'_>,
) -> Option<StatusWrite> {
    let fingerprint = body.fingerprint();
    let due = match memory.intent_status.get(&key) {
        None => true,
        Some((prev, at)) => {
            !prev.same_shape(&fingerprint)
                || (prev != &fingerprint && refresh_due(Some(at), input.instant))
        }
    };
    due.then(|| StatusWrite {
        intent: key,
        body: body.into_value(),
        fingerprint,
    })
}

fn verdict_word(state: HealthState) -> &'static str {
    match state {
        HealthState::Healthy => verdict::HEALTHY,
        HealthState::Degraded => verdict::DEGRADED,
        HealthState::Unknown => verdict::UNKNOWN,
    }
}

/// The busiest VMs the ladder could throttle for any of the intent's VMs, by name.
fn neighbour_candidates(
    view: &IntentView,
    b: &HealthBook,
    candidates: &[NeighbourCandidate<VmRef>],
    ladder: &ThrottleLadder,
) -> Vec<NeighbourCandidateStatus> {
    let mut near: BTreeMap<&VmRef, &NeighbourCandidate<VmRef>> = BTreeMap::new();
    for vm in view.pods.iter().filter_map(|p| p.vm.as_ref()) {
        let Some(place) = b.vm(&vm.id) else { continue };
        let victim = Victim {
            vm: vm.to_ref(),
            tier: view.tier,
            intent: view.label(),
            state: HealthState::Degraded,
            healthy_for: Duration::ZERO,
            unknown_for: Duration::ZERO,
            degraded_for: Duration::ZERO,
            may_relocate: false,
            latency: None,
            sample_interval: place.provider.interval,
            active: true,
            host: Some(place.vm.host.clone()),
            datastores: place.vm.datastores.iter().cloned().collect(),
        };
        for (c, _) in neighbours_of(&victim, candidates, ladder) {
            near.insert(&c.vm, c);
        }
    }
    let mut busiest: Vec<&NeighbourCandidate<VmRef>> = near.into_values().collect();
    busiest.sort_by(|a, b| b.iops.total_cmp(&a.iops).then_with(|| a.vm.cmp(&b.vm)));
    busiest.truncate(LISTED_NEIGHBOURS);
    busiest.sort_by(|a, b| a.vm.cmp(&b.vm));
    busiest
        .into_iter()
        .map(|c| NeighbourCandidateStatus {
            vm: c.vm.name.clone(),
            vm_id: c.vm.id.clone(),
            provider: c.vm.provider.clone(),
            host: c.host.clone(),
            datastores: c.datastores.iter().cloned().collect(),
            iops: c.iops.round() as i64,
        })
        .collect()
}
