//! Inventory through the PropertyCollector: every VM with its host, datastores, disks and
//! current allocations, in one retrieval over a container view.

use std::collections::HashMap;

use super::session::Session;
use crate::xml::{Element, MoRef};
use crate::{BackingVm, Error, Result, VmDisk, VmId};

/// Everything inventory, tunables and reconfiguration need.
pub const VM_PATHS: &[&str] = &[
    "name",
    "config.uuid",
    "config.hardware.device",
    "config.extraConfig",
    "config.cpuAllocation",
    "config.memoryAllocation",
    "runtime.host",
    "runtime.powerState",
    "datastore",
];

/// What a sampling cycle needs: identity, power state and the disks' instance names, and
/// the host, so that a VM moved by vMotion is placed right within one cycle.
pub const SAMPLING_PATHS: &[&str] = &[
    "config.uuid",
    "config.hardware.device",
    "runtime.host",
    "runtime.powerState",
];

/// A sampling cycle's paths when every VM's disks are already known from an earlier read:
/// without the device lists, which are nearly all of a retrieval's bytes (about 12 MB per
/// cycle at 1,000 simulator VMs; docs/scale.md).
pub const SAMPLING_LIGHT_PATHS: &[&str] = &["config.uuid", "runtime.host", "runtime.powerState"];

/// The path whose value is a VM's device list.
pub const DEVICES_PATH: &str = "config.hardware.device";

/// What the adapter knows about one VM, straight from the server.
#[derive(Debug, Clone)]
pub struct VmRecord {
    pub moref: MoRef,
    pub id: VmId,
    pub name: String,
    pub host: Option<MoRef>,
    pub datastores: Vec<MoRef>,
    pub powered_on: bool,
    pub disks: Vec<DiskRecord>,
    /// extraConfig; when a key repeats the last value wins (the simulator appends).
    pub extra_config: HashMap<String, String>,
    pub cpu_allocation: Option<Element>,
    pub memory_allocation: Option<Element>,
}

#[derive(Debug, Clone)]
pub struct DiskRecord {
    /// `scsi0:0`: the performance-counter instance and the disk's name in domain types.
    pub name: String,
    pub file: Option<String>,
    pub datastore: Option<MoRef>,
    /// The whole `VirtualDisk` device as the server sent it; an edit sends it back.
    pub device: Element,
}

impl DiskRecord {
    pub fn io_allocation(&self) -> Option<&Element> {
        self.device.first("storageIOAllocation")
    }
}

/// The controller kind prefix vSphere uses in disk instance names.
fn controller_prefix(type_name: &str) -> Option<&'static str> {
    match type_name {
        "VirtualLsiLogicController"
        | "VirtualLsiLogicSASController"
        | "ParaVirtualSCSIController"
        | "VirtualBusLogicController" => Some("scsi"),
        "VirtualIDEController" => Some("ide"),
        "VirtualAHCIController" | "VirtualSATAController" => Some("sata"),
        "VirtualNVMEController" => Some("nvme"),
        _ => None,
    }
}

pub fn disks_of(devices: &Element) -> Vec<DiskRecord> {
    let list: Vec<&Element> = devices.children.iter().collect();
    let controllers: HashMap<i64, (&str, i64)> = list
        .iter()
        .filter_map(|d| {
            let prefix = controller_prefix(d.type_name()?)?;
            Some((d.path_i64(&["key"])?, (prefix, d.path_i64(&["busNumber"])?)))
        })
        .collect();
    list.iter()
        .filter(|d| d.type_name() == Some("VirtualDisk"))
        .filter_map(|d| {
            let key = d.path_i64(&["key"])?;
            let unit = d.path_i64(&["unitNumber"]).unwrap_or(0);
            let name = match d
                .path_i64(&["controllerKey"])
                .and_then(|k| controllers.get(&k))
            {
                Some((prefix, bus)) => format!("{prefix}{bus}:{unit}"),
                None => format!("disk-{key}"),
            };
            Some(DiskRecord {
                name,
                file: d.path_text(&["backing", "fileName"]).map(str::to_string),
                datastore: d
                    .path(&["backing", "datastore"])
                    .and_then(Element::as_moref),
                device: (*d).clone(),
            })
        })
        .collect()
}

/// Objects returned by one retrieval, as `obj → (property → value element)`.
pub(super) type Contents = Vec<(MoRef, HashMap<String, Element>)>;

/// Moves each object's property values out of `returnval` into `into` (no copy of them).
pub(super) fn object_contents(mut returnval: Element, into: &mut Contents) {
    for mut object in returnval.take_all("objects") {
        let Some(obj) = object.first("obj").and_then(Element::as_moref) else {
            continue;
        };
        let props = object
            .take_all("propSet")
            .into_iter()
            .filter_map(|mut p| Some((p.path_text(&["name"])?.to_string(), p.take_first("val")?)))
            .collect();
        into.push((obj, props));
    }
}

