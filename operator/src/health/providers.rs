//! One sampling loop per HypervisorProvider: connect its adapter, keep its inventory and
//! capabilities, sample storage latency every interval into the [`HealthBook`], and report
//! the provider's status.

use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use plumbline_adapters::{
    Capability, HypervisorConfig, LibvirtConfig, Support, TlsTrust, VSphereConfig,
};
use plumbline_crds::{
    conditions::{provider as cond, reason, status},
    HypervisorProvider,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    book::{HealthBook, ProviderView},
    metrics::ProviderLabels,
    HEALTH_FIELD_MANAGER,
};
use crate::context::Context;

/// Inventory is re-read every this many cycles (VMs come and go rarely; samples every cycle).
const INVENTORY_EVERY: u32 = 10;
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
                crate::locks::lock(book).providers.remove(&name);
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

/// The adapter configuration for a provider, reading the vSphere credentials Secret.
pub(crate) async fn adapter_config(
    client: &kube::Client,
    hp: &HypervisorProvider,
) -> Result<HypervisorConfig, String> {
    if let Some(l) = &hp.spec.libvirt {
        return Ok(HypervisorConfig::Libvirt(LibvirtConfig {
            uri: l.uri.clone(),
        }));
    }
    let Some(v) = &hp.spec.vsphere else {
        return Err("the spec sets neither libvirt nor vsphere".into());
    };
    let secret = Api::<Secret>::namespaced(client.clone(), &v.credentials_secret_ref.namespace)
        .get(&v.credentials_secret_ref.name)
        .await
        .map_err(|e| {
            format!(
                "reading Secret {}/{}: {e}",
                v.credentials_secret_ref.namespace, v.credentials_secret_ref.name
            )
        })?;
    let field = |key: &str| -> Result<String, String> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .cloned()
            })
            .ok_or_else(|| {
                format!(
                    "Secret {}/{} has no key {key}",
                    v.credentials_secret_ref.namespace, v.credentials_secret_ref.name
                )
            })
    };
    let url = if v.server.starts_with("https://") || v.server.starts_with("http://") {
        v.server.clone()
    } else {
        format!("https://{}/sdk", v.server)
    };
    let tls = match (&v.ca_bundle, v.insecure_skip_verify) {
        (Some(pem), _) => TlsTrust::CaPem(pem.as_bytes().to_vec()),
        (None, true) => TlsTrust::Insecure,
        (None, false) => TlsTrust::PublicRoots,
    };
    Ok(HypervisorConfig::VSphere(VSphereConfig {
        url,
        username: field("username")?,
        password: field("password")?.into(),
        tls,
    }))
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
            let message = invalid.to_string();
            warn!(provider = %name, %message, "invalid HypervisorProvider");
            let state = ProviderState {
                connected: (false, reason::CONNECTION_FAILED, message.clone()),
                ready: (false, reason::CONNECTION_FAILED, message),
            };
            write_status(&ctx, &hp, &state, None).await;
            return;
        }
    };
    crate::locks::lock(&book).providers.insert(
        name.clone(),
        ProviderView::new(
            &name,
            valid.sample_interval,
            valid.node_mapping,
            valid.node_label.clone(),
        ),
    );
    let mut backoff = Duration::from_secs(1);
    let mut cycle: u32 = 0;
    let mut last_written: Option<(ProviderState, Instant)> = None;
    let mut ticker = tokio::time::interval(valid.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let adapter = match ctx.adapters.get(&name) {
            Some(a) => a,
            None => {
                let connected = match adapter_config(&ctx.client, &hp).await {
                    Ok(config) => plumbline_adapters::connect(config)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match connected {
                    Ok(a) => {
                        info!(provider = %name, endpoint = %a.endpoint(), "connected");
                        crate::locks::write(&ctx.adapters.hypervisors)
                            .insert(name.clone(), a.clone());
                        backoff = Duration::from_secs(1);
                        cycle = 0;
                        a
                    }
                    Err(message) => {
                        warn!(provider = %name, %message, retry_in = ?backoff, "connecting failed");
                        mark_disconnected(&book, &name, &message);
                        ctx.metrics
                            .health
                            .provider_connected
                            .get_or_create(&labels)
                            .set(0);
                        changed.notify_one();
                        let state = ProviderState {
                            connected: (false, reason::CONNECTION_FAILED, message.clone()),
                            ready: (false, reason::CONNECTION_FAILED, message),
                        };
                        maybe_write_status(&ctx, &hp, &book, state, &mut last_written).await;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
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
                    if let Some(view) = b.providers.get_mut(&name) {
                        view.inventory = vms;
                        if let Some(caps) = caps {
                            view.capabilities = caps;
                        }
                    }
                }
                Err(e) => debug!(provider = %name, error = %e, "inventory failed"),
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
                if let Some(view) = b.providers.get_mut(&name) {
                    view.connected = true;
                    view.connection_message = format!("connected to {}", adapter.endpoint());
                }
                b.record_samples(&name, samples.taken_at, &samples.disks);
                Ok(samples.disks.len())
            }
            Ok(Err(e)) => Err(e.to_string()),
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
                }
            }
        };
        changed.notify_one();
        maybe_write_status(&ctx, &hp, &book, state, &mut last_written).await;
    }
}

fn mark_disconnected(book: &Arc<Mutex<HealthBook>>, name: &str, message: &str) {
    let mut b = crate::locks::lock(book);
    if let Some(view) = b.providers.get_mut(name) {
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
        .providers
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

async fn write_status(
    ctx: &Context,
    hp: &HypervisorProvider,
    state: &ProviderState,
    view: Option<&ProviderView>,
) -> bool {
    let name = hp.name_any();
    // The cached object may be old; the transition times come from the live one.
    let api = Api::<HypervisorProvider>::all(ctx.client.clone());
    let previous = api
        .get_status(&name)
        .await
        .ok()
        .and_then(|p| p.status)
        .map(|s| s.conditions)
        .unwrap_or_default();
    let generation = hp.metadata.generation;
    let mut status_body = serde_json::json!({
        "conditions": [
            condition(cond::CONNECTED, &state.connected, generation, &previous),
            condition(cond::READY, &state.ready, generation, &previous),
        ],
    });
    if let Some(g) = generation {
        status_body["observedGeneration"] = g.into();
    }
    if let Some(view) = view {
        status_body["vmCount"] = (view.inventory.len() as i64).into();
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
    let body = serde_json::json!({
        "apiVersion": "plumbline.dev/v1alpha1",
        "kind": "HypervisorProvider",
        "status": status_body,
    });
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
            warn!(provider = %name, error = %e, "writing HypervisorProvider status failed");
            false
        }
    }
}
