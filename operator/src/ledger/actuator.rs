//! Carrying out the ledger: one task per HypervisorProvider (and one for nodes) that takes the
//! `InfraChange`s of this operator instance aimed at it and does what
//! `plumbline_policies::ledger::next_work` says — record the original, apply, read back,
//! correct drift or stop at `Contested`, revert on delete and release the finalizer.
//!
//! Calls run in their own tasks, at most `concurrency` at once per provider and one at a time
//! per target (a VM's settings and its recorded originals are read-modify-written together),
//! each bounded by the call deadline: a hung VM holds up only its own changes, and the
//! readiness pass never waits on any of it.

use kube::{runtime::reflector::Store, ResourceExt};
use plumbline_crds::{
    conditions::infra_change as state, ChangePurpose, ChangeTargetKind, InfraChange,
};
use plumbline_policies::ledger::{after_readback, next_work, Readback, Work};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{
    sync::{mpsc, Semaphore},
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, info, warn};

use super::{
    report::{self, with_state},
    target::{Target, TargetError},
    LedgerSettings,
};
use crate::{
    context::Context,
    metrics::{ActionLayer, ActionResult},
    term::TermEnd,
};

/// What one actuator looks after.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Provider(String),
    /// Nodes and workloads.
    Kubernetes,
}

impl Scope {
    fn covers(&self, ic: &InfraChange) -> bool {
        match self {
            Scope::Provider(p) => ic.spec.target.provider.as_deref() == Some(p.as_str()),
            Scope::Kubernetes => ic.spec.target.provider.is_none(),
        }
    }
}

/// The running actuators of one leadership term.
pub struct Actuators {
    running: BTreeMap<Scope, JoinHandle<()>>,
    end: TermEnd,
}

impl Actuators {
    /// Actuators that stop, with their calls in flight, the moment `end` resolves: a replica
    /// that lost the lease writes nothing more, whatever the loop that started them is doing.
    pub fn new(end: TermEnd) -> Self {
        Self {
            running: BTreeMap::new(),
            end,
        }
    }

    /// Runs one actuator per provider named and one for nodes; stops the others.
    pub fn sync(
        &mut self,
        ctx: &Arc<Context>,
        changes: &Store<InfraChange>,
        providers: impl IntoIterator<Item = String>,
        settings: &LedgerSettings,
        operator: &str,
    ) {
        let wanted: HashSet<Scope> = providers
            .into_iter()
            .map(Scope::Provider)
            .chain([Scope::Kubernetes])
            .collect();
        self.running.retain(|scope, handle| {
            let keep = wanted.contains(scope);
            if !keep {
                handle.abort();
            }
            keep
        });
        for scope in wanted {
            if let Some(h) = self.running.get(&scope) {
                if !h.is_finished() {
                    continue;
                }
                warn!(?scope, "an actuator ended; starting it again");
            }
            let handle = tokio::spawn(run(
                ctx.clone(),
                changes.clone(),
                scope.clone(),
                settings.clone(),
                operator.to_string(),
                self.end.clone(),
            ));
            self.running.insert(scope, handle);
        }
    }

    pub fn stop_all(&mut self) {
        for (_, handle) in std::mem::take(&mut self.running) {
            handle.abort();
        }
    }
}

/// The loop that owns the actuators may be aborted (the lease lost): they go with it.
impl Drop for Actuators {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What the actuator remembers of one object (none after a restart or a reconnect), by name
/// and for one uid: an object deleted and created again under the same name (by another
/// instance, once ours is gone) is another object.
#[derive(Debug, Clone, Default)]
struct Memory {
    uid: Option<String>,
    /// Its finalizer is off: the object is on its way out and is never acted on again, even
    /// while the cache still shows it (a second revert could undo the next holder's change).
    let_go: bool,
    last_attempt: Option<SystemTime>,
    last_readback: Option<SystemTime>,
    /// The version last acted on, and when: the cache shows the actuator's own status write
    /// a moment later, and until it does the object is left alone (deciding on the version
    /// from before the write would apply again, over a change someone made meanwhile).
    acted_on: Option<(String, SystemTime)>,
}

/// How long a version acted on is skipped at most (a status write may have failed).
const SETTLE: Duration = Duration::from_secs(5);

/// How one piece of work ended, for the actuator's memory.
#[derive(Debug, Clone, Copy, Default)]
struct Done {
    attempted: bool,
    read_back: bool,
    let_go: bool,
}

impl Done {
    const NOTHING: Done = Done {
        attempted: false,
        read_back: false,
        let_go: false,
    };
    const ATTEMPTED: Done = Done {
        attempted: true,
        read_back: false,
        let_go: false,
    };
    const READ_BACK: Done = Done {
        attempted: false,
        read_back: true,
        let_go: false,
    };

