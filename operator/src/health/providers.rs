//! One sampling loop per HypervisorProvider: connect its adapter, keep its inventory and
//! capabilities, sample storage latency every interval into the [`HealthBook`], and report
//! the provider's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_adapters::{Capability, HypervisorConfig, Support};
use plumbline_crds::{
    conditions::{provider as cond, reason, status},
    names::HEALTH_FIELD_MANAGER,
    HypervisorProvider,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, warn};

use super::book::{HealthBook, ProviderView};
use crate::{context::Context, metrics::health::ProviderLabels};

/// Inventory is re-read every this many cycles (VMs come and go rarely; samples every cycle).
const INVENTORY_EVERY: u32 = 10;
/// How long reading the hosts' maintenance mode may take.
const HOSTS_DEADLINE: Duration = Duration::from_secs(10);
/// Status is re-written at least this often, so `lastSampleTime` stays meaningful.
const STATUS_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running sampling loops, by provider name, with the spec generation they run.
#[derive(Default)]
pub struct Samplers {
    running: BTreeMap<String, (Option<i64>, JoinHandle<()>)>,
}

impl Samplers {
    /// Starts loops for new or changed providers and stops those of deleted ones.
    pub fn sync(
        &mut self,
        ctx: &Arc<Context>,
        providers: &[Arc<HypervisorProvider>],
        book: &Arc<Mutex<HealthBook>>,
        changed: &Arc<Notify>,
    ) {
        let wanted: BTreeMap<String, &Arc<HypervisorProvider>> =
            providers.iter().map(|p| (p.name_any(), p)).collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, (generation, handle))| {
                handle.is_finished()
                    || wanted
                        .get(*name)
                        .is_none_or(|p| p.metadata.generation != *generation)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some((_, handle)) = self.running.remove(&name) {
                handle.abort();
            }
            if !wanted.contains_key(&name) {
                info!(provider = %name, "provider deleted, dropping its adapter");
                crate::locks::write(&ctx.adapters.hypervisors).remove(&name);
                crate::locks::lock(book).remove_provider(&name);
                ctx.metrics
                    .health
                    .provider_connected
                    .remove(&ProviderLabels { provider: name });
            }
        }
        for (name, provider) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            // A changed spec needs a fresh connection.
            crate::locks::write(&ctx.adapters.hypervisors).remove(&name);
            let handle = tokio::spawn(sample_provider(
                ctx.clone(),
                provider.as_ref().clone(),
                book.clone(),
                changed.clone(),
            ));
            self.running
                .insert(name, (provider.metadata.generation, handle));
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (_, handle)) in std::mem::take(&mut self.running) {
            handle.abort();
        }
    }
}

