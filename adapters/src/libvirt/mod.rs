//! The libvirt adapter (cargo feature `libvirt`).

mod connection;
mod domain_xml;
mod ffi;
mod metadata;
mod stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use virt::{connect::Connect, domain::Domain};
use virt_sys as sys;

use self::{connection::Connection, metadata::Records};
use crate::{
    AntiAffinityRule, BackingVm, Capabilities, Capability, ConnectionState, CounterHistory,
    DiskLimit, Endpoint, Error, HostState, Hypervisor, HypervisorKind, LibvirtConfig, Result,
    Setting, StorageSamples, Support, Tunable, TunableReport, VmId,
};

/// How long one libvirt call may take before the cycle gives up on it. Bulk stats use the
/// no-wait flag, so a domain stuck in a job is skipped rather than stalling the call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Live if running, persistent config otherwise: a change and its record share a lifetime.
const AFFECT_CURRENT: u32 = sys::VIR_DOMAIN_AFFECT_CURRENT;

#[derive(Debug, Default)]
struct Sampling {
    epoch: u64,
    history: CounterHistory,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    connection: Connection,
    sampling: Mutex<Sampling>,
    /// Capabilities probed on the connection of the given epoch.
    capabilities: Mutex<Option<(u64, Capabilities)>>,
}

/// One libvirt host (`qemu:///system`, `qemu+tcp://…`, `qemu+tls://…`).
#[derive(Debug, Clone)]
pub struct LibvirtHypervisor {
    inner: Arc<Inner>,
}

fn libvirt_err(
    action: &'static str,
    target: impl Into<String>,
    uri: &str,
) -> impl FnOnce(virt::error::Error) -> Error {
    let target = target.into();
    let uri = uri.to_string();
    move |source| Error::Libvirt {
        action,
        target,
        uri,
        source,
    }
}

fn code(e: &virt::error::Error) -> u32 {
    e.code().to_raw()
}

impl LibvirtHypervisor {
    pub async fn connect(config: LibvirtConfig) -> Result<Self> {
        let uri = config.uri.clone();
        let connection = tokio::task::spawn_blocking(move || Connection::open(&uri))
            .await
            .map_err(|source| Error::Worker {
                action: "connecting",
                endpoint: config.uri.clone(),
                source,
            })?
            .map_err(libvirt_err(
                "opening a connection",
                "the libvirt daemon",
                &config.uri,
            ))?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint: Endpoint {
                    kind: HypervisorKind::Libvirt,
                    url: config.uri,
                },
                connection,
                sampling: Mutex::new(Sampling::default()),
                capabilities: Mutex::new(None),
            }),
        })
    }

    fn uri(&self) -> &str {
        &self.inner.endpoint.url
    }

    /// Runs `f` with the live connection on the blocking pool, bounded by [`CALL_TIMEOUT`].
    /// A failure that leaves the connection dead marks it lost and is reported as
    /// [`Error::Disconnected`]; the next call reconnects (with backoff).
    fn no_maintenance_mode(&self, operation: &'static str) -> Error {
        self.no_such_operation(operation, "libvirt has no host maintenance mode")
    }

    fn no_drs(&self, operation: &'static str) -> Error {
        self.no_such_operation(operation, "libvirt has no compute clusters and no DRS")
    }

    fn no_such_operation(&self, operation: &'static str, reason: &str) -> Error {
        Error::UnsupportedOperation {
            operation,
            endpoint: self.uri().to_string(),
            reason: reason.into(),
        }
    }

    async fn run<T, F>(&self, action: &'static str, target: String, f: F) -> Result<(T, u64)>
    where
        T: Send + 'static,
        F: FnOnce(&Connect, &str) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let uri = inner.endpoint.url.clone();
            let (conn, epoch) = inner
                .connection
                .get()
                .map_err(|reason| Error::Disconnected {
                    endpoint: uri.clone(),
                    reason,
                })?;
            match f(&conn, &uri) {
                Ok(v) => Ok((v, epoch)),
                Err(Error::Libvirt { source, .. })
                    if [sys::VIR_ERR_NO_CONNECT, sys::VIR_ERR_INVALID_CONN]
                        .contains(&code(&source))
                        || !conn.is_alive().unwrap_or(false) =>
                {
                    inner.connection.lost(epoch, &source.to_string());
                    Err(Error::Disconnected {
                        endpoint: uri,
                        reason: format!("{action}: {source}"),
                    })
                }
                Err(e) => Err(e),
            }
        });
        match tokio::time::timeout(CALL_TIMEOUT, task).await {
            Err(_) => Err(Error::Timeout {
                action,
                target,
                endpoint: self.uri().to_string(),
                after: CALL_TIMEOUT,
            }),
            Ok(Err(source)) => Err(Error::Worker {
                action,
                endpoint: self.uri().to_string(),
                source,
            }),
            Ok(Ok(result)) => result,
        }
    }

    async fn ensure_supported(&self, settings: &[Setting]) -> Result<()> {
        let caps = self.capabilities().await?;
        for s in settings {
            match caps.support(s.tunable.capability()) {
                Support::Supported => {}
                Support::Unsupported { reason } | Support::Unknown { reason } => {
                    return Err(Error::Unsupported {
                        capability: s.tunable.capability(),
                        endpoint: self.uri().to_string(),
                        reason: format!("{}: {reason}", s.tunable),
                    })
                }
            }
        }
        Ok(())
    }
}

