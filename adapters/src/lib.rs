//! Hypervisor adapters: the only code in Plumbline that speaks hypervisor protocols.
//!
//! Everything above this crate sees domain types: [`BackingVm`] (identity, host, disks),
//! [`StorageSamples`] (per-operation latency per disk), [`Setting`]s of [`Tunable`]s with their
//! recorded originals, [`Capabilities`], and [`HostState`]s for maintenance. Both adapters sit
//! behind the [`Hypervisor`] trait; build one from plain configuration with [`connect`].
//!
//! - libvirt (cargo feature `libvirt`): bulk domain stats, block I/O tune, scheduler and blkio
//!   parameters; originals recorded in the domain's `<metadata>`.
//! - vSphere (always built): SOAP vim25 over reqwest, PropertyCollector inventory, QueryPerf
//!   latency, ReconfigVM_Task; originals recorded in the VM's extraConfig; host maintenance
//!   mode (EnterMaintenanceMode_Task, ExitMaintenanceMode_Task); DRS VM-VM anti-affinity rules
//!   (ReconfigureComputeResource_Task).
//!
//! One call that is not a hypervisor's lives here too, because this crate is where the FFI
//! is allowed: [`allocator`], jemalloc's settings.

pub mod allocator;
mod capability;
mod config;
mod counters;
mod error;
mod host;
mod hypervisor;
mod rule;
mod storage;
mod tuning;
mod vm;
mod xml;

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod vsphere;

pub use capability::{Capabilities, Capability, Support};
pub use config::{connect, HypervisorConfig, LibvirtConfig, Secret, TlsTrust, VSphereConfig};
pub use counters::{CounterHistory, DiskCounters, DiskReading, OpCounters};
pub use error::{Error, Result};
pub use host::HostState;
pub use hypervisor::{ConnectionState, Endpoint, Hypervisor, HypervisorKind};
pub use rule::AntiAffinityRule;
pub use storage::{DiskLatency, NotReady, OpLatency, StorageSamples, UnreadyDisk};
pub use tuning::{DiskLimit, Setting, Tunable, TunableReport};
pub use vm::{BackingVm, VmDisk, VmId, VmPlacement};
pub use xml::{XmlError, MAX_DEPTH as MAX_XML_DEPTH};

/// Entry points for the fuzz targets in `fuzz/`: every reader of bytes from outside.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    #[cfg(feature = "libvirt")]
    pub use crate::libvirt::read_any_domain_xml;
    pub use crate::vsphere::read_any_response;
    pub use crate::xml::check_round_trip;
}
