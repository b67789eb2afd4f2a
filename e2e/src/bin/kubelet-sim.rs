//! kubelet-sim: plays the kubelet for VM-backed nodes (see `plumbline_e2e::kubelet_sim`).
//! Started by `e2e/stack up nodes`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use plumbline_e2e::kubelet_sim::{self, inventory::read_nodes_dir, Settings};

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
    kubelet_sim::run(client, settings).await?;
    Ok(())
}
