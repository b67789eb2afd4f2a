//! When an intent is active by live metrics: Prometheus signals with a band, combined with the
//! schedule's windows (docs/activation.md).
//!
//! Two pure steps:
//! - [`step`]: one signal's memory and a new [`Reading`] (a value, an empty result, or a failed
//!   query) → its next memory: the data state (value, empty, error, stale), the band's `for`
//!   clock, whether the signal is active and since when, and since when data is missing.
//! - [`evaluate`]: the intent's windows and every signal's memory → whether the intent is
//!   active, why (the `Active` condition), whether disruptive hypervisor actions may stay, and
//!   the `SignalsHealthy` condition.
//!
//! The rules:
//! - A value above `activateAbove` for `for` activates the signal; below `deactivateBelow` it
//!   deactivates, but never before it was active for `keepActiveFor`. Inside the band nothing
//!   changes (and the `for` clock restarts).
//! - Missing data (an error, a stale signal, or an empty result with `onEmpty: keepLast`)
//!   neither starts nor stops anything: the last state holds. Empty is never zero: with
//!   `onEmpty: inactive` or `active` it counts as a value below or above the band.
//! - Stale: no successful evaluation for [`STALE_AFTER_INTERVALS`] intervals.
//! - After `maxKeepLast` of missing data, an activation that rests on that signal keeps its
//!   protective Kubernetes actions but releases disruptive hypervisor actions (neighbour
//!   throttles): [`Decision::disruptive_allowed`] is false.
//! - `anyOf`: active while a window is open or any signal is active (combining by max: a signal
//!   never lowers what a window or another signal wants). `allOf`: active while the window is
//!   open (when there is a schedule) and every signal is active.
//!
//! The memory lives in the intent's `status.signals`, so a restart or a new leader continues
//! where the last one stopped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use plumbline_crds::{conditions::reason, Combine, OnEmpty, SignalStatus};

use crate::{
    invalid::FieldError, maintenance::parse_duration, plan::Activity, schedule::activity,
    schedule::Schedule,
};

/// `keepActiveFor` when left out.
pub const DEFAULT_KEEP_ACTIVE_FOR: Duration = Duration::from_secs(600);
/// `interval` when left out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// `maxKeepLast` when left out.
pub const DEFAULT_MAX_KEEP_LAST: Duration = Duration::from_secs(600);
/// What the `Active` message says once disruptive hypervisor actions are released.
pub const RELEASED: &str = "disruptive hypervisor actions are released";
/// A signal is stale after this many intervals without a successful evaluation.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// `spec.activation`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidActivation {
    pub combine: Combine,
    pub signals: Vec<SignalRule>,
    pub on_empty: OnEmpty,
    pub max_keep_last: Duration,
}

/// One signal, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRule {
    pub name: String,
    pub query: String,
    pub activate_above: f64,
    pub deactivate_below: f64,
    pub for_: Duration,
    pub keep_active_for: Duration,
    pub interval: Duration,
}

impl SignalRule {
    /// E.g. `500–800`.
    pub fn band(&self) -> String {
        format!(
            "{}–{}",
            number(self.deactivate_below),
            number(self.activate_above)
        )
    }
}

