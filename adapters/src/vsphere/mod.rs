//! The vSphere adapter: SOAP vim25 over reqwest.

mod inventory;
mod maintenance;
mod perf;
mod reconfigure;
mod relocate;
mod rules;
mod session;
mod soap;
mod task;
mod tuning;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use futures::StreamExt;

pub use self::{inventory::MAX_PROPERTY_PAGES, soap::MAX_RESPONSE_BYTES};

use self::{inventory::VmRecord, perf::LatencyCounters, session::Session, tuning::Refusal};
use crate::xml::{Element, MoRef};
use crate::{
    AntiAffinityRule, BackingVm, Capabilities, Capability, ConnectionState, Endpoint, Error,
    HostState, Hypervisor, HypervisorKind, Result, Setting, StorageSamples, Support, Tunable,
    TunableReport, VSphereConfig, VmId,
};

/// QueryPerf calls of one sampling cycle in flight at once.
const QUERY_PERF_CONCURRENCY: usize = 4;

/// How long one SOAP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle session is touched; vCenter expires idle sessions after 30 minutes.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    session: Session,
    counters: LatencyCounters,
    max_query_metrics: usize,
    /// VM UUID → managed object, refreshed by every inventory.
    morefs: Mutex<HashMap<VmId, MoRef>>,
    /// Each VM's disks as the last retrieval with device lists saw them (every inventory, and
    /// a sampling cycle that met a VM not in here), so the other sampling cycles need not
    /// download every VM's device list again.
    disks: Mutex<HashMap<MoRef, (VmId, Vec<inventory::DiskRecord>)>>,
}

/// One vCenter (or ESXi) endpoint.
#[derive(Debug, Clone)]
pub struct VSphereHypervisor {
    inner: Arc<Inner>,
}

