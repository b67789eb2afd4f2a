//! Arbitrary JSON decoded into a WorkloadIntent or HypervisorProvider spec, then validated
//! the way the operator does before acting: a verdict, never a panic. A valid intent's
//! schedule is evaluated too.
#![no_main]

use chrono::{TimeZone, Utc};
use plumbline_crds::{HypervisorProviderSpec, WorkloadIntentSpec};
use plumbline_policies::{validate_intent, validate_provider};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<WorkloadIntentSpec>(data) {
        match validate_intent(&spec) {
            Ok(valid) => {
                if let Some(schedule) = valid.schedule {
                    let at = Utc.with_ymd_and_hms(2026, 3, 29, 0, 30, 0).unwrap();
                    let _ = schedule.next_transition(at);
                }
            }
            Err(invalid) => assert!(!invalid.to_string().is_empty()),
        }
    }
    if let Ok(spec) = serde_json::from_slice::<HypervisorProviderSpec>(data) {
        if let Err(invalid) = validate_provider(&spec) {
            assert!(!invalid.to_string().is_empty());
        }
    }
});
