//! What an endpoint can do, detected once per connection and reported rather than raised.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    /// Per-disk read/write latency samples.
    StorageLatency,
    /// Per-disk flush latency samples.
    FlushLatency,
    /// Per-disk IOPS limits.
    DiskIopsLimit,
    /// Per-disk bytes-per-second limits.
    DiskBytesLimit,
    /// Per-disk proportional I/O shares.
    DiskShares,
    /// Proportional CPU shares.
    CpuShares,
    /// Guaranteed CPU (MHz).
    CpuReservation,
    /// Proportional memory shares.
    MemoryShares,
    /// Guaranteed memory (MiB).
    MemoryReservation,
    /// Whole-VM proportional block I/O weight (libvirt blkio weight).
    BlkioWeight,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::StorageLatency => "storage latency sampling",
            Self::FlushLatency => "flush latency sampling",
            Self::DiskIopsLimit => "disk IOPS limits",
            Self::DiskBytesLimit => "disk bandwidth limits",
            Self::DiskShares => "disk I/O shares",
            Self::CpuShares => "CPU shares",
            Self::CpuReservation => "CPU reservation",
            Self::MemoryShares => "memory shares",
            Self::MemoryReservation => "memory reservation",
            Self::BlkioWeight => "blkio weight",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Support {
    Supported,
    /// Not available here; `reason` is what the hypervisor said (e.g. a cgroup controller is
    /// not mounted) or why the concept does not exist on this hypervisor.
    Unsupported {
        reason: String,
    },
    /// Could not be probed yet (e.g. no running VM to probe with); probed again later.
    Unknown {
        reason: String,
    },
}

/// Support for every [`Capability`] on one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub entries: BTreeMap<Capability, Support>,
}

impl Capabilities {
    pub fn set(&mut self, capability: Capability, support: Support) {
        self.entries.insert(capability, support);
    }

    pub fn support(&self, capability: Capability) -> Support {
        self.entries
            .get(&capability)
            .cloned()
            .unwrap_or(Support::Unknown {
                reason: "not probed".into(),
            })
    }

    pub fn supports(&self, capability: Capability) -> bool {
        matches!(self.entries.get(&capability), Some(Support::Supported))
    }

    /// True when some capability could not be probed yet and is worth probing again.
    pub fn incomplete(&self) -> bool {
        self.entries
            .values()
            .any(|s| matches!(s, Support::Unknown { .. }))
    }
}
