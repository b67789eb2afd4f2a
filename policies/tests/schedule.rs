//! Time windows, zones and DST.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use plumbline_crds::{TimeWindow, Weekday};
use plumbline_policies::Schedule;
use proptest::prelude::*;

fn window(days: Option<&[Weekday]>, start: &str, end: &str, zone: &str) -> TimeWindow {
    TimeWindow {
        days: days.map(|d| d.to_vec()),
        start: start.into(),
        end: end.into(),
        time_zone: zone.into(),
    }
}

fn schedule(windows: &[TimeWindow]) -> Schedule {
    Schedule::parse(windows, "spec.schedule").expect("valid schedule")
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

const WEEKDAYS: &[Weekday] = &[
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
];

#[test]
fn office_hours_in_berlin() {
    let s = schedule(&[window(Some(WEEKDAYS), "08:00", "20:00", "Europe/Berlin")]);
    // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
    assert!(!s.is_active(utc("2026-11-23T06:59:59Z")));
    assert!(s.is_active(utc("2026-11-23T07:00:00Z")));
    assert!(s.is_active(utc("2026-11-23T18:59:59Z")));
    assert!(
        !s.is_active(utc("2026-11-23T19:00:00Z")),
        "end is exclusive"
    );
    assert!(!s.is_active(utc("2026-11-28T10:00:00Z")), "Saturday");
    assert_eq!(
        s.next_transition(utc("2026-11-23T06:00:00Z")),
        Some(utc("2026-11-23T07:00:00Z"))
    );
    assert_eq!(
        s.next_transition(utc("2026-11-23T07:00:00Z")),
        Some(utc("2026-11-23T19:00:00Z"))
    );
    // Friday evening: next opening is Monday morning.
    assert_eq!(
        s.next_transition(utc("2026-11-27T19:00:00Z")),
        Some(utc("2026-11-30T07:00:00Z"))
    );
    // Summer: UTC+2.
    assert!(s.is_active(utc("2026-07-06T06:00:00Z")));
    assert!(!s.is_active(utc("2026-07-06T05:59:00Z")));
}

#[test]
fn weekday_is_taken_on_the_local_clock() {
    // Monday 00:30 in Tokyo is Sunday 15:30 UTC.
    let s = schedule(&[window(
        Some(&[Weekday::Mon]),
        "00:00",
        "01:00",
        "Asia/Tokyo",
    )]);
    assert!(s.is_active(utc("2026-11-22T15:30:00Z")));
    assert!(!s.is_active(utc("2026-11-23T00:30:00Z")));
}

#[test]
fn end_of_day_and_overnight_as_two_windows() {
    let s = schedule(&[
        window(Some(&[Weekday::Mon]), "22:00", "24:00", "UTC"),
        window(Some(&[Weekday::Tue]), "00:00", "06:00", "UTC"),
    ]);
    assert!(s.is_active(utc("2026-11-23T23:59:59Z")));
    assert!(s.is_active(utc("2026-11-24T00:00:00Z")));
    assert!(!s.is_active(utc("2026-11-24T06:00:00Z")));
    // Across midnight nothing flips: the next change is Tuesday 06:00.
    assert_eq!(
        s.next_transition(utc("2026-11-23T22:30:00Z")),
        Some(utc("2026-11-24T06:00:00Z"))
    );
}

#[test]
fn always_open_never_flips() {
    let s = schedule(&[window(None, "00:00", "24:00", "Europe/Berlin")]);
    let at = utc("2026-03-29T00:30:00Z");
    assert!(s.is_active(at));
    assert_eq!(s.next_transition(at), None);
}

#[test]
fn spring_forward_gap_shortens_or_skips_windows() {
    // Berlin 2026-03-29 (Sunday): 02:00 CET jumps to 03:00 CEST, i.e. at 01:00 UTC.
    let inside_gap = schedule(&[window(
        Some(&[Weekday::Sun]),
        "02:00",
        "02:30",
        "Europe/Berlin",
    )]);
    for minute in 0..(24 * 60) {
        let at = utc("2026-03-28T23:00:00Z") + Duration::minutes(minute);
        assert!(
            !inside_gap.is_active(at),
            "a window inside the gap never opens, but did at {at}"
        );
    }
    let spanning = schedule(&[window(
        Some(&[Weekday::Sun]),
        "01:00",
        "04:00",
        "Europe/Berlin",
    )]);
    assert!(spanning.is_active(utc("2026-03-29T00:00:00Z")), "01:00 CET");
    assert!(
        spanning.is_active(utc("2026-03-29T01:59:00Z")),
        "03:59 CEST"
    );
    assert!(
        !spanning.is_active(utc("2026-03-29T02:00:00Z")),
        "04:00 CEST"
    );
    assert_eq!(
        spanning.next_transition(utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-29T00:00:00Z"))
    );
    assert_eq!(
        spanning.next_transition(utc("2026-03-29T00:00:00Z")),
        Some(utc("2026-03-29T02:00:00Z")),
        "two real hours"
    );
    // A window that starts in the gap opens when the clock jumps.
    let starts_in_gap = schedule(&[window(
        Some(&[Weekday::Sun]),
        "02:30",
        "05:00",
        "Europe/Berlin",
    )]);
    assert!(!starts_in_gap.is_active(utc("2026-03-29T00:59:59Z")));
    assert!(
        starts_in_gap.is_active(utc("2026-03-29T01:00:00Z")),
        "03:00 CEST is after 02:30"
    );
    assert_eq!(
        starts_in_gap.next_transition(utc("2026-03-29T00:30:00Z")),
        Some(utc("2026-03-29T01:00:00Z"))
    );
}

#[test]
fn fall_back_overlap_covers_both_repeated_hours() {
    // Berlin 2026-10-25 (Sunday): 03:00 CEST goes back to 02:00 CET, at 01:00 UTC.
    let s = schedule(&[window(
        Some(&[Weekday::Sun]),
        "01:00",
        "03:00",
        "Europe/Berlin",
    )]);
    assert!(s.is_active(utc("2026-10-24T23:00:00Z")), "01:00 CEST");
    assert!(
        s.is_active(utc("2026-10-25T00:30:00Z")),
        "02:30 CEST, first time"
    );
    assert!(
        s.is_active(utc("2026-10-25T01:30:00Z")),
        "02:30 CET, second time"
    );
    assert!(!s.is_active(utc("2026-10-25T02:00:00Z")), "03:00 CET");
    assert_eq!(
        s.next_transition(utc("2026-10-24T23:00:00Z")),
        Some(utc("2026-10-25T02:00:00Z")),
        "three real hours"
    );

    // A window ending inside the repeated hour closes, then opens again when the hour repeats.
    let s = schedule(&[window(
        Some(&[Weekday::Sun]),
        "01:00",
        "02:30",
        "Europe/Berlin",
    )]);
    assert_eq!(
        s.next_transition(utc("2026-10-24T23:30:00Z")),
        Some(utc("2026-10-25T00:30:00Z"))
    );
    assert_eq!(
        s.next_transition(utc("2026-10-25T00:30:00Z")),
        Some(utc("2026-10-25T01:00:00Z")),
        "02:00 CET again"
    );
    assert_eq!(
        s.next_transition(utc("2026-10-25T01:00:00Z")),
        Some(utc("2026-10-25T01:30:00Z"))
    );
}

#[test]
fn southern_hemisphere_and_half_hour_zones() {
    // Adelaide is UTC+10:30 in (southern) summer.
    let s = schedule(&[window(None, "09:00", "17:00", "Australia/Adelaide")]);
    assert!(s.is_active(utc("2026-01-14T22:30:00Z")));
    assert!(!s.is_active(utc("2026-01-14T22:29:00Z")));
    // Kathmandu is UTC+05:45.
    let s = schedule(&[window(None, "09:00", "17:00", "Asia/Kathmandu")]);
    assert!(s.is_active(utc("2026-01-14T03:15:00Z")));
    assert!(!s.is_active(utc("2026-01-14T03:14:00Z")));
}

#[test]
fn descriptions_read_like_the_spec() {
    let s = schedule(&[
        window(Some(WEEKDAYS), "08:00", "20:00", "Europe/Berlin"),
        window(
            Some(&[Weekday::Sat, Weekday::Mon, Weekday::Sun, Weekday::Wed]),
            "10:00",
            "24:00",
            "UTC",
        ),
        window(None, "00:00", "01:00", "UTC"),
    ]);
    let d: Vec<String> = s.windows().iter().map(|w| w.describe()).collect();
    assert_eq!(
        d,
        [
            "Mon-Fri 08:00-20:00 Europe/Berlin",
            "Mon,Wed,Sat-Sun 10:00-24:00 UTC",
            "daily 00:00-01:00 UTC"
        ]
    );
}

#[test]
fn invalid_windows_are_reported_with_field_paths() {
    let errors = Schedule::parse(
        &[
            window(Some(WEEKDAYS), "20:00", "08:00", "Europe/Berlin"),
            window(None, "08:00", "09:00", "Mars/Base"),
            window(Some(&[Weekday::Mon, Weekday::Mon]), "8:00", "25:00", "UTC"),
            window(Some(&[]), "08:00", "08:00", "UTC"),
        ],
        "spec.schedule",
    )
    .expect_err("invalid");
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "spec.schedule[0].end: \"08:00\" is not after start \"20:00\"; a window cannot cross midnight, so split it in two (e.g. 20:00-24:00 and 00:00-08:00 on the next day)",
            "spec.schedule[1].timeZone: unknown time zone \"Mars/Base\" (use an IANA name such as Europe/Berlin or UTC)",
            "spec.schedule[2].start: \"8:00\" is not a time of day HH:MM (00:00-23:59)",
            "spec.schedule[2].end: \"25:00\" is not a time of day HH:MM (00:00-24:00)",
            "spec.schedule[2].days: Mon is listed twice",
            "spec.schedule[3].end: \"08:00\" is not after start \"08:00\"; a window cannot cross midnight, so split it in two (e.g. 08:00-24:00 and 00:00-08:00 on the next day)",
            "spec.schedule[3].days: is empty; list at least one day or leave days out for every day",
        ]
    );
    assert_eq!(
        Schedule::parse(&[], "spec.schedule")
            .expect_err("empty")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["spec.schedule: is empty; leave schedule out for an always-active intent"]
    );
}

