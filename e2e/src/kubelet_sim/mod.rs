//! The kubelet's part for VM-backed nodes, KWOK-style: there is no container runtime here,
//! so nodes are API objects kept Ready by heartbeats, and pods bound to them are given the
//! status a kubelet would report. Readiness follows the kubelet's rule (containers ready AND
//! every readiness gate True), so Services and Endpoints behave as in a real cluster.

pub mod error;
pub mod inventory;
pub mod node_heartbeat;
pub mod pod_ips;
pub mod pod_lifecycle;
pub mod pod_status;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::RwLock;

pub use error::{Error, Result};

/// Field manager for everything kubelet-sim writes with server-side apply, so conditions
/// owned by others (readiness gates such as `plumbline.dev/storage-healthy`) are left alone.
pub const FIELD_MANAGER: &str = "kubelet-sim";

/// Nodes registered by this process, by name, shared between the heartbeat and pod loops.
pub type RegisteredNodes = Arc<RwLock<BTreeMap<String, node_heartbeat::RegisteredNode>>>;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of `*.json` node lists written by the hypervisor components.
    pub nodes_dir: PathBuf,
    pub heartbeat_every: Duration,
    pub rescan_every: Duration,
    pub resync_every: Duration,
}

/// Runs the node and pod loops until one of them fails.
pub async fn run(client: kube::Client, settings: Settings) -> Result<()> {
    let nodes: RegisteredNodes = Arc::default();
    let heartbeat = node_heartbeat::run(client.clone(), settings.clone(), nodes.clone());
    let pods = pod_lifecycle::run(client, settings, nodes);
    tokio::try_join!(heartbeat, pods)?;
    Ok(())
}
