//! Assembles the operator: metrics and probes, API discovery, leader election, and the loops
//! that run while this replica leads.
//!
//! Everything that changes the cluster or a hypervisor runs inside a *leadership term*: it
//! starts when this replica acquires the Lease and is stopped when the Lease is lost, so two
//! replicas never both act. Loops are declared in [`leader_loops`]; that is where another
//! loop (e.g. storage-health sampling) is added.
//!
//! Every loop is supervised. When the Lease is lost the term's loops are aborted at once, calls
//! in flight included: there is no grace period for writes. When a loop ends on its own
//! (returns or panics) while it should run, `/healthz` fails, the replica steps down (ends
//! the term, releases the Lease) and [`run`] returns an error, so the process exits non-zero
//! and Kubernetes restarts it.

use futures::{future::BoxFuture, FutureExt};
use kube::Client;
use prometheus_client::registry::Registry;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    clock::Clock,
    context::{Adapters, Context},
    controller,
    discovery::ServedApis,
    http::{self, Readiness},
    leader::{LeaderElector, LeaseConfig},
    liveness::Liveness,
    metrics::{self, Metrics},
    term::TermEnd,
    Error, Result,
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub metrics_addr: SocketAddr,
    /// None: act immediately, as the only replica.
    pub leader_election: Option<LeaseConfig>,
    pub concurrency: u16,
    /// This replica's name, on Events and in the Lease.
    pub identity: String,
    /// Watch intents and workloads in this namespace only; None: every namespace.
    pub namespace: Option<String>,
    /// How the storage-health loop treats unknown verdicts and degraded nodes.
    pub health: crate::health::HealthSettings,
    /// Where the signals of `spec.activation` are evaluated; `None`: nowhere (intents with
    /// signals report it and hold their last state).
    pub prometheus: Option<crate::prometheus::PrometheusSettings>,
}

/// A named loop that runs only while this replica leads.
pub struct LeaderLoop {
    pub name: &'static str,
    pub future: BoxFuture<'static, ()>,
}

/// The loops of one leadership term. Add new leader-only loops here; each gets the term's
/// `Context` (client, recorder, metrics, clock, adapters, intent cache, reconcile trigger)
/// and must stop when `end` resolves.
fn leader_loops(ctx: &Arc<Context>, term: controller::TermInputs, end: TermEnd) -> Vec<LeaderLoop> {
    vec![LeaderLoop {
        name: "workloadintent-controller",
        future: controller::run(ctx.clone(), term, end).boxed(),
    }]
}