/// Checks and parses `spec.activation`; errors carry field paths under `path`.
pub fn parse(
    spec: &plumbline_crds::Activation,
    path: &str,
) -> Result<ValidActivation, Vec<FieldError>> {
    let mut errors = Vec::new();
    if spec.signals.is_empty() {
        errors.push(FieldError::new(
            format!("{path}.signals"),
            "is empty; list at least one signal or leave activation out",
        ));
    }
    let duration = |errors: &mut Vec<FieldError>,
                    field: String,
                    text: Option<&String>,
                    default: Duration,
                    min: Duration| {
        let Some(text) = text else { return default };
        match parse_duration(text) {
            Some(d) if d >= min => d,
            Some(_) => {
                errors.push(FieldError::new(
                    field,
                    format!("{text:?} is shorter than {}s", min.as_secs()),
                ));
                default
            }
            None => {
                errors.push(FieldError::new(
                    field,
                    format!("{text:?} is not a duration such as 30s, 10m or 1h"),
                ));
                default
            }
        }
    };
    let mut signals: Vec<SignalRule> = Vec::new();
    for (i, s) in spec.signals.iter().enumerate() {
        let at = format!("{path}.signals[{i}]");
        if signals.iter().any(|other| other.name == s.name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{:?} is used by another signal of this intent", s.name),
            ));
        }
        if s.query.trim().is_empty() {
            errors.push(FieldError::new(format!("{at}.query"), "is empty"));
        }
        for (field, v) in [
            ("activateAbove", s.activate_above),
            ("deactivateBelow", s.deactivate_below),
        ] {
            if !v.is_finite() {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    "is not a finite number",
                ));
            }
        }
        if s.deactivate_below > s.activate_above {
            errors.push(FieldError::new(
                format!("{at}.deactivateBelow"),
                format!(
                    "{} is above activateAbove {}; the band needs deactivateBelow <= activateAbove",
                    number(s.deactivate_below),
                    number(s.activate_above)
                ),
            ));
        }
        signals.push(SignalRule {
            name: s.name.clone(),
            query: s.query.clone(),
            activate_above: s.activate_above,
            deactivate_below: s.deactivate_below,
            for_: duration(
                &mut errors,
                format!("{at}.for"),
                s.for_.as_ref(),
                Duration::ZERO,
                Duration::ZERO,
            ),
            keep_active_for: duration(
                &mut errors,
                format!("{at}.keepActiveFor"),
                s.keep_active_for.as_ref(),
                DEFAULT_KEEP_ACTIVE_FOR,
                Duration::ZERO,
            ),
            interval: duration(
                &mut errors,
                format!("{at}.interval"),
                s.interval.as_ref(),
                DEFAULT_INTERVAL,
                Duration::from_secs(1),
            ),
        });
    }
    let max_keep_last = duration(
        &mut errors,
        format!("{path}.maxKeepLast"),
        spec.max_keep_last.as_ref(),
        DEFAULT_MAX_KEEP_LAST,
        Duration::ZERO,
    );
    if errors.is_empty() {
        Ok(ValidActivation {
            combine: spec.combine,
            signals,
            on_empty: spec.on_empty,
            max_keep_last,
        })
    } else {
        Err(errors)
    }
}

/// A signal's data state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataState {
    /// One sample.
    Value,
    /// No series.
    Empty,
    /// HTTP error, bad query or timeout.
    Error,
    /// No successful evaluation for [`STALE_AFTER_INTERVALS`] intervals.
    Stale,
}

impl DataState {
    pub const ALL: [DataState; 4] = [
        DataState::Value,
        DataState::Empty,
        DataState::Error,
        DataState::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataState::Value => "Value",
            DataState::Empty => "Empty",
            DataState::Error => "Error",
            DataState::Stale => "Stale",
        }
    }

    fn parse(text: &str) -> DataState {
        DataState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .unwrap_or(DataState::Error)
    }
}

/// The outcome of one query.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Value(f64),
    Empty,
    /// The query failed; `invalid` when Prometheus rejected it as a bad query.
    Failed {
        message: String,
        invalid: bool,
    },
}

/// What the decision remembers of one signal (`status.signals[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalMemory {
    pub name: String,
    pub state: DataState,
    /// Since when in `state`.
    pub since: DateTime<Utc>,
    pub value: Option<f64>,
    pub last_error: Option<String>,
    pub invalid: bool,
    pub active: bool,
    pub active_since: Option<DateTime<Utc>>,
    /// Since when the value is above the band (the `for` clock).
    pub above_since: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// The last evaluation, successful or not.
    pub evaluated_at: Option<DateTime<Utc>>,
    /// Since when data is missing (the `maxKeepLast` clock).
    pub missing_since: Option<DateTime<Utc>>,
}

/// Where a reading puts the signal relative to its band; `None`: no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Above,
    Inside,
    Below,
}