impl VSphereHypervisor {
    /// Logs in, resolves the latency counters by name and starts the session keepalive.
    pub async fn connect(config: VSphereConfig) -> Result<Self> {
        let session = Session::open(&config, CALL_TIMEOUT).await?;
        let counters = perf::resolve_counters(&session).await?;
        let max_query_metrics = perf::max_query_metrics(&session).await;
        let inner = Arc::new(Inner {
            endpoint: Endpoint {
                kind: HypervisorKind::VSphere,
                url: config.url.clone(),
            },
            session,
            counters,
            max_query_metrics,
            morefs: Mutex::new(HashMap::new()),
            disks: Mutex::new(HashMap::new()),
        });
        tokio::spawn(keepalive(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The server-side key of the current session (for `TerminateSession`).
    pub fn session_key(&self) -> Option<String> {
        self.inner.session.session_key()
    }

    /// Ends another session on this server (`SessionManager.TerminateSession`).
    pub async fn terminate_session(&self, session_key: &str) -> Result<()> {
        let request = Element::new("TerminateSession")
            .child(Element::moref(
                "_this",
                &self.inner.session.services.session_manager,
            ))
            .child(Element::text("sessionId", session_key));
        self.inner
            .session
            .invoke("terminating a session", request)
            .await?;
        Ok(())
    }

    /// Touches the session now (the background keepalive does this every 5 minutes).
    pub async fn keepalive(&self) -> Result<()> {
        self.inner.session.keepalive().await
    }

    pub fn max_query_metrics(&self) -> usize {
        self.inner.max_query_metrics
    }

    async fn all_vms(&self, paths: &[&str]) -> Result<(Vec<VmRecord>, inventory::Names)> {
        let (vms, names) = inventory::all_vms(&self.inner.session, paths).await?;
        let mut morefs = self.inner.morefs.lock().expect("moref cache lock");
        morefs.clear();
        morefs.extend(vms.iter().map(|v| (v.id.clone(), v.moref.clone())));
        if paths.contains(&inventory::DEVICES_PATH) {
            let mut disks = self.inner.disks.lock().expect("disk cache lock");
            disks.clear();
            disks.extend(
                vms.iter()
                    .map(|v| (v.moref.clone(), (v.id.clone(), v.disks.clone()))),
            );
        }
        Ok((vms, names))
    }

    /// Every VM with what a sampling cycle needs: device lists from the cache when it knows
    /// every VM (same moref, same UUID), else one retrieval with them for all.
    async fn sampling_vms(&self) -> Result<(Vec<VmRecord>, inventory::Names)> {
        let known = !self.inner.disks.lock().expect("disk cache lock").is_empty();
        if known {
            let (mut vms, names) = self.all_vms(inventory::SAMPLING_LIGHT_PATHS).await?;
            let complete = {
                let disks = self.inner.disks.lock().expect("disk cache lock");
                vms.iter_mut().all(|v| match disks.get(&v.moref) {
                    Some((id, d)) if id == &v.id => {
                        v.disks = d.clone();
                        true
                    }
                    _ => false,
                })
            };
            if complete {
                return Ok((vms, names));
            }
        }
        self.all_vms(inventory::SAMPLING_PATHS).await
    }

    /// The VM's current configuration, read fresh.
    async fn vm(&self, vm: &VmId) -> Result<VmRecord> {
        let cached = self
            .inner
            .morefs
            .lock()
            .expect("moref cache lock")
            .get(vm)
            .cloned();
        if let Some(moref) = cached {
            if let Some(record) = inventory::one_vm(&self.inner.session, &moref).await? {
                if &record.id == vm {
                    return Ok(record);
                }
            }
        }
        let (vms, _) = self.all_vms(inventory::VM_PATHS).await?;
        vms.into_iter()
            .find(|r| &r.id == vm)
            .ok_or_else(|| Error::VmNotFound {
                vm: vm.clone(),
                endpoint: self.inner.endpoint.url.clone(),
            })
    }

    fn unsupported(&self, t: &Tunable, reason: &str) -> Error {
        Error::Unsupported {
            capability: t.capability(),
            endpoint: self.inner.endpoint.url.clone(),
            reason: format!("{t}: {reason}"),
        }
    }

    fn refused(&self, vm: &VmId, refusal: Refusal) -> Error {
        match refusal {
            Refusal::NoSuchDisk(disk) => Error::DiskNotFound {
                vm: vm.clone(),
                disk,
                endpoint: self.inner.endpoint.url.clone(),
            },
            Refusal::Unsupported(t, reason) => self.unsupported(&t, &reason),
        }
    }
}

async fn keepalive(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.session.keepalive().await {
            tracing::warn!(url = %inner.endpoint.url, error = %e, "vSphere session keepalive failed");
        }
    }
}

#[async_trait]
impl Hypervisor for VSphereHypervisor {
    fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    fn connection(&self) -> ConnectionState {
        self.inner.session.state()
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let mut caps = Capabilities::default();
        for c in [
            Capability::StorageLatency,
            Capability::FlushLatency,
            Capability::DiskIopsLimit,
            Capability::DiskBytesLimit,
            Capability::DiskShares,
            Capability::CpuShares,
            Capability::CpuReservation,
            Capability::MemoryShares,
            Capability::MemoryReservation,
            Capability::BlkioWeight,
        ] {
            let support = match tuning::capability_reason(c) {
                Some(reason) => Support::Unsupported {
                    reason: reason.into(),
                },
                None => Support::Supported,
            };
            caps.set(c, support);
        }
        Ok(caps)
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn inventory(&self) -> Result<Vec<BackingVm>> {
        let (vms, names) = self.all_vms(inventory::VM_PATHS).await?;
        Ok(vms
            .iter()
            .map(|v| inventory::backing_vm(v, &names))
            .collect())
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn sample_storage(&self) -> Result<StorageSamples> {
        let (vms, names) = self.sampling_vms().await?;
        let refs: Vec<&VmRecord> = vms.iter().collect();
        let by_moref: HashMap<MoRef, &VmRecord> =
            vms.iter().map(|v| (v.moref.clone(), v)).collect();
        let mut samples = StorageSamples {
            taken_at: SystemTime::now(),
            disks: Vec::new(),
            not_ready: Vec::new(),
            placements: vms
                .iter()
                .filter_map(|v| inventory::placement(v, &names))
                .collect(),
        };
        // maxQueryMetrics caps one call, not how many run at once: a few in flight keep a
        // 1,000-VM cycle (some 30 batches) from paying every round trip in a row.
        let batches = perf::batches(&refs, self.inner.counters, self.inner.max_query_metrics);
        let mut responses = futures::stream::iter(batches)
            .map(|batch| perf::query(&self.inner.session, batch))
            .buffered(QUERY_PERF_CONCURRENCY);
        while let Some(response) = responses.next().await {
            let response = response?;
            let (disks, unready) =
                perf::latencies(&response, self.inner.counters, &by_moref, SystemTime::now());
            samples.disks.extend(disks);
            samples.not_ready.extend(unready);
        }
        Ok(samples)
    }

    async fn tunables(&self, vm: &VmId) -> Result<TunableReport> {
        let record = self.vm(vm).await?;
        let current = tuning::tunables_of(&record)
            .into_iter()
            .filter_map(|t| {
                let value = tuning::current(&record, &t)?.value()?;
                Some(Setting::new(t, value))
            })
            .collect();
        let originals = tuning::recorded(&record)
            .into_iter()
            .filter_map(|(t, raw)| Some(Setting::new(t, raw.value()?)))
            .collect();
        let unsupported = vec![(
            Tunable::BlkioWeight,
            "vSphere has no whole-VM blkio weight".to_string(),
        )];
        Ok(TunableReport {
            current,
            originals,
            unsupported,
        })
    }

    #[tracing::instrument(skip(self, settings), fields(endpoint = %self.inner.endpoint, %vm))]
    async fn apply(&self, vm: &VmId, settings: &[Setting]) -> Result<()> {
        if let Some((t, reason)) = settings
            .iter()
            .find_map(|s| tuning::unsupported(&s.tunable).map(|r| (&s.tunable, r)))
        {
            return Err(self.unsupported(t, reason));
        }
        self.reconfigure(vm, "applying tunables", |record| {
            let edits = tuning::apply_edits(record, settings).map_err(|r| self.refused(vm, r))?;
            Ok((edits, ()))
        })
        .await
    }

    #[tracing::instrument(skip(self, tunables), fields(endpoint = %self.inner.endpoint, %vm))]
    async fn revert(&self, vm: &VmId, tunables: &[Tunable]) -> Result<Vec<Setting>> {
        self.reconfigure(vm, "reverting tunables", |record| {
            tuning::revert_edits(record, tunables).map_err(|r| self.refused(vm, r))
        })
        .await
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn host_states(&self) -> Result<Vec<HostState>> {
        Ok(maintenance::states(&maintenance::hosts(self).await?))
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn enter_maintenance(&self, host: &str, timeout: Duration) -> Result<()> {
        self.enter_maintenance_mode(host, timeout).await
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn exit_maintenance(&self, host: &str, timeout: Duration) -> Result<()> {
        self.exit_maintenance_mode(host, timeout).await
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint, %vm))]
    async fn relocate(&self, vm: &VmId, host: &str, timeout: Duration) -> Result<()> {
        self.relocate_vm(vm, host, timeout).await
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn anti_affinity_rule(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<AntiAffinityRule>> {
        self.read_rule(cluster, name).await
    }

    #[tracing::instrument(skip(self, rule), fields(endpoint = %self.inner.endpoint, rule = %rule.name))]
    async fn set_anti_affinity_rule(&self, cluster: &str, rule: &AntiAffinityRule) -> Result<()> {
        self.write_rule(cluster, &rule.name, Some(rule)).await
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn remove_anti_affinity_rule(&self, cluster: &str, name: &str) -> Result<()> {
        self.write_rule(cluster, name, None).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.session.logout().await
    }
}

/// Runs every reader of vim25 responses on one response body: the SOAP envelope and fault,
/// property-collector pages into VM records (disks, allocations, recorded originals) and host
/// maintenance states, clusters' rules, the performance counters and QueryPerf samples. The fuzz target
/// `soap_response` feeds it arbitrary bytes (cargo feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub fn read_any_response(bytes: &[u8]) {
    let body = match soap::parse_response(bytes) {
        Ok(soap::Outcome::Body(body)) => body,
        Ok(soap::Outcome::Fault(_)) | Err(_) => return,
    };
    let _ = soap::localized_fault(&body);
    let mut contents = Vec::new();
    for returnval in body.all("returnval") {
        let _ = perf::counter_ids(returnval);
        // The samples below read the same answer again.
        inventory::object_contents(returnval.clone(), &mut contents);
    }
    let _ = maintenance::states(&maintenance::host_records(&contents));
    let _ = rules::cluster_records(&contents);
    let (records, names) = inventory::split_contents(&contents);
    for record in &records {
        let _ = inventory::backing_vm(record, &names);
        let _ = inventory::placement(record, &names);
        let _ = tuning::recorded(record);
        let tunables = tuning::tunables_of(record);
        for t in &tunables {
            let _ = tuning::current(record, t);
        }
        let settings: Vec<Setting> = tunables
            .iter()
            .map(|t| Setting::new(t.clone(), 7))
            .collect();
        if let Ok(edits) = tuning::apply_edits(record, &settings) {
            let _ = tuning::revert_edits(record, &tunables);
            let _ = edits;
        }
    }
    let vms: HashMap<MoRef, &VmRecord> = records.iter().map(|r| (r.moref.clone(), r)).collect();
    // The first two counters the samples name stand for read and write latency.
    let mut ids = body
        .all("returnval")
        .flat_map(|m| m.all("value"))
        .filter_map(|v| v.path_i64(&["id", "counterId"]));
    let read = ids.next().unwrap_or(1);
    let counters = perf::LatencyCounters {
        read,
        write: ids.find(|id| *id != read).unwrap_or(2),
        rates: Some((3, 4)),
    };
    // A fixed instant keeps a run reproducible: 2027-01-15T08:00:00Z.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = perf::latencies(&body, counters, &vms, now);
}
