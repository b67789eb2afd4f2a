//! A second kube-apiserver of the tests' own, on the stack's etcd, for restarting an API
//! server under an operator without touching the one every other test shares (an HA control
//! plane has several; each is restarted on its own).
//!
//! It runs the stack's binary with the stack's flags (read from the running apiserver's
//! command line by its recorded pid), on a free loopback port and a certificate directory of
//! its own. It is started, stopped (TERM, by the pid it recorded) and started again on the same
//! port; dropping it kills it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::{net::free_port, process::kill, stack_error, Result, Stack};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ExtraApiserver {
    program: String,
    args: Vec<String>,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl ExtraApiserver {
    /// Starts one and waits until it answers `/readyz`.
    pub async fn start(stack: &Stack) -> Result<Self> {
        let stack_dir = Path::new(stack.get("PLUMBLINE_STACK_DIR")?);
        let pid_file = stack_dir.join("pids/kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| stack_error(format!("reading {}", pid_file.display()), e))?;
        let cmdline_path = format!("/proc/{}/cmdline", pid.trim());
        let cmdline = std::fs::read(&cmdline_path)
            .map_err(|e| stack_error(format!("reading {cmdline_path}"), e))?;
        let mut words = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned());
        let program = words
            .next()
            .ok_or_else(|| stack_error("the stack's apiserver", "empty command line"))?;
        let dir = tempfile::tempdir().map_err(|e| stack_error("a temporary directory", e))?;
        let port = free_port()?;
        let args = words
            .map(|w| {
                if w.starts_with("--secure-port=") {
                    format!("--secure-port={port}")
                } else if w.starts_with("--cert-dir=") {
                    format!("--cert-dir={}", dir.path().join("certs").display())
                } else {
                    w
                }
            })
            .collect();
        let mut server = Self {
            program,
            args,
            port,
            ca: PathBuf::from(stack.get("KUBE_CA_FILE")?),
            log: dir.path().join("kube-apiserver.log"),
            child: None,
            _dir: dir,
        };
        server.up().await?;
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`; the stack's CA and tokens are valid here too.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Copies the kubeconfig at `original` with this server as the cluster's address.
    pub fn kubeconfig(&self, original: &Path, out: &Path) -> Result<()> {
        crate::relay::rewrite_kubeconfig(original, out, |cluster| {
            cluster["server"] = serde_json::Value::String(self.url());
        })
        .map_err(|e| stack_error("writing a kubeconfig for the extra apiserver", e))
    }

    /// Stops it (TERM to its pid) and waits until it has exited.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            kill(pid, "TERM").await?;
        }
        match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(status) => status
                .map(|_| ())
                .map_err(|e| stack_error("waiting for the extra apiserver to exit", e)),
            Err(_) => {
                let _ = child.start_kill();
                Err(stack_error(
                    "stopping the extra apiserver",
                    format!("still running {EXIT_TIMEOUT:?} after TERM"),
                ))
            }
        }
    }

    /// Starts it again on the same port and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.up().await
    }

    async fn up(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| stack_error(format!("opening {}", self.log.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| stack_error("duplicating the log file", e))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| stack_error(format!("starting {}", self.program), e))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let ca = std::fs::read(&self.ca)
            .map_err(|e| stack_error(format!("reading {}", self.ca.display()), e))?;
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&ca).map_err(|e| stack_error("the stack CA", e))?,
            )
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| stack_error("an HTTP client", e))?;
        let url = format!("{}/readyz", self.url());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(stack_error(
                        "the extra apiserver",
                        format!("exited with {status}; see {}", self.log.display()),
                    ));
                }
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(stack_error(
                    "the extra apiserver",
                    format!(
                        "not ready after {READY_TIMEOUT:?}; see {}",
                        self.log.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
