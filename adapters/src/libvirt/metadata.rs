//! The originals of changed tunables, recorded in the domain's `<metadata>` so another
//! operator process can revert them. Written live, with the change each one records: a domain
//! restart drops both together.
//!
//! Each tunable's record is one element under a namespace of its own ([`namespace`]). libvirt
//! replaces metadata one namespace at a time, so writing or removing one record never rewrites
//! another, and two processes changing different tunables of one domain keep each other's
//! records. Earlier versions kept every record in one `<originals>` element under
//! [`LEGACY_NAMESPACE`], rewritten by read-modify-write; those records are still read, and a
//! record is dropped from that element once it is restored.

use crate::{xml::Element, Setting, Tunable};

pub const LEGACY_NAMESPACE: &str = "https://plumbline.dev/xmlns/libvirt-originals/v1";
pub const LEGACY_PREFIX: &str = "plumbline";

/// `https://plumbline.dev/xmlns/libvirt-originals/v1/disk.vda.total_iops_sec`: the tunable's
/// key, percent-encoded where it is not a URI-safe character.
pub fn namespace(tunable: &Tunable) -> String {
    let mut uri = format!("{LEGACY_NAMESPACE}/");
    for b in tunable.to_string().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// The prefix libvirt writes the record's element under. libvirt does not check it, and the
/// domain XML must stay parseable, so it is kept to an XML name. Records are told apart by
/// namespace; the key in the prefix is for people reading `virsh dumpxml`.
pub fn prefix(tunable: &Tunable) -> String {
    let key: String = tunable
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("plumbline-{key}")
}

fn original(s: &Setting) -> Element {
    Element::new("original")
        .attr("tunable", s.tunable.to_string())
        .attr("value", s.value.to_string())
}

/// `<original tunable="disk.vda.total_iops_sec" value="0"/>`, written under
/// [`namespace`]`(tunable)`.
pub fn record_xml(s: &Setting) -> String {
    String::from_utf8(original(s).to_xml()).expect("the XML writer emits UTF-8")
}

/// `<originals><original …/>…</originals>`, the legacy element without the records restored.
pub fn legacy_xml(originals: &[Setting]) -> String {
    let root = Element::new("originals").children(originals.iter().map(original));
    String::from_utf8(root.to_xml()).expect("the XML writer emits UTF-8")
}

/// Entries that cannot be understood are dropped rather than failing every revert.
fn parse_original(e: &Element) -> Option<Setting> {
    if e.local_name() != "original" {
        return None;
    }
    let tunable: Tunable = e.get_attr("tunable")?.parse().ok()?;
    let value = e.get_attr("value")?.parse().ok()?;
    Some(Setting::new(tunable, value))
}

/// Parses the legacy element as `virDomainGetMetadata` returns it.
pub fn legacy_from_xml(xml: &str) -> Result<Vec<Setting>, crate::XmlError> {
    let root = Element::parse(xml.as_bytes())?;
    Ok(root.all("original").filter_map(parse_original).collect())
}

/// Every record in a domain's XML description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// One per tunable, each under its own namespace.
    pub own: Vec<Setting>,
    /// Still in the legacy element.
    pub legacy: Vec<Setting>,
}

impl Records {
    pub fn from_domain_xml(xml: &str) -> Result<Self, crate::XmlError> {
        let root = Element::parse(xml.as_bytes())?;
        let mut records = Records::default();
        let Some(metadata) = root.first("metadata") else {
            return Ok(records);
        };
        for child in &metadata.children {
            let Some(ns) = namespace_of(child, &[metadata, &root]) else {
                continue;
            };
            if ns == LEGACY_NAMESPACE {
                records
                    .legacy
                    .extend(child.all("original").filter_map(parse_original));
            } else if ns.starts_with(LEGACY_NAMESPACE) {
                // A record whose namespace is not its tunable's could never be removed by
                // revert; it is not one of ours.
                if let Some(s) = parse_original(child).filter(|s| namespace(&s.tunable) == ns) {
                    records.own.push(s);
                }
            }
        }
        Ok(records)
    }

    /// A per-tunable record wins over a legacy one: it can only have been written when no
    /// legacy record was seen.
    pub fn original(&self, tunable: &Tunable) -> Option<u64> {
        self.own
            .iter()
            .chain(&self.legacy)
            .find(|s| &s.tunable == tunable)
            .map(|s| s.value)
    }

    pub fn has_own(&self, tunable: &Tunable) -> bool {
        self.own.iter().any(|s| &s.tunable == tunable)
    }

    pub fn has_legacy(&self, tunable: &Tunable) -> bool {
        self.legacy.iter().any(|s| &s.tunable == tunable)
    }

    /// One original per tunable, per-tunable records first.
    pub fn originals(&self) -> Vec<Setting> {
        let mut all: Vec<Setting> = Vec::with_capacity(self.own.len() + self.legacy.len());
        for s in self.own.iter().chain(&self.legacy) {
            if !all.iter().any(|o| o.tunable == s.tunable) {
                all.push(s.clone());
            }
        }
        all
    }
}

