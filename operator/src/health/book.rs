//! What the sampling loops have learnt, shared with the feedback loop: per provider its
//! connection, inventory and capabilities; per VM disk its recent samples; and the hysteresis
//! trackers, one per disk and latency budget.

use plumbline_adapters::{
    BackingVm, Capabilities, Capability, DiskLatency, HostState, VmId, VmPlacement,
};
use plumbline_crds::NodeMappingStrategy;
use plumbline_policies::health::{
    DiskHealth, HysteresisPolicy, LatencyBudget, StorageSample, UnknownCause, VmVerdict,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

/// How many samples per disk are kept, so a tracker created for a new budget starts with
/// history instead of waiting several intervals.
const KEPT_SAMPLES: usize = 8;

/// One HypervisorProvider as the health loop sees it.
#[derive(Debug, Clone)]
pub struct ProviderView {
    pub name: String,
    pub interval: Duration,
    pub mapping: NodeMappingStrategy,
    pub mapping_label: Option<String>,
    pub connected: bool,
    /// Why not connected, or where to.
    pub connection_message: String,
    /// Set through [`HealthBook::set_inventory`] (or [`ProviderView::with_inventory`] before
    /// the view joins a book), so the book's index of VMs follows.
    inventory: Vec<BackingVm>,
    /// The provider's hosts and their maintenance mode, read with the inventory, and when.
    pub hosts: Vec<HostState>,
    pub hosts_read_at: Option<SystemTime>,
    pub capabilities: Capabilities,
    pub last_sample_at: Option<SystemTime>,
    /// The widest window a sample of this provider covered (vSphere: 20 s).
    pub sample_window: Duration,
}

impl ProviderView {
    pub fn new(
        name: &str,
        interval: Duration,
        mapping: NodeMappingStrategy,
        mapping_label: Option<String>,
    ) -> Self {
        Self {
            name: name.to_string(),
            interval,
            mapping,
            mapping_label,
            connected: false,
            connection_message: "connecting".into(),
            inventory: Vec::new(),
            hosts: Vec::new(),
            hosts_read_at: None,
            capabilities: Capabilities::default(),
            last_sample_at: None,
            sample_window: interval,
        }
    }

    /// The view with `vms` as its inventory, before it joins a book.
    pub fn with_inventory(mut self, vms: Vec<BackingVm>) -> Self {
        self.inventory = vms;
        self
    }

    pub fn inventory(&self) -> &[BackingVm] {
        &self.inventory
    }

    /// Staleness follows the slower of the loop and the hypervisor's own sample window, so
    /// vSphere's 20 s realtime samples are not declared stale between two of them.
    pub fn policy(&self) -> HysteresisPolicy {
        HysteresisPolicy::for_interval(self.interval.max(self.sample_window))
    }

    pub fn can_limit_io(&self) -> bool {
        self.capabilities.supports(Capability::DiskIopsLimit)
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiskSeries {
    pub recent: VecDeque<StorageSample>,
    pub latest: Option<DiskLatency>,
}

/// Where a VM lives, for lookups by id.
#[derive(Debug, Clone)]
pub struct VmPlace<'a> {
    pub provider: &'a ProviderView,
    pub vm: &'a BackingVm,
}

#[derive(Debug, Default)]
pub struct HealthBook {
    /// Changed only through [`Self::insert_provider`], [`Self::remove_provider`] and
    /// [`Self::set_inventory`], which keep [`Self::listings`] current.
    providers: BTreeMap<String, ProviderView>,
    /// Where each VM is listed: the providers by name, with its place in their inventories;
    /// the first is its owner (see [`Self::owner_of`]). The pass looks VMs up per pod and per
    /// node, and a scan of every inventory each time cost O(pods × VMs): most of a
    /// 10,000-pod pass.
    listings: HashMap<VmId, Vec<(String, usize)>>,
    pub disks: BTreeMap<(VmId, String), DiskSeries>,
    /// I/O rate per VM (all disks) over the last sample; absent when the hypervisor does not
    /// count operations (vSphere's averaged latency counters).
    pub iops: BTreeMap<VmId, f64>,
    trackers: BTreeMap<(VmId, String, LatencyBudget), DiskHealth>,
    /// The budgets each VM is judged against, registered by the feedback loop.
    budgets: BTreeMap<VmId, BTreeSet<LatencyBudget>>,
}

impl HealthBook {
    pub fn vm(&self, id: &VmId) -> Option<VmPlace<'_>> {
        let (name, _) = self.listings.get(id)?.first()?;
        self.listed_by(name, id)
    }

    /// The VM as `provider` lists it, if it does.
    pub fn listed_by(&self, provider: &str, id: &VmId) -> Option<VmPlace<'_>> {
        let (name, at) = self.listings.get(id)?.iter().find(|(p, _)| p == provider)?;
        let provider = self.providers.get(name)?;
        let vm = provider.inventory.get(*at)?;
        Some(VmPlace { provider, vm })
    }

    pub fn providers(&self) -> &BTreeMap<String, ProviderView> {
        &self.providers
    }

    /// A provider's view, to update what is not its inventory.
    pub fn provider_mut(&mut self, name: &str) -> Option<&mut ProviderView> {
        self.providers.get_mut(name)
    }

    pub fn insert_provider(&mut self, view: ProviderView) {
        self.providers.insert(view.name.clone(), view);
        self.reindex();
    }

    pub fn remove_provider(&mut self, name: &str) {
        self.providers.remove(name);
        self.reindex();
    }

    /// Replaces a provider's inventory; false when the provider is not in the book.
    pub fn set_inventory(&mut self, provider: &str, vms: Vec<BackingVm>) -> bool {
        let Some(view) = self.providers.get_mut(provider) else {
            return false;
        };
        view.inventory = vms;
        self.reindex();
        true
    }

    /// Rebuilds [`Self::listings`].
    fn reindex(&mut self) {
        self.listings.clear();
        for (name, view) in &self.providers {
            for (at, vm) in view.inventory.iter().enumerate() {
                self.listings
                    .entry(vm.id.clone())
                    .or_default()
                    .push((name.clone(), at));
            }
        }
    }

    /// Every VM once, with the provider that owns it (see [`Self::owner_of`]).
    pub fn all_vms(&self) -> impl Iterator<Item = VmPlace<'_>> {
        self.providers
            .values()
            .flat_map(|p| {
                p.inventory()
                    .iter()
                    .map(move |vm| VmPlace { provider: p, vm })
            })
            .filter(|place| self.owner_of(&place.vm.id) == Some(place.provider.name.as_str()))
    }

    /// The provider a VM is judged by when several providers reach the same hypervisor (two
    /// HypervisorProviders for one libvirt): the first by name that lists it.
    pub fn owner_of(&self, id: &VmId) -> Option<&str> {
        self.vm(id).map(|p| p.provider.name.as_str())
    }

    /// Moves a provider's VMs to where this cycle's samples found them (a vMotion shows here
    /// within one cycle; the rest of the inventory waits for its next read). Returns how many
    /// VMs changed host or cluster.
    pub fn record_placements(&mut self, provider: &str, placements: &[VmPlacement]) -> usize {
        let Some(view) = self.providers.get_mut(provider) else {
            return 0;
        };
        let mut moved = 0;
        for p in placements {
            if let Some(vm) = view.inventory.iter_mut().find(|vm| vm.id == p.vm) {
                if vm.host != p.host || vm.cluster != p.cluster {
                    vm.host = p.host.clone();
                    vm.cluster = p.cluster.clone();
                    moved += 1;
                }
            }
        }
        moved
    }

    /// Records one cycle's samples of a provider and feeds every tracker of those disks.
    /// Samples of VMs another provider owns are dropped: two samplers taking turns on one disk
    /// would double its sample rate and halve the hysteresis.
    pub fn record_samples(&mut self, provider: &str, taken_at: SystemTime, disks: &[DiskLatency]) {
        let owned: BTreeSet<VmId> = disks
            .iter()
            .map(|d| d.vm.clone())
            .filter(|vm| self.owner_of(vm) == Some(provider))
            .collect();
        let disks: Vec<&DiskLatency> = disks.iter().filter(|d| owned.contains(&d.vm)).collect();
        let Some(view) = self.providers.get_mut(provider) else {
            return;
        };
        view.last_sample_at = Some(taken_at);
        if let Some(widest) = disks.iter().map(|d| d.window).max() {
            view.sample_window = view.sample_window.max(widest);
        }
        let policy = view.policy();
        let mut iops: BTreeMap<VmId, f64> = BTreeMap::new();
        for d in disks {
            let sample = StorageSample::from_read_write(
                d.observed_at,
                d.read.map(|o| o.mean),
                d.write.map(|o| o.mean),
            );
            // `None` when the hypervisor counts no operations; a direction it has no count
            // for adds nothing (a lower bound never makes a VM look noisier than it is).
            let counted: Vec<u64> = [d.read, d.write]
                .into_iter()
                .flatten()
                .filter_map(|o| o.ops)
                .collect();
            let ops: Option<u64> = (!counted.is_empty()).then(|| counted.iter().sum());
            if let (Some(ops), false) = (ops, d.window.is_zero()) {
                *iops.entry(d.vm.clone()).or_default() += ops as f64 / d.window.as_secs_f64();
            }
            let series = self
                .disks
                .entry((d.vm.clone(), d.disk.clone()))
                .or_default();
            if series
                .recent
                .back()
                .is_some_and(|last| last.at >= sample.at)
            {
                continue;
            }
            series.recent.push_back(sample);
            while series.recent.len() > KEPT_SAMPLES {
                series.recent.pop_front();
            }
            series.latest = Some((*d).clone());
            for budget in self.budgets.get(&d.vm).into_iter().flatten() {
                self.trackers
                    .entry((d.vm.clone(), d.disk.clone(), *budget))
                    .or_insert_with(|| DiskHealth::new(*budget))
                    .observe(sample, &policy);
            }
        }
        // A VM of this provider that reported no operations this cycle has no current rate: an
        // old one would keep it looking noisy (or quiet) forever.
        let sampled: BTreeSet<VmId> = self.providers[provider]
            .inventory()
            .iter()
            .map(|vm| vm.id.clone())
            .filter(|id| self.owner_of(id) == Some(provider))
            .collect();
        self.iops.retain(|vm, _| !sampled.contains(vm));
        self.iops.extend(iops);
    }

    /// The VM's verdict against `budget` at `now`. Registers the budget on first use and
    /// replays the kept samples into the new tracker.
    pub fn verdict(&mut self, vm: &VmId, budget: LatencyBudget, now: SystemTime) -> VmVerdict {
        let Some((connected, policy)) = self
            .vm(vm)
            .map(|p| (p.provider.connected, p.provider.policy()))
        else {
            return VmVerdict::unknown(UnknownCause::NotBacked);
        };
        if !connected {
            // A lost connection is no evidence of anything: unknown at once, not after the
            // staleness limit.
            return VmVerdict::unknown(UnknownCause::NoSamples);
        }
        if self.budgets.entry(vm.clone()).or_default().insert(budget) {
            for ((id, disk), series) in self.disks.range((vm.clone(), String::new())..) {
                if id != vm {
                    break;
                }
                let tracker = self
                    .trackers
                    .entry((vm.clone(), disk.clone(), budget))
                    .or_insert_with(|| DiskHealth::new(budget));
                for s in &series.recent {
                    tracker.observe(*s, &policy);
                }
            }
        }
        let verdicts: Vec<(&str, _)> = self
            .trackers
            .range((vm.clone(), String::new(), LatencyBudget(Duration::ZERO))..)
            .take_while(|((id, _, _), _)| id == vm)
            .filter(|((_, _, b), _)| *b == budget)
            .map(|((_, disk, _), t)| (disk.as_str(), t.verdict(now, &policy)))
            .collect();
        VmVerdict::worst_of(verdicts)
    }

    /// Forgets budgets (and their trackers) nobody asked for in the last feedback pass, disks
    /// of VMs that left the inventory, and I/O rates that are not current at `now`.
    pub fn retain_budgets(
        &mut self,
        wanted: &BTreeMap<VmId, BTreeSet<LatencyBudget>>,
        now: SystemTime,
    ) {
        self.budgets.retain(|vm, budgets| {
            budgets.retain(|b| wanted.get(vm).is_some_and(|w| w.contains(b)));
            !budgets.is_empty()
        });
        let budgets = &self.budgets;
        self.trackers
            .retain(|(vm, _, b), _| budgets.get(vm).is_some_and(|set| set.contains(b)));
        let known: BTreeSet<VmId> = self.all_vms().map(|p| p.vm.id.clone()).collect();
        self.disks.retain(|(vm, _), _| known.contains(vm));
        // Rates of a provider that lost its connection or stopped sampling are stale.
        let current: BTreeSet<VmId> = self
            .all_vms()
            .filter(|p| {
                p.provider.connected
                    && p.provider.last_sample_at.is_some_and(|at| {
                        now.duration_since(at).unwrap_or_default()
                            <= p.provider.policy().stale_after
                    })
            })
            .map(|p| p.vm.id.clone())
            .collect();
        self.iops
            .retain(|vm, _| known.contains(vm) && current.contains(vm));
    }

    /// The newest sample of the VM's slowest disk, for status and messages.
    pub fn latest_latency(&self, vm: &VmId) -> Option<(Duration, SystemTime)> {
        self.disks
            .range((vm.clone(), String::new())..)
            .take_while(|((id, _), _)| id == vm)
            .filter_map(|(_, s)| s.recent.back())
            .filter_map(|s| s.per_op.map(|l| (l, s.at)))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_adapters::OpLatency;
    use plumbline_policies::health::HealthState;
    use std::time::UNIX_EPOCH;

    fn vm(id: &str) -> BackingVm {
        BackingVm {
            id: VmId::new(id),
            name: format!("vm-{id}"),
            provider_id: format!("libvirt:///{id}"),
            host: "h".into(),
            cluster: None,
            datastores: vec![],
            disks: vec![],
            running: true,
        }
    }

    fn sample(id: &str, secs: u64, ms: u64, ops: u64) -> DiskLatency {
        let op = OpLatency {
            mean: Duration::from_millis(ms),
            ops: Some(ops),
        };
        DiskLatency {
            vm: VmId::new(id),
            disk: "vda".into(),
            read: Some(op),
            write: Some(op),
            flush: None,
            window: Duration::from_secs(1),
            observed_at: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    fn book() -> HealthBook {
        let mut b = HealthBook::default();
        let mut p = ProviderView::new(
            "kvm",
            Duration::from_secs(1),
            NodeMappingStrategy::ProviderId,
            None,
        );
        p.connected = true;
        b.insert_provider(p.with_inventory(vec![vm("a")]));
        b
    }

    #[test]
    fn a_new_budget_replays_history() {
        let mut b = book();
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 1, 50, 10)]);
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 2, 50, 10)]);
        let v = b.verdict(
            &VmId::new("a"),
            LatencyBudget::from_millis(20),
            UNIX_EPOCH + Duration::from_secs(2),
        );
        assert_eq!(v.state(), HealthState::Degraded);
        assert_eq!(b.iops[&VmId::new("a")], 20.0);
        let v = b.verdict(
            &VmId::new("a"),
            LatencyBudget::from_millis(100),
            UNIX_EPOCH + Duration::from_secs(2),
        );
        assert_eq!(v.state(), HealthState::Healthy);
    }

    #[test]
    fn a_second_provider_for_the_same_vms_does_not_double_the_sample_rate() {
        let mut b = book();
        let mut p = ProviderView::new(
            "kvm-2",
            Duration::from_secs(1),
            NodeMappingStrategy::ProviderId,
            None,
        );
        p.connected = true;
        b.insert_provider(p.with_inventory(vec![vm("a")]));
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 1, 50, 10)]);
        let mut late = sample("a", 1, 50, 10);
        late.observed_at += Duration::from_millis(500);
        b.record_samples("kvm-2", UNIX_EPOCH, &[late]);
        let v = b.verdict(
            &VmId::new("a"),
            LatencyBudget::from_millis(20),
            UNIX_EPOCH + Duration::from_secs(2),
        );
        assert_eq!(v.state(), HealthState::Unknown, "one sample is not two");
    }

    #[test]
    fn disconnected_provider_is_unknown_at_once() {
        let mut b = book();
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 1, 50, 10)]);
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 2, 50, 10)]);
        b.providers.get_mut("kvm").unwrap().connected = false;
        let v = b.verdict(
            &VmId::new("a"),
            LatencyBudget::from_millis(20),
            UNIX_EPOCH + Duration::from_secs(2),
        );
        assert_eq!(v.state(), HealthState::Unknown);
        let v = b.verdict(&VmId::new("zz"), LatencyBudget::from_millis(20), UNIX_EPOCH);
        assert_eq!(v.state(), HealthState::Unknown);
    }

    #[test]
    fn stale_and_disconnected_iops_are_forgotten() {
        let mut b = book();
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 1, 50, 10)]);
        assert_eq!(b.iops[&VmId::new("a")], 20.0);
        let wanted = BTreeMap::new();
        b.retain_budgets(&wanted, UNIX_EPOCH + Duration::from_secs(1));
        assert!(b.iops.contains_key(&VmId::new("a")), "current");
        b.retain_budgets(&wanted, UNIX_EPOCH + Duration::from_secs(3600));
        assert!(!b.iops.contains_key(&VmId::new("a")), "an hour old");
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 2, 50, 10)]);
        b.providers.get_mut("kvm").unwrap().connected = false;
        b.retain_budgets(&wanted, UNIX_EPOCH);
        assert!(!b.iops.contains_key(&VmId::new("a")), "disconnected");
        // A cycle that no longer reports the VM drops its old rate.
        b.providers.get_mut("kvm").unwrap().connected = true;
        b.record_samples("kvm", UNIX_EPOCH, &[sample("a", 3, 50, 10)]);
        b.record_samples("kvm", UNIX_EPOCH, &[]);
        assert!(!b.iops.contains_key(&VmId::new("a")));
    }
}
