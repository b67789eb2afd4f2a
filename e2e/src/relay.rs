//! A relay of the tests' own between an operator and the API server, for faults the API
//! server cannot be asked to produce on a shared stack: a partition (the relay blackholes
//! every byte, both ways, on open and new connections) and a 429 storm (the relay answers every
//! request with `429 Too Many Requests`).
//!
//! The operator talks plain HTTP to the relay on loopback (its kubeconfig is rewritten by
//! [`ApiRelay::kubeconfig`], bearer token included); the relay talks TLS to the API server,
//! verifying it with the stack's CA. That is what lets it speak HTTP for the storm.

use anyhow::{bail, Context as _, Result};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
    },
    TlsConnector,
};

/// What the relay does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relays both ways.
    Pass,
    /// Relays nothing and answers nothing; connections stay open (a partition, not a reset).
    Blackhole,
    /// Answers every request `429 Too Many Requests` (Retry-After: 1) and relays nothing.
    TooManyRequests,
}

#[derive(Default)]
struct Counters {
    relayed_connections: AtomicU64,
    rejected_requests: AtomicU64,
}

pub struct ApiRelay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl ApiRelay {
    /// Listens on a free loopback port and relays to `upstream` (host:port), trusting `ca_pem`.
    pub async fn start(upstream: SocketAddr, ca_pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.context("the CA PEM")?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = TlsConnector::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(
                    client,
                    upstream,
                    tls.clone(),
                    mode_rx.clone(),
                    c.clone(),
                ));
            }
        });
        Ok(Self {
            addr,
            mode,
            counters,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// How many requests were answered 429.
    pub fn rejected(&self) -> u64 {
        self.counters.rejected_requests.load(Ordering::SeqCst)
    }

    /// How many connections were relayed to the API server.
    pub fn relayed(&self) -> u64 {
        self.counters.relayed_connections.load(Ordering::SeqCst)
    }

    /// Writes a copy of the kubeconfig at `original` whose clusters point at this relay.
    pub fn kubeconfig(&self, original: &Path, out: &Path) -> Result<()> {
        rewrite_kubeconfig(original, out, |cluster| {
            cluster["server"] = serde_json::Value::String(self.url());
            if let Some(o) = cluster.as_object_mut() {
                o.remove("certificate-authority-data");
                o.remove("certificate-authority");
            }
        })
    }
}

/// Copies the kubeconfig at `original` to `out`, with `edit` applied to each cluster entry.
pub fn rewrite_kubeconfig(
    original: &Path,
    out: &Path,
    edit: impl Fn(&mut serde_json::Value),
) -> Result<()> {
    let text = std::fs::read_to_string(original)
        .with_context(|| format!("reading {}", original.display()))?;
    let mut config: serde_json::Value = kubeconfig_as_json(&text)?;
    let Some(clusters) = config["clusters"].as_array_mut() else {
        bail!("no clusters in {}", original.display());
    };
    for c in clusters {
        edit(&mut c["cluster"]);
    }
    std::fs::write(out, serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

/// Kubeconfigs are YAML; kube's own types read them (JSON is YAML, so the copy is written as
/// JSON and kube reads it back).
fn kubeconfig_as_json(text: &str) -> Result<serde_json::Value> {
    let config: kube::config::Kubeconfig =
        kube::config::Kubeconfig::from_yaml(text).context("parsing the kubeconfig")?;
    Ok(serde_json::to_value(config)?)
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections see the channel close and end.
        self.mode.send_replace(Mode::Blackhole);
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    tls: TlsConnector,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let now = *mode.borrow_and_update();
    match now {
        Mode::Blackhole => {
            // Hold the connection, answer nothing, until the partition heals; then close it.
            let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
        }
        Mode::TooManyRequests => reject(&mut client, &mut mode, &counters).await,
        Mode::Pass => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let name = ServerName::IpAddress(upstream.ip().into());
            let Ok(mut server) = tls.connect(name, server).await else {
                return;
            };
            counters.relayed_connections.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                r = mode.wait_for(|m| *m != Mode::Pass) => if r.is_err() { return },
            }
            if *mode.borrow() == Mode::Blackhole {
                // Both sockets stay open and silent: requests in flight never get an answer.
                let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
            }
            // A storm (or a healed partition) drops the connection; the client reconnects.
        }
    }
}

/// Answers each request on this connection 429 until the storm ends.
async fn reject(client: &mut TcpStream, mode: &mut watch::Receiver<Mode>, counters: &Counters) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // One request head, then its body (Content-Length), discarded.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::select! {
                r = client.read(&mut chunk) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = mode.wait_for(|m| *m != Mode::TooManyRequests) => return,
            };
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"storm from the test relay","reason":"TooManyRequests","details":{"retryAfterSeconds":1},"code":429}"#;
        let response = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        counters.rejected_requests.fetch_add(1, Ordering::SeqCst);
        if client.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
