//! A source of traffic metrics whose value a test sets, for the activation signals of
//! `WorkloadIntent.spec.activation` (docs/activation.md).
//!
//! [`TrafficSource`] is a tiny exporter on a loopback port of its own, serving
//! `plumbline_test_traffic{test="<label>"} <value>` on `/metrics` (no series at all while the
//! value is unset, so a query over it comes back empty). [`TrafficSource::register`] makes the
//! stack's Prometheus scrape it (a file_sd file in `PROMETHEUS_TARGETS_DIR`, removed on drop).
//!
//! [`OwnPrometheus`] is a Prometheus of the test's own (its own port, config and TSDB in a
//! temporary directory, 1 s scrapes of one exporter), for tests that stop and restart it: the
//! stack's Prometheus is shared and never stopped. It is killed by its recorded pid.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    process::{Child, Command},
    task::JoinHandle,
};

use crate::{net::free_port, process::kill, stack_error, Result, Stack};

/// The metric the exporter serves.
pub const METRIC: &str = "plumbline_test_traffic";

pub struct TrafficSource {
    label: String,
    value: Arc<Mutex<Option<f64>>>,
    port: u16,
    server: JoinHandle<()>,
    target_file: Option<PathBuf>,
}

impl TrafficSource {
    /// Starts serving with no value yet; `label` tells this test's series apart.
    pub async fn start(label: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| stack_error("binding the traffic exporter", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| stack_error("the traffic exporter's address", e))?
            .port();
        let value: Arc<Mutex<Option<f64>>> = Arc::default();
        let shared = value.clone();
        let label_owned = label.to_string();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let body = match *shared.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(v) => {
                        format!("# TYPE {METRIC} gauge\n{METRIC}{{test=\"{label_owned}\"}} {v}\n")
                    }
                    None => format!("# TYPE {METRIC} gauge\n"),
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self {
            label: label.to_string(),
            value,
            port,
            server,
            target_file: None,
        })
    }

    /// Makes the stack's Prometheus scrape this exporter (every 5 s, job `plumbline`).
    pub fn register(&mut self, stack: &Stack) -> Result<()> {
        let dir = PathBuf::from(stack.get("PROMETHEUS_TARGETS_DIR")?);
        let file = dir.join(format!("traffic-{}.json", self.label));
        let tmp = dir.join(format!(".traffic-{}.json.tmp", self.label));
        let body = format!(
            "[{{\"targets\": [\"{}\"], \"labels\": {{\"component\": \"traffic\"}}}}]\n",
            self.address()
        );
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &file))
            .map_err(|e| stack_error(format!("writing {}", file.display()), e))?;
        self.target_file = Some(file);
        Ok(())
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serves `value` from now on; `None`: no series.
    pub fn set(&self, value: Option<f64>) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// A PromQL query for this source's value: one sample, or none while unset.
    pub fn query(&self) -> String {
        format!("sum({METRIC}{{test=\"{}\"}})", self.label)
    }
}

impl Drop for TrafficSource {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(file) = &self.target_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A Prometheus of the test's own, scraping one target every second.
pub struct OwnPrometheus {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnPrometheus {
    /// Starts `/usr/bin/prometheus` (the stack's package) scraping `target` every second, and
    /// waits until it is ready.
    pub async fn start(target: &str) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| stack_error("a temporary directory", e))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: traffic\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)
            .map_err(|e| stack_error("writing the test Prometheus config", e))?;
        let mut p = Self {
            port: free_port()?,
            dir,
            child: None,
        };
        p.up().await?;
        Ok(p)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL to its pid, and waits until it has exited.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            kill(pid, "KILL").await?;
        }
        child
            .wait()
            .await
            .map(|_| ())
            .map_err(|e| stack_error("waiting for the test Prometheus to exit", e))
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.up().await
    }

    async fn up(&mut self) -> Result<()> {
        let path = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("prometheus.log"))
            .map_err(|e| stack_error("opening the test Prometheus log", e))?;
        let err = log
            .try_clone()
            .map_err(|e| stack_error("duplicating the log file", e))?;
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                path.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| stack_error("starting /usr/bin/prometheus", e))?;
        self.child = Some(child);
        let ready = format!("{}/-/ready", self.url());
        crate::poll::until("the test Prometheus ready", Duration::from_secs(60), || {
            let ready = ready.clone();
            async move {
                reqwest::get(&ready)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await
        .map_err(|e| stack_error("starting the test Prometheus", e))
    }
}

impl Drop for OwnPrometheus {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = crate::process::kill_blocking(pid, "KILL");
        }
    }
}