fn lookup(conn: &Connect, uri: &str, vm: &VmId) -> Result<Domain> {
    conn.lookup_domain_by_uuid_string(vm.as_str()).map_err(|e| {
        if code(&e) == sys::VIR_ERR_NO_DOMAIN {
            Error::VmNotFound {
                vm: vm.clone(),
                endpoint: uri.to_string(),
            }
        } else {
            libvirt_err("looking up", format!("domain {vm}"), uri)(e)
        }
    })
}

fn domain_xml(dom: &Domain, uri: &str, target: &str) -> Result<String> {
    dom.xml_desc(0)
        .map_err(libvirt_err("reading the domain XML", target, uri))
}

fn disk_names_in(xml: &str, target: &str) -> Result<Vec<String>> {
    let disks = domain_xml::disks(xml).map_err(|source| Error::XmlRead {
        what: format!("XML of {target}"),
        source,
    })?;
    Ok(disks.into_iter().map(|d| d.name).collect())
}

fn disk_names(dom: &Domain, uri: &str, target: &str) -> Result<Vec<String>> {
    disk_names_in(&domain_xml(dom, uri, target)?, target)
}

/// The recorded originals, read with the domain XML (live if running, like the records).
fn records_in(xml: &str, target: &str) -> Result<Records> {
    Records::from_domain_xml(xml).map_err(|source| Error::XmlRead {
        what: format!("Plumbline metadata of {target}"),
        source,
    })
}

fn write_record(dom: &Domain, uri: &str, target: &str, original: &Setting) -> Result<()> {
    dom.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(&metadata::record_xml(original)),
        Some(&metadata::prefix(&original.tunable)),
        Some(&metadata::namespace(&original.tunable)),
        AFFECT_CURRENT,
    )
    .map_err(libvirt_err("recording an original", target, uri))
}

fn remove_record(dom: &Domain, uri: &str, target: &str, tunable: &Tunable) -> Result<()> {
    dom.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        None,
        None,
        Some(&metadata::namespace(tunable)),
        AFFECT_CURRENT,
    )
    .map_err(libvirt_err("removing a recorded original", target, uri))
}

/// Drops restored tunables from the legacy element. Read again just before rewriting, so the
/// window in which another writer of that element can be overwritten stays small; nothing
/// writes new records there any more.
fn drop_legacy(dom: &Domain, uri: &str, target: &str, restored: &[&Tunable]) -> Result<()> {
    let kind = sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
    let legacy = match dom.metadata(kind, Some(metadata::LEGACY_NAMESPACE), AFFECT_CURRENT) {
        Ok(xml) => metadata::legacy_from_xml(&xml).map_err(|source| Error::XmlRead {
            what: format!("Plumbline metadata of {target}"),
            source,
        })?,
        Err(e) if code(&e) == sys::VIR_ERR_NO_DOMAIN_METADATA => return Ok(()),
        Err(e) => return Err(libvirt_err("reading recorded originals", target, uri)(e)),
    };
    let keep: Vec<Setting> = legacy
        .iter()
        .filter(|s| !restored.contains(&&s.tunable))
        .cloned()
        .collect();
    if keep.len() == legacy.len() {
        return Ok(());
    }
    let result = if keep.is_empty() {
        dom.set_metadata(
            kind,
            None,
            None,
            Some(metadata::LEGACY_NAMESPACE),
            AFFECT_CURRENT,
        )
    } else {
        dom.set_metadata(
            kind,
            Some(&metadata::legacy_xml(&keep)),
            Some(metadata::LEGACY_PREFIX),
            Some(metadata::LEGACY_NAMESPACE),
            AFFECT_CURRENT,
        )
    };
    result.map_err(libvirt_err("removing restored originals", target, uri))
}

