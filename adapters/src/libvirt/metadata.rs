//! The originals of changed tunables, recorded in the domain's `<metadata>` under the
//! Plumbline namespace. Kept on the domain itself so another operator process can revert.
//! Written live (with the change it records): a domain restart drops both together.

use crate::{xml::Element, Setting, Tunable};

pub const NAMESPACE: &str = "https://plumbline.dev/xmlns/libvirt-originals/v1";
pub const PREFIX: &str = "plumbline";

/// `<originals><original tunable="disk.vda.total_iops_sec" value="0"/></originals>`
pub fn to_xml(originals: &[Setting]) -> String {
    let root = Element::new("originals").children(originals.iter().map(|s| {
        Element::new("original")
            .attr("tunable", s.tunable.to_string())
            .attr("value", s.value.to_string())
    }));
    String::from_utf8(root.to_xml()).expect("the XML writer emits UTF-8")
}

/// Parses what `virDomainGetMetadata` returns; entries it does not understand are dropped
/// rather than failing every revert.
pub fn from_xml(xml: &str) -> Result<Vec<Setting>, quick_xml::Error> {
    let root = Element::parse(xml.as_bytes())?;
    Ok(root
        .all("original")
        .filter_map(|o| {
            let tunable: Tunable = o.get_attr("tunable")?.parse().ok()?;
            let value = o.get_attr("value")?.parse().ok()?;
            Some(Setting::new(tunable, value))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskLimit;

    #[test]
    fn originals_round_trip_and_tolerate_the_namespace_libvirt_adds() {
        let originals = vec![
            Setting::new(Tunable::CpuShares, 1024),
            Setting::new(
                Tunable::DiskLimit {
                    disk: "vda".into(),
                    limit: DiskLimit::TotalIops,
                },
                0,
            ),
        ];
        let xml = to_xml(&originals);
        assert_eq!(from_xml(&xml).unwrap(), originals);
        let as_returned = xml.replace("<originals>", &format!("<originals xmlns=\"{NAMESPACE}\">"));
        assert_eq!(from_xml(&as_returned).unwrap(), originals);
        let prefixed = format!(
            "<plumbline:originals xmlns:plumbline=\"{NAMESPACE}\"><plumbline:original tunable=\"cpu_shares\" value=\"7\"/><plumbline:original tunable=\"bogus\" value=\"1\"/></plumbline:originals>"
        );
        assert_eq!(
            from_xml(&prefixed).unwrap(),
            vec![Setting::new(Tunable::CpuShares, 7)]
        );
    }
}