/// Zones with DST in both hemispheres, odd offsets, and none.
const ZONES: &[&str] = &[
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe", // 30-minute DST shift
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Chatham",
    "UTC",
];

fn arb_window() -> impl Strategy<Value = TimeWindow> {
    let days = proptest::option::of(proptest::sample::subsequence(
        vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ],
        1..=7,
    ));
    // Quarter hours so windows land on and around DST transitions (02:00, 02:30, 03:00).
    (days, 0u32..96, 1u32..=96, proptest::sample::select(ZONES))
        .prop_filter("end after start", |(_, s, e, _)| e > s)
        .prop_map(|(days, s, e, zone)| {
            let clock = |q: u32| format!("{:02}:{:02}", q * 15 / 60, q * 15 % 60);
            window(days.as_deref(), &clock(s), &clock(e), zone)
        })
}

/// Instants in 2000-2040, at whole minutes (all modern offsets are whole minutes).
fn arb_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (946_684_800i64 / 60..2_208_988_800i64 / 60).prop_map(|m| Utc.timestamp_opt(m * 60, 0).unwrap())
}

/// Instants near the DST changes of 2026, where bugs live.
fn arb_instant_near_dst() -> impl Strategy<Value = DateTime<Utc>> {
    const CHANGES: [&str; 6] = [
        "2026-03-08T07:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-04-05T16:00:00Z",
        "2026-10-04T16:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-11-01T06:00:00Z",
    ];
    (
        proptest::sample::select(&CHANGES[..]),
        -3 * 24 * 60i64..3 * 24 * 60,
    )
        .prop_map(|(c, m)| utc(c) + Duration::minutes(m))
}