/// Current value of one tunable.
fn read_tunable(dom: &Domain, uri: &str, target: &str, t: &Tunable) -> Result<u64> {
    let missing = |what: &str| Error::Protocol {
        action: format!("reading {t} of {target}"),
        url: uri.to_string(),
        message: format!("libvirt reported no {what}"),
    };
    match t {
        Tunable::DiskLimit { disk, limit } => {
            let params = ffi::block_io_tune(dom, disk, AFFECT_CURRENT).map_err(libvirt_err(
                "reading block I/O limits",
                format!("{target} disk {disk}"),
                uri,
            ))?;
            params
                .iter()
                .find(|(k, _)| k == limit.key())
                .and_then(|(_, v)| v.as_u64())
                .ok_or_else(|| missing(limit.key()))
        }
        Tunable::CpuShares => ffi::scheduler_parameters(dom, AFFECT_CURRENT)
            .map_err(libvirt_err("reading scheduler parameters", target, uri))?
            .iter()
            .find(|(k, _)| k == "cpu_shares")
            .and_then(|(_, v)| v.as_u64())
            .ok_or_else(|| missing("cpu_shares")),
        Tunable::BlkioWeight => ffi::blkio_parameters(dom, AFFECT_CURRENT)
            .map_err(libvirt_err("reading blkio parameters", target, uri))?
            .iter()
            .find(|(k, _)| k == "weight")
            .and_then(|(_, v)| v.as_u64())
            .ok_or_else(|| missing("weight")),
        other => Err(Error::Unsupported {
            capability: other.capability(),
            endpoint: uri.to_string(),
            reason: format!("{other} has no libvirt equivalent"),
        }),
    }
}

/// Applies settings, grouping disk limits into one block I/O tune call per disk.
fn write_tunables(dom: &Domain, uri: &str, target: &str, settings: &[Setting]) -> Result<()> {
    let mut per_disk: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for s in settings {
        match &s.tunable {
            Tunable::DiskLimit { disk, limit } => per_disk
                .entry(disk)
                .or_default()
                .push((limit.key(), s.value)),
            Tunable::CpuShares => ffi::set_cpu_shares(dom, s.value, AFFECT_CURRENT)
                .map_err(libvirt_err("setting cpu_shares", target, uri))?,
            Tunable::BlkioWeight => {
                let weight = u32::try_from(s.value).map_err(|_| Error::Config {
                    message: format!("blkio weight {} for {target} is out of range", s.value),
                })?;
                ffi::set_blkio_weight(dom, weight, AFFECT_CURRENT).map_err(libvirt_err(
                    "setting blkio weight",
                    target,
                    uri,
                ))?
            }
            other => {
                return Err(Error::Unsupported {
                    capability: other.capability(),
                    endpoint: uri.to_string(),
                    reason: format!("{other} has no libvirt equivalent"),
                })
            }
        }
    }
    for (disk, values) in per_disk {
        ffi::set_block_io_tune(dom, disk, &values, AFFECT_CURRENT).map_err(libvirt_err(
            "setting block I/O limits",
            format!("{target} disk {disk}"),
            uri,
        ))?;
    }
    Ok(())
}

