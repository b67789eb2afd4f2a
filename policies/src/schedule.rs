//! When an intent is active: recurring weekly windows in IANA time zones.
//!
//! Semantics (also in the CRD field docs):
//! - A window is active at an instant when, on the wall clock of its time zone, the weekday is
//!   one of `days` and the time of day is in `[start, end)`. `end` may be `24:00`.
//! - `end` must be after `start`. A window never crosses midnight: an overnight span is two
//!   windows (Mon 22:00-24:00 and Tue 00:00-06:00). This keeps "which day does it belong to"
//!   unambiguous and makes `end before start` a plain error.
//! - DST follows the wall clock. On a spring-forward day the skipped wall times never happen, so a
//!   window inside the gap does not open that day and one spanning it is an hour shorter. On a
//!   fall-back day the repeated wall times happen twice, and the window covers both (e.g.
//!   01:00-03:00 lasts three real hours).
//! - The schedule is active when any window is.

use std::{collections::BTreeSet, str::FromStr};

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Timelike,
    Utc, Weekday,
};
use chrono_tz::Tz;
use plumbline_crds::TimeWindow;

use crate::{
    invalid::FieldError,
    plan::Activity,
    quantity::{format_clock, parse_clock},
};
use plumbline_crds::conditions::reason;

/// A parsed, valid schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// One parsed window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Days it opens on (all seven when the spec leaves `days` out).
    pub days: BTreeSet<WeekdayOrd>,
    /// Minutes since midnight, `start < end <= 1440`.
    pub start: u32,
    pub end: u32,
    pub zone: Tz,
}

/// `chrono::Weekday` ordered Monday first, so day sets print in week order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeekdayOrd(pub u8);

impl WeekdayOrd {
    pub fn of(day: Weekday) -> Self {
        WeekdayOrd(day.num_days_from_monday() as u8)
    }
    const NAMES: [&'static str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
}

const FULL_DAY_OF_MINUTES: u32 = 24 * 60;
/// Far enough to see every weekly boundary plus a DST shift.
const HORIZON_DAYS: i64 = 8;

impl Schedule {
    /// Parses and checks `spec.schedule`; errors carry field paths under `path`.
    pub fn parse(windows: &[TimeWindow], path: &str) -> Result<Schedule, Vec<FieldError>> {
        let mut errors = Vec::new();
        if windows.is_empty() {
            errors.push(FieldError::new(
                path,
                "is empty; leave schedule out for an always-active intent",
            ));
        }
        let parsed: Vec<Window> = windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                Window::parse(w, &format!("{path}[{i}]"))
                    .map_err(|e| errors.extend(e))
                    .ok()
            })
            .collect();
        if errors.is_empty() {
            Ok(Schedule { windows: parsed })
        } else {
            Err(errors)
        }
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The first window that contains `at`, if any.
    pub fn active_window(&self, at: DateTime<Utc>) -> Option<&Window> {
        self.windows.iter().find(|w| w.contains(at))
    }

    pub fn is_active(&self, at: DateTime<Utc>) -> bool {
        self.active_window(at).is_some()
    }

    /// The first instant after `at` at which [`Schedule::is_active`] differs from its value at
    /// `at`; `None` if it never changes (e.g. every day 00:00-24:00).
    ///
    /// Activity can only change where some window's wall clock crosses a boundary, or where a
    /// zone's offset changes; between consecutive such instants it is constant. So it is enough to
    /// test those instants in order.
    pub fn next_transition(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let now = self.is_active(at);
        let horizon = at + Duration::days(HORIZON_DAYS);
        let mut candidates: Vec<DateTime<Utc>> = Vec::new();
        for w in &self.windows {
            candidates.extend(w.boundaries_near(at));
        }
        let zones: BTreeSet<String> = self
            .windows
            .iter()
            .map(|w| w.zone.name().to_string())
            .collect();
        for zone in zones {
            let zone = Tz::from_str(&zone).expect("zone names come from parsed zones");
            candidates.extend(offset_changes(zone, at, horizon));
        }
        candidates.retain(|c| *c > at && *c <= horizon);
        candidates.sort();
        candidates.dedup();
        candidates.into_iter().find(|c| self.is_active(*c) != now)
    }
}