/// The slow, obvious definition: step minute by minute.
fn brute_next_transition(
    s: &Schedule,
    at: DateTime<Utc>,
    limit_minutes: i64,
) -> Option<DateTime<Utc>> {
    let now = s.is_active(at);
    (1..=limit_minutes)
        .map(|m| at + Duration::minutes(m))
        .find(|t| s.is_active(*t) != now)
}

fn wall_clock_contains(w: &TimeWindow, at: DateTime<Utc>) -> bool {
    use chrono::{Datelike, Timelike};
    let zone: Tz = w.time_zone.parse().unwrap();
    let local = at.with_timezone(&zone);
    let names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let today = names[local.weekday().num_days_from_monday() as usize];
    let day_ok = w
        .days
        .as_ref()
        .is_none_or(|d| d.iter().any(|x| format!("{x:?}") == today));
    let minute = local.hour() * 60 + local.minute();
    let parse = |t: &str| t[..2].parse::<u32>().unwrap() * 60 + t[3..].parse::<u32>().unwrap();
    day_ok && parse(&w.start) <= minute && minute < parse(&w.end)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn next_transition_is_the_first_flip(windows in proptest::collection::vec(arb_window(), 1..4), at in prop_oneof![arb_instant(), arb_instant_near_dst()]) {
        let s = schedule(&windows);
        let fast = s.next_transition(at);
        // Any flip happens within 8 days (a week plus DST); compare over the same horizon.
        let slow = brute_next_transition(&s, at, 8 * 24 * 60);
        prop_assert_eq!(fast, slow, "windows {:?} at {}", windows, at);
    }

    #[test]
    fn active_means_some_window_shows_a_matching_wall_clock(windows in proptest::collection::vec(arb_window(), 1..4), at in prop_oneof![arb_instant(), arb_instant_near_dst()]) {
        let s = schedule(&windows);
        prop_assert_eq!(s.is_active(at), windows.iter().any(|w| wall_clock_contains(w, at)));
    }

    #[test]
    fn a_window_is_active_for_its_wall_clock_length_on_ordinary_days(w in arb_window()) {
        // 2026-06-01..07 has no DST change anywhere in ZONES (southern changes are in April/October).
        let s = schedule(std::slice::from_ref(&w));
        let start = utc("2026-06-01T00:00:00Z");
        let active_minutes = (0..7 * 24 * 60).filter(|m| s.is_active(start + Duration::minutes(*m))).count() as u32;
        let parse = |t: &str| t[..2].parse::<u32>().unwrap() * 60 + t[3..].parse::<u32>().unwrap();
        let days = w.days.as_ref().map_or(7, |d| d.len() as u32);
        prop_assert_eq!(active_minutes, days * (parse(&w.end) - parse(&w.start)));
    }
}
