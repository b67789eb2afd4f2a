//! Maintenance someone else starts: a host the hypervisor reports in (or entering) maintenance
//! mode is treated as if a HostMaintenance existed for it, so one is created, labelled as
//! detected; a detected one is deleted again once the host is reported out of maintenance
//! mode. Plain data in, the objects to create and delete out.

use std::{collections::BTreeMap, time::SystemTime};

/// A host as its provider last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedHost {
    pub provider: String,
    pub host: String,
    pub in_maintenance: bool,
    /// An `EnterMaintenanceMode_Task` is queued or running.
    pub entering: bool,
    /// When the state was read.
    pub read_at: SystemTime,
}

/// A HostMaintenance that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingMaintenance {
    pub name: String,
    pub provider: String,
    pub host: String,
    /// Created by detection.
    pub detected: bool,
    pub created_at: SystemTime,
}

/// What detection does in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detection {
    /// `(provider, host, reason)` of each HostMaintenance to create.
    pub create: Vec<(String, String, String)>,
    /// Detected HostMaintenances whose host has left maintenance mode.
    pub delete: Vec<String>,
}

/// Decides detection. `own_mode_until` is, per `(provider, host)`, the last time Plumbline's
/// own maintenance mode was in the ledger for the host: a state read before then may still
/// show Plumbline's own maintenance on its way out, so it detects nothing.
pub fn detect(
    hosts: &[ReportedHost],
    existing: &[ExistingMaintenance],
    own_mode_until: &BTreeMap<(String, String), SystemTime>,
) -> Detection {
    let mut out = Detection::default();
    for h in hosts {
        let covered = existing
            .iter()
            .filter(|e| e.provider == h.provider && e.host == h.host);
        let key = (h.provider.clone(), h.host.clone());
        if h.in_maintenance || h.entering {
            let ours_lately = own_mode_until.get(&key).is_some_and(|t| h.read_at <= *t);
            if covered.count() == 0 && !ours_lately {
                let what = if h.in_maintenance {
                    "is in maintenance mode"
                } else {
                    "is entering maintenance mode (EnterMaintenanceMode_Task running)"
                };
                out.create.push((
                    h.provider.clone(),
                    h.host.clone(),
                    format!(
                        "detected: the hypervisor reports that host {} {what}",
                        h.host
                    ),
                ));
            }
        } else {
            // Only a state read after the object was created ends it.
            out.delete.extend(
                covered
                    .filter(|e| e.detected && h.read_at > e.created_at)
                    .map(|e| e.name.clone()),
            );
        }
    }
    out
}

/// A HostMaintenance name for a detected one: `detected-<provider>-<host>`, lowercase, with
/// anything else than letters, digits and `-` as `-`.
pub fn detected_name(provider: &str, host: &str) -> String {
    let raw = format!("detected-{provider}-{host}").to_lowercase();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(253)
        .collect();
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn host(in_maintenance: bool, entering: bool, read: u64) -> ReportedHost {
        ReportedHost {
            provider: "vc".into(),
            host: "DC0_H0".into(),
            in_maintenance,
            entering,
            read_at: at(read),
        }
    }

    fn existing(detected: bool, created: u64) -> ExistingMaintenance {
        ExistingMaintenance {
            name: "m".into(),
            provider: "vc".into(),
            host: "DC0_H0".into(),
            detected,
            created_at: at(created),
        }
    }

    #[test]
    fn a_host_entering_or_in_maintenance_gets_one_detected_maintenance() {
        let none = BTreeMap::new();
        let entering = detect(&[host(false, true, 10)], &[], &none);
        assert_eq!(entering.create.len(), 1);
        assert!(entering.create[0].2.contains("EnterMaintenanceMode_Task"));
        assert_eq!(detect(&[host(true, false, 10)], &[], &none).create.len(), 1);
        assert_eq!(
            detect(&[host(false, false, 10)], &[], &none),
            Detection::default()
        );
        // Already covered, by a detected one or one a user made.
        for e in [existing(true, 5), existing(false, 5)] {
            assert_eq!(
                detect(&[host(true, false, 10)], &[e], &none),
                Detection::default()
            );
        }
    }

    #[test]
    fn the_detected_one_goes_once_a_later_read_shows_the_host_out() {
        let none = BTreeMap::new();
        assert_eq!(
            detect(&[host(false, false, 20)], &[existing(true, 10)], &none).delete,
            vec!["m".to_string()]
        );
        assert!(
            detect(&[host(false, false, 5)], &[existing(true, 10)], &none)
                .delete
                .is_empty(),
            "a read from before the object says nothing about it"
        );
        assert!(
            detect(&[host(false, false, 20)], &[existing(false, 10)], &none)
                .delete
                .is_empty(),
            "a user's maintenance is the user's to end"
        );
    }

    #[test]
    fn plumblines_own_maintenance_mode_on_its_way_out_is_not_detected() {
        let mut own = BTreeMap::new();
        own.insert(("vc".to_string(), "DC0_H0".to_string()), at(30));
        assert!(detect(&[host(true, false, 25)], &[], &own)
            .create
            .is_empty());
        assert_eq!(detect(&[host(true, false, 31)], &[], &own).create.len(), 1);
    }

    #[test]
    fn detected_names_are_valid_object_names() {
        assert_eq!(
            detected_name("local-VC", "DC0_H0"),
            "detected-local-vc-dc0-h0"
        );
        assert_eq!(
            detected_name("vc", "esx.example.com"),
            "detected-vc-esx-example-com"
        );
    }
}
