//! A VM's verdict is the verdict of its worst disk.

use std::time::Duration;

use super::{HealthState, UnknownCause, Verdict};

/// The verdict of one VM against one budget, with the disk that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmVerdict {
    pub verdict: Verdict,
    /// The disk (e.g. `vda`) whose verdict this is; `None` when the VM has no disk samples.
    pub disk: Option<String>,
}

impl VmVerdict {
    /// Folds per-disk verdicts: degraded if any disk is degraded, else unknown if any disk is
    /// unknown (the pod might depend on exactly that disk), else healthy. Among equals the
    /// slowest disk wins, so messages quote the worst figure.
    pub fn worst_of<'a>(disks: impl IntoIterator<Item = (&'a str, Verdict)>) -> Self {
        let worst = disks.into_iter().max_by(|(_, a), (_, b)| {
            let key = |v: &Verdict| (v.state(), v.latest().unwrap_or(Duration::ZERO));
            key(a).cmp(&key(b))
        });
        match worst {
            Some((disk, verdict)) => Self {
                verdict,
                disk: Some(disk.to_string()),
            },
            None => Self::unknown(UnknownCause::NoSamples),
        }
    }

    pub fn unknown(cause: UnknownCause) -> Self {
        Self {
            verdict: Verdict::Unknown { cause },
            disk: None,
        }
    }

    pub fn state(&self) -> HealthState {
        self.verdict.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn healthy(ms: u64) -> Verdict {
        Verdict::Healthy {
            latest: Some(Duration::from_millis(ms)),
        }
    }

    fn degraded(ms: u64) -> Verdict {
        Verdict::Degraded {
            latest: Some(Duration::from_millis(ms)),
            over_budget: 2,
            window: 3,
            since: UNIX_EPOCH,
            onset: UNIX_EPOCH,
        }
    }

    const UNKNOWN: Verdict = Verdict::Unknown {
        cause: UnknownCause::NoSamples,
    };

    #[test]
    fn worst_disk_decides() {
        let v = VmVerdict::worst_of([("vda", healthy(1)), ("vdb", degraded(30)), ("vdc", UNKNOWN)]);
        assert_eq!(v.state(), HealthState::Degraded);
        assert_eq!(v.disk.as_deref(), Some("vdb"));

        let v = VmVerdict::worst_of([("vda", healthy(1)), ("vdc", UNKNOWN)]);
        assert_eq!(v.state(), HealthState::Unknown);

        let v = VmVerdict::worst_of([("vda", healthy(1)), ("vdb", healthy(4))]);
        assert_eq!(v.state(), HealthState::Healthy);
        assert_eq!(v.disk.as_deref(), Some("vdb"), "the slower disk is quoted");
    }

    #[test]
    fn no_disks_is_unknown() {
        assert_eq!(VmVerdict::worst_of([]).state(), HealthState::Unknown);
    }
}
