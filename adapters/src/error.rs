//! Every failure of this crate, with what was being done to what, and where.

use std::time::Duration;

use crate::{Capability, VmId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[cfg(feature = "libvirt")]
    #[error("{action} on {target} via {uri}: {source}")]
    Libvirt {
        action: &'static str,
        target: String,
        uri: String,
        #[source]
        source: virt::error::Error,
    },

    #[error("{action} via {url}: {source}")]
    Http {
        action: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{action} via {url}: SOAP fault {fault}: {message}")]
    SoapFault {
        action: String,
        url: String,
        /// The vim25 fault type, e.g. `NotAuthenticated`, `InvalidArgument`.
        fault: String,
        message: String,
    },

    #[error("logging in to {url} as {username}: {fault}: {message}")]
    Authentication {
        url: String,
        username: String,
        fault: String,
        message: String,
    },

    #[error("{action} on {target} via {url}: task failed with {fault}: {message}")]
    TaskFailed {
        action: String,
        target: String,
        url: String,
        fault: String,
        message: String,
    },

    #[error("{action} via {url}: unexpected response: {message}")]
    Protocol {
        action: String,
        url: String,
        message: String,
    },

    #[error("building the {what} request: {source}")]
    XmlWrite {
        what: String,
        #[source]
        source: quick_xml::SeError,
    },

    #[error("parsing the {what} response: {source}")]
    XmlRead {
        what: String,
        #[source]
        source: crate::XmlError,
    },

    /// The server sent more than [`crate::vsphere::MAX_RESPONSE_BYTES`]; the rest was not read.
    #[error("{action} via {url}: the response body is larger than the {limit}-byte limit; stopped reading it")]
    ResponseTooLarge {
        action: String,
        url: String,
        limit: u64,
    },

    /// The response nests elements deeper than [`crate::MAX_XML_DEPTH`].
    #[error(
        "{action} via {url}: the response nests elements deeper than {limit} levels; refused it"
    )]
    ResponseTooDeep {
        action: String,
        url: String,
        limit: usize,
    },

    /// `ContinueRetrievePropertiesEx` still handed out a token after
    /// [`crate::vsphere::MAX_PROPERTY_PAGES`] pages.
    #[error("{action} via {url}: the property collector still had more after {limit} pages (RetrievePropertiesEx and its continuations); gave up")]
    TooManyPages {
        action: String,
        url: String,
        limit: usize,
    },

    #[error("{endpoint} is disconnected: {reason}")]
    Disconnected { endpoint: String, reason: String },

    #[error("{action} on {target} via {endpoint}: no answer within {after:?}")]
    Timeout {
        action: &'static str,
        target: String,
        endpoint: String,
        after: Duration,
    },

    #[error("{capability} is not supported by {endpoint}: {reason}")]
    Unsupported {
        capability: Capability,
        endpoint: String,
        reason: String,
    },

    /// An operation the endpoint's kind of hypervisor has no counterpart for, such as
    /// maintenance mode on libvirt. (What an endpoint supports of VM tuning and sampling is a
    /// [`Capability`], reported by `capabilities()`; see [`Error::Unsupported`].)
    #[error("{operation} is not supported by {endpoint}: {reason}")]
    UnsupportedOperation {
        operation: &'static str,
        endpoint: String,
        reason: String,
    },

    #[error("host {host} not found on {endpoint}; its hosts are: {}", .known.join(", "))]
    HostNotFound {
        host: String,
        endpoint: String,
        /// Every host the endpoint has, by the names the inventory uses.
        known: Vec<String>,
    },

    #[error("compute cluster {cluster} not found on {endpoint}; its clusters are: {}", .known.join(", "))]
    ClusterNotFound {
        cluster: String,
        endpoint: String,
        known: Vec<String>,
    },

    #[error("VM {vm} not found on {endpoint}")]
    VmNotFound { vm: VmId, endpoint: String },

    #[error("disk {disk} not found on VM {vm} at {endpoint}")]
    DiskNotFound {
        vm: VmId,
        disk: String,
        endpoint: String,
    },

    #[error("invalid hypervisor configuration: {message}")]
    Config { message: String },

    #[error("setting up TLS for {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{action} via {endpoint}: worker failed: {source}")]
    Worker {
        action: &'static str,
        endpoint: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short stable label for metrics (`error_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "libvirt")]
            Self::Libvirt { .. } => "libvirt",
            Self::Http { .. } => "http",
            Self::SoapFault { .. } => "soap_fault",
            Self::Authentication { .. } => "authentication",
            Self::TaskFailed { .. } => "task_failed",
            Self::Protocol { .. } | Self::XmlRead { .. } | Self::XmlWrite { .. } => "protocol",
            Self::ResponseTooLarge { .. }
            | Self::ResponseTooDeep { .. }
            | Self::TooManyPages { .. } => "limit",
            Self::Disconnected { .. } => "disconnected",
            Self::Timeout { .. } => "timeout",
            Self::Unsupported { .. } | Self::UnsupportedOperation { .. } => "unsupported",
            Self::VmNotFound { .. }
            | Self::DiskNotFound { .. }
            | Self::HostNotFound { .. }
            | Self::ClusterNotFound { .. } => "not_found",
            Self::Config { .. } | Self::Tls { .. } => "config",
            Self::Worker { .. } => "worker",
        }
    }

    /// The endpoint cannot do this at all ([`Error::Unsupported`],
    /// [`Error::UnsupportedOperation`]); retrying will not help.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::Unsupported { .. } | Self::UnsupportedOperation { .. }
        )
    }

    /// The endpoint cannot be reached right now; retrying later may succeed.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected { .. } | Self::Timeout { .. })
            || matches!(self, Self::Http { source, .. } if source.is_connect() || source.is_timeout())
    }
}
