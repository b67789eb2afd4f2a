//! kubelet-sim: the kubelet's part for VM-backed nodes, KWOK-style. Started by
//! `e2e/stack up nodes`.
//!
//! There is no container runtime here, so nodes are API objects kept Ready by heartbeats, and
//! pods bound to them are given the status a kubelet would report. Readiness follows the
//! kubelet's rule (containers ready AND every readiness gate True), so Services and Endpoints
//! behave as in a real cluster.

mod error;
mod node_heartbeat;
mod pod_ips;
mod pod_lifecycle;
mod pod_status;
mod write_queue;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use plumbline_e2e::node_list::read_nodes_dir;
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
async fn run(client: kube::Client, settings: Settings) -> Result<()> {
    let nodes: RegisteredNodes = Arc::default();
    let heartbeat = node_heartbeat::run(client.clone(), settings.clone(), nodes.clone());
    let pods = pod_lifecycle::run(client, settings, nodes);
    tokio::try_join!(heartbeat, pods)?;
    Ok(())
}

#[derive(Debug, Parser)]
#[command(about = "Registers VM-backed nodes and plays the kubelet's part for their pods")]
struct Args {
    /// Kubeconfig of the identity to act as.
    #[arg(long, env = "PLUMBLINE_KUBELET_SIM_KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Directory of `*.json` node lists written by the hypervisor components.
    #[arg(long)]
    nodes_dir: PathBuf,
    /// Print the names of the listed nodes and exit.
    #[arg(long)]
    list_nodes: bool,
    /// How often each node's Lease and status are renewed. The kubelet's 10 s suits a few
    /// nodes; the scale bed (`e2e/scale`) uses 60 s, so 1,000 nodes cost the apiserver
    /// about 50 requests/s rather than 300.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list_nodes {
        for node in read_nodes_dir(&args.nodes_dir)? {
            println!("{}", node.name);
        }
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let client = plumbline_e2e::client_from_kubeconfig(&args.kubeconfig)
        .await
        .context("connecting to the apiserver")?;
    let settings = Settings {
        nodes_dir: args.nodes_dir,
        heartbeat_every: Duration::from_secs(args.heartbeat_seconds),
        rescan_every: Duration::from_secs(2),
        resync_every: Duration::from_secs(15),
    };
    run(client, settings).await?;
    Ok(())
}
