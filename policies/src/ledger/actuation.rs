//! What an actuator does next with one `InfraChange`, and how it judges a read-back value.
//!
//! The order is fixed: the original is recorded in the object's status *before* the target is
//! changed, so a crash between the two loses nothing; a change being deleted is reverted to
//! that original before its finalizer goes; a change nobody ever applied (no original) is let
//! go at once; a value changed behind Plumbline's back is corrected, but only so often — the
//! third change within the contest window means someone else is fighting for the value, and
//! Plumbline stops (`Contested`) rather than flap.

use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use plumbline_crds::{conditions::infra_change as state, InfraChange};

use super::{from_time, to_time};

#[derive(Debug, Clone, PartialEq)]
pub struct ActuationPolicy {
    /// How often a change in force is read back to catch drift.
    pub readback_every: Duration,
    /// Drift corrections are counted over this window...
    pub contest_window: Duration,
    /// ...and this many changes behind Plumbline's back within it make the change `Contested`.
    pub contest_after: usize,
    /// First retry after a failure; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for ActuationPolicy {
    fn default() -> Self {
        Self {
            readback_every: Duration::from_secs(30),
            contest_window: Duration::from_secs(15 * 60),
            contest_after: 3,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

impl ActuationPolicy {
    /// When to try again after `attempts` failures in a row, the last at `at`.
    pub fn retry_at(&self, attempts: i32, at: SystemTime) -> SystemTime {
        let exp = attempts.saturating_sub(1).clamp(0, 16) as u32;
        at + self
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max)
    }
}

/// The next step for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Nothing,
    /// Read the target's current value (and any original recorded on it by an earlier run),
    /// record it as the original in status, then apply.
    RecordOriginal,
    /// Set the desired value (the original is already recorded).
    Apply,
    /// Read the value back to catch drift.
    ReadBack,
    /// Restore the recorded original, then remove the finalizer.
    Revert {
        original: String,
    },
    /// Remove the finalizer without touching the target, for the reason given.
    Release {
        reason: &'static str,
        message: String,
    },
}

/// Decides the next step. `last_attempt` and `last_readback` are the actuator's memory of this
/// object (none after a restart or reconnect: then it acts and reads back at once).
pub fn next_work(
    ic: &InfraChange,
    now: SystemTime,
    last_attempt: Option<SystemTime>,
    last_readback: Option<SystemTime>,
    policy: &ActuationPolicy,
) -> Work {
    let status = ic.status.clone().unwrap_or_default();
    let backing_off = status.attempts > 0
        && last_attempt.is_some_and(|at| now < policy.retry_at(status.attempts, at));
    if ic.metadata.deletion_timestamp.is_some() {
        if !ic.has_finalizer() {
            return Work::Nothing;
        }
        if ic.abandoned() {
            return Work::Release {
                reason: state::ABANDONED,
                message: format!(
                    "annotated {}: dropped without restoring the original{}",
                    plumbline_crds::names::ABANDON_ANNOTATION,
                    status
                        .original
                        .map(|o| format!(" ({o})"))
                        .unwrap_or_default()
                ),
            };
        }
        return match status.original {
            // The original is recorded before the first change: without it nothing changed.
            None => Work::Release {
                reason: state::REVERTED,
                message: "never applied: nothing to restore".into(),
            },
            // A move is made once and never undone (docs/placement.md).
            Some(_) if ic.spec.purpose.is_one_shot() => Work::Release {
                reason: state::LEFT_IN_PLACE,
                message: format!(
                    "a {} is not undone: the target stays as it is ({} {})",
                    ic.spec.purpose.as_str(),
                    ic.spec.setting,
                    status.observed.as_deref().unwrap_or(&ic.spec.desired)
                ),
            },
            Some(_) if backing_off => Work::Nothing,
            Some(original) => Work::Revert { original },
        };
    }
    let current_generation = status.observed_generation == ic.metadata.generation;
    let settled = matches!(
        status.state.as_deref(),
        Some(state::UNSUPPORTED | state::CONTESTED)
    );
    if settled && current_generation {
        return Work::Nothing;
    }
    if backing_off {
        return Work::Nothing;
    }
    if status.original.is_none() {
        return Work::RecordOriginal;
    }
    if !current_generation
        || status.observed.as_deref() != Some(ic.spec.desired.as_str())
        || status.state.as_deref() != Some(state::APPLIED)
    {
        return Work::Apply;
    }
    match last_readback {
        // Made once: what becomes of the target afterwards (DRS moving the VM on) is not drift.
        _ if ic.spec.purpose.is_one_shot() => Work::Nothing,
        Some(at) if now < at + policy.readback_every => Work::Nothing,
        _ => Work::ReadBack,
    }
}

/// What a read-back value means for a change in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readback {
    /// The target has the desired value.
    InSync,
    /// Changed behind Plumbline's back: set it again, remembering this correction.
    Correct { corrections: Vec<Time> },
    /// Changed behind Plumbline's back once too often: leave it and report.
    Contested { corrections: Vec<Time> },
}

