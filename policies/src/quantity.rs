//! The small string formats of the API: clock times, latencies, intervals, counts and percentages.
//! Admission already checks their shape; these parse them (and re-check, since `explain -f`
//! reads files that never went through admission).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use plumbline_crds::schema::{MAX_SAMPLE_INTERVAL_MS, MIN_SAMPLE_INTERVAL_MS};

use crate::plan::CountOrPercent;

/// Minutes since midnight of `HH:MM`; `24:00` (1440) only when `allow_end_of_day`.
pub fn parse_clock(text: &str, allow_end_of_day: bool) -> Result<u32, String> {
    let bad = || {
        let range = if allow_end_of_day {
            "00:00-24:00"
        } else {
            "00:00-23:59"
        };
        format!("{text:?} is not a time of day HH:MM ({range})")
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if allow_end_of_day => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// Renders minutes since midnight as `HH:MM`.
pub fn format_clock(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// A positive latency such as `20ms`, `500us`, `1.5s`.
pub fn parse_latency(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, &[("us", 1e-6), ("ms", 1e-3), ("s", 1.0)])
        .ok_or_else(|| format!("{text:?} is not a latency such as 20ms, 500us or 1.5s"))?;
    if d.is_zero() {
        return Err(format!(
            "{text:?} is zero; a latency budget must be positive"
        ));
    }
    Ok(d)
}

/// A sample interval such as `1s`, `500ms`, `2m`, from 100ms to 1h.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, &[("ms", 1e-3), ("s", 1.0), ("m", 60.0)])
        .filter(|_| !text.contains('.'))
        .ok_or_else(|| format!("{text:?} is not an interval such as 1s, 500ms or 2m"))?;
    if d < Duration::from_millis(MIN_SAMPLE_INTERVAL_MS) {
        return Err(format!("{text:?} is shorter than 100ms"));
    }
    if d > Duration::from_millis(MAX_SAMPLE_INTERVAL_MS) {
        return Err(format!("{text:?} is longer than 1h"));
    }
    Ok(d)
}

/// `number unit` with the longest matching unit suffix; `None` if malformed.
fn parse_duration(text: &str, units: &[(&str, f64)]) -> Option<Duration> {
    let (number, scale) = units
        .iter()
        .filter_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .min_by_key(|(n, _)| n.len())?;
    let well_formed = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !well_formed {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * scale).ok()
}

/// A count (`2`) or a percentage (`"50%"`, 0-100).
pub fn parse_count_or_percent(value: &IntOrString) -> Result<CountOrPercent, String> {
    match value {
        IntOrString::Int(n) => u32::try_from(*n).map(CountOrPercent::Count).map_err(|_| {
            format!("{n} is negative; use a count such as 2 or a percentage such as \"50%\"")
        }),
        IntOrString::String(s) => {
            let bad = || format!("{s:?} is not a count such as 2 or a percentage such as \"50%\"");
            let digits = s.strip_suffix('%').ok_or_else(bad)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3
            {
                return Err(bad());
            }
            let p: u32 = digits.parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(format!("{s:?} is more than 100%"));
            }
            Ok(CountOrPercent::Percent(p))
        }
    }
}

impl CountOrPercent {
    /// As the Kubernetes API writes it.
    pub fn to_int_or_string(self) -> IntOrString {
        match self {
            CountOrPercent::Count(n) => IntOrString::Int(n as i32),
            CountOrPercent::Percent(p) => IntOrString::String(format!("{p}%")),
        }
    }

    /// Parses the form [`std::fmt::Display`] writes (`2`, `50%`).
    pub fn parse(text: &str) -> Result<CountOrPercent, String> {
        match text.parse::<i32>() {
            Ok(n) => parse_count_or_percent(&IntOrString::Int(n)),
            Err(_) => parse_count_or_percent(&IntOrString::String(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clock_times() {
        assert_eq!(parse_clock("00:00", false), Ok(0));
        assert_eq!(parse_clock("08:30", false), Ok(510));
        assert_eq!(parse_clock("23:59", false), Ok(1439));
        assert_eq!(parse_clock("24:00", true), Ok(1440));
        for bad in [
            "24:00", "8:00", "08:60", "25:00", "0800", "08:00:00", "", "ab:cd", "-1:00", "+8:00",
        ] {
            assert!(parse_clock(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(parse_clock("24:01", true).is_err());
    }

    #[test]
    fn latencies() {
        assert_eq!(parse_latency("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_latency("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_latency("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in [
            "20", "ms", "20 ms", "-1ms", "1.ms", ".5s", "1..5s", "20mss", "0ms", "20m",
        ] {
            assert!(parse_latency(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        for bad in ["10ms", "1.5s", "1h", "s", "0s"] {
            assert!(parse_interval(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn counts_and_percentages() {
        assert_eq!(
            parse_count_or_percent(&IntOrString::Int(2)),
            Ok(CountOrPercent::Count(2))
        );
        assert_eq!(
            parse_count_or_percent(&IntOrString::String("50%".into())),
            Ok(CountOrPercent::Percent(50))
        );
        assert_eq!(
            parse_count_or_percent(&IntOrString::String("100%".into())),
            Ok(CountOrPercent::Percent(100))
        );
        for bad in ["101%", "50", "%", "5 0%", "-5%", "1000%"] {
            assert!(
                parse_count_or_percent(&IntOrString::String(bad.into())).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(parse_count_or_percent(&IntOrString::Int(-1)).is_err());
    }

    proptest! {
        #[test]
        fn clock_round_trips(minutes in 0u32..1440) {
            prop_assert_eq!(parse_clock(&format_clock(minutes), false), Ok(minutes));
        }

        #[test]
        fn count_or_percent_round_trips_through_text_and_int_or_string(v in prop_oneof![
            (0u32..10_000).prop_map(CountOrPercent::Count),
            (0u32..=100).prop_map(CountOrPercent::Percent),
        ]) {
            prop_assert_eq!(CountOrPercent::parse(&v.to_string()), Ok(v));
            prop_assert_eq!(parse_count_or_percent(&v.to_int_or_string()), Ok(v));
        }

        #[test]
        fn whole_millisecond_latencies_parse_exactly(ms in 1u64..100_000) {
            prop_assert_eq!(parse_latency(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }
    }
}
