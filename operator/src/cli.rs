//! Command line: `plumbline run` (the operator), `plumbline explain` (a dry run) and
//! `plumbline recover` (restores changes whose InfraChange objects are lost).
//! The same program answers as `kubectl-plumbline`, so it works as a kubectl plugin.

use clap::{Args, Parser, Subcommand, ValueEnum};
use plumbline_policies::{
    health::{TaintCap, ThrottleLadder, UnknownReadiness},
    ledger::ActuationPolicy,
    placement::RelocationPolicy,
};
use std::{net::SocketAddr, path::PathBuf};

use crate::{
    health::HealthSettings, leader::LeaseConfig, ledger::LedgerSettings, telemetry::LogFormat,
};

#[derive(Debug, Parser)]
#[command(
    name = "plumbline",
    version,
    about = "Bridges hypervisors and Kubernetes: intents in, coordinated reversible changes out"
)]
pub struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PLUMBLINE_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print the plan for an intent, per layer with reasons, against the live cluster. Changes nothing.
    Explain(ExplainArgs),
    /// Restore changes to a provider's VMs whose InfraChange objects are lost (e.g. the CRD was deleted).
    #[command(long_about = RECOVER_HELP)]
    Recover(RecoverArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080", env = "PLUMBLINE_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Campaign for a Lease before acting, so several replicas are safe. Turn off only when
    /// exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PLUMBLINE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        default_value = "plumbline-operator",
        env = "PLUMBLINE_LEASE_NAME"
    )]
    pub lease_name: String,

    /// Namespace of the leader-election Lease; defaults to the pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "plumbline-system")]
    pub lease_namespace: String,

    /// How long a Lease stays valid after its last renewal; a standby takes over after it has
    /// seen the Lease unchanged this long.
    #[arg(long, default_value = "15s", value_parser = plumbline_policies::quantity::parse_interval, env = "PLUMBLINE_LEASE_DURATION")]
    pub lease_duration: std::time::Duration,

    /// The leader steps down (stops every write) when it could not renew for this long;
    /// shorter than --lease-duration, so it has stopped before a standby may start.
    #[arg(long, default_value = "10s", value_parser = plumbline_policies::quantity::parse_interval, env = "PLUMBLINE_LEASE_RENEW_DEADLINE")]
    pub lease_renew_deadline: std::time::Duration,

    /// How often the Lease is renewed (or, by a standby, looked at).
    #[arg(long, default_value = "2s", value_parser = plumbline_policies::quantity::parse_interval, env = "PLUMBLINE_LEASE_RETRY_PERIOD")]
    pub lease_retry_period: std::time::Duration,

    /// This replica's identity in the Lease; defaults to the pod name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Watch intents and workloads in this namespace only (default: every namespace).
    #[arg(long, env = "PLUMBLINE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    #[command(flatten)]
    pub prometheus: PrometheusArgs,

    /// How many intents may be reconciled at once.
    #[arg(long, default_value_t = 4, env = "PLUMBLINE_CONCURRENCY")]
    pub concurrency: u16,

    /// What the storage readiness condition says while a pod's storage health is unknown
    /// (hypervisor unreachable, samples stale, node backed by no known VM).
    #[arg(
        long,
        value_enum,
        default_value_t = UnknownReadinessArg::FailOpen,
        env = "PLUMBLINE_UNKNOWN_READINESS"
    )]
    pub unknown_readiness: UnknownReadinessArg,

    /// Put a NoSchedule taint (plumbline.dev/storage-latency-high) on nodes whose storage is
    /// confirmed over budget, and take it off when they recover or become unknown. Needs
    /// `patch` on nodes.
    #[arg(
        long,
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        env = "PLUMBLINE_TAINT_DEGRADED_NODES"
    )]
    pub taint_degraded_nodes: bool,

    /// Carry out HostMaintenances (cordon and drain the nodes on a host going into
    /// maintenance). Needs `patch` on nodes, `create` on pods/eviction and `delete` on pods.
    /// With --watch-namespace only that namespace's pods are moved.
    #[arg(
        long,
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        env = "PLUMBLINE_HOST_MAINTENANCE"
    )]
    pub host_maintenance: bool,

    /// Label VM-backed nodes with the hypervisor host, provider and (vSphere) cluster their
    /// VM runs on (topology.plumbline.dev/host, /provider, /cluster), for
    /// topologySpreadConstraints. On unless `--topology-labels=false`. Needs `patch` on nodes.
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        env = "PLUMBLINE_TOPOLOGY_LABELS"
    )]
    pub topology_labels: bool,

    /// At most this percent of all nodes (rounded down) carry the storage taint at once; a
    /// workload's last schedulable node never does.
    #[arg(
        long,
        default_value_t = 33,
        value_parser = clap::value_parser!(u8).range(0..=100),
        env = "PLUMBLINE_TAINT_MAX_NODES_PERCENT"
    )]
    pub taint_max_nodes_percent: u8,

    /// At most this many noisy neighbours are throttled for one degraded VM.
    #[arg(long, default_value_t = 2, env = "PLUMBLINE_THROTTLE_MAX_PER_VICTIM")]
    pub throttle_max_per_victim: usize,

    /// At most this many VMs sharing one host or one datastore are throttled at once.
    #[arg(long, default_value_t = 4, env = "PLUMBLINE_THROTTLE_MAX_PER_HOST")]
    pub throttle_max_per_host: usize,

    /// A throttle step is judged this many of the victim's samples after it, and undone when
    /// the victim's latency did not drop; 0 never judges (every step is kept).
    #[arg(long, default_value_t = 3, env = "PLUMBLINE_THROTTLE_JUDGE_SAMPLES")]
    pub throttle_judge_samples: u32,

    /// How long a critical intent's VM stays degraded after a noisy neighbour on its host
    /// reached the bottom of the throttle ladder before the neighbour is moved to another host
    /// (`infrastructure.relocateNoisyNeighbours`, vSphere), e.g. 2m.
    #[arg(
        long,
        default_value = "2m",
        value_parser = plumbline_policies::quantity::parse_interval,
        env = "PLUMBLINE_RELOCATION_DWELL"
    )]
    pub relocation_dwell: std::time::Duration,

    /// How often each InfraChange in force is read back from its target, so a value changed
    /// behind Plumbline's back is reported (Drifted) and corrected, e.g. 30s, 500ms, 2m.
    #[arg(
        long,
        default_value = "30s",
        value_parser = plumbline_policies::quantity::parse_interval,
        env = "PLUMBLINE_INFRA_READBACK_INTERVAL"
    )]
    pub infra_readback_interval: std::time::Duration,

    /// Test-only: make a loop fail on purpose (`health-loop-exit`, `health-loop-hang`), to
    /// prove that `/healthz` and the supervisor notice. Never set it in production.
    #[arg(long, hide = true, value_enum, env = "PLUMBLINE_TEST_FAULT")]
    pub test_fault: Option<crate::health::HealthFault>,
}

