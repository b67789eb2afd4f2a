//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! acts. Same rules as client-go's leaderelection: a candidate may take the lease only after it
//! has seen the record unchanged for a whole lease duration (measured on its own monotonic
//! clock, so wall-clock skew between replicas does not matter); the leader renews every
//! `retry_period` and steps down if it could not renew within `renew_deadline`, which is shorter
//! than the lease duration, so it has stopped acting before anybody else may start.
//!
//! The renew deadline is enforced, not hoped for: the lease talks to the API server through a
//! client of its own, with a read timeout and without kube's retry layer (which retries a 429
//! up to 15 times with up to 1000 s of delay), and every round is cut off at the time left
//! before the renew deadline. When the deadline passes the replica steps down at that moment,
//! whatever the API server is doing.

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};
use std::time::Duration;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::{metrics::Metrics, Error, Result};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica, e.g. the pod name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// How to reach the API server for the lease. When set, the lease gets a client of its
    /// own built from it (see [`lease_client`]); when not, it shares the operator's client,
    /// and only the per-round time limit bounds an attempt.
    pub kube: Option<kube::Config>,
}

impl LeaseConfig {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            kube: None,
        }
    }
}

/// The lease's own client: a read timeout (a hung API server cannot hold a round past the
/// deadline) and no retries (a 429 or 503 is one failed round, retried on the next tick).
pub fn lease_client(mut config: kube::Config, lease: &LeaseConfig) -> Result<Client> {
    let limit = lease.renew_deadline.max(Duration::from_millis(100));
    config.default_retry = false;
    config.read_timeout = Some(limit);
    config.connect_timeout = Some(limit);
    config.write_timeout = Some(limit);
    config.reset_reader_on_write = true;
    Client::try_from(config).map_err(|source| Error::kube("building the lease's client", source))
}

/// The part of the lease record whose change proves the holder is alive.
#[derive(Debug, Clone, PartialEq)]
struct SeenLease {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: i32,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    metrics: Metrics,
    observed: Option<(SeenLease, Instant)>,
    last_renewed: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig, metrics: Metrics) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            metrics,
            observed: None,
            last_renewed: None,
        }
    }

    fn what(&self) -> String {
        format!(
            "lease {}/{} for {}",
            self.config.namespace, self.config.name, self.config.identity
        )
    }

    fn set_gauge(&self, leading: bool) {
        self.metrics
            .leader
            .get_or_create(&crate::metrics::LeaseLabels {
                lease: self.config.name.clone(),
                identity: self.config.identity.clone(),
            })
            .set(i64::from(leading));
    }

    /// Campaigns until `stop` flips to true, publishing leadership on `leading`. On stop it
    /// releases the lease if held, so a standby takes over without waiting for expiry.
    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        self.set_gauge(false);
        loop {
            let is_leader = *leading.borrow();
            // A leader's round may only use the time left before its renew deadline; a
            // candidate's round gets a whole deadline.
            let budget = match (is_leader, self.last_renewed) {
                (true, Some(at)) => self.config.renew_deadline.saturating_sub(at.elapsed()),
                _ => self.config.renew_deadline,
            };
            let round = if budget.is_zero() {
                Err(Error::LeaseDeadline(self.what()))
            } else {
                match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::LeaseDeadline(self.what())),
                }
            };
            match round {
                Ok(true) => {
                    self.last_renewed = Some(Instant::now());
                    if !is_leader {
                        info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                        self.set_gauge(true);
                        leading.send_replace(true);
                    }
                }
                Ok(false) => {
                    if is_leader {
                        warn!(lease = %self.config.name, identity = %self.config.identity, "lease taken by another replica, stepping down");
                        self.step_down(&leading);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "leader election round failed");
                    let deadline_passed = self
                        .last_renewed
                        .is_none_or(|t| t.elapsed() >= self.config.renew_deadline);
                    if is_leader && deadline_passed {
                        warn!(lease = %self.config.name, identity = %self.config.identity, "could not renew within the deadline, stepping down");
                        self.step_down(&leading);
                    }
                }
            }
            // A leader that failed to renew tries again no later than its deadline, so it
            // steps down at the deadline and not up to a retry period after it.
            let pause = match (*leading.borrow(), self.last_renewed) {
                (true, Some(at)) => self
                    .config
                    .retry_period
                    .min(self.config.renew_deadline.saturating_sub(at.elapsed())),
                _ => self.config.retry_period,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leading.borrow() {
            self.step_down(&leading);
            let release = tokio::time::timeout(self.config.renew_deadline, self.release());
            match release.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "releasing the lease on shutdown failed; a standby takes over after expiry")
                }
                Err(_) => warn!(
                    "releasing the lease on shutdown timed out; a standby takes over after expiry"
                ),
            }
        }
        Ok(())
    }

    fn step_down(&mut self, leading: &watch::Sender<bool>) {
        self.last_renewed = None;
        self.set_gauge(false);
        leading.send_replace(false);
    }

    /// One election round: true if this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = Timestamp::now();
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| Error::kube(format!("reading {}", self.what()), source))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(source) => Err(Error::kube(format!("creating {}", self.what()), source)),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let observed = SeenLease {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        };
        if self.observed.as_ref().is_none_or(|(o, _)| *o != observed) {
            self.observed = Some((observed.clone(), Instant::now()));
        }
        let held_by_me = observed.holder.as_deref() == Some(self.config.identity.as_str());
        if !held_by_me {
            if let (Some(holder), Some((_, seen_at))) = (&observed.holder, &self.observed) {
                let duration = spec
                    .lease_duration_seconds
                    .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                    .unwrap_or(self.config.lease_duration);
                if seen_at.elapsed() < duration {
                    debug!(%holder, "lease held by another replica");
                    return Ok(false);
                }
                info!(%holder, "lease expired, taking over");
            }
        }

        let (acquired, transitions) = if held_by_me {
            (
                spec.acquire_time.map(|t| t.0).unwrap_or(now),
                observed.transitions,
            )
        } else {
            (now, observed.transitions + 1)
        };
        lease.spec = Some(self.record(acquired, now, transitions));
        // `replace` carries the resourceVersion we read: if another replica wrote in between,
        // the API server answers 409 and we lost this round.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(source) => Err(Error::kube(format!("renewing {}", self.what()), source)),
        }
    }

    fn record(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| Error::kube(format!("reading {}", self.what()), source))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(|source| Error::kube(format!("releasing {}", self.what()), source))?;
        info!(lease = %self.config.name, identity = %self.config.identity, "released the lease");
        Ok(())
    }
}
