//! vSphere tunables: where each one lives in a VM's configuration, how its original is
//! recorded in extraConfig (`plumbline.original.<tunable>`), and how a change is expressed.

use std::collections::HashMap;

use super::inventory::VmRecord;
use crate::xml::Element;
use crate::{Capability, DiskLimit, Setting, Tunable, VmId};

pub const RECORD_PREFIX: &str = "plumbline.original.";

pub fn record_key(t: &Tunable) -> String {
    format!("{RECORD_PREFIX}{t}")
}

/// Why a tunable cannot be expressed on vSphere, if it cannot.
pub fn unsupported(t: &Tunable) -> Option<&'static str> {
    match t {
        Tunable::BlkioWeight => Some("vSphere has no whole-VM blkio weight; use disk shares"),
        Tunable::DiskLimit { limit, .. } if *limit != DiskLimit::TotalIops => {
            Some("vSphere limits a disk's total IOPS only (storageIOAllocation.limit)")
        }
        _ => None,
    }
}

pub fn capability_reason(c: Capability) -> Option<&'static str> {
    match c {
        Capability::BlkioWeight => Some("vSphere has no whole-VM blkio weight; use disk shares"),
        Capability::DiskBytesLimit => Some("vSphere limits disks by IOPS only"),
        Capability::FlushLatency => Some("vSphere reports no flush latency counter"),
        _ => None,
    }
}

/// A recorded or current value in the form it is stored: shares as `level:count`
/// (so `normal` is restored as `normal`, not as a custom count), everything else as the
/// vim25 number (`-1` = unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub String);

impl Raw {
    /// The domain value: share count; limit with unlimited as 0; reservation.
    pub fn value(&self) -> Option<u64> {
        let number = self.0.rsplit(':').next()?;
        let n: i64 = number.trim().parse().ok()?;
        Some(n.max(0) as u64)
    }
}

fn shares_raw(shares: &Element) -> Option<Raw> {
    let count = shares.path_i64(&["shares"])?;
    let level = shares.path_text(&["level"]).unwrap_or("custom");
    Some(Raw(format!("{level}:{count}")))
}

/// Where a tunable lives: the element holding it, the child name.
enum Place<'a> {
    Alloc(Option<&'a Element>, &'static str),
    DiskAlloc(Option<&'a Element>, &'static str),
}

fn place<'a>(vm: &'a VmRecord, t: &Tunable) -> Option<Place<'a>> {
    Some(match t {
        Tunable::CpuShares => Place::Alloc(vm.cpu_allocation.as_ref(), "shares"),
        Tunable::CpuReservationMhz => Place::Alloc(vm.cpu_allocation.as_ref(), "reservation"),
        Tunable::MemoryShares => Place::Alloc(vm.memory_allocation.as_ref(), "shares"),
        Tunable::MemoryReservationMib => Place::Alloc(vm.memory_allocation.as_ref(), "reservation"),
        Tunable::DiskLimit { disk, .. } => Place::DiskAlloc(disk_alloc(vm, disk)?, "limit"),
        Tunable::DiskShares { disk } => Place::DiskAlloc(disk_alloc(vm, disk)?, "shares"),
        Tunable::BlkioWeight => return None,
    })
}

fn disk_alloc<'a>(vm: &'a VmRecord, disk: &str) -> Option<Option<&'a Element>> {
    vm.disks
        .iter()
        .find(|d| d.name == disk)
        .map(|d| d.io_allocation())
}

/// The current raw value; `None` when the VM has no such disk. An absent allocation reads
/// as the vSphere default (normal shares, no reservation, unlimited).
pub fn current(vm: &VmRecord, t: &Tunable) -> Option<Raw> {
    let (holder, child) = match place(vm, t)? {
        Place::Alloc(h, c) | Place::DiskAlloc(h, c) => (h, c),
    };
    let element = holder.and_then(|h| h.first(child));
    Some(match (child, element) {
        ("shares", Some(s)) => shares_raw(s).unwrap_or(Raw("normal:1000".into())),
        ("shares", None) => Raw("normal:1000".into()),
        ("limit", Some(l)) => Raw(l.text.trim().to_string()),
        ("limit", None) => Raw("-1".into()),
        (_, Some(r)) => Raw(r.text.trim().to_string()),
        (_, None) => Raw("0".into()),
    })
}