/// `--unknown-readiness`: see [`UnknownReadiness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnknownReadinessArg {
    /// The condition stays True (reason LatencyUnknown): a monitoring outage never becomes an
    /// outage.
    FailOpen,
    /// The condition turns False (reason LatencyUnknown): pods leave rotation, within the
    /// guard's limit, when nobody can vouch for their storage.
    FailClosed,
}

impl From<UnknownReadinessArg> for UnknownReadiness {
    fn from(arg: UnknownReadinessArg) -> Self {
        match arg {
            UnknownReadinessArg::FailOpen => UnknownReadiness::FailOpen,
            UnknownReadinessArg::FailClosed => UnknownReadiness::FailClosed,
        }
    }
}

impl RunArgs {
    /// The Lease these flags choose, or why they do not fit together.
    pub fn lease(&self, identity: &str) -> Result<LeaseConfig, String> {
        if self.lease_retry_period >= self.lease_renew_deadline
            || self.lease_renew_deadline >= self.lease_duration
        {
            return Err(format!(
                "--lease-retry-period ({:?}) < --lease-renew-deadline ({:?}) < --lease-duration ({:?}) is required: the leader must stop before a standby may start",
                self.lease_retry_period, self.lease_renew_deadline, self.lease_duration
            ));
        }
        Ok(LeaseConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.lease_renew_deadline,
            retry_period: self.lease_retry_period,
            ..LeaseConfig::new(&self.lease_namespace, &self.lease_name, identity)
        })
    }

    /// The storage-health settings these flags choose; the rest keep their defaults.
    pub fn health(&self) -> HealthSettings {
        HealthSettings {
            unknown: self.unknown_readiness.into(),
            taint_degraded_nodes: self.taint_degraded_nodes,
            host_maintenance: self.host_maintenance,
            topology_labels: self.topology_labels,
            taint_cap: TaintCap {
                max_nodes_percent: self.taint_max_nodes_percent,
            },
            fault: self.test_fault,
            ladder: ThrottleLadder {
                max_per_victim: self.throttle_max_per_victim,
                max_per_domain: self.throttle_max_per_host,
                judge_after_samples: self.throttle_judge_samples,
                ..ThrottleLadder::default()
            },
            relocation: RelocationPolicy {
                dwell: self.relocation_dwell,
                ..RelocationPolicy::default()
            },
            ledger: LedgerSettings {
                policy: ActuationPolicy {
                    readback_every: self.infra_readback_interval,
                    ..ActuationPolicy::default()
                },
                ..LedgerSettings::default()
            },
            ..HealthSettings::default()
        }
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["file", "intent"]))]
pub struct ExplainArgs {
    /// An intent manifest (YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,

