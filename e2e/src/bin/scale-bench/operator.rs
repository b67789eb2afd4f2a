//! The real operator binary, as the benchmark runs it: cluster-wide, one replica, its log in
//! the bed's log dir, stopped by its recorded pid.

use std::{path::Path, process::Stdio};

use anyhow::{Context as _, Result};
use tokio::process::{Child, Command};

pub struct Operator {
    pub pid: u32,
    child: Child,
}

impl Operator {
    pub fn start(binary: &Path, kubeconfig: &Path, metrics_addr: &str, log: &Path) -> Result<Self> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("creating the operator log {}", log.display()))?;
        let child = Command::new(binary)
            .args([
                "run",
                "--leader-elect=false",
                "--metrics-addr",
                metrics_addr,
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the operator's pid")?;
        Ok(Self { pid, child })
    }

    /// Returns once the operator has exited (its process is a zombie or gone): a benchmark
    /// waiting on it would wait in vain.
    pub async fn exited(pid: u32) {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if matches!(state, None | Some("Z")) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }

    /// SIGTERM, up to 30 s for a clean exit, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = plumbline_e2e::process::kill(self.pid, "TERM").await;
        if tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
