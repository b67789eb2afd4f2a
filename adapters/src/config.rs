//! Plain configuration for an adapter, and the one constructor the operator calls.

use std::{fmt, sync::Arc};

use crate::{Hypervisor, Result};

/// A value that must never reach a log: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// `qemu:///system`, `qemu+tcp://host/system`, `qemu+tls://host/system`, ...
    pub uri: String,
}

/// Which server certificates a vSphere adapter accepts.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// The built-in web PKI roots.
    PublicRoots,
    /// Only certificates issued by these PEM-encoded CAs.
    CaPem(Vec<u8>),
    /// Accept any certificate. For labs only; logged as a warning at connect.
    Insecure,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PublicRoots => f.write_str("PublicRoots"),
            Self::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VSphereConfig {
    /// The SDK URL, e.g. `https://vcenter.example/sdk`.
    pub url: String,
    pub username: String,
    pub password: Secret,
    pub tls: TlsTrust,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorConfig {
    Libvirt(LibvirtConfig),
    VSphere(VSphereConfig),
}

/// Connects to the endpoint and returns its adapter. Fails with a clear error when the
/// endpoint is unreachable, refuses the credentials, or (libvirt) this build lacks the
/// `libvirt` feature.
pub async fn connect(config: HypervisorConfig) -> Result<Arc<dyn Hypervisor>> {
    match config {
        #[cfg(feature = "libvirt")]
        HypervisorConfig::Libvirt(c) => Ok(Arc::new(
            crate::libvirt::LibvirtHypervisor::connect(c).await?,
        )),
        #[cfg(not(feature = "libvirt"))]
        HypervisorConfig::Libvirt(c) => Err(crate::Error::Config {
            message: format!(
                "{} needs the libvirt adapter, but this build lacks the `libvirt` feature",
                c.uri
            ),
        }),
        HypervisorConfig::VSphere(c) => Ok(Arc::new(
            crate::vsphere::VSphereHypervisor::connect(c).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_password() {
        let config = HypervisorConfig::VSphere(VSphereConfig {
            url: "https://127.0.0.1:8989/sdk".into(),
            username: "user".into(),
            password: Secret::new("hunter2"),
            tls: TlsTrust::CaPem(b"-----BEGIN CERTIFICATE-----".to_vec()),
        });
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