/// Probes what this host supports with the first running domain.
fn probe(conn: &Connect, uri: &str) -> Result<Capabilities> {
    let mut caps = Capabilities::default();
    caps.set(Capability::StorageLatency, Support::Supported);
    caps.set(Capability::FlushLatency, Support::Supported);
    for (c, what) in [
        (
            Capability::DiskShares,
            "libvirt has no per-disk shares; use blkio weight",
        ),
        (Capability::CpuReservation, "libvirt has no CPU reservation"),
        (Capability::MemoryShares, "libvirt has no memory shares"),
        (
            Capability::MemoryReservation,
            "libvirt has no memory reservation",
        ),
    ] {
        caps.set(
            c,
            Support::Unsupported {
                reason: what.into(),
            },
        );
    }
    let domains = conn
        .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        .map_err(libvirt_err("listing running domains", "the host", uri))?;
    let probe_with = domains.iter().find_map(|d| {
        let name = d.name().ok()?;
        let disk = disk_names(d, uri, &format!("domain {name}"))
            .ok()?
            .into_iter()
            .next()?;
        Some((d, name, disk))
    });
    let Some((dom, name, disk)) = probe_with else {
        let unknown = Support::Unknown {
            reason: "no running domain with a disk to probe".into(),
        };
        for c in [
            Capability::DiskIopsLimit,
            Capability::DiskBytesLimit,
            Capability::CpuShares,
            Capability::BlkioWeight,
        ] {
            caps.set(c, unknown.clone());
        }
        return Ok(caps);
    };
    let verdict = |r: std::result::Result<ffi::Params, virt::error::Error>, key: &str| match r {
        Ok(p) if p.iter().any(|(k, _)| k == key) => Support::Supported,
        Ok(_) => Support::Unsupported {
            reason: format!("libvirt reports no {key} parameter"),
        },
        // e.g. "cgroup CPU controller is not mounted": a host property, reported once.
        Err(e) => Support::Unsupported {
            reason: e.message().to_string(),
        },
    };
    let iotune = verdict(
        ffi::block_io_tune(dom, &disk, AFFECT_CURRENT),
        "total_iops_sec",
    );
    caps.set(Capability::DiskIopsLimit, iotune.clone());
    caps.set(Capability::DiskBytesLimit, iotune);
    caps.set(
        Capability::CpuShares,
        verdict(ffi::scheduler_parameters(dom, AFFECT_CURRENT), "cpu_shares"),
    );
    caps.set(
        Capability::BlkioWeight,
        verdict(ffi::blkio_parameters(dom, AFFECT_CURRENT), "weight"),
    );
    if !conn.is_alive().unwrap_or(false) {
        // A probe that failed because the daemon went away says nothing about the host.
        return Err(Error::Disconnected {
            endpoint: uri.to_string(),
            reason: format!("lost while probing capabilities with {name}"),
        });
    }
    Ok(caps)
}

