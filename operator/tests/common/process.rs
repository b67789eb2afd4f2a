//! The operator as its own process, as it runs in a pod: the real `plumbline` binary with
//! leader election, its JSON log lines collected (with their timestamps, so two replicas'
//! events can be ordered on one clock), and signals sent to its recorded pid only.

use anyhow::{bail, ensure, Context as _, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Short lease timings, so takeovers happen within a test's patience; the order the binary
/// requires (retry < renew deadline < duration) holds.
pub const LEASE_ARGS: [&str; 3] = [
    "--lease-duration=6s",
    "--lease-renew-deadline=4s",
    "--lease-retry-period=1s",
];

pub struct OperatorProcess {
    pub identity: String,
    child: Child,
    pid: u32,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl OperatorProcess {
    /// Starts `plumbline run` as `identity`, scoped to `namespace` (where its Lease lives too),
    /// talking to the API server through `kubeconfig`, with `extra` arguments.
    pub async fn start(
        identity: &str,
        namespace: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plumbline"))
            .args([
                "--log-format=json",
                "run",
                "--metrics-addr=127.0.0.1:0",
                "--leader-elect=true",
                "--watch-namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
                "--infra-readback-interval=2s",
                // As in `test_health`: the stack's latency is on the victim's own disk, so the
                // ladder's judgement would undo every step.
                "--throttle-judge-samples=0",
                // As in `test_health`: topology labels are node-wide, and a killed operator
                // never releases them; only the tests of them (topology.rs, spread.rs) write them.
                "--topology-labels=false",
            ])
            .args(LEASE_ARGS)
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the operator binary")?;
        let pid = child.id().context("the operator's pid")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("the operator's stderr")?;
        let (sink, who) = (logs.clone(), identity.to_string());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{who}] {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("log lines").push(v);
                }
            }
        });
        Ok(Self {
            identity: identity.to_string(),
            child,
            pid,
            logs,
        })
    }

    /// When the process first logged a line whose message contains `message`.
    pub fn logged_at(&self, message: &str) -> Option<DateTime<Utc>> {
        self.logged_all(message).into_iter().next()
    }

    /// Every time it logged such a line, in order.
    pub fn logged_all(&self, message: &str) -> Vec<DateTime<Utc>> {
        self.logs
            .lock()
            .expect("log lines")
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(message)))
            .filter_map(|v| v["timestamp"].as_str()?.parse().ok())
            .collect()
    }

    /// Where it serves /metrics, /healthz and /readyz (it binds port 0 and logs the address).
    pub async fn http_addr(&self) -> Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + super::PATIENCE;
        loop {
            let found = self
                .logs
                .lock()
                .expect("log lines")
                .iter()
                .find_map(|v| v["http_addr"].as_str()?.parse().ok());
            if let Some(addr) = found {
                return Ok(addr);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{} never said where it serves /healthz",
                self.identity
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/healthz`: the status code and the body.
    pub async fn healthz(&self) -> Result<(u16, String)> {
        let addr = self.http_addr().await?;
        let response = reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let code = response.status().as_u16();
        Ok((code, response.text().await?))
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> Result<String> {
        super::metrics(self.http_addr().await?).await
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (e.g. "KILL", "TERM", "STOP") to this process only.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let sent = plumbline_e2e::process::kill(self.pid, signal).await?;
        ensure!(sent, "kill -{signal} {}", self.pid);
        Ok(())
    }

    /// Still running?
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits (at most the patience) for the process to exit; its exit status.
    pub async fn exited(&mut self) -> Result<std::process::ExitStatus> {
        match tokio::time::timeout(super::PATIENCE, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} did not exit within {:?}",
                self.identity,
                super::PATIENCE
            ),
        }
    }

    /// SIGTERM (a clean stop: the Lease is released) and wait; SIGKILL if it does not go.
    pub async fn stop(mut self) -> Result<()> {
        if !self.running()? {
            return Ok(());
        }
        self.signal("TERM").await?;
        if self.exited().await.is_err() {
            self.signal("KILL").await?;
            self.child.wait().await?;
        }
        Ok(())
    }
}

/// Who holds the operators' Lease (`plumbline-operator`) in the cluster's namespace.
pub async fn lease_holder(cluster: &super::Cluster) -> Option<String> {
    kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        cluster.admin.clone(),
        &cluster.namespace,
    )
    .get_opt("plumbline-operator")
    .await
    .ok()??
    .spec?
    .holder_identity
}
