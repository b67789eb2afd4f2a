//! Test support: reach the real local stack started by `e2e/stack up`.
//!
//! The stack writes `$PLUMBLINE_STACK_DIR/env` (plain `KEY=VALUE` lines). Every accessor
//! fails with a message that says how to start the stack, so a test that needs it never
//! silently passes without it.

pub mod apiserver;
pub mod cluster;
pub mod latency;
pub mod libvirtd;
pub mod net;
pub mod node_list;
pub mod poll;
pub mod process;
pub mod qemu;
pub mod relay;
pub mod scale;
pub mod traffic;
pub mod vsphere_hosts;
pub mod vsphere_load;
pub mod vsphere_rules;
pub mod vsphere_vms;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

pub const DEFAULT_STACK_DIR: &str = "/var/tmp/plumbline-stack";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the stack is not up (no {path}): start it with `e2e/stack up`")]
    NotUp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the stack env {path} has no {key}: restart the stack with `e2e/stack down && e2e/stack up`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{what}: {message}")]
    Stack { what: String, message: String },
    #[error("loading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("making a Kubernetes client from {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
    #[error("reading node list {path}: {source}")]
    ReadNodeList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing node list {path}: {source}")]
    ParseNodeList {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("node {name} is listed twice ({first} and {second})")]
    DuplicateNode {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn stack_error(what: impl Into<String>, message: impl std::fmt::Display) -> Error {
    Error::Stack {
        what: what.into(),
        message: message.to_string(),
    }
}

/// The running stack for a test or benchmark; panics, saying how to start it, when it is not up.
pub fn stack() -> Stack {
    Stack::load().unwrap_or_else(|e| panic!("{e}"))
}

/// The running stack, as described by its env file.
#[derive(Debug, Clone)]
pub struct Stack {
    env_path: PathBuf,
    env: HashMap<String, String>,
}

impl Stack {
    /// Reads `$PLUMBLINE_STACK_DIR/env` (default `/var/tmp/plumbline-stack/env`).
    pub fn load() -> Result<Self> {
        let dir = std::env::var_os("PLUMBLINE_STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STACK_DIR));
        Self::load_from(&dir)
    }

    /// Reads `<dir>/env`: another instance, such as the scale bed (`e2e/scale`).
    pub fn load_from(dir: &Path) -> Result<Self> {
        let env_path = dir.join("env");
        let text = std::fs::read_to_string(&env_path).map_err(|source| Error::NotUp {
            path: env_path.clone(),
            source,
        })?;
        let env = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Self { env_path, env })
    }

    /// A value the stack recorded, e.g. `LIBVIRT_URI`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::MissingKey {
                path: self.env_path.clone(),
                key: key.to_string(),
            })
    }

    /// Path to the `e2e/stack` script of this checkout, for helpers that shell out to it.
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stack")
    }

    /// The kubeconfig with cluster-admin rights (`system:masters`), for test setup and checks.
    pub fn admin_kubeconfig(&self) -> Result<&Path> {
        self.get("KUBECONFIG").map(Path::new)
    }

    /// The kubeconfig of the restricted `plumbline-operator` identity, bound to the
    /// ClusterRole in `e2e/manifests/operator-rbac.yaml`: what the operator may do, and
    /// nothing more.
    pub fn operator_kubeconfig(&self) -> Result<&Path> {
        self.get("PLUMBLINE_OPERATOR_KUBECONFIG").map(Path::new)
    }

    /// A client as [`Self::admin_kubeconfig`].
    pub async fn admin_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(self.admin_kubeconfig()?).await
    }

    /// A client as [`Self::operator_kubeconfig`].
    pub async fn operator_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(self.operator_kubeconfig()?).await
    }

    /// `https://127.0.0.1:6443`; its CA is in the kubeconfigs and at `KUBE_CA_FILE`.
    pub fn apiserver_url(&self) -> Result<&str> {
        self.get("KUBE_APISERVER_URL")
    }

    /// The PEM of the CA the vSphere simulator's certificate is signed with (`VSPHERE_CA_FILE`).
    pub fn vsphere_ca_pem(&self) -> Result<Vec<u8>> {
        let path = self.get("VSPHERE_CA_FILE")?;
        std::fs::read(path).map_err(|e| stack_error(format!("reading the simulator CA {path}"), e))
    }

    /// Where hypervisor components list the VMs that `kubelet-sim` registers as Nodes.
    pub fn nodes_dir(&self) -> PathBuf {
        self.env_path
            .parent()
            .map(|dir| dir.join("nodes.d"))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STACK_DIR).join("nodes.d"))
    }
}

/// A kube `Client` for the current context of the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    kube::Client::try_from(config).map_err(|source| Error::Client {
        path: path.to_path_buf(),
        source,
    })
}