    /// After removing the finalizer: let go once it is off (or the object gone).
    fn released(removed: Result<(), kube::Error>, ic: &InfraChange) -> Done {
        match removed {
            Ok(()) => Done {
                let_go: true,
                ..Done::ATTEMPTED
            },
            Err(e) => {
                warn!(change = %ic.name_any(), error = %e, "removing the finalizer failed");
                Done::ATTEMPTED
            }
        }
    }
}

/// One piece of work finished, sent back to the actuator's loop.
struct Finished {
    key: String,
    name: String,
    uid: Option<String>,
    version: String,
    done: Done,
}

async fn run(
    ctx: Arc<Context>,
    changes: Store<InfraChange>,
    scope: Scope,
    settings: LedgerSettings,
    operator: String,
    end: TermEnd,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut memory: HashMap<String, Memory> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut was_connected = false;
    // Owned here, so returning (or being aborted) aborts the calls in flight.
    let mut calls = JoinSet::new();
    let ended = end.wait();
    tokio::pin!(ended);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    debug!(?scope, "actuator starts");
    loop {
        tokio::select! {
            _ = &mut ended => {
                debug!(?scope, "the term ended; the actuator stops with its calls in flight");
                return;
            }
            _ = tick.tick() => {}
            Some(done) = done_rx.recv() => record(&mut memory, &mut busy, done),
        }
        while let Ok(done) = done_rx.try_recv() {
            record(&mut memory, &mut busy, done);
        }
        while calls.try_join_next().is_some() {}
        if let Scope::Provider(p) = &scope {
            // Read everything back once the connection is (re)established: what happened to
            // the VMs while it was down is unknown.
            let connected = ctx
                .adapters
                .get(p)
                .is_some_and(|a| a.connection().is_connected());
            if connected && !was_connected {
                for m in memory.values_mut() {
                    m.last_readback = None;
                }
            }
            was_connected = connected;
        }
        let now = SystemTime::now();
        let mine: Vec<Arc<InfraChange>> = changes
            .state()
            .into_iter()
            .filter(|ic| ic.spec.operator == operator && scope.covers(ic))
            .collect();
        let names: HashSet<String> = mine.iter().map(|ic| ic.name_any()).collect();
        memory.retain(|name, _| names.contains(name));
        for ic in mine {
            let key = target_key(&ic);
            if busy.contains(&key) {
                continue;
            }
            let name = ic.name_any();
            let version = ic.resource_version().unwrap_or_default();
            let m = memory
                .get(&name)
                .filter(|m| m.uid == ic.metadata.uid)
                .cloned()
                .unwrap_or_default();
            if m.let_go
                || m.acted_on
                    .as_ref()
                    .is_some_and(|(v, at)| *v == version && now < *at + SETTLE)
            {
                continue;
            }
            let work = next_work(&ic, now, m.last_attempt, m.last_readback, &settings.policy);
            if work == Work::Nothing {
                continue;
            }
            // Letting go needs no connection: a hypervisor gone for good can still be abandoned.
            let target = match (&work, Target::of(&ic, &ctx.client, |p| ctx.adapters.get(p))) {
                (Work::Release { .. }, _) => Ok(None),
                (_, Ok(Some(t))) => Ok(Some(t)),
                (_, Ok(None)) => continue, // the provider is not connected (yet)
                (_, Err(e)) => Err(e),
            };
            busy.insert(key.clone());
            let (ctx, slots, done_tx) = (ctx.clone(), slots.clone(), done_tx.clone());
            let deadline = settings.call_deadline;
            let policy = settings.policy.clone();
            calls.spawn(async move {
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                let done = match target {
                    Ok(target) => {
                        carry_out(&ctx, &ic, target.as_ref(), work, deadline, &policy).await
                    }
                    Err(e) => unusable(&ctx, &ic, e).await,
                };
                let uid = ic.metadata.uid.clone();
                let _ = done_tx.send(Finished {
                    key,
                    name,
                    uid,
                    version,
                    done,
                });
            });
        }
    }
}

fn record(memory: &mut HashMap<String, Memory>, busy: &mut HashSet<String>, finished: Finished) {
    let Finished {
        key,
        name,
        uid,
        version,
        done,
    } = finished;
    busy.remove(&key);
    let now = SystemTime::now();
    let m = memory.entry(name).or_default();
    if m.uid != uid {
        *m = Memory {
            uid,
            ..Memory::default()
        };
    }
    m.let_go |= done.let_go;
    if done.attempted {
        m.last_attempt = Some(now);
        m.acted_on = Some((version, now));
    }
    if done.read_back {
        m.last_readback = Some(now);
    }
}

/// Work on one target is serialized: a VM by its id, a node by name.
fn target_key(ic: &InfraChange) -> String {
    let t = &ic.spec.target;
    match t.kind {
        ChangeTargetKind::VirtualMachine => format!(
            "vm/{}/{}",
            t.provider.as_deref().unwrap_or(""),
            t.vm_id.as_deref().unwrap_or(&t.name)
        ),
        ChangeTargetKind::Node => format!("node/{}", t.name),
        ChangeTargetKind::Host => {
            format!("host/{}/{}", t.provider.as_deref().unwrap_or(""), t.name)
        }
        // One cluster's rules one at a time: every rule write reconfigures the cluster.
        ChangeTargetKind::Cluster => {
            format!("cluster/{}/{}", t.provider.as_deref().unwrap_or(""), t.name)
        }
        ChangeTargetKind::Deployment | ChangeTargetKind::StatefulSet => format!(
            "{:?}/{}/{}",
            t.kind,
            t.namespace.as_deref().unwrap_or(""),
            t.name
        ),
    }
}

/// The `plumbline_actions_total` labels of a change.
fn metric(ic: &InfraChange) -> (ActionLayer, &'static str) {
    match ic.spec.purpose {
        ChangePurpose::NeighbourThrottle => (ActionLayer::hypervisor, "disk_iops_limit"),
        ChangePurpose::BackingVmProtection => (ActionLayer::hypervisor, "cpu_shares"),
        ChangePurpose::StorageTaint => (ActionLayer::kubernetes, "node_taint"),
        ChangePurpose::MaintenanceCordon => (ActionLayer::kubernetes, "node_cordon"),
        ChangePurpose::MaintenanceSurge => (ActionLayer::kubernetes, "replica_surge"),
        ChangePurpose::HostMaintenanceMode => (ActionLayer::hypervisor, "host_maintenance_mode"),
        ChangePurpose::HostAntiAffinity => (ActionLayer::hypervisor, "drs_anti_affinity_rule"),
        ChangePurpose::NeighbourRelocation => (ActionLayer::hypervisor, "vm_relocation"),
    }
}

fn count(ctx: &Context, ic: &InfraChange, result: ActionResult) {
    let (layer, action) = metric(ic);
    ctx.metrics.action(layer, action, result);
}

/// A change whose setting no actuator understands: never applied, so deleting it just lets go.
async fn unusable(ctx: &Context, ic: &InfraChange, e: TargetError) -> Done {
    if ic.metadata.deletion_timestamp.is_some()
        && ic
            .status
            .as_ref()
            .and_then(|s| s.original.as_ref())
            .is_none()
    {
        return Done::released(report::remove_finalizer(ctx, ic).await, ic);
    }
    let status = with_state(
        ic,
        ic.status.clone().unwrap_or_default(),
        state::UNSUPPORTED,
        &e.to_string(),
    );
    let status = plumbline_crds::InfraChangeStatus {
        last_error: Some(e.to_string()),
        observed_generation: ic.metadata.generation,
        ..status
    };
    if let Err(err) = report::write_status(ctx, ic, &status).await {
        warn!(change = %ic.name_any(), error = %err, "writing InfraChange status failed");
    }
    Done::ATTEMPTED
}

/// Does one piece of work. `target` is `None` only for [`Work::Release`], which needs none.
async fn carry_out(
    ctx: &Context,
    ic: &InfraChange,
    target: Option<&Target>,
    work: Work,
    deadline: Duration,
    policy: &plumbline_policies::ledger::ActuationPolicy,
) -> Done {
    let name = ic.name_any();
    if let Work::Release { reason, message } = work {
        info!(change = %name, %message, "letting go of the change");
        report::event(
            ctx,
            ic,
            false,
            reason,
            format!("{} {}: {message}", ic.spec.target, ic.spec.setting),
        )
        .await;
        return Done::released(report::remove_finalizer(ctx, ic).await, ic);
    }
    let Some(target) = target else {
        return Done::NOTHING;
    };
    let mut status = ic.status.clone().unwrap_or_default();
    let done = |read_back| Done {
        read_back,
        ..Done::ATTEMPTED
    };
    match work {
        Work::Nothing => Done::NOTHING,
        Work::RecordOriginal => {
            let reading = match target.read(deadline).await {
                Ok(r) => r,
                Err(e) => return failed(ctx, ic, status, &e, "reading the original").await,
            };
            // An original recorded on the target by an earlier run is the true one: the value
            // now may be that run's change.
            let original = reading
                .recorded_original
                .clone()
                .unwrap_or(reading.current.clone());
            status.original = Some(original.clone());
            status.observed = Some(reading.current);
            let status = with_state(
                ic,
                status,
                state::PENDING,
                &format!("original {original} recorded; applying {}", ic.spec.desired),
            );
            if let Err(e) = report::write_status(ctx, ic, &status).await {
                // Never change what could not be recorded first.
                warn!(change = %name, error = %e, "recording the original failed; not applying");
                return done(false);
            }
            info!(change = %name, target = %ic.spec.target, setting = %ic.spec.setting, %original, "original recorded");
            apply(ctx, ic, target, status, deadline).await
        }
        Work::Apply => apply(ctx, ic, target, status, deadline).await,
        Work::ReadBack => {
            let reading = match target.read(deadline).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(change = %name, error = %e, "reading back failed");
                    return Done::READ_BACK;
                }
            };
            let current = reading.current;
            match after_readback(ic, &current, SystemTime::now(), policy) {
                Readback::InSync => Done::READ_BACK,
                Readback::Correct { corrections } => {
                    let message = format!(
                        "{} {} was changed behind Plumbline's back: {} -> {current}; setting it back to {}",
                        ic.spec.target, ic.spec.setting, ic.spec.desired, ic.spec.desired
                    );
                    warn!(change = %name, %current, desired = %ic.spec.desired, "drift");
                    drifted(ctx, ic);
                    report::event(ctx, ic, true, state::DRIFT_DETECTED, message.clone()).await;
                    status.corrections = corrections;
                    status.observed = Some(current);
                    let status = with_state(ic, status, state::DRIFTED, &message);
                    if let Err(e) = report::write_status(ctx, ic, &status).await {
                        warn!(change = %name, error = %e, "writing InfraChange status failed");
                    }
                    let result = apply(ctx, ic, target, status, deadline).await;
                    Done {
                        read_back: true,
                        ..result
                    }
                }
                Readback::Contested { corrections } => {
                    let message = format!(
                        "{} {} was changed behind Plumbline's back again ({} -> {current}), {} times within {} minutes: \
                         no longer correcting it; the value stays {current} until the change is deleted or its desired value changes",
                        ic.spec.target,
                        ic.spec.setting,
                        ic.spec.desired,
                        corrections.len(),
                        policy.contest_window.as_secs() / 60
                    );
                    warn!(change = %name, %current, "contested; no longer correcting");
                    drifted(ctx, ic);
                    report::event(ctx, ic, true, state::CONTESTED, message.clone()).await;
                    status.corrections = corrections;
                    status.observed = Some(current);
                    status.observed_generation = ic.metadata.generation;
                    let status = with_state(ic, status, state::CONTESTED, &message);
                    if let Err(e) = report::write_status(ctx, ic, &status).await {
                        warn!(change = %name, error = %e, "writing InfraChange status failed");
                    }
                    done(true)
                }
            }
        }
        Work::Revert { original } => {
            if status.state.as_deref() != Some(state::REVERTING) {
                status = with_state(
                    ic,
                    status,
                    state::REVERTING,
                    &format!("restoring the original {original}"),
                );
                if let Err(e) = report::write_status(ctx, ic, &status).await {
                    debug!(change = %name, error = %e, "writing InfraChange status failed");
                }
            }
            match target.restore(&original, deadline).await {
                Ok(()) => {
                    count(ctx, ic, ActionResult::reverted);
                    info!(change = %name, target = %ic.spec.target, setting = %ic.spec.setting, %original, "original restored");
                    report::event(
                        ctx,
                        ic,
                        false,
                        state::REVERTED,
                        format!(
                            "{} {} restored to its original {original}",
                            ic.spec.target, ic.spec.setting
                        ),
                    )
                    .await;
                    report::node_event(ctx, ic, false).await;
                    Done::released(report::remove_finalizer(ctx, ic).await, ic)
                }
                Err(e) => {
                    count(ctx, ic, ActionResult::failed);
                    status.attempts += 1;
                    status.last_error = Some(e.to_string());
                    let message = format!(
                        "restoring the original {original} failed (attempt {}): {e}",
                        status.attempts
                    );
                    warn!(change = %name, error = %e, attempts = status.attempts, "restoring the original failed");
                    report::event(ctx, ic, true, state::REVERT_FAILED, message.clone()).await;
                    let status = with_state(ic, status, state::REVERTING, &message);
                    if let Err(e) = report::write_status(ctx, ic, &status).await {
                        debug!(change = %name, error = %e, "writing InfraChange status failed");
                    }
                    done(false)
                }
            }
        }
        Work::Release { .. } => done(false),
    }
}

