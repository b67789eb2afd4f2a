//! The Plumbline operator: wires the pure planner (`plumbline-policies`) to the Kubernetes API
//! and the hypervisor adapters.
//!
//! - [`run`] assembles a running operator: probes and metrics, discovery, leader election and
//!   the loops of a leadership term.
//! - [`controller`] is the WorkloadIntent controller (observe → plan → apply → status).
//! - [`explain`] prints a plan against the live cluster without changing anything.
//! - [`tenancy`] reads the TenantPolicies that say which namespaces may use which tiers and
//!   infrastructure actions.
//! - [`recover`] restores changes to VMs whose InfraChange objects are lost.

pub mod cli;
pub mod clock;
pub mod context;
pub mod controller;
pub mod credentials;
pub mod discovery;
mod error;
pub mod explain;
pub mod exposition;
pub mod health;
pub mod http;
pub mod leader;
pub mod ledger;
pub mod liveness;
pub mod locks;
pub mod maintenance;
pub mod metrics;
pub mod prometheus;
pub mod recover;
pub mod run;
pub mod telemetry;
pub mod tenancy;
pub mod term;

pub use error::{Error, Result};

/// Entry point shared by the `plumbline` and `kubectl-plumbline` binaries.
pub async fn main_with_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = cli::Cli::parse_from(args);
    telemetry::init(cli.log_format);
    match cli.command {
        cli::Command::Run(args) => {
            plumbline_adapters::allocator::configure();
            let config = kube::Config::infer()
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            let client = kube::Client::try_from(config.clone())
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            let identity = args.identity.clone().unwrap_or_else(default_identity);
            let leader_election = match args.leader_elect {
                true => Some(leader::LeaseConfig {
                    kube: Some(config),
                    ..args.lease(&identity).map_err(Error::Usage)?
                }),
                false => None,
            };
            let settings = run::Settings {
                metrics_addr: args.metrics_addr,
                leader_election,
                concurrency: args.concurrency,
                identity,
                namespace: args.watch_namespace.clone(),
                health: args.health(),
                prometheus: args.prometheus.settings(),
            };
            run::run(client, settings, std::sync::Arc::new(clock::SystemClock)).await?;
        }
        cli::Command::Explain(args) => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            let out = explain::explain(client, &args, &clock::SystemClock).await?;
            print!("{out}");
        }
        cli::Command::Recover(args) => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::KubeConfig(e.to_string()))?;
            recover::recover(client, &args).await?;
        }
    }
    Ok(())
}

/// Unique enough per replica outside a pod: host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "plumbline".to_string());
    format!("{host}-{}", std::process::id())
}
