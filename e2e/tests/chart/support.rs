//! Shared by the chart tests: helm from the project's installer, commands with readable
//! failures, and a namespace per test on the stack's cluster.

use plumbline_e2e::{net::free_port, poll::until_blocking, process, Stack};
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/plumbline")
}

/// The pinned helm, installed by `e2e/install-helm` on first use.
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = run(Command::new(repo().join("e2e/install-helm")), None)
            .unwrap_or_else(|e| panic!("installing helm: {e}"));
        PathBuf::from(out.trim())
    })
}

/// Runs `cmd`, feeding `stdin`; Ok(stdout) on success, Err(command, status, stderr) otherwise.
pub fn run(
    mut cmd: impl std::borrow::BorrowMut<Command>,
    stdin: Option<&str>,
) -> Result<String, String> {
    let cmd = cmd.borrow_mut();
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting {shown}: {e}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing stdin of {shown}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{shown} exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        ))
    }
}

pub fn helm_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(helm());
    cmd.args(args);
    // Keep helm's own state out of $HOME so tests do not share repository caches.
    let home = std::env::temp_dir().join("plumbline-chart-tests-helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// The example values file that turns every optional part of the chart on.
pub fn full_values() -> PathBuf {
    chart_dir().join("ci/full-values.yaml")
}

/// The stack's cluster as its admin, for setting up and inspecting.
pub struct Cluster {
    pub stack: Stack,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn load() -> Self {
        let stack = plumbline_e2e::stack();
        let kubeconfig = stack
            .admin_kubeconfig()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_path_buf();
        Self { stack, kubeconfig }
    }

    pub fn kubectl<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    pub fn helm<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = helm_cmd(args);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        run(self.kubectl(args), stdin).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all, None);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {args:?} did not print JSON: {e}\n{out}"))
    }

    /// A fresh namespace named after the test, deleted (without waiting) when dropped.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = format!("{prefix}-{}", unique_suffix());
        self.kubectl_ok(&["create", "namespace", &name], None);
        Namespace {
            cluster: self,
            name,
        }
    }

    /// Installs the chart's CRDs for real (server-side apply), so custom resources can be
    /// validated and created. Idempotent; the chart's CRDs are identical to crds/generated.
    pub fn ensure_crds(&self) {
        let crds = chart_dir().join("crds");
        // Held by the upgrade test (a newer, superset schema): leave it (see `hold_crds`).
        let held = run(
            self.kubectl([
                "get",
                "crd",
                "workloadintents.plumbline.dev",
                "-o",
                &format!(
                    "jsonpath={{.metadata.annotations.{}}}",
                    CRD_HELD_ANNOTATION.replace('.', "\\.")
                ),
            ]),
            None,
        )
        .is_ok_and(|out| !out.trim().is_empty());
        if held {
            return;
        }
        self.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=plumbline-chart-tests",
                "-f",
                crds.to_str().unwrap(),
            ],
            None,
        );
        for crd in [
            "workloadintents.plumbline.dev",
            "hypervisorproviders.plumbline.dev",
            "infrachanges.plumbline.dev",
        ] {
            self.kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    &format!("crd/{crd}"),
                ],
                None,
            );
        }
    }
}

pub use plumbline_e2e::cluster::CRD_HELD_ANNOTATION;

/// Patience for an operator to revert its InfraChanges once nothing wants them.
pub const LEDGER_PATIENCE: Duration = Duration::from_secs(90);

