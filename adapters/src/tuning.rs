//! Tunables: the knobs Plumbline may turn on a VM, their values, and the originals recorded
//! on the VM itself so a change can be reverted after an operator restart.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Capability;

/// A per-disk limit. Value 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DiskLimit {
    TotalIops,
    ReadIops,
    WriteIops,
    TotalBytesPerSec,
    ReadBytesPerSec,
    WriteBytesPerSec,
}

impl DiskLimit {
    pub const ALL: [DiskLimit; 6] = [
        Self::TotalIops,
        Self::ReadIops,
        Self::WriteIops,
        Self::TotalBytesPerSec,
        Self::ReadBytesPerSec,
        Self::WriteBytesPerSec,
    ];

    /// libvirt's typed-parameter name, also used as the stable key in records.
    pub fn key(self) -> &'static str {
        match self {
            Self::TotalIops => "total_iops_sec",
            Self::ReadIops => "read_iops_sec",
            Self::WriteIops => "write_iops_sec",
            Self::TotalBytesPerSec => "total_bytes_sec",
            Self::ReadBytesPerSec => "read_bytes_sec",
            Self::WriteBytesPerSec => "write_bytes_sec",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.key() == key)
    }

    pub fn is_iops(self) -> bool {
        matches!(self, Self::TotalIops | Self::ReadIops | Self::WriteIops)
    }
}

/// One knob on one VM.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tunable {
    CpuShares,
    CpuReservationMhz,
    MemoryShares,
    MemoryReservationMib,
    BlkioWeight,
    DiskLimit { disk: String, limit: DiskLimit },
    DiskShares { disk: String },
}

impl Tunable {
    /// The capability the endpoint must have for this tunable to be read or changed.
    pub fn capability(&self) -> Capability {
        match self {
            Self::CpuShares => Capability::CpuShares,
            Self::CpuReservationMhz => Capability::CpuReservation,
            Self::MemoryShares => Capability::MemoryShares,
            Self::MemoryReservationMib => Capability::MemoryReservation,
            Self::BlkioWeight => Capability::BlkioWeight,
            Self::DiskLimit { limit, .. } if limit.is_iops() => Capability::DiskIopsLimit,
            Self::DiskLimit { .. } => Capability::DiskBytesLimit,
            Self::DiskShares { .. } => Capability::DiskShares,
        }
    }

    pub fn disk(&self) -> Option<&str> {
        match self {
            Self::DiskLimit { disk, .. } | Self::DiskShares { disk } => Some(disk),
            _ => None,
        }
    }
}

/// Stable text form used as the key of recorded originals (`cpu_shares`,
/// `disk.vda.total_iops_sec`, `disk.scsi0:0.shares`).
impl fmt::Display for Tunable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CpuShares => f.write_str("cpu_shares"),
            Self::CpuReservationMhz => f.write_str("cpu_reservation_mhz"),
            Self::MemoryShares => f.write_str("memory_shares"),
            Self::MemoryReservationMib => f.write_str("memory_reservation_mib"),
            Self::BlkioWeight => f.write_str("blkio_weight"),
            Self::DiskLimit { disk, limit } => write!(f, "disk.{disk}.{}", limit.key()),
            Self::DiskShares { disk } => write!(f, "disk.{disk}.shares"),
        }
    }
}

impl FromStr for Tunable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "cpu_shares" => Self::CpuShares,
            "cpu_reservation_mhz" => Self::CpuReservationMhz,
            "memory_shares" => Self::MemoryShares,
            "memory_reservation_mib" => Self::MemoryReservationMib,
            "blkio_weight" => Self::BlkioWeight,
            _ => {
                let rest = s
                    .strip_prefix("disk.")
                    .ok_or_else(|| format!("unknown tunable {s:?}"))?;
                let (disk, what) = rest
                    .rsplit_once('.')
                    .ok_or_else(|| format!("unknown tunable {s:?}"))?;
                let disk = disk.to_string();
                match what {
                    "shares" => Self::DiskShares { disk },
                    other => Self::DiskLimit {
                        disk,
                        limit: DiskLimit::from_key(other)
                            .ok_or_else(|| format!("unknown disk tunable {s:?}"))?,
                    },
                }
            }
        })
    }
}

/// A tunable with a value. Limits: 0 = unlimited. Shares: the share count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub tunable: Tunable,
    pub value: u64,
}

impl Setting {
    pub fn new(tunable: Tunable, value: u64) -> Self {
        Self { tunable, value }
    }
}

/// The tunables of one VM as read now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunableReport {
    /// Current value of every supported tunable.
    pub current: Vec<Setting>,
    /// Values recorded on the VM before Plumbline first changed them (what `revert` restores).
    pub originals: Vec<Setting>,
    /// Tunables this endpoint cannot read or change, with the reason.
    pub unsupported: Vec<(Tunable, String)>,
}

impl TunableReport {
    pub fn current(&self, tunable: &Tunable) -> Option<u64> {
        find(&self.current, tunable)
    }

    pub fn original(&self, tunable: &Tunable) -> Option<u64> {
        find(&self.originals, tunable)
    }
}

fn find(settings: &[Setting], tunable: &Tunable) -> Option<u64> {
    settings
        .iter()
        .find(|s| &s.tunable == tunable)
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunable_keys_round_trip_including_disk_names_with_colons_and_dots() {
        let all = [
            Tunable::CpuShares,
            Tunable::CpuReservationMhz,
            Tunable::MemoryShares,
            Tunable::MemoryReservationMib,
            Tunable::BlkioWeight,
            Tunable::DiskLimit {
                disk: "vda".into(),
                limit: DiskLimit::TotalIops,
            },
            Tunable::DiskLimit {
                disk: "sd.b".into(),
                limit: DiskLimit::WriteBytesPerSec,
            },
            Tunable::DiskShares {
                disk: "scsi0:1".into(),
            },
        ];
        for t in all {
            assert_eq!(t.to_string().parse::<Tunable>().unwrap(), t);
        }
        assert!("disk.vda.bogus".parse::<Tunable>().is_err());
        assert!("nonsense".parse::<Tunable>().is_err());
    }
}