fn drifted(ctx: &Context, ic: &InfraChange) {
    ctx.metrics.infra_drift(ic.spec.purpose.as_str());
}

/// Sets the desired value and reads it back.
async fn apply(
    ctx: &Context,
    ic: &InfraChange,
    target: &Target,
    mut status: plumbline_crds::InfraChangeStatus,
    deadline: Duration,
) -> Done {
    let name = ic.name_any();
    let desired = &ic.spec.desired;
    if let Err(e) = target.set(desired, deadline).await {
        return failed(ctx, ic, status, &e, "applying").await;
    }
    let observed = match target.read(deadline).await {
        Ok(r) => r.current,
        Err(e) => return failed(ctx, ic, status, &e, "reading back").await,
    };
    if &observed != desired {
        let e = TargetError::Failed(format!("set {desired}, but {observed} was read back"));
        return failed(ctx, ic, status, &e, "applying").await;
    }
    let first = status.state.as_deref() != Some(state::APPLIED)
        || status.observed_generation != ic.metadata.generation;
    count(ctx, ic, ActionResult::applied);
    let original = status.original.clone().unwrap_or_default();
    let message = format!(
        "{} {} is {desired} (original {original}) for {}",
        ic.spec.target,
        ic.spec.setting,
        plumbline_policies::ledger::owner_summary(&ic.spec.owners)
    );
    info!(change = %name, %desired, %original, "applied");
    if first {
        report::event(ctx, ic, false, state::APPLIED_REASON, message.clone()).await;
        report::node_event(ctx, ic, true).await;
    }
    status.observed = Some(observed);
    status.observed_at = Some(plumbline_policies::ledger::to_time(SystemTime::now()));
    status.attempts = 0;
    status.last_error = None;
    status.observed_generation = ic.metadata.generation;
    let status = with_state(ic, status, state::APPLIED, &message);
    if let Err(e) = report::write_status(ctx, ic, &status).await {
        warn!(change = %name, error = %e, "writing InfraChange status failed");
    }
    Done {
        read_back: true,
        ..Done::ATTEMPTED
    }
}

async fn failed(
    ctx: &Context,
    ic: &InfraChange,
    mut status: plumbline_crds::InfraChangeStatus,
    e: &TargetError,
    doing: &str,
) -> Done {
    let name = ic.name_any();
    let (state, warning_reason) = match e {
        TargetError::Unsupported(_) => (state::UNSUPPORTED, state::UNSUPPORTED),
        TargetError::Failed(_) => (state::FAILED, state::APPLY_FAILED),
    };
    status.attempts += 1;
    status.last_error = Some(e.to_string());
    if state == state::UNSUPPORTED {
        status.observed_generation = ic.metadata.generation;
    } else {
        count(ctx, ic, ActionResult::failed);
    }
    let message = format!(
        "{doing} {} {} = {} failed (attempt {}): {e}",
        ic.spec.target, ic.spec.setting, ic.spec.desired, status.attempts
    );
    warn!(change = %name, error = %e, attempts = status.attempts, "{doing} failed");
    report::event(ctx, ic, true, warning_reason, message.clone()).await;
    let status = with_state(ic, status, state, &message);
    if let Err(e) = report::write_status(ctx, ic, &status).await {
        debug!(change = %name, error = %e, "writing InfraChange status failed");
    }
    Done::ATTEMPTED
}