/// The raw form of a requested domain value.
pub fn raw_for(t: &Tunable, value: u64) -> Raw {
    match t {
        Tunable::CpuShares | Tunable::MemoryShares | Tunable::DiskShares { .. } => {
            Raw(format!("custom:{value}"))
        }
        Tunable::DiskLimit { .. } if value == 0 => Raw("-1".into()),
        _ => Raw(value.to_string()),
    }
}

fn set_shares(holder: &mut Element, raw: &Raw, position: usize) {
    let (level, count) = raw.0.split_once(':').unwrap_or(("custom", raw.0.as_str()));
    let shares = Element::new("shares")
        .child(Element::text("shares", count))
        .child(Element::text("level", level));
    match holder.first_mut("shares") {
        Some(s) => *s = shares,
        None => {
            let at = position.min(holder.children.len());
            holder.children.insert(at, shares);
        }
    }
}

/// The edits of one reconfiguration, accumulated on copies of the VM's elements.
#[derive(Debug, Default)]
pub struct Edits {
    pub cpu_allocation: Option<Element>,
    pub memory_allocation: Option<Element>,
    /// Disk name → edited device.
    pub disks: Vec<(String, Element)>,
    /// extraConfig key → value ("" removes the key).
    pub extra_config: Vec<(String, String)>,
}

impl Edits {
    pub fn set(&mut self, vm: &VmRecord, t: &Tunable, raw: &Raw) -> Result<(), String> {
        match t {
            Tunable::CpuShares | Tunable::CpuReservationMhz => {
                let alloc = self
                    .cpu_allocation
                    .get_or_insert_with(|| allocation(vm.cpu_allocation.as_ref(), "cpuAllocation"));
                edit_allocation(alloc, t, raw);
            }
            Tunable::MemoryShares | Tunable::MemoryReservationMib => {
                let alloc = self.memory_allocation.get_or_insert_with(|| {
                    allocation(vm.memory_allocation.as_ref(), "memoryAllocation")
                });
                edit_allocation(alloc, t, raw);
            }
            Tunable::DiskLimit { disk, .. } | Tunable::DiskShares { disk } => {
                let device = match self.disks.iter_mut().find(|(d, _)| d == disk) {
                    Some((_, device)) => device,
                    None => {
                        let record = vm
                            .disks
                            .iter()
                            .find(|d| &d.name == disk)
                            .ok_or_else(|| format!("no disk {disk}"))?;
                        let mut device = record.device.clone();
                        device.name = "device".into();
                        device.rebind_xsi();
                        self.disks.push((disk.clone(), device));
                        &mut self.disks.last_mut().expect("just pushed").1
                    }
                };
                if device.first("storageIOAllocation").is_none() {
                    device.children.push(Element::new("storageIOAllocation"));
                }
                let io = device
                    .first_mut("storageIOAllocation")
                    .expect("just ensured");
                // StorageIOAllocationInfo order: limit, shares, reservation.
                match t {
                    Tunable::DiskShares { .. } => set_shares(io, raw, 1),
                    _ => io.set_child_text("limit", &raw.0, 0),
                }
            }
            Tunable::BlkioWeight => return Err("not a vSphere tunable".into()),
        }
        Ok(())
    }

    pub fn record(&mut self, t: &Tunable, raw: Option<&Raw>) {
        let value = raw.map(|r| r.0.clone()).unwrap_or_default();
        self.extra_config.push((record_key(t), value));
    }

    pub fn is_empty(&self) -> bool {
        self.cpu_allocation.is_none()
            && self.memory_allocation.is_none()
            && self.disks.is_empty()
            && self.extra_config.is_empty()
    }

    /// The VirtualMachineConfigSpec, children in schema order.
    pub fn into_spec(self) -> Element {
        let mut spec = Element::new("spec");
        for (_, device) in self.disks {
            spec.children.push(
                Element::new("deviceChange")
                    .child(Element::text("operation", "edit"))
                    .child(device),
            );
        }
        spec.children.extend(self.cpu_allocation);
        spec.children.extend(self.memory_allocation);
        for (key, value) in self.extra_config {
            spec.children.push(
                Element::new("extraConfig")
                    .xsi_type("OptionValue")
                    .child(Element::text("key", key))
                    .child(Element::text("value", value).xsi_type("xsd:string")),
            );
        }
        spec
    }
}

