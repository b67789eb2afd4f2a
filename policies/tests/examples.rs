//! The example intents under crds/examples plan as their comments say.

use chrono::{DateTime, Utc};
use plumbline_crds::{HypervisorProvider, WorkloadIntent};
use plumbline_policies::{activity, validate_intent, validate_provider};

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/examples")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn payments_is_active_in_berlin_business_hours() {
    let wi: WorkloadIntent = example("payments-critical.yaml");
    let valid = validate_intent(&wi.spec).expect("valid example");
    let at = |t| activity(valid.schedule.as_ref(), utc(t));
    assert!(at("2026-11-23T07:00:00Z").active, "Mon 08:00 Berlin");
    assert!(!at("2026-11-23T19:00:00Z").active, "Mon 20:00 Berlin");
    assert!(!at("2026-11-28T12:00:00Z").active, "Saturday");
}

#[test]
fn reports_are_active_through_weeknights() {
    let wi: WorkloadIntent = example("reports-overnight.yaml");
    let valid = validate_intent(&wi.spec).expect("valid example");
    let at = |t| activity(valid.schedule.as_ref(), utc(t));
    assert!(at("2026-11-23T22:00:00Z").active, "Mon 22:00");
    let midnight = at("2026-11-24T00:00:00Z");
    assert!(midnight.active, "Tue 00:00");
    assert_eq!(
        midnight.next_transition,
        Some(utc("2026-11-24T06:00:00Z")),
        "one night, no flip at midnight"
    );
    assert!(!at("2026-11-24T06:00:00Z").active, "Tue 06:00");
    assert!(
        !at("2026-11-27T23:00:00Z").active,
        "Friday night is not listed"
    );
    assert!(
        !at("2026-11-23T01:00:00Z").active,
        "Monday morning belongs to Sunday night"
    );
}

#[test]
fn the_example_providers_are_valid() {
    for file in ["provider-libvirt.yaml", "provider-vsphere.yaml"] {
        let hp: HypervisorProvider = example(file);
        validate_provider(&hp.spec).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