fn level(rule: &SignalRule, v: f64) -> Level {
    if v > rule.activate_above {
        Level::Above
    } else if v < rule.deactivate_below {
        Level::Below
    } else {
        // Inside the band, or NaN: neither starts nor stops anything.
        Level::Inside
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// The signal's next memory after `reading` at `now`. Pure.
pub fn step(
    rule: &SignalRule,
    on_empty: OnEmpty,
    memory: Option<&SignalMemory>,
    reading: Reading,
    now: DateTime<Utc>,
) -> SignalMemory {
    let mut m = memory
        .filter(|m| m.name == rule.name)
        .cloned()
        .unwrap_or(SignalMemory {
            name: rule.name.clone(),
            state: DataState::Error,
            since: now,
            value: None,
            last_error: None,
            invalid: false,
            active: false,
            active_since: None,
            above_since: None,
            last_success: None,
            evaluated_at: None,
            missing_since: None,
        });
    m.evaluated_at = Some(now);
    let (state, level) = match reading {
        Reading::Value(v) => {
            m.value = v.is_finite().then_some(v).or(m.value);
            m.last_success = Some(now);
            m.last_error = None;
            m.invalid = false;
            (DataState::Value, Some(level(rule, v)))
        }
        Reading::Empty => {
            m.last_success = Some(now);
            m.last_error = None;
            m.invalid = false;
            let level = match on_empty {
                OnEmpty::KeepLast => None,
                OnEmpty::Inactive => Some(Level::Below),
                OnEmpty::Active => Some(Level::Above),
            };
            (DataState::Empty, level)
        }
        Reading::Failed { message, invalid } => {
            m.last_error = Some(message);
            m.invalid = invalid;
            let reference = m.last_success.or(m.missing_since).unwrap_or(now);
            let stale = elapsed(reference, now) >= rule.interval * STALE_AFTER_INTERVALS;
            (
                if stale {
                    DataState::Stale
                } else {
                    DataState::Error
                },
                None,
            )
        }
    };
    if state != m.state || memory.is_none() {
        m.state = state;
        m.since = now;
    }
    match level {
        Some(Level::Above) => {
            let since = *m.above_since.get_or_insert(now);
            if !m.active && elapsed(since, now) >= rule.for_ {
                m.active = true;
                m.active_since = Some(now);
            }
        }
        Some(Level::Inside) => m.above_since = None,
        Some(Level::Below) => {
            m.above_since = None;
            let kept = m
                .active_since
                .is_some_and(|s| elapsed(s, now) < rule.keep_active_for);
            if m.active && !kept {
                m.active = false;
                m.active_since = None;
            }
        }
        None => {}
    }
    m.missing_since = match level {
        None => m.missing_since.or(Some(now)),
        Some(_) => None,
    };
    m
}

/// Whether an intent is active now, why, and how healthy its signals are.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub activity: Activity,
    /// What activated it: `window`, a signal's name, or empty when inactive (the label of the
    /// transitions metric).
    pub cause: String,
    /// False when the intent is active only on signal data missing for longer than
    /// `maxKeepLast`: Kubernetes protection stays, disruptive hypervisor actions are released.
    pub disruptive_allowed: bool,
    /// The `SignalsHealthy` condition; `None` without signals.
    pub health: Option<SignalsHealth>,
    /// Signals whose query Prometheus rejected: (name, Prometheus's message).
    pub invalid: Vec<(String, String)>,
}

/// The `SignalsHealthy` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalsHealth {
    pub healthy: bool,
    pub reason: &'static str,
    pub message: String,
}

/// One signal in words, e.g. `checkout-peak = 612 (band 500–800): inactive`.
pub fn describe_signal(rule: &SignalRule, memory: Option<&SignalMemory>) -> String {
    let value = memory
        .and_then(|m| m.value)
        .map(number)
        .unwrap_or_else(|| "no value yet".to_string());
    let state = match memory {
        None => "not evaluated yet".to_string(),
        Some(m) => {
            let data = match m.state {
                DataState::Value => String::new(),
                DataState::Empty => ", query returned no series".to_string(),
                DataState::Error | DataState::Stale => format!(
                    ", {}: {}",
                    m.state.as_str().to_lowercase(),
                    m.last_error.as_deref().unwrap_or("no data")
                ),
            };
            format!("{}{data}", if m.active { "active" } else { "inactive" })
        }
    };
    format!("{} = {value} (band {}): {state}", rule.name, rule.band())
}

