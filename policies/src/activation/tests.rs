use super::*;
use chrono::TimeZone;
use proptest::prelude::*;

fn rule(for_s: u64, keep_s: u64) -> SignalRule {
    SignalRule {
        name: "checkout-peak".into(),
        query: "traffic".into(),
        activate_above: 800.0,
        deactivate_below: 500.0,
        for_: Duration::from_secs(for_s),
        keep_active_for: Duration::from_secs(keep_s),
        interval: Duration::from_secs(1),
    }
}

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
}

fn activation(combine: Combine, rules: Vec<SignalRule>) -> ValidActivation {
    ValidActivation {
        combine,
        signals: rules,
        on_empty: OnEmpty::KeepLast,
        max_keep_last: Duration::from_secs(5),
    }
}

fn failed() -> Reading {
    Reading::Failed {
        message: "connection refused".into(),
        invalid: false,
    }
}

/// Runs `readings` (one per second from t(0)) through `step`.
fn run(rule: &SignalRule, on_empty: OnEmpty, readings: &[Reading]) -> Vec<SignalMemory> {
    let mut out: Vec<SignalMemory> = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        let next = step(rule, on_empty, out.last(), r.clone(), t(i as i64));
        out.push(next);
    }
    out
}

#[test]
fn activates_after_for_and_not_before() {
    let r = rule(2, 5);
    let m = run(&r, OnEmpty::KeepLast, &vec![Reading::Value(1000.0); 4]);
    assert_eq!(
        m.iter().map(|m| m.active).collect::<Vec<_>>(),
        [false, false, true, true]
    );
    assert_eq!(m[2].active_since, Some(t(2)));
}

#[test]
fn inside_the_band_changes_nothing_either_way() {
    let r = rule(0, 0);
    let m = run(
        &r,
        OnEmpty::KeepLast,
        &[Reading::Value(600.0), Reading::Value(700.0)],
    );
    assert!(!m[1].active);
    let m = run(
        &r,
        OnEmpty::KeepLast,
        &[
            Reading::Value(900.0),
            Reading::Value(600.0),
            Reading::Value(500.0),
        ],
    );
    assert!(m.iter().all(|m| m.active));
}

#[test]
fn deactivates_below_the_band_only_after_keep_active_for() {
    let r = rule(0, 3);
    let mut readings = vec![Reading::Value(900.0)];
    readings.extend(std::iter::repeat_n(Reading::Value(100.0), 4));
    let m = run(&r, OnEmpty::KeepLast, &readings);
    assert_eq!(
        m.iter().map(|m| m.active).collect::<Vec<_>>(),
        [true, true, true, false, false]
    );
}

#[test]
fn empty_is_not_zero_and_errors_turn_stale_after_three_intervals() {
    let r = rule(0, 0);
    let m = run(
        &r,
        OnEmpty::KeepLast,
        &[
            Reading::Value(900.0),
            Reading::Empty,
            failed(),
            failed(),
            failed(),
            failed(),
        ],
    );
    assert_eq!(m[1].state, DataState::Empty);
    assert!(m[1].active, "an empty result keeps the last state");
    assert_eq!(
        m[1].value,
        Some(900.0),
        "the last value is kept, not zeroed"
    );
    assert_eq!(m[1].missing_since, Some(t(1)));
    assert_eq!(m[2].state, DataState::Error);
    // The last success was the empty result at t(1): stale from t(4).
    assert_eq!(m[3].state, DataState::Error);
    assert_eq!(m[4].state, DataState::Stale);
    assert_eq!(m[4].since, t(4));
    assert!(m.iter().all(|m| m.active));
    assert_eq!(m[5].missing_since, Some(t(1)));

    let m = run(
        &r,
        OnEmpty::Inactive,
        &[Reading::Value(900.0), Reading::Empty],
    );
    assert!(!m[1].active);
    assert_eq!(m[1].missing_since, None);
}

#[test]
fn after_max_keep_last_hypervisor_actions_are_released_but_the_intent_stays_active() {
    let r = rule(0, 0);
    let a = activation(Combine::AnyOf, vec![r.clone()]);
    let mut readings = vec![Reading::Value(900.0)];
    readings.extend(std::iter::repeat_n(failed(), 7));
    let m = run(&r, OnEmpty::KeepLast, &readings);
    let at = |i: usize| evaluate(None, Some(&a), &m[i..=i], t(i as i64));
    let d = at(3);
    assert!(d.activity.active && d.disruptive_allowed);
    assert_eq!(d.activity.reason, reason::SIGNAL_ACTIVE);
    assert_eq!(
        d.health.as_ref().unwrap().reason,
        reason::SIGNAL_DATA_MISSING
    );
    let d = at(7);
    assert!(d.activity.active, "Kubernetes protection stays");
    assert!(!d.disruptive_allowed, "{d:?}");
    // Data back: normal evaluation resumes.
    let back = step(&r, OnEmpty::KeepLast, m.last(), Reading::Value(100.0), t(8));
    let d = evaluate(None, Some(&a), &[back], t(8));
    assert!(!d.activity.active);
    assert!(d.health.unwrap().healthy);
}