impl Cluster {
    /// `name (state)` of every InfraChange of the operator scoped to `namespace`.
    pub fn ledger_of(&self, namespace: &str) -> Result<Vec<String>, String> {
        let out = run(self.kubectl(["get", "infrachanges", "-o", "json"]), None)?;
        let list: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("kubectl printed no JSON: {e}"))?;
        let operator = format!("namespace/{namespace}");
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ic| ic["spec"]["operator"] == operator.as_str())
            .map(|ic| {
                format!(
                    "{} ({})",
                    ic["metadata"]["name"].as_str().unwrap_or("?"),
                    ic["status"]["state"].as_str().unwrap_or("no state")
                )
            })
            .collect())
    }

    /// Ends a scenario the way docs/install.md has a user uninstall, while the operator scoped
    /// to `namespace` still runs: its intents are deleted, so it deletes its InfraChanges and
    /// their finalizers restore the originals; once none is left, `providers` are deleted and
    /// the operator lets go of their finalizer `plumbline.dev/infra-changes`. Whatever is still
    /// there after the patience is stripped of its finalizers, so it cannot hold up later
    /// tests, and reported as the error.
    pub fn release_ledger(&self, namespace: &str, providers: &[&str]) -> Result<(), String> {
        let _ = run(
            self.kubectl([
                "delete",
                "workloadintents",
                "--all",
                "-n",
                namespace,
                "--wait=false",
            ]),
            None,
        );
        let deadline = Instant::now() + LEDGER_PATIENCE;
        let mut problem = loop {
            match self.ledger_of(namespace) {
                Ok(left) if left.is_empty() => break None,
                Ok(left) if Instant::now() >= deadline => {
                    break Some(format!(
                        "InfraChanges of namespace/{namespace} not reverted after {LEDGER_PATIENCE:?}: {}",
                        left.join(", ")
                    ))
                }
                Err(e) if Instant::now() >= deadline => break Some(e),
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        if problem.is_some() {
            self.strip_ledger(namespace);
        }
        for provider in providers {
            let deleted = run(
                self.kubectl([
                    "delete",
                    "hypervisorprovider",
                    provider,
                    "--ignore-not-found",
                    "--timeout=60s",
                ]),
                None,
            );
            if let Err(e) = deleted {
                let _ = run(
                    self.kubectl([
                        "patch",
                        "hypervisorprovider",
                        provider,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ]),
                    None,
                );
                problem.get_or_insert(format!(
                    "HypervisorProvider {provider} did not go while the operator ran: {e}"
                ));
            }
        }
        problem.map_or(Ok(()), Err)
    }

    /// Removes the InfraChanges of the operator scoped to `namespace` without reverting them
    /// (test cleanup only).
    fn strip_ledger(&self, namespace: &str) {
        for entry in self.ledger_of(namespace).unwrap_or_default() {
            let name = entry.split(' ').next().unwrap_or_default();
            let _ = run(
                self.kubectl([
                    "patch",
                    "infrachange",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]),
                None,
            );
            let _ = run(
                self.kubectl([
                    "delete",
                    "infrachange",
                    name,
                    "--ignore-not-found",
                    "--wait=false",
                ]),
                None,
            );
        }
    }
}

/// [`Cluster::release_ledger`] when dropped, unless it already ran: declared after the
/// operator it belongs to, so a failing test still releases while that operator runs.
pub struct LedgerRelease<'a> {
    pub cluster: &'a Cluster,
    pub namespace: String,
    pub providers: Vec<String>,
    done: bool,
}

impl<'a> LedgerRelease<'a> {
    pub fn new(cluster: &'a Cluster, namespace: &str, providers: &[&str]) -> Self {
        Self {
            cluster,
            namespace: namespace.to_string(),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            done: false,
        }
    }

    pub fn release(&mut self) -> Result<(), String> {
        self.done = true;
        let providers: Vec<&str> = self.providers.iter().map(String::as_str).collect();
        self.cluster.release_ledger(&self.namespace, &providers)
    }
}

impl Drop for LedgerRelease<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.release() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

pub struct Namespace<'a> {
    cluster: &'a Cluster,
    pub name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        // A test that failed before deleting its intents leaves them with the revert finalizer
        // and no operator to run it; the namespace would never go. Its objects go with it.
        if let Ok(names) = run(
            self.cluster
                .kubectl(["get", "workloadintents", "-n", &self.name, "-o", "name"]),
            None,
        ) {
            for name in names.lines().filter(|l| !l.is_empty()) {
                let _ = run(
                    self.cluster.kubectl([
                        "patch",
                        "-n",
                        &self.name,
                        name,
                        "--type=merge",
                        "-p",
                        r#"{"metadata":{"finalizers":null}}"#,
                    ]),
                    None,
                );
            }
        }
        let _ = run(
            self.cluster.kubectl([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ]),
            None,
        );
    }
}

pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:05x}", std::process::id() & 0xfff, nanos & 0xfffff)
}