    /// An intent in the cluster: `wi/NAME`, `workloadintent/NAME` or `NAME`; or a host
    /// maintenance: `hm/NAME`, `hostmaintenance/NAME` (what its next pass would do).
    pub intent: Option<String>,

    /// Namespace of the intent (default: the manifest's, else the kubeconfig's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,

    /// Plan as of this instant (RFC 3339, e.g. 2026-11-23T09:00:00Z) instead of now, to preview
    /// what a schedule window will do.
    #[arg(long)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,

    /// Where the intent's signals are evaluated live.
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
}

/// Where Prometheus is, for the signals of `spec.activation` (docs/activation.md).
#[derive(Debug, Clone, Args)]
pub struct PrometheusArgs {
    /// Prometheus base URL, e.g. http://prometheus.monitoring:9090. Without it, intents with
    /// signals report SignalsHealthy=False and hold their last state.
    #[arg(long, env = "PLUMBLINE_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,

    /// A file holding a bearer token sent to Prometheus (re-read on every query).
    #[arg(long, env = "PLUMBLINE_PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,

    /// PEM CA bundle to verify an https:// Prometheus with (default: the public roots).
    #[arg(long, env = "PLUMBLINE_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,

    /// Timeout of one query.
    #[arg(long, default_value = "5s", value_parser = plumbline_policies::quantity::parse_interval, env = "PLUMBLINE_PROMETHEUS_TIMEOUT")]
    pub prometheus_timeout: std::time::Duration,
}

impl Default for PrometheusArgs {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            prometheus_bearer_token_file: None,
            prometheus_ca_file: None,
            prometheus_timeout: std::time::Duration::from_secs(5),
        }
    }
}