/// A full ResourceAllocationInfo to send (the simulator replaces the whole allocation).
fn allocation(current: Option<&Element>, name: &str) -> Element {
    let mut alloc = current.cloned().unwrap_or_default();
    alloc.rebind_xsi();
    alloc.name = name.into();
    alloc.attrs.clear();
    // Read-only on VMs; sending it is refused.
    alloc.children.retain(|c| c.local_name() != "overheadLimit");
    alloc
}

fn edit_allocation(alloc: &mut Element, t: &Tunable, raw: &Raw) {
    // ResourceAllocationInfo order: reservation, expandableReservation, limit, shares.
    match t {
        Tunable::CpuShares | Tunable::MemoryShares => set_shares(alloc, raw, 3),
        _ => alloc.set_child_text("reservation", &raw.0, 0),
    }
}

/// The originals recorded on the VM.
pub fn recorded(vm: &VmRecord) -> Vec<(Tunable, Raw)> {
    let mut out: Vec<(Tunable, Raw)> = vm
        .extra_config
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .filter_map(|(k, v)| Some((k.strip_prefix(RECORD_PREFIX)?.parse().ok()?, Raw(v.clone()))))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Why a change cannot be planned on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSuchDisk(String),
    Unsupported(Tunable, String),
}

/// The one reconfiguration that brings `settings` about, planned from the VM as read now.
/// A tunable already at its wanted value is left alone, and an original is recorded only
/// with a tunable's first change, in the same reconfiguration (both land or neither does).
/// So planning again once that reconfiguration landed plans nothing: a repeated apply,
/// after an answer was lost, neither changes a value twice nor records a changed value as
/// the original.
pub fn apply_edits(vm: &VmRecord, settings: &[Setting]) -> Result<Edits, Refusal> {
    let recorded: HashMap<Tunable, Raw> = recorded(vm).into_iter().collect();
    let mut edits = Edits::default();
    for s in settings {
        let current = current(vm, &s.tunable)
            .ok_or_else(|| Refusal::NoSuchDisk(s.tunable.disk().unwrap_or_default().to_string()))?;
        let wanted = raw_for(&s.tunable, s.value);
        if current == wanted {
            continue;
        }
        if !recorded.contains_key(&s.tunable) {
            edits.record(&s.tunable, Some(&current));
        }
        edits
            .set(vm, &s.tunable, &wanted)
            .map_err(|reason| Refusal::Unsupported(s.tunable.clone(), reason))?;
    }
    Ok(edits)
}

/// The one reconfiguration that restores the recorded originals of `tunables` and forgets
/// the records, with the settings it restores. Tunables without a record are left alone,
/// so planning again once it landed plans nothing.
pub fn revert_edits(vm: &VmRecord, tunables: &[Tunable]) -> Result<(Edits, Vec<Setting>), Refusal> {
    let recorded: HashMap<Tunable, Raw> = recorded(vm).into_iter().collect();
    let mut edits = Edits::default();
    let mut restored = Vec::new();
    for t in tunables {
        let Some(raw) = recorded.get(t) else { continue };
        if current(vm, t).is_some_and(|now| &now != raw) {
            edits
                .set(vm, t, raw)
                .map_err(|reason| Refusal::Unsupported(t.clone(), reason))?;
        }
        edits.record(t, None);
        if let Some(v) = raw.value() {
            restored.push(Setting::new(t.clone(), v));
        }
    }
    Ok((edits, restored))
}

pub fn tunables_of(vm: &VmRecord) -> Vec<Tunable> {
    let mut all = vec![
        Tunable::CpuShares,
        Tunable::CpuReservationMhz,
        Tunable::MemoryShares,
        Tunable::MemoryReservationMib,
    ];
    for d in &vm.disks {
        all.push(Tunable::DiskLimit {
            disk: d.name.clone(),
            limit: DiskLimit::TotalIops,
        });
        all.push(Tunable::DiskShares {
            disk: d.name.clone(),
        });
    }
    all
}