#[async_trait]
impl Hypervisor for LibvirtHypervisor {
    fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    fn connection(&self) -> ConnectionState {
        self.inner.connection.state()
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let cached = self
            .inner
            .capabilities
            .lock()
            .expect("capabilities lock")
            .clone();
        if let Some((epoch, caps)) = cached {
            // Re-probed after a reconnect: the daemon (and its cgroup setup) may have changed.
            if epoch == self.inner.connection.epoch()
                && !caps.incomplete()
                && self.connection().is_connected()
            {
                return Ok(caps);
            }
        }
        let (caps, epoch) = self
            .run("probing capabilities", "the host".into(), probe)
            .await?;
        *self.inner.capabilities.lock().expect("capabilities lock") = Some((epoch, caps.clone()));
        Ok(caps)
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn inventory(&self) -> Result<Vec<BackingVm>> {
        let (vms, _) = self
            .run("listing domains", "the host".into(), |conn, uri| {
                let host = conn.hostname().map_err(libvirt_err(
                    "reading the hostname",
                    "the host",
                    uri,
                ))?;
                let domains = conn.list_all_domains(0).map_err(libvirt_err(
                    "listing domains",
                    "the host",
                    uri,
                ))?;
                let mut vms = Vec::with_capacity(domains.len());
                for d in &domains {
                    let name =
                        d.name()
                            .map_err(libvirt_err("reading a domain name", "a domain", uri))?;
                    let target = format!("domain {name}");
                    let uuid = d.uuid_string().map_err(libvirt_err(
                        "reading the UUID",
                        target.as_str(),
                        uri,
                    ))?;
                    let xml = d.xml_desc(0).map_err(libvirt_err(
                        "reading the domain XML",
                        target.as_str(),
                        uri,
                    ))?;
                    let disks = domain_xml::disks(&xml).map_err(|source| Error::XmlRead {
                        what: format!("XML of {target}"),
                        source,
                    })?;
                    let datastores: BTreeSet<String> =
                        disks.iter().filter_map(|d| d.datastore.clone()).collect();
                    let id = VmId::new(&uuid);
                    vms.push(BackingVm {
                        provider_id: format!("libvirt:///{id}"),
                        id,
                        name,
                        host: host.clone(),
                        cluster: None,
                        datastores: datastores.into_iter().collect(),
                        disks,
                        running: d.is_active().unwrap_or(false),
                    });
                }
                Ok(vms)
            })
            .await?;
        Ok(vms)
    }

    #[tracing::instrument(skip(self), fields(endpoint = %self.inner.endpoint))]
    async fn sample_storage(&self) -> Result<StorageSamples> {
        let ((records, at, observed_at), epoch) = self
            .run(
                "sampling block stats",
                "all running domains".into(),
                |conn, uri| {
                    let records = ffi::all_domain_stats(
                        conn,
                        sys::VIR_DOMAIN_STATS_BLOCK,
                        sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                            | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                    )
                    .map_err(libvirt_err(
                        "sampling block stats",
                        "all running domains",
                        uri,
                    ))?;
                    Ok((records, Instant::now(), SystemTime::now()))
                },
            )
            .await?;
        let readings = stats::disk_readings(&records);
        let mut sampling = self.inner.sampling.lock().expect("sampling lock");
        if sampling.epoch != epoch {
            // Never compute a window across a reconnect: start again from a baseline.
            sampling.history.clear();
            sampling.epoch = epoch;
        }
        let (disks, not_ready) = sampling.history.observe(readings, at, observed_at);
        Ok(StorageSamples {
            taken_at: observed_at,
            disks,
            not_ready,
            placements: Vec::new(),
        })
    }

    async fn tunables(&self, vm: &VmId) -> Result<TunableReport> {
        let caps = self.capabilities().await?;
        let vm = vm.clone();
        let (report, _) = self
            .run("reading tunables", vm.to_string(), move |conn, uri| {
                let dom = lookup(conn, uri, &vm)?;
                let target = format!("domain {}", dom.name().unwrap_or_else(|_| vm.to_string()));
                let xml = domain_xml(&dom, uri, &target)?;
                let mut wanted = vec![Tunable::CpuShares, Tunable::BlkioWeight];
                for disk in disk_names_in(&xml, &target)? {
                    wanted.extend(DiskLimit::ALL.map(|limit| Tunable::DiskLimit {
                        disk: disk.clone(),
                        limit,
                    }));
                }
                let mut report = TunableReport {
                    originals: records_in(&xml, &target)?.originals(),
                    ..TunableReport::default()
                };
                for t in wanted {
                    match caps.support(t.capability()) {
                        Support::Supported => {
                            let value = read_tunable(&dom, uri, &target, &t)?;
                            report.current.push(Setting::new(t, value));
                        }
                        Support::Unsupported { reason } | Support::Unknown { reason } => {
                            report.unsupported.push((t, reason))
                        }
                    }
                }
                Ok(report)
            })
            .await?;
        Ok(report)
    }

    #[tracing::instrument(skip(self, settings), fields(endpoint = %self.inner.endpoint, %vm))]
    async fn apply(&self, vm: &VmId, settings: &[Setting]) -> Result<()> {
        self.ensure_supported(settings).await?;
        let vm = vm.clone();
        let settings = settings.to_vec();
        self.run("applying tunables", vm.to_string(), move |conn, uri| {
            let dom = lookup(conn, uri, &vm)?;
            let target = format!("domain {}", dom.name().unwrap_or_else(|_| vm.to_string()));
            let records = records_in(&domain_xml(&dom, uri, &target)?, &target)?;
            let mut recorded: Vec<&Tunable> = Vec::new();
            for s in &settings {
                if records.original(&s.tunable).is_some() || recorded.contains(&&s.tunable) {
                    continue;
                }
                // Record first: a crash after the change must still leave the original behind.
                let current = read_tunable(&dom, uri, &target, &s.tunable)?;
                write_record(
                    &dom,
                    uri,
                    &target,
                    &Setting::new(s.tunable.clone(), current),
                )?;
                recorded.push(&s.tunable);
            }
            write_tunables(&dom, uri, &target, &settings)
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self, tunables), fields(endpoint = %self.inner.endpoint, %vm))]
    async fn revert(&self, vm: &VmId, tunables: &[Tunable]) -> Result<Vec<Setting>> {
        let vm = vm.clone();
        let tunables = tunables.to_vec();
        let (restored, _) = self
            .run("reverting tunables", vm.to_string(), move |conn, uri| {
                let dom = lookup(conn, uri, &vm)?;
                let target = format!("domain {}", dom.name().unwrap_or_else(|_| vm.to_string()));
                let records = records_in(&domain_xml(&dom, uri, &target)?, &target)?;
                let mut restore: Vec<Setting> = Vec::new();
                for t in &tunables {
                    if let Some(value) = records.original(t) {
                        if !restore.iter().any(|s| &s.tunable == t) {
                            restore.push(Setting::new(t.clone(), value));
                        }
                    }
                }
                if restore.is_empty() {
                    return Ok(restore);
                }
                write_tunables(&dom, uri, &target, &restore)?;
                // Forget the records only once the originals are back in place.
                for s in &restore {
                    if records.has_own(&s.tunable) {
                        remove_record(&dom, uri, &target, &s.tunable)?;
                    }
                }
                let legacy: Vec<&Tunable> = restore
                    .iter()
                    .map(|s| &s.tunable)
                    .filter(|t| records.has_legacy(t))
                    .collect();
                if !legacy.is_empty() {
                    drop_legacy(&dom, uri, &target, &legacy)?;
                }
                Ok(restore)
            })
            .await?;
        Ok(restored)
    }

    /// The one host of the connection, by the hostname [`Hypervisor::inventory`] gives its
    /// VMs. libvirt has no maintenance mode, so it is never in or entering one: a host that
    /// goes down unannounced is seen only when it is gone.
    async fn host_states(&self) -> Result<Vec<HostState>> {
        let (name, _) = self
            .run("reading the hostname", "the host".into(), |conn, uri| {
                conn.hostname()
                    .map_err(libvirt_err("reading the hostname", "the host", uri))
            })
            .await?;
        Ok(vec![HostState {
            name,
            in_maintenance: false,
            entering: false,
            cluster: None,
        }])
    }

    async fn enter_maintenance(&self, _host: &str, _timeout: Duration) -> Result<()> {
        Err(self.no_maintenance_mode("entering maintenance mode"))
    }

    async fn exit_maintenance(&self, _host: &str, _timeout: Duration) -> Result<()> {
        Err(self.no_maintenance_mode("leaving maintenance mode"))
    }

    async fn relocate(&self, _vm: &VmId, _host: &str, _timeout: Duration) -> Result<()> {
        Err(self.no_such_operation(
            "relocating a VM",
            "a libvirt provider is one host: moving a VM to another host is a migration between providers",
        ))
    }

    async fn anti_affinity_rule(
        &self,
        _cluster: &str,
        _name: &str,
    ) -> Result<Option<AntiAffinityRule>> {
        Err(self.no_drs("reading an anti-affinity rule"))
    }

    async fn set_anti_affinity_rule(&self, _cluster: &str, _rule: &AntiAffinityRule) -> Result<()> {
        Err(self.no_drs("writing an anti-affinity rule"))
    }

    async fn remove_anti_affinity_rule(&self, _cluster: &str, _name: &str) -> Result<()> {
        Err(self.no_drs("removing an anti-affinity rule"))
    }

    async fn close(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.connection.close())
            .await
            .map_err(|source| Error::Worker {
                action: "closing",
                endpoint: self.uri().to_string(),
                source,
            })
    }
}