pub(super) fn prop_set(kind: &str, paths: &[&str]) -> Element {
    Element::new("propSet")
        .child(Element::text("type", kind))
        .children(paths.iter().map(|p| Element::text("pathSet", *p)))
}

/// How many pages one retrieval may take (`RetrievePropertiesEx` and its
/// `ContinueRetrievePropertiesEx` calls). Even at a hundred objects a page this covers
/// 100,000 VMs, hosts and datastores, more than one vCenter holds; a server that keeps
/// handing out tokens (a bug, or a hostile endpoint) ends the retrieval with
/// [`Error::TooManyPages`] instead of looping forever.
pub const MAX_PROPERTY_PAGES: usize = 1000;

/// Objects per page of a retrieval: a whole inventory in one response (1,000 VMs with their
/// device lists is about 13 MB of XML) is parsed at once, and that parse was the operator's
/// peak memory. vCenter honours it; the simulator ignores it and answers in one page.
pub const PROPERTY_PAGE_OBJECTS: u32 = 100;

/// Runs RetrievePropertiesEx (and its continuations) for one filter spec.
pub async fn retrieve(session: &Session, action: &str, spec_set: Element) -> Result<Contents> {
    let request = Element::new("RetrievePropertiesEx")
        .child(Element::moref(
            "_this",
            &session.services.property_collector,
        ))
        .child(spec_set)
        .child(Element::new("options").child(Element::text(
            "maxObjects",
            PROPERTY_PAGE_OBJECTS.to_string(),
        )));
    let mut body = session.invoke(action, request).await?;
    let mut contents = Vec::new();
    let mut pages = 1;
    // No returnval means nothing matched.
    while let Some(returnval) = body.take_first("returnval") {
        let token = returnval.path_text(&["token"]).map(str::to_string);
        object_contents(returnval, &mut contents);
        let Some(token) = token else {
            break;
        };
        if pages >= MAX_PROPERTY_PAGES {
            return Err(Error::TooManyPages {
                action: action.to_string(),
                url: session.url().to_string(),
                limit: MAX_PROPERTY_PAGES,
            });
        }
        pages += 1;
        let more = Element::new("ContinueRetrievePropertiesEx")
            .child(Element::moref(
                "_this",
                &session.services.property_collector,
            ))
            .child(Element::text("token", token));
        body = session.invoke(action, more).await?;
    }
    Ok(contents)
}

