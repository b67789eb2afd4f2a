//! Disks of a domain, read from its XML description.

use crate::{xml::Element, VmDisk};

pub fn disks(domain_xml: &str) -> Result<Vec<VmDisk>, crate::XmlError> {
    let root = Element::parse(domain_xml.as_bytes())?;
    let Some(devices) = root.first("devices") else {
        return Ok(Vec::new());
    };
    Ok(devices
        .all("disk")
        .filter(|d| d.get_attr("device").unwrap_or("disk") == "disk")
        .filter_map(|d| {
            let name = d.first("target")?.get_attr("dev")?.to_string();
            let source = d.first("source");
            let path = source.and_then(|s| {
                s.get_attr("file")
                    .or_else(|| s.get_attr("dev"))
                    .or_else(|| s.get_attr("name"))
                    .map(str::to_string)
            });
            // A file's directory (or a pool) is the closest thing libvirt has to a datastore.
            let datastore = source
                .and_then(|s| s.get_attr("pool").map(str::to_string))
                .or_else(|| {
                    let file = source?.get_attr("file")?;
                    let (dir, _) = file.rsplit_once('/')?;
                    Some(if dir.is_empty() {
                        "/".to_string()
                    } else {
                        dir.to_string()
                    })
                });
            Some(VmDisk {
                name,
                path,
                datastore,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_devices_with_targets_and_sources() {
        let xml = r#"<domain type='qemu'><name>pl-vm1</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
    <source file='/var/tmp/plumbline-stack/libvirt/pl-vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
  <disk type='volume' device='disk'><source pool='default' volume='data'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"#;
        let d = disks(xml).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "vda");
        assert_eq!(
            d[0].path.as_deref(),
            Some("/var/tmp/plumbline-stack/libvirt/pl-vm1.qcow2")
        );
        assert_eq!(
            d[0].datastore.as_deref(),
            Some("/var/tmp/plumbline-stack/libvirt")
        );
        assert_eq!(d[1].name, "vdb");
        assert_eq!(d[1].datastore.as_deref(), Some("default"));
    }
}