impl Window {
    fn parse(w: &TimeWindow, path: &str) -> Result<Window, Vec<FieldError>> {
        let mut errors = Vec::new();
        let start = parse_clock(&w.start, false)
            .map_err(|e| errors.push(FieldError::new(format!("{path}.start"), e)));
        let end = parse_clock(&w.end, true)
            .map_err(|e| errors.push(FieldError::new(format!("{path}.end"), e)));
        if let (Ok(s), Ok(e)) = (start, end) {
            if e <= s {
                errors.push(FieldError::new(
                    format!("{path}.end"),
                    format!(
                        "{:?} is not after start {:?}; a window cannot cross midnight, so split it in two \
                         (e.g. {}-24:00 and 00:00-{} on the next day)",
                        w.end, w.start, w.start, w.end
                    ),
                ));
            }
        }
        let zone = Tz::from_str(&w.time_zone).map_err(|_| {
            errors.push(FieldError::new(
                format!("{path}.timeZone"),
                format!(
                    "unknown time zone {:?} (use an IANA name such as Europe/Berlin or UTC)",
                    w.time_zone
                ),
            ))
        });
        let mut days = BTreeSet::new();
        match &w.days {
            None => days.extend((0..7).map(WeekdayOrd)),
            Some(list) if list.is_empty() => errors.push(FieldError::new(
                format!("{path}.days"),
                "is empty; list at least one day or leave days out for every day",
            )),
            Some(list) => {
                for d in list {
                    if !days.insert(WeekdayOrd::from(*d)) {
                        errors.push(FieldError::new(
                            format!("{path}.days"),
                            format!("{d:?} is listed twice"),
                        ));
                    }
                }
            }
        }
        match (start, end, zone) {
            (Ok(start), Ok(end), Ok(zone)) if errors.is_empty() => Ok(Window {
                days,
                start,
                end,
                zone,
            }),
            _ => Err(errors),
        }
    }

    /// Whether `at` falls inside the window (wall clock of the window's zone).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone);
        let second = local.num_seconds_from_midnight();
        self.days.contains(&WeekdayOrd::of(local.weekday()))
            && self.start * 60 <= second
            && second < self.end * 60
    }

    /// Every instant at which the wall clock shows one of the window's boundaries on one of its
    /// days, from the day before `at` to the horizon. Repeated wall times give two instants;
    /// skipped ones give none (the offset change is a candidate of its own).
    fn boundaries_near(&self, at: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let today = at.with_timezone(&self.zone).date_naive();
        let mut out = Vec::new();
        for offset in -1..=HORIZON_DAYS {
            let date = today + Duration::days(offset);
            if !self.days.contains(&WeekdayOrd::of(date.weekday())) {
                continue;
            }
            for minute in [self.start, self.end] {
                let (date, minute) = if minute == FULL_DAY_OF_MINUTES {
                    (date + Duration::days(1), 0)
                } else {
                    (date, minute)
                };
                out.extend(instants_of(self.zone, date, minute));
            }
        }
        out
    }

    /// E.g. `Mon-Fri 08:00-20:00 Europe/Berlin`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}-{} {}",
            describe_days(&self.days),
            format_clock(self.start),
            format_clock(self.end),
            self.zone.name()
        )
    }
}

impl From<plumbline_crds::Weekday> for WeekdayOrd {
    fn from(d: plumbline_crds::Weekday) -> Self {
        use plumbline_crds::Weekday as W;
        WeekdayOrd(match d {
            W::Mon => 0,
            W::Tue => 1,
            W::Wed => 2,
            W::Thu => 3,
            W::Fri => 4,
            W::Sat => 5,
            W::Sun => 6,
        })
    }
}

/// `Mon-Fri`, `Mon,Wed,Sat-Sun`, `daily`.
fn describe_days(days: &BTreeSet<WeekdayOrd>) -> String {
    if days.len() == 7 {
        return "daily".to_string();
    }
    let mut runs: Vec<(u8, u8)> = Vec::new();
    for d in days.iter().map(|d| d.0) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == d => *end = d,
            _ => runs.push((d, d)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            let (a, b) = (
                WeekdayOrd::NAMES[*a as usize],
                WeekdayOrd::NAMES[*b as usize],
            );
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The UTC instants at which `zone`'s wall clock reads `date minute`.
fn instants_of(zone: Tz, date: NaiveDate, minute: u32) -> Vec<DateTime<Utc>> {
    let time = NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).expect("minute < 1440");
    match zone.from_local_datetime(&date.and_time(time)) {
        LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
        LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
        LocalResult::None => vec![],
    }
}

/// Instants in `(from, to]` at which `zone`'s UTC offset changes. Found by an hourly scan, then
/// bisection to the second; zones do not change offset twice within an hour.
fn offset_changes(zone: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let offset_at = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let next = t + Duration::hours(1);
        if offset_at(t) != offset_at(next) {
            let (mut lo, mut hi) = (t, next);
            while hi - lo > Duration::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if offset_at(mid) == offset_at(lo) {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            out.push(hi.with_nanosecond(0).unwrap_or(hi));
        }
        t = next;
    }
    out
}

/// Whether the schedule applies at `now`, in the words of the `Active` condition.
pub fn activity(schedule: Option<&Schedule>, now: DateTime<Utc>) -> Activity {
    let Some(schedule) = schedule else {
        return Activity {
            active: true,
            reason: reason::ALWAYS_ACTIVE,
            message: "no schedule: always active".to_string(),
            next_transition: None,
        };
    };
    let next_transition = schedule.next_transition(now);
    match schedule.active_window(now) {
        Some(w) => Activity {
            active: true,
            reason: reason::WINDOW_OPEN,
            message: format!("inside window {}", w.describe()),
            next_transition,
        },
        None => Activity {
            active: false,
            reason: reason::WINDOW_CLOSED,
            message: format!(
                "outside every window ({})",
                schedule
                    .windows()
                    .iter()
                    .map(|w| w.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            next_transition,
        },
    }
}
