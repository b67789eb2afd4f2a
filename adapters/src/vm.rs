//! Who a VM is: the identity shared by the hypervisor and the Kubernetes Node it backs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A VM's UUID in canonical lowercase form: libvirt's domain UUID, vSphere's BIOS UUID
/// (`config.uuid`). This is what a Node's providerID carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId(String);

impl VmId {
    pub fn new(uuid: impl AsRef<str>) -> Self {
        Self(uuid.as_ref().trim().to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the UUID out of a Node's `spec.providerID` (`libvirt:///<uuid>`,
    /// `vsphere://<uuid>`).
    pub fn from_provider_id(provider_id: &str) -> Option<Self> {
        let uuid = provider_id
            .strip_prefix("libvirt:///")
            .or_else(|| provider_id.strip_prefix("vsphere://"))?;
        (!uuid.is_empty() && !uuid.contains('/')).then(|| Self::new(uuid))
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM as the hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingVm {
    pub id: VmId,
    pub name: String,
    /// The providerID a Node backed by this VM carries.
    pub provider_id: String,
    /// The physical host running it (libvirt: the connection's hostname; vSphere: the
    /// HostSystem's name).
    pub host: String,
    /// The compute cluster of that host, where the hypervisor has one (vSphere: the
    /// ClusterComputeResource's name; `None` for a standalone host, and always for libvirt).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Datastore names (vSphere) or storage directories (libvirt) holding its disks.
    pub datastores: Vec<String>,
    pub disks: Vec<VmDisk>,
    pub running: bool,
}

/// Where a VM runs, as a sampling cycle read it: the same names as [`BackingVm::host`] and
/// [`BackingVm::cluster`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlacement {
    pub vm: VmId,
    pub host: String,
    pub cluster: Option<String>,
}

/// One virtual disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// The name samples and tunables use: libvirt's target dev (`vda`), vSphere's
    /// controller/unit instance (`scsi0:0`).
    pub name: String,
    /// Backing file: a host path (libvirt) or a datastore path (`[datastore1] vm/vm.vmdk`).
    pub path: Option<String>,
    pub datastore: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_of_both_hypervisors_parse_to_the_same_lowercase_uuid() {
        let uuid = "5F1D3C0A-1B2C-4D5E-8F90-123456789ABC";
        let libvirt = VmId::from_provider_id(&format!("libvirt:///{uuid}")).unwrap();
        let vsphere = VmId::from_provider_id(&format!("vsphere://{uuid}")).unwrap();
        assert_eq!(libvirt, vsphere);
        assert_eq!(libvirt.as_str(), uuid.to_ascii_lowercase());
        assert_eq!(VmId::from_provider_id("aws:///i-123"), None);
        assert_eq!(VmId::from_provider_id("libvirt:///"), None);
    }
}