/// The health loop may be aborted (the lease lost): its samplers, which write provider
/// status, go with it.
impl Drop for Samplers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The adapter configuration for a provider, reading the vSphere credentials Secret (refused
/// when the Secret is pinned to another server, see [`crate::credentials`]).
pub(crate) async fn adapter_config(
    client: &kube::Client,
    hp: &HypervisorProvider,
) -> Result<HypervisorConfig, String> {
    crate::credentials::prepare(client, hp)
        .await
        .map(|p| p.config)
        .map_err(|r| r.message)
}

/// Capability names as the provider status lists them.
fn capability_name(c: Capability) -> &'static str {
    match c {
        Capability::StorageLatency => "storage-latency",
        Capability::FlushLatency => "flush-latency",
        Capability::DiskIopsLimit => "iotune",
        Capability::DiskBytesLimit => "disk-bandwidth-limit",
        Capability::DiskShares => "disk-shares",
        Capability::CpuShares => "cpu-shares",
        Capability::CpuReservation => "cpu-reservation",
        Capability::MemoryShares => "memory-shares",
        Capability::MemoryReservation => "memory-reservation",
        Capability::BlkioWeight => "blkio-weight",
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ProviderState {
    connected: (bool, &'static str, String),
    ready: (bool, &'static str, String),
    /// vSphere: `TlsVerified` and `CredentialsPinned` (see [`crate::credentials`]).
    security: Vec<crate::credentials::SecurityCondition>,
}

async fn sample_provider(
    ctx: Arc<Context>,
    hp: HypervisorProvider,
    book: Arc<Mutex<HealthBook>>,
    changed: Arc<Notify>,
) {
    let name = hp.name_any();
    let labels = ProviderLabels {
        provider: name.clone(),
    };
    let valid = match plumbline_policies::validate_provider(&hp.spec) {
        Ok(v) => v,
        Err(invalid) => {
            // Reported once per generation: this loop then waits until `Samplers::sync` stops
            // it for a new generation (returning would have it restarted on every pass).
            let message = invalid.to_string();
            warn!(provider = %name, generation = ?hp.metadata.generation, %message, "invalid HypervisorProvider");
            let state = ProviderState {
                connected: (false, reason::INVALID_SPEC, message.clone()),
                ready: (false, reason::INVALID_SPEC, message),
                security: hp
                    .spec
                    .vsphere
                    .as_ref()
                    .map(|v| vec![crate::credentials::tls_condition(v)])
                    .unwrap_or_default(),
            };
            let mut retry = Duration::from_secs(1);
            while !write_status(&ctx, &hp, &state, None).await {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_BACKOFF);
            }
            std::future::pending::<()>().await;
            return;
        }
    };
    crate::locks::lock(&book).insert_provider(ProviderView::new(
        &name,
        valid.sample_interval,
        valid.node_mapping,
        valid.node_label.clone(),
    ));
    let mut backoff = Duration::from_secs(1);
    // The wait after the last refused login; `None` once a login succeeded.
    let mut login_backoff: Option<Duration> = None;
    let mut security: Vec<crate::credentials::SecurityCondition> = Vec::new();
    let mut cycle: u32 = 0;
    let mut last_written: Option<(ProviderState, Instant)> = None;
    let mut ticker = tokio::time::interval(valid.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let adapter = match ctx.adapters.get(&name) {
            Some(a) => a,
            None => {
                let (connected, secret_version) =
                    match crate::credentials::prepare(&ctx.client, &hp).await {
                        Ok(prepared) => {
                            security = prepared.security;
                            let insecure = security.iter().any(|(t, (ok, _, _))| {
                                *t == plumbline_crds::conditions::provider::TLS_VERIFIED && !ok
                            });
                            ctx.metrics
                                .provider_tls_insecure
                                .get_or_create(&labels)
                                .set(insecure as i64);
                            (
                                plumbline_adapters::connect(prepared.config)
                                    .await
                                    .map_err(|e| {
                                        let why = if e.kind() == "authentication" {
                                            reason::AUTHENTICATION_FAILED
                                        } else {
                                            reason::CONNECTION_FAILED
                                        };
                                        (why, e.to_string())
                                    }),
                                prepared.secret_version,
                            )
                        }
                        Err(refused) => {
                            security = refused.security;
                            (
                                Err((refused.reason, refused.message)),
                                refused.secret_version,
                            )
                        }
                    };
                match connected {
                    Ok(a) => {
                        info!(provider = %name, endpoint = %a.endpoint(), "connected");
                        crate::locks::write(&ctx.adapters.hypervisors)
                            .insert(name.clone(), a.clone());
                        backoff = Duration::from_secs(1);
                        login_backoff = None;
                        cycle = 0;
                        a
                    }
                    Err((why, message)) => {
                        let refused_login = why == reason::AUTHENTICATION_FAILED;
                        let wait = if refused_login {
                            ctx.metrics
                                .provider_auth_failures
                                .get_or_create(&labels)
                                .inc();
                            let wait =
                                plumbline_policies::credentials::login_backoff(login_backoff);
                            login_backoff = Some(wait);
                            wait
                        } else {
                            backoff
                        };
                        let message = if refused_login {
                            format!(
                                "{message}; next login in {}s (refused logins back off from 30s to 1h so the account is not locked; a changed Secret is tried at once)",
                                wait.as_secs()
                            )
                        } else {
                            message
                        };
                        warn!(provider = %name, %message, retry_in = ?wait, "connecting failed");
                        mark_disconnected(&book, &name, &message);
                        ctx.metrics
                            .health
                            .provider_connected
                            .get_or_create(&labels)
                            .set(0);
                        changed.notify_one();
                        let state = ProviderState {
                            connected: (false, why, message.clone()),
                            ready: (false, why, message),
                            security: security.clone(),
                        };
                        maybe_write_status(&ctx, &hp, &book, state, &mut last_written).await;
                        if secret_version.is_some() {
                            wait_or_secret_change(&ctx, &hp, wait, secret_version).await;
                        } else {
                            tokio::time::sleep(wait).await;
                        }
                        if !refused_login {
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        continue;
                    }
                }
            }
        };

        if cycle.is_multiple_of(INVENTORY_EVERY) {
            match adapter.inventory().await {
                Ok(vms) => {
                    let caps = adapter.capabilities().await.ok();
                    let mut b = crate::locks::lock(&book);
                    if b.set_inventory(&name, vms) {
                        if let (Some(view), Some(caps)) = (b.provider_mut(&name), caps) {
                            view.capabilities = caps;
                        }
                    }
                }
                Err(e) => debug!(provider = %name, error = %e, "inventory failed"),
            }
            // Maintenance mode, for detecting maintenance started on the hypervisor.
            match tokio::time::timeout(HOSTS_DEADLINE, adapter.host_states()).await {
                Ok(Ok(hosts)) => {
                    let read_at = ctx.clock.now();
                    let mut b = crate::locks::lock(&book);
                    if let Some(view) = b.provider_mut(&name) {
                        view.hosts = hosts;
                        view.hosts_read_at = Some(read_at.into());
                    }
                }
                Ok(Err(e)) => debug!(provider = %name, error = %e, "reading hosts failed"),
                Err(_) => {
                    debug!(provider = %name, "reading hosts: no answer within {HOSTS_DEADLINE:?}")
                }
            }
        }
        cycle = cycle.wrapping_add(1);

        let started = Instant::now();
        let timeout = valid.sample_interval.max(Duration::from_secs(5));
        let result = tokio::time::timeout(timeout, adapter.sample_storage()).await;
        ctx.metrics
            .health
            .sample_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(Ok(samples)) => {
                let mut b = crate::locks::lock(&book);
                if let Some(view) = b.provider_mut(&name) {
                    view.connected = true;
                    view.connection_message = format!("connected to {}", adapter.endpoint());
                }
                let moved = b.record_placements(&name, &samples.placements);
                if moved > 0 {
                    debug!(provider = %name, moved, "VMs found on another host while sampling");
                }
                b.record_samples(&name, samples.taken_at, &samples.disks);
                Ok(samples.disks.len())
            }
            Ok(Err(e)) => {
                if e.kind() == "authentication" {
                    // The session expired and logging in again was refused (password changed):
                    // drop the adapter, so the next login goes through the backoff above
                    // instead of being retried on every sample.
                    ctx.adapters
                        .hypervisors
                        .write()
                        .expect("adapters lock")
                        .remove(&name);
                }
                Err(e.to_string())
            }
            Err(_) => Err(format!(
                "sampling {} took longer than {timeout:?}",
                adapter.endpoint()
            )),
        };
        let connected = adapter.connection().is_connected() && outcome.is_ok();
        ctx.metrics
            .health
            .provider_connected
            .get_or_create(&labels)
            .set(connected as i64);
        let state = match &outcome {
            Ok(n) => ProviderState {
                connected: (
                    true,
                    reason::CONNECTED,
                    format!("connected to {}", adapter.endpoint()),
                ),
                ready: (
                    true,
                    reason::SAMPLING,
                    format!("{n} disks sampled every {:?}", valid.sample_interval),
                ),
                security: security.clone(),
            },
            Err(message) => {
                warn!(provider = %name, %message, "sampling failed");
                mark_disconnected(&book, &name, message);
                ProviderState {
                    connected: if adapter.connection().is_connected() {
                        (
                            true,
                            reason::CONNECTED,
                            format!("connected to {}", adapter.endpoint()),
                        )
                    } else {
                        (false, reason::CONNECTION_FAILED, message.clone())
                    },
                    ready: (false, reason::SAMPLES_STALE, message.clone()),
                    security: security.clone(),
                }
            }
        };
        changed.notify_one();
        maybe_write_status(&ctx, &hp, &book, state, &mut last_written).await;
    }
}

/// Waits `wait` after a refused login (or a Secret pinned elsewhere), or less if the credentials Secret changes meanwhile
/// (checked every 5 s with a metadata read; nothing is sent to the server).
async fn wait_or_secret_change(
    ctx: &Context,
    hp: &HypervisorProvider,
    wait: Duration,
    version: Option<String>,
) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
        let now = crate::credentials::secret_version(&ctx.client, hp).await;
        if now.is_some() && now != version {
            info!(provider = %hp.name_any(), "credentials Secret changed; logging in again now");
            return;
        }
    }
}

fn mark_disconnected(book: &Arc<Mutex<HealthBook>>, name: &str, message: &str) {
    let mut b = crate::locks::lock(book);
    if let Some(view) = b.provider_mut(name) {
        view.connected = false;
        view.connection_message = message.to_string();
    }
}

async fn maybe_write_status(
    ctx: &Context,
    hp: &HypervisorProvider,
    book: &Arc<Mutex<HealthBook>>,
    state: ProviderState,
    last: &mut Option<(ProviderState, Instant)>,
) {
    let due = match last {
        Some((prev, at)) => *prev != state || at.elapsed() >= STATUS_EVERY,
        None => true,
    };
    if !due {
        return;
    }
    let view = crate::locks::lock(book)
        .providers()
        .get(&hp.name_any())
        .cloned();
    if write_status(ctx, hp, &state, view.as_ref()).await {
        *last = Some((state, Instant::now()));
    }
}

fn condition(
    type_: &str,
    (ok, reason, message): &(bool, &'static str, String),
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if *ok { status::TRUE } else { status::FALSE };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The `controller` label of failures to read or write a provider's status.
pub const PROVIDER_STATUS: &str = "hypervisorprovider-status";

async fn write_status(
    ctx: &Context,
    hp: &HypervisorProvider,
    state: &ProviderState,
    view: Option<&ProviderView>,
) -> bool {
    let name = hp.name_any();
    // The cached object may be old; the transition times come from the live one.
    let api = Api::<HypervisorProvider>::all(ctx.client.clone());
    let previous = match api.get_status(&name).await {
        Ok(live) => live.status.map(|s| s.conditions).unwrap_or_default(),
        Err(e) => {
            // Reported, not swallowed: a 403 here means the role lacks `get` on
            // hypervisorproviders/status (charts/plumbline/templates/rbac.yaml). The status is
            // still written, with transition times from the cached object.
            let error = crate::Error::kube(
                format!("reading the status of HypervisorProvider {name}"),
                e,
            );
            warn!(provider = %name, error = %error, kind = error.kind(), "reading the live provider status failed; using the cached one");
            ctx.metrics.reconcile_failed(PROVIDER_STATUS, error.kind());
            hp.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        }
    };
    let generation = hp.metadata.generation;
    let mut conditions = vec![
        condition(cond::CONNECTED, &state.connected, generation, &previous),
        condition(cond::READY, &state.ready, generation, &previous),
    ];
    for (type_, verdict) in &state.security {
        conditions.push(condition(type_, verdict, generation, &previous));
    }
    let mut status_body = serde_json::json!({ "conditions": conditions });
    if let Some(g) = generation {
        status_body["observedGeneration"] = g.into();
    }
    if let Some(view) = view {
        status_body["vmCount"] = (view.inventory().len() as i64).into();
        let caps: Vec<&str> = view
            .capabilities
            .entries
            .iter()
            .filter(|(_, s)| matches!(s, Support::Supported))
            .map(|(c, _)| capability_name(*c))
            .collect();
        status_body["capabilities"] = serde_json::json!(caps);
        if let Some(at) = view.last_sample_at {
            if let Ok(at) = k8s_openapi::jiff::Timestamp::try_from(at) {
                status_body["lastSampleTime"] = serde_json::json!(Time(at));
            }
        }
    }
    let body = plumbline_crds::apply::status::<HypervisorProvider>(status_body);
    match api
        .patch_status(
            &name,
            &PatchParams::apply(HEALTH_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            let error = crate::Error::kube(
                format!("writing the status of HypervisorProvider {name}"),
                e,
            );
            warn!(provider = %name, error = %error, kind = error.kind(), "writing HypervisorProvider status failed");
            ctx.metrics.reconcile_failed(PROVIDER_STATUS, error.kind());
            false
        }
    }
}
