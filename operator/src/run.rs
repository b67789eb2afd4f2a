//! Assembles the operator: metrics and probes, API discovery, leader election, and the loops
//! that run while this replica leads.
//!
//! Everything that changes the cluster or a hypervisor runs inside a *leadership term*: it
//! starts when this replica acquires the Lease and is stopped when the Lease is lost, so two
//! replicas never both act. Loops are declared in [`leader_loops`]; that is where another
//! loop (e.g. storage-health sampling) is added.

use futures::{future::BoxFuture, FutureExt};
use kube::Client;
use prometheus_client::registry::Registry;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    clock::Clock,
    context::{Adapters, Context},
    controller,
    discovery::ServedApis,
    http::{self, Readiness},
    leader::{LeaderElector, LeaseConfig},
    metrics::{self, Metrics},
    Result,
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
}

/// Resolves when the current leadership term ends (Lease lost, or shutdown). Every leader
/// loop must return soon after this resolves.
#[derive(Clone)]
pub struct TermEnd(watch::Receiver<bool>);

impl TermEnd {
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|ended| *ended).await;
    }

    pub fn has_ended(&self) -> bool {
        *self.0.borrow()
    }
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
}

/// A running operator. Dropping it does not stop it; call [`Operator::stop`].
pub struct Operator {
    /// Where /metrics, /healthz and /readyz are served (useful with port 0).
    pub http_addr: SocketAddr,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
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

        let (http_addr, serve) =
            http::bind(settings.metrics_addr, registry.clone(), readiness.clone()).await?;
        let http = tokio::spawn(async move {
            if let Err(e) = serve.await {
                error!(error = %e, "metrics/probe server stopped");
            }
        });
        info!(%http_addr, "serving /metrics, /healthz and /readyz");

        let apis = ServedApis::discover(&client).await?;
        readiness.mark_api_reachable();

        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let (elector_stop, elector_stop_rx) = watch::channel(false);
        let elector = match settings.leader_election.clone() {
            Some(lease) => {
                let elector = LeaderElector::new(client.clone(), lease, metrics.clone());
                Some(tokio::spawn(elector.run(leading_tx, elector_stop_rx)))
            }
            None => {
                leading_tx.send_replace(true);
                // Keep the sender alive so `leading` never reports a closed channel.
                Some(tokio::spawn(async move {
                    let mut stop = elector_stop_rx;
                    let _ = stop.wait_for(|s| *s).await;
                    leading_tx.send_replace(false);
                    Ok(())
                }))
            }
        };

        let base = Base {
            client,
            settings,
            clock,
            metrics: metrics.clone(),
            apis,
            adapters: Arc::new(Adapters::default()),
        };
        let supervisor = tokio::spawn(supervise(
            base,
            leading.clone(),
            stop_rx,
            elector_stop,
            elector,
        ));
        Ok(Self {
            http_addr,
            metrics,
            registry,
            leading,
            stop,
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

    /// Ends the current term (in-flight reconciles finish), releases the Lease and stops serving.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.supervisor.await {
            warn!(error = %e, "operator supervisor ended abnormally");
        }
        self.http.abort();
    }
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(client: Client, settings: Settings, clock: Arc<dyn Clock>) -> Result<()> {
    let operator = Operator::start(client, settings, clock).await?;
    shutdown_signal().await;
    info!("shutting down");
    operator.stop().await;
    Ok(())
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

/// How long a term's loops get to finish in-flight work after it ends, before they are aborted.
const TERM_GRACE: Duration = Duration::from_secs(5);

async fn supervise(
    base: Base,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    elector_stop: watch::Sender<bool>,
    elector: Option<JoinHandle<Result<()>>>,
) {
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        info!(identity = %base.settings.identity, "leadership term starts");
        let (end_tx, end_rx) = watch::channel(false);
        let handles = start_term(&base, TermEnd(end_rx));
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => info!("leadership lost, stopping leader loops"),
            _ = stop.wait_for(|s| *s) => {}
        }
        end_tx.send_replace(true);
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
        if *stop.borrow() {
            break;
        }
    }
    elector_stop.send_replace(true);
    if let Some(elector) = elector {
        match elector.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
            Err(e) => warn!(error = %e, "leader election task failed"),
        }
    }
}

fn start_term(base: &Base, end: TermEnd) -> Vec<(&'static str, JoinHandle<()>)> {
    let (ctx, inputs) = controller::term_context(
        base.client.clone(),
        base.settings.identity.clone(),
        base.metrics.clone(),
        base.clock.clone(),
        base.apis.clone(),
        base.adapters.clone(),
        base.settings.concurrency,
        base.settings.namespace.clone(),
    );
    let mut loops = leader_loops(&ctx, inputs, end.clone());
    loops.push(LeaderLoop {
        name: "storage-health",
        future: crate::health::run(
            ctx.clone(),
            base.settings.health.clone(),
            base.settings.namespace.clone(),
            end,
        )
        .boxed(),
    });
    loops
        .into_iter()
        .map(|l| (l.name, tokio::spawn(l.future)))
        .collect()
}