pub fn target(vm: &VmId, name: &str) -> String {
    format!("VM {name} ({vm})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsphere::inventory::disks_of;
    use crate::xml::MoRef;
    use std::collections::HashMap;

    fn record() -> VmRecord {
        let devices = Element::parse(
            br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>0</busNumber></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2000</key><controllerKey>1000</controllerKey><unitNumber>0</unitNumber>
<storageIOAllocation><limit>-1</limit><shares><shares>1000</shares><level>normal</level></shares><reservation>0</reservation></storageIOAllocation></VirtualDevice></val>"#,
        )
        .unwrap();
        let cpu = Element::parse(
            br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ResourceAllocationInfo"><reservation>0</reservation><limit>-1</limit><shares><shares>2000</shares><level>normal</level></shares><overheadLimit>1</overheadLimit></val>"#,
        )
        .unwrap();
        VmRecord {
            moref: MoRef::new("VirtualMachine", "vm-1"),
            id: VmId::new("42000000-0000-0000-0000-000000000001"),
            name: "vm1".into(),
            host: None,
            datastores: vec![],
            powered_on: true,
            disks: disks_of(&devices),
            extra_config: HashMap::from([(
                record_key(&Tunable::CpuShares),
                "normal:2000".to_string(),
            )]),
            cpu_allocation: Some(cpu),
            memory_allocation: None,
        }
    }

    #[test]
    fn current_values_read_from_allocations_with_vsphere_defaults() {
        let vm = record();
        assert_eq!(
            current(&vm, &Tunable::CpuShares),
            Some(Raw("normal:2000".into()))
        );
        let iops = Tunable::DiskLimit {
            disk: "scsi0:0".into(),
            limit: DiskLimit::TotalIops,
        };
        assert_eq!(
            current(&vm, &iops).unwrap().value(),
            Some(0),
            "-1 (unlimited) is 0"
        );
        assert_eq!(
            current(&vm, &Tunable::MemoryReservationMib),
            Some(Raw("0".into()))
        );
        assert_eq!(
            current(
                &vm,
                &Tunable::DiskShares {
                    disk: "scsi9:9".into()
                }
            ),
            None,
            "unknown disk"
        );
        assert_eq!(
            recorded(&vm),
            vec![(Tunable::CpuShares, Raw("normal:2000".into()))]
        );
    }

    #[test]
    fn spec_edits_disk_device_and_allocation_in_schema_order() {
        let vm = record();
        let mut edits = Edits::default();
        let iops = Tunable::DiskLimit {
            disk: "scsi0:0".into(),
            limit: DiskLimit::TotalIops,
        };
        edits.set(&vm, &iops, &raw_for(&iops, 200)).unwrap();
        edits
            .set(
                &vm,
                &Tunable::CpuShares,
                &raw_for(&Tunable::CpuShares, 4000),
            )
            .unwrap();
        edits.record(&iops, Some(&Raw("-1".into())));
        let spec = edits.into_spec();
        let names: Vec<_> = spec.children.iter().map(|c| c.local_name()).collect();
        assert_eq!(names, ["deviceChange", "cpuAllocation", "extraConfig"]);
        let device = spec.path(&["deviceChange", "device"]).unwrap();
        assert_eq!(device.type_name(), Some("VirtualDisk"));
        assert_eq!(device.path_i64(&["key"]), Some(2000));
        assert_eq!(
            device.path_i64(&["storageIOAllocation", "limit"]),
            Some(200)
        );
        let cpu = spec.first("cpuAllocation").unwrap();
        assert!(cpu.first("overheadLimit").is_none());
        assert_eq!(cpu.path_text(&["shares", "level"]), Some("custom"));
        assert_eq!(cpu.path_i64(&["shares", "shares"]), Some(4000));
        assert_eq!(cpu.path_i64(&["reservation"]), Some(0));
        assert_eq!(
            spec.path_text(&["extraConfig", "key"]),
            Some("plumbline.original.disk.scsi0:0.total_iops_sec")
        );
    }

    #[test]
    fn restoring_a_normal_level_restores_the_level_not_a_custom_count() {
        let vm = record();
        let mut edits = Edits::default();
        edits
            .set(&vm, &Tunable::CpuShares, &Raw("normal:2000".into()))
            .unwrap();
        let cpu = edits.cpu_allocation.unwrap();
        assert_eq!(cpu.path_text(&["shares", "level"]), Some("normal"));
    }

    /// The VM as it reads after `edits` landed (what the server does with the spec).
    fn landed(vm: &VmRecord, edits: Edits) -> VmRecord {
        let mut vm = vm.clone();
        if let Some(cpu) = edits.cpu_allocation {
            vm.cpu_allocation = Some(cpu);
        }
        for (key, value) in edits.extra_config {
            vm.extra_config.insert(key, value);
        }
        vm
    }

    fn unrecorded() -> VmRecord {
        let mut vm = record();
        vm.extra_config.clear();
        vm
    }

    #[test]
    fn the_first_change_records_the_value_it_replaces_in_the_same_reconfiguration() {
        let vm = unrecorded();
        let edits = apply_edits(&vm, &[Setting::new(Tunable::CpuShares, 4096)]).unwrap();
        assert_eq!(
            edits.extra_config,
            [(record_key(&Tunable::CpuShares), "normal:2000".to_string())]
        );
        let after = landed(&vm, edits);
        assert_eq!(
            current(&after, &Tunable::CpuShares),
            Some(Raw("custom:4096".into()))
        );
    }

    #[test]
    fn planning_again_after_the_change_landed_plans_nothing() {
        let vm = unrecorded();
        let wanted = [Setting::new(Tunable::CpuShares, 4096)];
        let after = landed(&vm, apply_edits(&vm, &wanted).unwrap());
        assert!(apply_edits(&after, &wanted).unwrap().is_empty());
        assert_eq!(
            recorded(&after),
            vec![(Tunable::CpuShares, Raw("normal:2000".into()))],
            "the original stays the value before the first change"
        );
    }

    #[test]
    fn a_value_already_wanted_is_neither_changed_nor_recorded() {
        let vm = unrecorded();
        let mut set_elsewhere = Edits::default();
        set_elsewhere
            .set(&vm, &Tunable::CpuShares, &Raw("custom:4096".into()))
            .unwrap();
        let vm = landed(&vm, set_elsewhere);
        let edits = apply_edits(&vm, &[Setting::new(Tunable::CpuShares, 4096)]).unwrap();
        assert!(edits.is_empty(), "{edits:?}");
    }

    #[test]
    fn a_later_change_keeps_the_first_original() {
        let vm = unrecorded();
        let first = landed(
            &vm,
            apply_edits(&vm, &[Setting::new(Tunable::CpuShares, 4096)]).unwrap(),
        );
        let edits = apply_edits(&first, &[Setting::new(Tunable::CpuShares, 8000)]).unwrap();
        assert!(edits.extra_config.is_empty(), "{edits:?}");
        let second = landed(&first, edits);
        assert_eq!(
            current(&second, &Tunable::CpuShares),
            Some(Raw("custom:8000".into()))
        );
        assert_eq!(
            recorded(&second),
            vec![(Tunable::CpuShares, Raw("normal:2000".into()))]
        );
    }

    #[test]
    fn revert_restores_and_forgets_and_then_plans_nothing() {
        let vm = unrecorded();
        let changed = landed(
            &vm,
            apply_edits(&vm, &[Setting::new(Tunable::CpuShares, 4096)]).unwrap(),
        );
        let (edits, restored) = revert_edits(&changed, &[Tunable::CpuShares]).unwrap();
        assert_eq!(restored, [Setting::new(Tunable::CpuShares, 2000)]);
        let reverted = landed(&changed, edits);
        assert_eq!(
            current(&reverted, &Tunable::CpuShares),
            Some(Raw("normal:2000".into()))
        );
        assert!(recorded(&reverted).is_empty());
        let (again, none) = revert_edits(&reverted, &[Tunable::CpuShares]).unwrap();
        assert!(again.is_empty() && none.is_empty());
    }

    #[test]
    fn a_change_on_a_missing_disk_is_refused() {
        let shares = Tunable::DiskShares {
            disk: "scsi9:9".into(),
        };
        assert_eq!(
            apply_edits(&record(), &[Setting::new(shares, 10)]).unwrap_err(),
            Refusal::NoSuchDisk("scsi9:9".into())
        );
    }

    #[test]
    fn only_total_iops_limits_exist_on_vsphere() {
        let read = Tunable::DiskLimit {
            disk: "scsi0:0".into(),
            limit: DiskLimit::ReadIops,
        };
        assert!(unsupported(&read).is_some());
        assert!(unsupported(&Tunable::BlkioWeight).is_some());
        assert!(unsupported(&Tunable::CpuShares).is_none());
    }
}
