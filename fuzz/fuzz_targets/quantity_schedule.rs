//! The strings of an intent and a provider (latencies, intervals, clock times, counts and
//! percentages) and schedules of time windows: parsed or refused, never a panic; a schedule
//! keeps its contract at the instant it is asked about.
#![no_main]

use chrono::{DateTime, Utc};
use plumbline_crds::TimeWindow;
use plumbline_policies::{
    plan::CountOrPercent,
    quantity::{format_clock, parse_clock, parse_interval, parse_latency},
    Schedule,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_latency(&text);
    let _ = parse_interval(&text);
    let _ = CountOrPercent::parse(&text);
    for end_of_day in [false, true] {
        if let Ok(minutes) = parse_clock(&text, end_of_day) {
            assert_eq!(parse_clock(&format_clock(minutes), end_of_day), Ok(minutes));
        }
    }

    // `<seconds since the epoch>;<JSON list of windows>`: when to ask, and the schedule.
    let Some((at, windows)) = text.split_once(';') else {
        return;
    };
    let Some(at) = at
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
    else {
        return;
    };
    let Ok(windows) = serde_json::from_str::<Vec<TimeWindow>>(windows) else {
        return;
    };
    if let Ok(schedule) = Schedule::parse(&windows, "spec.schedule") {
        let active = schedule.is_active(at);
        if let Some(next) = schedule.next_transition(at) {
            assert!(next > at, "the next transition is after {at}: {next}");
            assert_ne!(
                schedule.is_active(next),
                active,
                "activity changes at {next}"
            );
        }
    }
});