pub(super) fn vm_record(moref: MoRef, props: &HashMap<String, Element>) -> Option<VmRecord> {
    let text = |name: &str| props.get(name).map(|v| v.text.trim().to_string());
    let uuid = text("config.uuid").filter(|u| !u.is_empty())?;
    let extra_config = props
        .get("config.extraConfig")
        .map(|v| {
            v.children
                .iter()
                .filter_map(|o| {
                    Some((
                        o.path_text(&["key"])?.to_string(),
                        o.path_text(&["value"]).unwrap_or("").to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(VmRecord {
        id: VmId::new(uuid),
        name: text("name").unwrap_or_else(|| moref.value.clone()),
        host: props.get("runtime.host").and_then(Element::as_moref),
        datastores: props
            .get("datastore")
            .map(|v| v.children.iter().filter_map(Element::as_moref).collect())
            .unwrap_or_default(),
        powered_on: text("runtime.powerState").as_deref() == Some("poweredOn"),
        disks: props
            .get("config.hardware.device")
            .map(disks_of)
            .unwrap_or_default(),
        extra_config,
        cpu_allocation: props.get("config.cpuAllocation").cloned(),
        memory_allocation: props.get("config.memoryAllocation").cloned(),
        moref,
    })
}

/// The names of the hosts, datastores and clusters one retrieval saw, and each host's cluster.
#[derive(Debug, Clone, Default)]
pub struct Names {
    names: HashMap<MoRef, String>,
    /// Host → the ClusterComputeResource it belongs to. A standalone host's parent is a plain
    /// ComputeResource: it has none.
    clusters: HashMap<MoRef, MoRef>,
}

impl Names {
    /// The object's name, or its managed object id when the retrieval did not name it.
    pub fn name(&self, m: &MoRef) -> String {
        self.names
            .get(m)
            .cloned()
            .unwrap_or_else(|| m.value.clone())
    }

    /// The name of the cluster the host belongs to, if any.
    pub fn cluster_of(&self, host: &MoRef) -> Option<String> {
        let cluster = self.clusters.get(host)?;
        Some(self.name(cluster))
    }
}

/// The VM properties read a hundred VMs at a time ([`PROPERTY_PAGE_OBJECTS`]) rather than
/// for all VMs in one answer: the device lists are nearly all of an inventory's bytes. Read in
/// one retrieval, 1,000 VMs with their devices were a 13 MB answer and a 45 to 57 MB parsed
/// tree at once, the operator's peak; and what the records kept of it was scattered through
/// the memory that tree had used (docs/scale.md).
pub const BULKY_PATHS: &[&str] = &[DEVICES_PATH, "config.extraConfig"];

/// Every VM (with the properties in `paths`) and the names of hosts, datastores and clusters
/// (with each host's cluster): one retrieval over a view, then the [`BULKY_PATHS`] among
/// `paths` a hundred VMs at a time, each hundred made into records before the next is read.
pub async fn all_vms(session: &Session, paths: &[&str]) -> Result<(Vec<VmRecord>, Names)> {
    let (bulky, light): (Vec<&str>, Vec<&str>) =
        paths.iter().partition(|p| BULKY_PATHS.contains(p));
    let contents = retrieve_in_view(
        session,
        "the inventory",
        &[
            "VirtualMachine",
            "HostSystem",
            "Datastore",
            "ClusterComputeResource",
        ],
        vec![
            prop_set("VirtualMachine", &light),
            prop_set("HostSystem", &["name", "parent"]),
            prop_set("Datastore", &["name"]),
            prop_set("ClusterComputeResource", &["name"]),
        ],
        Vec::new(),
    )
    .await?;
    if bulky.is_empty() {
        return Ok(split_contents(&contents));
    }
    let names = names_of(&contents);
    let mut vms_light: Vec<_> = contents
        .into_iter()
        .filter(|(obj, _)| obj.kind == "VirtualMachine")
        .collect();
    let mut vms = Vec::with_capacity(vms_light.len());
    while !vms_light.is_empty() {
        let rest = vms_light.split_off(vms_light.len().min(PROPERTY_PAGE_OBJECTS as usize));
        let chunk = std::mem::replace(&mut vms_light, rest);
        let morefs: Vec<&MoRef> = chunk.iter().map(|(vm, _)| vm).collect();
        let mut read: HashMap<MoRef, HashMap<String, Element>> = bulky_of(session, &bulky, &morefs)
            .await?
            .into_iter()
            .collect();
        for (vm, mut props) in chunk {
            props.extend(read.remove(&vm).unwrap_or_default());
            vms.extend(vm_record(vm, &props));
        }
    }
    Ok((vms, names))
}

/// The `paths` of `vms`. A VM deleted since the view was read faults the whole retrieval
/// (`ManagedObjectNotFound`); then each VM is read alone, and those gone have no answer (their
/// record, from the view, goes at the next inventory, as if deleted just after it).
async fn bulky_of(session: &Session, paths: &[&str], vms: &[&MoRef]) -> Result<Contents> {
    let action = "retrieving the VMs' devices";
    let spec = |vms: &[&MoRef]| {
        Element::new("specSet")
            .child(prop_set("VirtualMachine", paths))
            .children(
                vms.iter()
                    .map(|vm| Element::new("objectSet").child(Element::moref("obj", vm))),
            )
    };
    let gone =
        |e: &Error| matches!(e, Error::SoapFault { fault, .. } if fault == "ManagedObjectNotFound");
    match retrieve(session, action, spec(vms)).await {
        Err(e) if gone(&e) && vms.len() > 1 => {
            let mut contents = Vec::new();
            for vm in vms {
                match retrieve(session, action, spec(&[vm])).await {
                    Ok(one) => contents.extend(one),
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(contents)
        }
        read => read,
    }
}

/// The names of what one retrieval saw but VMs, and each host's cluster.
fn names_of(contents: &Contents) -> Names {
    let names = contents
        .iter()
        .filter(|(obj, _)| obj.kind != "VirtualMachine")
        .filter_map(|(obj, props)| Some((obj.clone(), props.get("name")?.text.clone())))
        .collect();
    let clusters = contents
        .iter()
        .filter(|(obj, _)| obj.kind == "HostSystem")
        .filter_map(|(obj, props)| {
            let parent = props.get("parent").and_then(Element::as_moref)?;
            (parent.kind == "ClusterComputeResource").then(|| (obj.clone(), parent))
        })
        .collect();
    Names { names, clusters }
}

/// The VMs of one retrieval, and the names of everything else in it.
pub(super) fn split_contents(contents: &Contents) -> (Vec<VmRecord>, Names) {
    let vms = contents
        .iter()
        .filter(|(obj, _)| obj.kind == "VirtualMachine")
        .filter_map(|(obj, props)| vm_record(obj.clone(), props))
        .collect();
    (vms, names_of(contents))
}

/// Where the VM runs, when the retrieval read its host.
pub fn placement(record: &VmRecord, names: &Names) -> Option<crate::VmPlacement> {
    let host = record.host.as_ref()?;
    Some(crate::VmPlacement {
        vm: record.id.clone(),
        host: names.name(host),
        cluster: names.cluster_of(host),
    })
}

/// One retrieval of every object of `kinds` in the inventory, through a container view that
/// lives only for this call. `prop_sets` say what to read of each type; `follow` are
/// traversal specs from the objects in the view to others (a host's tasks), read as well.
/// `subject` names what is read in errors ("retrieving the inventory").
pub async fn retrieve_in_view(
    session: &Session,
    subject: &str,
    kinds: &[&str],
    prop_sets: Vec<Element>,
    follow: Vec<Element>,
) -> Result<Contents> {
    let s = &session.services;
    let creating = format!("creating a view of {subject}");
    let view = session
        .invoke(
            &creating,
            Element::new("CreateContainerView")
                .child(Element::moref("_this", &s.view_manager))
                .child(Element::moref("container", &s.root_folder))
                .children(kinds.iter().map(|k| Element::text("type", *k)))
                .child(Element::text("recursive", "true")),
        )
        .await?;
    let view = view
        .first("returnval")
        .and_then(Element::as_moref)
        .ok_or_else(|| Error::Protocol {
            action: creating.clone(),
            url: session.url().to_string(),
            message: "no view in CreateContainerView response".into(),
        })?;
    let spec = Element::new("specSet").children(prop_sets).child(
        Element::new("objectSet")
            .child(Element::moref("obj", &view))
            .child(Element::text("skip", "true"))
            .child(
                Element::new("selectSet")
                    .xsi_type("TraversalSpec")
                    .child(Element::text("name", "view"))
                    .child(Element::text("type", "ContainerView"))
                    .child(Element::text("path", "view"))
                    .child(Element::text("skip", "false"))
                    .children(follow),
            ),
    );
    let contents = retrieve(session, &format!("retrieving {subject}"), spec).await;
    // The view is per session and only needed for this retrieval.
    let destroyed = session
        .invoke(
            &format!("destroying the view of {subject}"),
            Element::new("DestroyView").child(Element::moref("_this", &view)),
        )
        .await;
    if let Err(e) = destroyed {
        tracing::debug!(error = %e, %subject, "could not destroy a container view; it dies with the session");
    }
    contents
}

/// One VM's current properties, read fresh (for read-back after a change).
pub async fn one_vm(session: &Session, vm: &MoRef) -> Result<Option<VmRecord>> {
    let spec = Element::new("specSet")
        .child(prop_set("VirtualMachine", VM_PATHS))
        .child(Element::new("objectSet").child(Element::moref("obj", vm)));
    let contents = retrieve(session, "reading a VM's configuration", spec).await?;
    Ok(contents
        .into_iter()
        .find(|(obj, _)| obj == vm)
        .and_then(|(obj, props)| vm_record(obj, &props)))
}

pub fn backing_vm(record: &VmRecord, names: &Names) -> BackingVm {
    let name_of = |m: &MoRef| names.name(m);
    BackingVm {
        id: record.id.clone(),
        name: record.name.clone(),
        provider_id: format!("vsphere://{}", record.id),
        host: record.host.as_ref().map(name_of).unwrap_or_default(),
        cluster: record.host.as_ref().and_then(|h| names.cluster_of(h)),
        datastores: record.datastores.iter().map(name_of).collect(),
        disks: record
            .disks
            .iter()
            .map(|d| VmDisk {
                name: d.name.clone(),
                path: d.file.clone(),
                datastore: d.datastore.as_ref().map(name_of),
            })
            .collect(),
        running: record.powered_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_named_after_their_controller_bus_and_unit() {
        let xml = br#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ArrayOfVirtualDevice">
  <VirtualDevice xsi:type="VirtualLsiLogicController"><key>1000</key><busNumber>0</busNumber></VirtualDevice>
  <VirtualDevice xsi:type="VirtualIDEController"><key>200</key><busNumber>1</busNumber></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[LocalDS_0] DC0_H0_VM0/disk1.vmdk</fileName><datastore type="Datastore">datastore-52</datastore></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><storageIOAllocation><limit>-1</limit></storageIOAllocation></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>3001</key><controllerKey>200</controllerKey><unitNumber>1</unitNumber></VirtualDevice>
  <VirtualDevice xsi:type="VirtualE1000"><key>4000</key></VirtualDevice>
</val>"#;
        let disks = disks_of(&Element::parse(xml).unwrap());
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["scsi0:0", "ide1:1"]);
        assert_eq!(
            disks[0].file.as_deref(),
            Some("[LocalDS_0] DC0_H0_VM0/disk1.vmdk")
        );
        assert_eq!(
            disks[0].datastore,
            Some(MoRef::new("Datastore", "datastore-52"))
        );
        assert_eq!(
            disks[0].io_allocation().unwrap().path_i64(&["limit"]),
            Some(-1)
        );
    }
}