/// What outlives leadership terms.
struct Base {
    client: Client,
    settings: Settings,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    apis: ServedApis,
    adapters: Arc<Adapters>,
    liveness: Arc<Liveness>,
    /// Where signals are read, built once from the settings.
    prometheus: crate::prometheus::Source,
    /// Where supervised tasks report that they ended.
    ended_tx: mpsc::UnboundedSender<(&'static str, u64)>,
}

/// A running operator. Dropping it does not stop it; call [`Operator::stop`].
pub struct Operator {
    /// Where /metrics, /healthz and /readyz are served (useful with port 0).
    pub http_addr: SocketAddr,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    /// Set, once, to the loop whose end made the operator step down.
    failed: watch::Receiver<Option<String>>,
    supervisor: JoinHandle<()>,
    http: JoinHandle<()>,
}

impl Operator {
    /// Starts serving probes and metrics, discovers the API, and starts campaigning (or acting
    /// at once without leader election). Returns once the API server has answered.
    pub async fn start(client: Client, settings: Settings, clock: Arc<dyn Clock>) -> Result<Self> {
        let mut registry = metrics::new_registry();
        let metrics = Metrics::register(&mut registry);
        let registry = Arc::new(registry);
        let readiness = Arc::new(Readiness::default());
        let liveness = Arc::new(Liveness::default());
        let (ended_tx, ended) = mpsc::unbounded_channel();

        let (http_addr, serve) = http::bind(
            settings.metrics_addr,
            registry.clone(),
            readiness.clone(),
            liveness.clone(),
        )
        .await?;
        let http = tokio::spawn(Supervised::new("metrics-and-probes", 0, &ended_tx).run(
            async move {
                if let Err(e) = serve.await {
                    error!(error = %e, "metrics/probe server stopped");
                }
            },
        ));
        info!(%http_addr, "serving /metrics, /healthz and /readyz");

        let apis = ServedApis::discover(&client).await?;
        readiness.mark_api_reachable();

        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let (elector_stop, elector_stop_rx) = watch::channel(false);
        let elector = match settings.leader_election.clone() {
            Some(lease) => {
                let lease_client = match &lease.kube {
                    Some(config) => crate::leader::lease_client(config.clone(), &lease)?,
                    None => client.clone(),
                };
                let elector = LeaderElector::new(lease_client, lease, metrics.clone());
                tokio::spawn(
                    Supervised::new("leader-election", 0, &ended_tx)
                        .run(elector.run(leading_tx, elector_stop_rx)),
                )
            }
            None => {
                leading_tx.send_replace(true);
                // Keep the sender alive so `leading` never reports a closed channel.
                tokio::spawn(
                    Supervised::new("leader-election", 0, &ended_tx).run(async move {
                        let mut stop = elector_stop_rx;
                        let _ = stop.wait_for(|s| *s).await;
                        leading_tx.send_replace(false);
                        Ok(())
                    }),
                )
            }
        };

        let base = Base {
            client,
            prometheus: crate::prometheus::Source::new(settings.prometheus.clone()),
            settings,
            clock,
            metrics: metrics.clone(),
            apis,
            adapters: Arc::new(Adapters::default()),
            liveness,
            ended_tx,
        };
        let (failed_tx, failed) = watch::channel(None);
        let supervisor = tokio::spawn(supervise(
            base,
            leading.clone(),
            stop_rx,
            elector_stop,
            elector,
            ended,
            failed_tx,
        ));
        Ok(Self {
            http_addr,
            metrics,
            registry,
            leading,
            stop,
            failed,
            supervisor,
            http,
        })
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows leadership changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Resolves with the loop's name if a loop ended on its own: the operator has then
    /// stepped down and acts no more, and the process should exit non-zero.
    pub async fn failure(&self) -> String {
        let mut failed = self.failed.clone();
        let name = match failed.wait_for(Option::is_some).await {
            Ok(name) => name.clone().unwrap_or_default(),
            // The supervisor is gone without naming a loop: that is a failure too.
            Err(_) => "supervisor".to_string(),
        };
        name
    }

    /// Ends the current term (in-flight reconciles finish), releases the Lease and stops serving.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.supervisor.await {
            warn!(error = %e, "operator supervisor ended abnormally");
        }
        self.http.abort();
    }
}

/// How long a failed operator keeps answering `/healthz` (failing, naming the dead loop)
/// before the process exits, so a probe or a scrape records why it went.
const FAILED_LINGER: Duration = Duration::from_secs(2);