impl PrometheusArgs {
    /// The settings these flags choose; `None` without a URL.
    pub fn settings(&self) -> Option<crate::prometheus::PrometheusSettings> {
        Some(crate::prometheus::PrometheusSettings {
            url: self.prometheus_url.clone()?,
            bearer_token_file: self.prometheus_bearer_token_file.clone(),
            ca_file: self.prometheus_ca_file.clone(),
            timeout: self.prometheus_timeout,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainOutput {
    /// The plan per layer, with reasons, for people.
    Text,
    /// The plan as it would appear in `status.plan`.
    Yaml,
    Json,
}

const RECOVER_HELP: &str = "\
Restore changes to a provider's VMs whose InfraChange objects are lost.

Every change Plumbline makes to a VM (a disk's I/O limit, CPU shares) is an InfraChange object
whose finalizer restores the original. Before the first change the hypervisor adapter also
records the original on the VM itself (libvirt domain metadata, vSphere extraConfig). When the
objects are lost - the InfraChange CRD was deleted, or objects were deleted with their
finalizers stripped - nothing would ever restore those changes. `recover` does, from the
records on the VMs.

It reads the HypervisorProvider NAME and its credentials Secret, connects to the hypervisor,
reads the recorded originals of every VM, then lists every InfraChange. A recorded original is
left to its InfraChange's finalizer when an object targets the same VM (UUID, ignoring case)
and setting - of this provider, or failing that of another provider reaching the same VM. Any
other recorded original is a lost change and is restored (the record is then forgotten). When
the InfraChange CRD is not installed at all, every recorded original is a lost change.

It prints one line per recorded original - the VM, the setting, its current value, the
original, and what was done (restored, would restore, left to InfraChange NAME) - then a
summary. It exits non-zero when a VM could not be read or a restore failed.

Run it with --dry-run first and read the lines. A change that was annotated
plumbline.dev/abandon=true and then deleted also leaves its record on the VM: `recover` restores
it like any lost change.

Needs: get on the HypervisorProvider and its credentials Secret, list on infrachanges, the
hypervisor reachable from where it runs, and for libvirt a build with the `libvirt` feature.
If the HypervisorProvider itself is gone, create it again first.

Examples:
  plumbline recover --provider local-kvm --dry-run
  kubectl plumbline recover --provider local-kvm";

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The HypervisorProvider whose VMs are examined.
    #[arg(long, value_name = "NAME")]
    pub provider: String,

    /// Report what would be restored; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_takes_a_file_or_an_intent_reference() {
        let cli = Cli::try_parse_from(["plumbline", "explain", "-f", "intent.yaml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Explain(ExplainArgs { file: Some(_), .. })
        ));
        let cli =
            Cli::try_parse_from(["kubectl-plumbline", "explain", "wi/payments", "-n", "shop"])
                .unwrap();
        let Command::Explain(args) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(args.intent.as_deref(), Some("wi/payments"));
        assert_eq!(args.namespace.as_deref(), Some("shop"));
        assert!(Cli::try_parse_from(["plumbline", "explain"]).is_err());
    }

    #[test]
    fn recover_needs_a_provider_and_dry_run_is_off_unless_asked_for() {
        let cli =
            Cli::try_parse_from(["kubectl-plumbline", "recover", "--provider", "kvm"]).unwrap();
        let Command::Recover(args) = cli.command else {
            panic!("not recover")
        };
        assert_eq!(args.provider, "kvm");
        assert!(!args.dry_run);
        let cli =
            Cli::try_parse_from(["plumbline", "recover", "--provider=kvm", "--dry-run"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Recover(RecoverArgs { dry_run: true, .. })
        ));
        assert!(Cli::try_parse_from(["plumbline", "recover"]).is_err());
    }

    #[test]
    fn run_defaults_to_leader_election() {
        let cli = Cli::try_parse_from(["plumbline", "run", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.leader_elect);
        let cli = Cli::try_parse_from(["plumbline", "run", "--leader-elect=false"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(!args.leader_elect);
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        args
    }

    #[test]
    fn unknown_readiness_defaults_to_fail_open_and_names_the_choices_when_wrong() {
        let health = run_args(&["plumbline", "run"]).health();
        assert_eq!(health.unknown, UnknownReadiness::FailOpen);
        assert!(!health.taint_degraded_nodes);
        assert_eq!(
            health.ledger.policy.readback_every,
            std::time::Duration::from_secs(30)
        );
        let fast = run_args(&["plumbline", "run", "--infra-readback-interval", "2s"]).health();
        assert_eq!(
            fast.ledger.policy.readback_every,
            std::time::Duration::from_secs(2)
        );
        assert!(
            Cli::try_parse_from(["plumbline", "run", "--infra-readback-interval", "soon"]).is_err()
        );
        let health = run_args(&["plumbline", "run", "--unknown-readiness", "fail-closed"]).health();
        assert_eq!(health.unknown, UnknownReadiness::FailClosed);
        let err = Cli::try_parse_from(["plumbline", "run", "--unknown-readiness", "maybe"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid value 'maybe'")
                && err.contains("fail-open")
                && err.contains("fail-closed"),
            "{err}"
        );
    }

    #[test]
    fn topology_labels_are_on_unless_switched_off() {
        assert!(run_args(&["plumbline", "run"]).health().topology_labels);
        assert!(run_args(&["plumbline", "run", "--topology-labels"]).topology_labels);
        assert!(!run_args(&["plumbline", "run", "--topology-labels=false"]).topology_labels);
        assert!(Cli::try_parse_from(["plumbline", "run", "--topology-labels=maybe"]).is_err());
    }

    #[test]
    fn taint_degraded_nodes_is_off_unless_asked_for() {
        assert!(run_args(&["plumbline", "run", "--taint-degraded-nodes"]).taint_degraded_nodes);
        assert!(
            run_args(&["plumbline", "run", "--taint-degraded-nodes=true"]).taint_degraded_nodes
        );
        assert!(
            !run_args(&["plumbline", "run", "--taint-degraded-nodes=false"]).taint_degraded_nodes
        );
        assert!(
            Cli::try_parse_from(["plumbline", "run", "--taint-degraded-nodes=sometimes"]).is_err()
        );
    }

    #[test]
    fn the_taint_cap_is_a_third_unless_set_and_a_percent() {
        assert_eq!(
            run_args(&["plumbline", "run"]).health().taint_cap,
            TaintCap::default()
        );
        let half = run_args(&["plumbline", "run", "--taint-max-nodes-percent", "50"]).health();
        assert_eq!(half.taint_cap.max_nodes_percent, 50);
        assert!(
            Cli::try_parse_from(["plumbline", "run", "--taint-max-nodes-percent", "101"]).is_err()
        );
    }
}