#[test]
fn an_invalid_query_is_reported_with_prometheus_message() {
    let r = rule(0, 0);
    let a = activation(Combine::AnyOf, vec![r.clone()]);
    let m = step(
        &r,
        OnEmpty::KeepLast,
        None,
        Reading::Failed {
            message: "parse error at char 5".into(),
            invalid: true,
        },
        t(0),
    );
    let d = evaluate(None, Some(&a), &[m], t(0));
    assert_eq!(
        d.invalid,
        vec![("checkout-peak".into(), "parse error at char 5".into())]
    );
    let h = d.health.unwrap();
    assert_eq!(h.reason, reason::INVALID_SIGNAL);
    assert!(h.message.contains("parse error at char 5"));
}

#[test]
fn the_band_is_validated() {
    let spec: plumbline_crds::Activation = serde_yaml::from_str(
        "signals:\n- name: a\n  query: up\n  activateAbove: 500\n  deactivateBelow: 800\n  interval: 0s\n",
    )
    .unwrap();
    let errors = parse(&spec, "spec.activation").unwrap_err();
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.activation.signals[0].deactivateBelow",
            "spec.activation.signals[0].interval"
        ]
    );
}

#[test]
fn explain_says_what_holds_and_what_would_change_it() {
    let r = SignalRule {
        for_: Duration::from_secs(60),
        ..rule(0, 600)
    };
    let m = step(&r, OnEmpty::KeepLast, None, Reading::Value(612.0), t(0));
    assert_eq!(
        outlook(&r, &m, t(0)),
        "checkout-peak = 612 (band 500–800): stays inactive; activates after the value stays above 800 for 1m"
    );
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        4 => (0u32..1200).prop_map(|v| Reading::Value(v as f64)),
        1 => Just(Reading::Empty),
        1 => Just(failed()),
    ]
}

/// A window: open at each second or not.
fn windows() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec(any::<bool>(), 40)
}

proptest! {
    /// Once activated, a signal stays active for keepActiveFor whatever comes; values inside the
    /// band and missing data never change it; it only activates after `for` above the band.
    #[test]
    fn band_for_and_keep_active_for(
        readings in prop::collection::vec(reading(), 40),
        for_s in 0u64..5,
        keep_s in 0u64..8,
    ) {
        let r = rule(for_s, keep_s);
        let m = run(&r, OnEmpty::KeepLast, &readings);
        for i in 1..m.len() {
            let (prev, next) = (&m[i - 1], &m[i]);
            let now = t(i as i64);
            if prev.active {
                let since = prev.active_since.unwrap();
                if elapsed(since, now) < r.keep_active_for {
                    prop_assert!(next.active, "deactivated within keepActiveFor at {i}");
                }
            }
            let neutral = match &readings[i] {
                Reading::Value(v) => (r.deactivate_below..=r.activate_above).contains(v),
                _ => true,
            };
            if neutral {
                prop_assert_eq!(prev.active, next.active, "changed on a neutral reading at {}", i);
            }
            if !prev.active && next.active {
                // Above the band continuously (missing data in between allowed) for `for`.
                let above = next.above_since.unwrap();
                prop_assert!(elapsed(above, now) >= r.for_);
                prop_assert!(matches!(readings[i], Reading::Value(v) if v > r.activate_above));
            }
            if prev.active && !next.active {
                prop_assert!(matches!(readings[i], Reading::Value(v) if v < r.deactivate_below));
            }
        }
    }

    /// anyOf is the max of the window and the signals; allOf the min; allOf never activates
    /// what anyOf would not.
    #[test]
    fn any_of_and_all_of_combine_windows_and_signals(
        a in prop::collection::vec(reading(), 40),
        b in prop::collection::vec(reading(), 40),
        open in windows(),
        with_schedule in any::<bool>(),
    ) {
        let ra = SignalRule { name: "a".into(), ..rule(1, 3) };
        let rb = SignalRule { name: "b".into(), activate_above: 300.0, deactivate_below: 300.0, ..rule(0, 0) };
        let ma = run(&ra, OnEmpty::KeepLast, &a);
        let mb = run(&rb, OnEmpty::KeepLast, &b);
        let any = activation(Combine::AnyOf, vec![ra.clone(), rb.clone()]);
        let all = activation(Combine::AllOf, vec![ra, rb]);
        for i in 0..40 {
            let now = t(i as i64);
            // An always-open or never-open schedule, per the generated bit.
            let schedule = with_schedule.then(|| {
                let end = if open[i] { "24:00" } else { "00:01" };
                let start = "00:00";
                let window: plumbline_crds::TimeWindow = serde_yaml::from_str(&format!(
                    "{{start: \"{start}\", end: \"{end}\", timeZone: UTC}}"
                )).unwrap();
                Schedule::parse(&[window], "spec.schedule").unwrap()
            });
            let window_open = schedule.as_ref().is_some_and(|s| s.is_active(now));
            let memories = [ma[i].clone(), mb[i].clone()];
            let d_any = evaluate(schedule.as_ref(), Some(&any), &memories, now);
            let d_all = evaluate(schedule.as_ref(), Some(&all), &memories, now);
            prop_assert_eq!(d_any.activity.active, window_open || ma[i].active || mb[i].active);
            prop_assert_eq!(
                d_all.activity.active,
                (schedule.is_none() || window_open) && ma[i].active && mb[i].active
            );
            prop_assert!(!d_all.activity.active || d_any.activity.active);
            if window_open {
                prop_assert!(d_any.disruptive_allowed, "a window is never lowered by a signal");
            }
        }
    }
}