pub fn after_readback(
    ic: &InfraChange,
    current: &str,
    now: SystemTime,
    policy: &ActuationPolicy,
) -> Readback {
    if current == ic.spec.desired {
        return Readback::InSync;
    }
    let window_start = now.checked_sub(policy.contest_window).unwrap_or(now);
    let mut corrections: Vec<Time> = ic
        .status
        .as_ref()
        .map(|s| s.corrections.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| from_time(t) >= window_start)
        .collect();
    corrections.push(to_time(now));
    if corrections.len() >= policy.contest_after {
        Readback::Contested { corrections }
    } else {
        Readback::Correct { corrections }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_crds::{ChangePurpose, ChangeTarget, InfraChangeSpec, InfraChangeStatus};
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn change(status: Option<InfraChangeStatus>) -> InfraChange {
        let mut ic = InfraChange::new(
            "x",
            InfraChangeSpec {
                target: ChangeTarget::vm("kvm", "id", "noisy"),
                setting: "disk.vda.total_iops_sec".into(),
                desired: "55".into(),
                purpose: ChangePurpose::NeighbourThrottle,
                owners: vec![],
                operator: "cluster".into(),
                throttle: None,
                relocation: None,
            },
        );
        ic.metadata.generation = Some(1);
        ic.metadata.finalizers = Some(vec![plumbline_crds::names::INFRA_CHANGE_FINALIZER.into()]);
        ic.status = status;
        ic
    }

    fn applied() -> InfraChangeStatus {
        InfraChangeStatus {
            original: Some("0".into()),
            observed: Some("55".into()),
            state: Some(state::APPLIED.into()),
            observed_generation: Some(1),
            ..Default::default()
        }
    }

    fn deleting(mut ic: InfraChange) -> InfraChange {
        ic.metadata.deletion_timestamp = Some(to_time(at(0)));
        ic
    }

    #[test]
    fn the_original_is_recorded_before_anything_is_applied() {
        let p = ActuationPolicy::default();
        assert_eq!(
            next_work(&change(None), at(0), None, None, &p),
            Work::RecordOriginal
        );
        let mut s = applied();
        s.observed = Some("0".into());
        assert_eq!(
            next_work(&change(Some(s)), at(0), None, None, &p),
            Work::Apply
        );
    }

    #[test]
    fn a_change_in_force_is_read_back_on_schedule_and_at_once_after_a_restart() {
        let p = ActuationPolicy::default();
        let ic = change(Some(applied()));
        assert_eq!(next_work(&ic, at(10), None, None, &p), Work::ReadBack);
        assert_eq!(next_work(&ic, at(10), None, Some(at(0)), &p), Work::Nothing);
        assert_eq!(
            next_work(&ic, at(30), None, Some(at(0)), &p),
            Work::ReadBack
        );
    }

    #[test]
    fn a_spec_change_is_applied_even_when_contested() {
        let p = ActuationPolicy::default();
        let mut s = applied();
        s.state = Some(state::CONTESTED.into());
        let mut ic = change(Some(s));
        assert_eq!(next_work(&ic, at(0), None, None, &p), Work::Nothing);
        ic.metadata.generation = Some(2);
        assert_eq!(next_work(&ic, at(0), None, None, &p), Work::Apply);
    }

    #[test]
    fn deletion_reverts_what_was_applied_and_lets_go_of_what_never_was() {
        let p = ActuationPolicy::default();
        assert_eq!(
            next_work(&deleting(change(Some(applied()))), at(0), None, None, &p),
            Work::Revert {
                original: "0".into()
            }
        );
        assert!(matches!(
            next_work(&deleting(change(None)), at(0), None, None, &p),
            Work::Release {
                reason: state::REVERTED,
                ..
            }
        ));
        let mut abandoned = deleting(change(Some(applied())));
        abandoned.metadata.annotations = Some(
            [(
                plumbline_crds::names::ABANDON_ANNOTATION.to_string(),
                "true".to_string(),
            )]
            .into(),
        );
        assert!(matches!(
            next_work(&abandoned, at(0), None, None, &p),
            Work::Release {
                reason: state::ABANDONED,
                ..
            }
        ));
    }

    #[test]
    fn failures_back_off_doubling() {
        let p = ActuationPolicy::default();
        let mut s = applied();
        s.attempts = 3;
        s.state = Some(state::FAILED.into());
        let ic = change(Some(s));
        // 3 failures: 2 s * 2^2 = 8 s.
        assert_eq!(next_work(&ic, at(7), Some(at(0)), None, &p), Work::Nothing);
        assert_eq!(next_work(&ic, at(8), Some(at(0)), None, &p), Work::Apply);
        assert_eq!(
            next_work(&ic, at(0), None, None, &p),
            Work::Apply,
            "after a restart"
        );
        let reverting = deleting(ic);
        assert_eq!(
            next_work(&reverting, at(7), Some(at(0)), None, &p),
            Work::Nothing
        );
    }

    #[test]
    fn the_third_change_behind_our_back_within_the_window_is_contested() {
        let p = ActuationPolicy::default();
        let mut ic = change(Some(applied()));
        assert_eq!(after_readback(&ic, "55", at(0), &p), Readback::InSync);
        let Readback::Correct { corrections } = after_readback(&ic, "200", at(0), &p) else {
            panic!("first drift is corrected")
        };
        ic.status.as_mut().unwrap().corrections = corrections;
        let Readback::Correct { corrections } = after_readback(&ic, "200", at(60), &p) else {
            panic!("second drift is corrected")
        };
        ic.status.as_mut().unwrap().corrections = corrections.clone();
        assert!(matches!(
            after_readback(&ic, "200", at(120), &p),
            Readback::Contested { .. }
        ));
        // Corrections older than the window do not count.
        assert!(matches!(
            after_readback(&ic, "200", at(16 * 60 + 61), &p),
            Readback::Correct { .. }
        ));
    }
}