/// Runs every reader of libvirt XML on one document: the disks of a domain description, the
/// per-tunable and legacy records of originals in its `<metadata>`, and the legacy element
/// as `virDomainGetMetadata` returns it. The fuzz target `libvirt_xml` feeds it arbitrary
/// text (cargo feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub fn read_any_domain_xml(xml: &str) {
    let _ = domain_xml::disks(xml);
    if let Ok(records) = Records::from_domain_xml(xml) {
        for s in records.originals() {
            let _ = (records.has_own(&s.tunable), records.has_legacy(&s.tunable));
            // What is read back is what would be written again.
            let again = Records::from_domain_xml(&format!(
                "<domain><metadata><{p}:original xmlns:{p}=\"{ns}\" {rest}</metadata></domain>",
                p = metadata::prefix(&s.tunable),
                ns = metadata::namespace(&s.tunable),
                rest = metadata::record_xml(&s).trim_start_matches("<original "),
            ))
            .expect("a record we write parses");
            assert_eq!(again.own, vec![s], "a record reads back as written");
        }
    }
    if let Ok(legacy) = metadata::legacy_from_xml(xml) {
        let again = metadata::legacy_from_xml(&metadata::legacy_xml(&legacy))
            .expect("a legacy element we write parses");
        assert_eq!(again, legacy, "legacy records read back as written");
    }
}