/// Polls `check` (every 250 ms) until it returns `Ok`, or panics after `timeout` with the last
/// reason: [`plumbline_e2e::poll::until_blocking`] for these synchronous tests.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    until_blocking(what, timeout, || anyhow::Ok(check())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The operator binary, built once per test process with the workspace's cargo.
pub fn operator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo())
            // Resolved like e2e/run-tests' `--workspace --all-features` build (the libvirt
            // adapter is a feature), so under nextest this is a no-op, not a rebuild with other
            // feature unification that would replace the binary other tests are running.
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--all-features",
                "--bin",
                "plumbline",
            ]);
        run(cmd, None).unwrap_or_else(|e| panic!("building the operator: {e}"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let binary = target.join("debug/plumbline");
        assert!(binary.is_file(), "cargo built no {}", binary.display());
        binary
    })
}

/// `plumbline run` started by a test; stopped with SIGTERM (by its pid) when dropped.
pub struct OperatorProcess {
    child: std::process::Child,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator with `kubeconfig` as its only identity.
    pub fn start(kubeconfig: &Path, namespace: &str, identity: &str, extra_args: &[&str]) -> Self {
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let log = std::env::temp_dir().join(format!("plumbline-chart-test-{identity}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the operator log");
        let child = Command::new(operator_binary())
            .arg("run")
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            // Topology labels are node-wide and outlive a stopped operator; the operator's tests
            // of them release theirs (operator/tests/topology.rs). The chart's grant for them
            // is checked with `auth can-i`.
            .arg("--topology-labels=false")
            .args(extra_args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", operator_binary().display()));
        let process = Self {
            child,
            metrics_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let url = format!("{}/readyz", process.metrics_url);
        poll(
            "the operator to answer /readyz",
            Duration::from_secs(60),
            || {
                process.assert_alive();
                http_get(&url)
            },
        );
        process
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&self) {
        assert!(
            process::is_running(self.child.id()),
            "the operator exited; its log:\n{}",
            self.logs()
        );
    }

    pub fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.metrics_url)).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        // SIGTERM lets it release the Lease; it is our own child, stopped by its pid.
        let _ = process::kill_blocking(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET over loopback (no TLS), Ok(body) on 2xx.
pub fn http_get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    use std::io::Read;
    let mut stream =
        std::net::TcpStream::connect(host).map_err(|e| format!("connecting to {host}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
    )
    .map_err(|e| format!("writing to {host}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading from {url}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(body.to_string())
    } else {
        Err(format!("GET {url}: {head}"))
    }
}

/// A token kubeconfig for a ServiceAccount, through a legacy token Secret (1.20 has no
/// TokenRequest in kubectl); the tokens controller of the stack's controller-manager fills it.
pub fn service_account_kubeconfig(cluster: &Cluster, namespace: &str, account: &str, path: &Path) {
    let secret = format!("{account}-test-token");
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret,
            "namespace": namespace,
            "annotations": {"kubernetes.io/service-account.name": account},
        },
        "type": "kubernetes.io/service-account-token",
    });
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&manifest.to_string()));
    let token_b64 = poll(
        "the tokens controller to fill the token Secret",
        Duration::from_secs(60),
        || {
            let out = run(
                cluster.kubectl([
                    "get",
                    "secret",
                    "-n",
                    namespace,
                    &secret,
                    "-o",
                    "jsonpath={.data.token}",
                ]),
                None,
            )?;
            if out.trim().is_empty() {
                Err("no token yet".into())
            } else {
                Ok(out)
            }
        },
    );
    let token = run(Command::new("base64").arg("-d"), Some(token_b64.trim()))
        .unwrap_or_else(|e| panic!("{e}"));
    let server = cluster
        .stack
        .get("KUBE_APISERVER_URL")
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = cluster
        .stack
        .get("KUBE_CA_FILE")
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stack", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "stack", "user": account, "namespace": namespace}}],
        "current-context": account,
    });
    std::fs::write(path, kubeconfig.to_string()).expect("writing the ServiceAccount kubeconfig");
}

/// `helm uninstall` at the end, even when an assertion failed.
pub struct Uninstall<'a> {
    pub cluster: &'a Cluster,
    pub release: String,
    pub namespace: String,
}

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        let out = run(
            self.cluster.helm([
                "uninstall",
                &self.release,
                "-n",
                &self.namespace,
                "--wait",
                "--timeout=60s",
            ]),
            None,
        );
        if let Err(e) = out {
            eprintln!("helm uninstall {}: {e}", self.release);
        }
    }
}