/// Runs the operator until SIGINT or SIGTERM, or until a loop ends on its own (then it has
/// stepped down, and this returns an error so the process exits non-zero and is restarted).
pub async fn run(client: Client, settings: Settings, clock: Arc<dyn Clock>) -> Result<()> {
    let operator = Operator::start(client, settings, clock).await?;
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        name = operator.failure() => Some(name),
    };
    match failed {
        None => {
            info!("shutting down");
            operator.stop().await;
            Ok(())
        }
        Some(name) => {
            error!(loop_name = %name, "a loop ended unexpectedly; stepped down, exiting");
            tokio::time::sleep(FAILED_LINGER).await;
            operator.stop().await;
            Err(Error::LoopDied(name))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// How long a term's loops get to finish in-flight work after a shutdown, before they are
/// aborted. When the Lease is lost there is no grace: the loops are aborted at once.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A supervised task: when it ends, for whatever reason (returned, panicked, aborted), the
/// supervisor hears its name and term (0: lives as long as the operator).
struct Supervised {
    name: &'static str,
    term: u64,
    ended: mpsc::UnboundedSender<(&'static str, u64)>,
}

impl Supervised {
    fn new(
        name: &'static str,
        term: u64,
        ended: &mpsc::UnboundedSender<(&'static str, u64)>,
    ) -> Self {
        Self {
            name,
            term,
            ended: ended.clone(),
        }
    }

    async fn run<T>(self, future: impl std::future::Future<Output = T>) -> T {
        future.await
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.ended.send((self.name, self.term));
    }
}

/// Why a term ended.
enum TermOver {
    Lost,
    Stop,
    Died(&'static str),
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    base: Base,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    elector_stop: watch::Sender<bool>,
    elector: JoinHandle<Result<()>>,
    mut ended: mpsc::UnboundedReceiver<(&'static str, u64)>,
    failed: watch::Sender<Option<String>>,
) {
    let mut term = 0u64;
    // Between terms, only the operator-wide tasks (term 0) matter.
    let mut died: Option<&'static str> = None;
    'terms: loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { died = Some("leader-election"); break 'terms },
            _ = stop.wait_for(|s| *s) => break 'terms,
            Some((name, t)) = ended.recv() => {
                if t == 0 {
                    died = Some(name);
                    break 'terms;
                }
                continue 'terms;
            }
        }
        term += 1;
        info!(identity = %base.settings.identity, term, "leadership term starts");
        let (end_tx, end) = TermEnd::new();
        let handles = start_term(&base, term, end);
        let over = loop {
            tokio::select! {
                _ = leading.wait_for(|l| !*l) => break TermOver::Lost,
                _ = stop.wait_for(|s| *s) => break TermOver::Stop,
                Some((name, t)) = ended.recv() => {
                    if t == term || t == 0 {
                        break TermOver::Died(name);
                    }
                }
            }
        };
        end_tx.send_replace(true);
        base.liveness.health_loop_stops();
        match over {
            TermOver::Stop => {
                for (name, handle) in handles {
                    let abort = handle.abort_handle();
                    if tokio::time::timeout(TERM_GRACE, handle).await.is_err() {
                        warn!(
                            loop_name = name,
                            "leader loop did not stop in time, aborting it"
                        );
                        abort.abort();
                    }
                }
                break 'terms;
            }
            TermOver::Lost | TermOver::Died(_) => {
                // Not the leader any more (or not fit to lead): every write stops now, calls
                // in flight included.
                for (_, handle) in &handles {
                    handle.abort();
                }
                for (_, handle) in handles {
                    let _ = handle.await;
                }
                info!(identity = %base.settings.identity, term, "leader loops stopped; this replica writes nothing until it leads again");
                if let TermOver::Died(name) = over {
                    died = Some(name);
                    break 'terms;
                }
            }
        }
    }
    if let Some(name) = died {
        error!(
            loop_name = name,
            "a loop ended unexpectedly: /healthz fails, stepping down"
        );
        base.liveness.loop_died(name);
    }
    elector_stop.send_replace(true);
    match elector.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    if let Some(name) = died {
        failed.send_replace(Some(name.to_string()));
    }
}

fn start_term(base: &Base, term: u64, end: TermEnd) -> Vec<(&'static str, JoinHandle<()>)> {
    let (ctx, inputs) = controller::term_context(
        base.client.clone(),
        base.settings.identity.clone(),
        base.metrics.clone(),
        base.clock.clone(),
        base.apis.clone(),
        base.adapters.clone(),
        base.settings.concurrency,
        base.settings.namespace.clone(),
        base.prometheus.clone(),
    );
    let mut loops = leader_loops(&ctx, inputs, end.clone());
    base.liveness
        .health_loop_starts(base.settings.health.resync);
    loops.push(LeaderLoop {
        name: "storage-health",
        future: crate::health::run(
            ctx.clone(),
            base.settings.health.clone(),
            base.settings.namespace.clone(),
            end,
            base.liveness.clone(),
        )
        .boxed(),
    });
    loops
        .into_iter()
        .map(|l| {
            let supervised = Supervised::new(l.name, term, &base.ended_tx);
            (l.name, tokio::spawn(supervised.run(l.future)))
        })
        .collect()
}