/// The namespace URI of an element, from the declarations on it or on its ancestors
/// (nearest first); libvirt declares each metadata element's namespace on the element itself.
fn namespace_of<'a>(e: &'a Element, ancestors: &[&'a Element]) -> Option<&'a str> {
    let declaration = match e.name.split_once(':') {
        Some((prefix, _)) => format!("xmlns:{prefix}"),
        None => "xmlns".to_string(),
    };
    std::iter::once(e)
        .chain(ancestors.iter().copied())
        .find_map(|el| el.get_attr(&declaration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskLimit;

    fn iops(disk: &str) -> Tunable {
        Tunable::DiskLimit {
            disk: disk.into(),
            limit: DiskLimit::TotalIops,
        }
    }

    #[test]
    fn each_tunable_has_its_own_uri_safe_namespace_and_an_xml_name_prefix() {
        assert_eq!(
            namespace(&Tunable::CpuShares),
            "https://plumbline.dev/xmlns/libvirt-originals/v1/cpu_shares"
        );
        assert_eq!(
            namespace(&iops("vda")),
            "https://plumbline.dev/xmlns/libvirt-originals/v1/disk.vda.total_iops_sec"
        );
        assert_eq!(
            namespace(&iops("scsi0:1 x/y")),
            "https://plumbline.dev/xmlns/libvirt-originals/v1/disk.scsi0%3A1%20x%2Fy.total_iops_sec"
        );
        assert_ne!(namespace(&iops("vda")), namespace(&iops("vdb")));
        assert_eq!(prefix(&iops("vda")), "plumbline-disk.vda.total_iops_sec");
        assert_eq!(
            prefix(&iops("scsi0:1 x")),
            "plumbline-disk.scsi0_1_x.total_iops_sec"
        );
    }

    /// What `virsh dumpxml` shows after two per-tunable records were written next to a legacy
    /// element and another application's metadata.
    fn domain_xml() -> String {
        let ns_cpu = namespace(&Tunable::CpuShares);
        let ns_vda = namespace(&iops("vda"));
        let ns_vdb = namespace(&iops("vdb"));
        format!(
            r#"<domain type='qemu' id='3'>
  <name>pl-vm3</name>
  <metadata>
    <app:thing xmlns:app="https://example.org/app"><original tunable="cpu_shares" value="1"/></app:thing>
    <plumbline:originals xmlns:plumbline="{LEGACY_NAMESPACE}">
      <plumbline:original tunable="disk.vda.total_iops_sec" value="5"/>
      <plumbline:original tunable="blkio_weight" value="100"/>
      <plumbline:original tunable="bogus" value="1"/>
    </plumbline:originals>
    <plumbline-cpu_shares:original xmlns:plumbline-cpu_shares="{ns_cpu}" tunable="cpu_shares" value="1024"/>
    <plumbline-disk.vda.total_iops_sec:original xmlns:plumbline-disk.vda.total_iops_sec="{ns_vda}" tunable="disk.vda.total_iops_sec" value="0"/>
    <x:original xmlns:x="{ns_vdb}" tunable="cpu_shares" value="9"/>
  </metadata>
  <devices/>
</domain>"#
        )
    }

    #[test]
    fn records_are_read_from_both_formats_and_per_tunable_ones_win() {
        let r = Records::from_domain_xml(&domain_xml()).unwrap();
        assert_eq!(
            r.own,
            vec![
                Setting::new(Tunable::CpuShares, 1024),
                Setting::new(iops("vda"), 0),
            ]
        );
        assert_eq!(
            r.legacy,
            vec![
                Setting::new(iops("vda"), 5),
                Setting::new(Tunable::BlkioWeight, 100),
            ]
        );
        assert_eq!(r.original(&iops("vda")), Some(0));
        assert_eq!(r.original(&Tunable::BlkioWeight), Some(100));
        assert_eq!(r.original(&iops("vdb")), None);
        assert!(r.has_own(&iops("vda")) && r.has_legacy(&iops("vda")));
        assert!(!r.has_own(&Tunable::BlkioWeight) && r.has_legacy(&Tunable::BlkioWeight));
        assert_eq!(
            r.originals(),
            vec![
                Setting::new(Tunable::CpuShares, 1024),
                Setting::new(iops("vda"), 0),
                Setting::new(Tunable::BlkioWeight, 100),
            ]
        );
    }

    #[test]
    fn a_domain_without_metadata_has_no_records() {
        let xml = "<domain type='qemu'><name>pl-vm1</name><devices/></domain>";
        assert_eq!(Records::from_domain_xml(xml).unwrap(), Records::default());
    }

    #[test]
    fn a_record_reads_back_as_written_under_its_namespace() {
        let s = Setting::new(iops("vda"), 400);
        // libvirt moves the element into the namespace and prefix it was given.
        let stored = record_xml(&s).replacen(
            "<original",
            &format!(
                "<{p}:original xmlns:{p}=\"{ns}\"",
                p = prefix(&s.tunable),
                ns = namespace(&s.tunable)
            ),
            1,
        );
        let xml = format!("<domain><metadata>{stored}</metadata></domain>");
        let r = Records::from_domain_xml(&xml).unwrap();
        assert_eq!(r.own, vec![s]);
        assert!(r.legacy.is_empty());
    }

    #[test]
    fn legacy_originals_round_trip_and_tolerate_the_namespace_libvirt_adds() {
        let originals = vec![
            Setting::new(Tunable::CpuShares, 1024),
            Setting::new(iops("vda"), 0),
        ];
        let xml = legacy_xml(&originals);
        assert_eq!(legacy_from_xml(&xml).unwrap(), originals);
        let as_returned = xml.replace(
            "<originals>",
            &format!("<originals xmlns=\"{LEGACY_NAMESPACE}\">"),
        );
        assert_eq!(legacy_from_xml(&as_returned).unwrap(), originals);
        let prefixed = format!(
            "<plumbline:originals xmlns:plumbline=\"{LEGACY_NAMESPACE}\"><plumbline:original tunable=\"cpu_shares\" value=\"7\"/><plumbline:original tunable=\"bogus\" value=\"1\"/></plumbline:originals>"
        );
        assert_eq!(
            legacy_from_xml(&prefixed).unwrap(),
            vec![Setting::new(Tunable::CpuShares, 7)]
        );
    }
}