/// What `explain` says of a signal given its memory after a live reading: what holds now and
/// what would change it, e.g. "stays inactive; activates after the value stays above 800 for 1m".
pub fn outlook(rule: &SignalRule, memory: &SignalMemory, now: DateTime<Utc>) -> String {
    let head = format!(
        "{} = {} (band {})",
        rule.name,
        memory.value.map(number).unwrap_or_else(|| "-".into()),
        rule.band()
    );
    let missing = memory.missing_since.is_some();
    let tail = match (memory.active, missing) {
        (_, true) => format!(
            "{} ({}); the last state holds while data is missing",
            if memory.active {
                "stays active"
            } else {
                "stays inactive"
            },
            match memory.state {
                DataState::Empty => "no series".to_string(),
                _ => memory.last_error.clone().unwrap_or_default(),
            }
        ),
        (false, false) => match memory.above_since {
            Some(since) => {
                let left = rule.for_.saturating_sub(elapsed(since, now));
                format!(
                    "above {} since {}; activates if it stays above for {} more",
                    number(rule.activate_above),
                    since.format("%H:%M:%S UTC"),
                    human(left)
                )
            }
            None => format!(
                "stays inactive; activates after the value stays above {} for {}",
                number(rule.activate_above),
                human(rule.for_)
            ),
        },
        (true, false) => {
            let kept = memory
                .active_since
                .map(|s| rule.keep_active_for.saturating_sub(elapsed(s, now)))
                .unwrap_or_default();
            if kept.is_zero() {
                format!(
                    "stays active; deactivates once the value is below {}",
                    number(rule.deactivate_below)
                )
            } else {
                format!(
                    "stays active for at least {} more (keepActiveFor), then until the value is below {}",
                    human(kept),
                    number(rule.deactivate_below)
                )
            }
        }
    };
    format!("{head}: {tail}")
}

/// Whether the intent is active at `now`, from its schedule, its activation and its signals'
/// memories. Without `activation`, the schedule alone decides ([`activity`]). Pure.
pub fn evaluate(
    schedule: Option<&Schedule>,
    activation: Option<&ValidActivation>,
    memories: &[SignalMemory],
    now: DateTime<Utc>,
) -> Decision {
    let Some(activation) = activation else {
        let activity = activity(schedule, now);
        let cause = if activity.active { "window" } else { "" };
        return Decision {
            cause: cause.to_string(),
            activity,
            disruptive_allowed: true,
            health: None,
            invalid: Vec::new(),
        };
    };
    let window = schedule.map(|s| s.active_window(now));
    let next_transition = schedule.and_then(|s| s.next_transition(now));
    let memory_of = |rule: &SignalRule| memories.iter().find(|m| m.name == rule.name);
    let held_too_long = |m: Option<&SignalMemory>| {
        m.and_then(|m| m.missing_since)
            .is_some_and(|since| elapsed(since, now) >= activation.max_keep_last)
    };
    let signals: Vec<(&SignalRule, Option<&SignalMemory>)> = activation
        .signals
        .iter()
        .map(|r| (r, memory_of(r)))
        .collect();
    let is_active = |m: Option<&SignalMemory>| m.is_some_and(|m| m.active);
    let words: Vec<String> = signals
        .iter()
        .map(|(r, m)| describe_signal(r, *m))
        .collect();
    let window_words = match (schedule, window) {
        (Some(_), Some(Some(w))) => Some(format!("inside window {}", w.describe())),
        (Some(s), _) => Some(format!(
            "outside every window ({})",
            s.windows()
                .iter()
                .map(|w| w.describe())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        (None, _) => None,
    };
    let window_open = matches!(window, Some(Some(_)));
    let message = window_words
        .iter()
        .cloned()
        .chain(words.iter().cloned())
        .collect::<Vec<_>>()
        .join("; ");
    let first_active = signals.iter().find(|(_, m)| is_active(*m));
    let (active, reason, cause, disruptive_allowed) = match activation.combine {
        Combine::AnyOf => {
            let fresh = window_open
                || signals
                    .iter()
                    .any(|(_, m)| is_active(*m) && !held_too_long(*m));
            match (window_open, first_active) {
                (true, _) => (true, reason::WINDOW_OPEN, "window".to_string(), true),
                (false, Some((r, _))) => (true, reason::SIGNAL_ACTIVE, r.name.clone(), fresh),
                (false, None) if window.is_some() => {
                    (false, reason::WINDOW_CLOSED, String::new(), true)
                }
                (false, None) => (false, reason::SIGNALS_INACTIVE, String::new(), true),
            }
        }
        Combine::AllOf => {
            let all = signals.iter().all(|(_, m)| is_active(*m));
            let window_ok = window.is_none() || window_open;
            if window_ok && all {
                let stale = signals.iter().any(|(_, m)| held_too_long(*m));
                (true, reason::ALL_ACTIVE, "allOf".to_string(), !stale)
            } else if !window_ok {
                (false, reason::WINDOW_CLOSED, String::new(), true)
            } else {
                (false, reason::SIGNALS_INACTIVE, String::new(), true)
            }
        }
    };
    let message = if active && !disruptive_allowed {
        format!(
            "{message}; signal data missing for longer than maxKeepLast ({}): Kubernetes protection stays, {RELEASED}",
            human(activation.max_keep_last)
        )
    } else {
        message
    };
    let invalid: Vec<(String, String)> = signals
        .iter()
        .filter_map(|(r, m)| {
            let m = (*m)?;
            m.invalid
                .then(|| (r.name.clone(), m.last_error.clone().unwrap_or_default()))
        })
        .collect();
    let missing: Vec<String> = signals
        .iter()
        .filter_map(|(r, m)| match m {
            None => Some(format!("{}: not evaluated yet", r.name)),
            Some(m) if m.state == DataState::Value => None,
            Some(m) if m.state == DataState::Empty => {
                Some(format!("{}: the query returned no series", r.name))
            }
            Some(m) => Some(format!(
                "{}: {} since {}: {}",
                r.name,
                m.state.as_str().to_lowercase(),
                m.since.format("%H:%M:%S UTC"),
                m.last_error.as_deref().unwrap_or("no data")
            )),
        })
        .collect();
    let health = if !invalid.is_empty() {
        SignalsHealth {
            healthy: false,
            reason: reason::INVALID_SIGNAL,
            message: invalid
                .iter()
                .map(|(n, e)| format!("{n}: Prometheus rejected the query: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        }
    } else if !missing.is_empty() {
        SignalsHealth {
            healthy: false,
            reason: reason::SIGNAL_DATA_MISSING,
            message: format!("{}; the last state holds", missing.join("; ")),
        }
    } else {
        SignalsHealth {
            healthy: true,
            reason: reason::SIGNALS_EVALUATED,
            message: format!("{} signal(s) evaluated", signals.len()),
        }
    };
    Decision {
        activity: Activity {
            active,
            reason,
            message,
            next_transition,
        },
        cause,
        disruptive_allowed: !active || disruptive_allowed,
        health: Some(health),
        invalid,
    }
}

/// Whether `rule` is due for a query at `now`, and if not, how long until it is.
pub fn due_in(rule: &SignalRule, memory: Option<&SignalMemory>, now: DateTime<Utc>) -> Duration {
    match memory.and_then(|m| m.evaluated_at) {
        None => Duration::ZERO,
        Some(at) => rule.interval.saturating_sub(elapsed(at, now)),
    }
}

/// [`evaluate`] for an intent as stored: its parsed spec and the memories in its
/// `status.signals`. The planner, the storage-health loop and the maintenance planner all
/// decide "active" through here.
pub fn evaluate_intent(
    schedule: Option<&Schedule>,
    activation: Option<&ValidActivation>,
    intent: &plumbline_crds::WorkloadIntent,
    now: DateTime<Utc>,
) -> Decision {
    let memories = memories_from_status(
        intent
            .status
            .as_ref()
            .map(|s| s.signals.as_slice())
            .unwrap_or_default(),
    );
    evaluate(schedule, activation, &memories, now)
}

/// The memories kept in `status.signals`.
pub fn memories_from_status(entries: &[SignalStatus]) -> Vec<SignalMemory> {
    entries
        .iter()
        .map(|s| SignalMemory {
            name: s.name.clone(),
            state: DataState::parse(&s.state),
            since: from_time(&s.since),
            value: s.value,
            last_error: s.last_error.clone(),
            invalid: s.invalid,
            active: s.active,
            active_since: s.active_since.as_ref().map(from_time),
            above_since: s.above_since.as_ref().map(from_time),
            last_success: s.last_success.as_ref().map(from_time),
            evaluated_at: s.evaluated_at.as_ref().map(from_time),
            missing_since: s.missing_since.as_ref().map(from_time),
        })
        .collect()
}

/// A memory as `status.signals[]` keeps it.
pub fn memory_to_status(m: &SignalMemory) -> SignalStatus {
    SignalStatus {
        name: m.name.clone(),
        state: m.state.as_str().to_string(),
        since: to_time(m.since),
        value: m.value,
        last_error: m.last_error.clone(),
        invalid: m.invalid,
        active: m.active,
        active_since: m.active_since.map(to_time),
        above_since: m.above_since.map(to_time),
        last_success: m.last_success.map(to_time),
        evaluated_at: m.evaluated_at.map(to_time),
        missing_since: m.missing_since.map(to_time),
    }
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or_default())
}

fn from_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap_or_default()
}

/// A number without a needless `.0`: `800`, `612.5`.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `1m`, `90s` → `1m30s`, `0s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests;
