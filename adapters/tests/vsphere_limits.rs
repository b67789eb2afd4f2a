//! The vSphere adapter against a hostile endpoint of the test's own: a TLS listener on
//! loopback that speaks just enough vim25 to log in, then answers the inventory with an
//! endless page token, a body nested far too deep, or a body that never ends. Each gets its
//! own clear error, and the adapter keeps working afterwards. Needs `openssl` (installed by
//! `e2e/stack`) to make the listener's certificate; nothing else.

use std::{
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use plumbline_adapters::{
    connect, vsphere::MAX_PROPERTY_PAGES, vsphere::MAX_RESPONSE_BYTES, Error, Hypervisor,
    HypervisorConfig, Secret, TlsTrust, VSphereConfig, MAX_XML_DEPTH,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    TlsAcceptor,
};

/// What the endpoint answers to the inventory's `RetrievePropertiesEx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inventory {
    /// One empty page, as a vCenter without VMs answers.
    Empty,
    /// A page with a token, and another for every continuation: never the last page.
    EndlessPages,
    /// A well-formed body whose elements nest 20,000 levels deep.
    TooDeep,
    /// A chunked body that goes on until the client hangs up (at most twice the limit).
    EndlessBody,
    /// A `Content-Length` beyond the limit.
    HugeLength,
}

struct Endpoint {
    mode: Mutex<Inventory>,
    continuations: AtomicUsize,
    body_bytes_sent: AtomicUsize,
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with `openssl` as the stack does
/// for its simulator; returns (CA PEM, certificate PEM, key PEM).
fn certificates(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("running openssl {args:?} (install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=plumbline-limits-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (read("ca.pem"), read("server.pem"), read("server.key"))
}

const SERVICE_CONTENT: &str = r#"<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><viewManager type="ViewManager">ViewManager</viewManager><sessionManager type="SessionManager">SessionManager</sessionManager><perfManager type="PerformanceManager">PerfMgr</perfManager></returnval></RetrieveServiceContentResponse>"#;

const PERF_COUNTERS: &str = r#"<RetrievePropertiesExResponse xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><returnval><objects><obj type="PerformanceManager">PerfMgr</obj><propSet><name>perfCounter</name><val xsi:type="ArrayOfPerfCounterInfo"><PerfCounterInfo><key>100</key><nameInfo><key>totalReadLatency</key></nameInfo><groupInfo><key>virtualDisk</key></groupInfo><rollupType>average</rollupType></PerfCounterInfo><PerfCounterInfo><key>101</key><nameInfo><key>totalWriteLatency</key></nameInfo><groupInfo><key>virtualDisk</key></groupInfo><rollupType>average</rollupType></PerfCounterInfo></val></propSet></objects></returnval></RetrievePropertiesExResponse>"#;

const PAGE_WITH_TOKEN: &str = r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><token>again</token><objects><obj type="HostSystem">host-1</obj><propSet><name>name</name><val>esx-1</val></propSet></objects></returnval></RetrievePropertiesExResponse>"#;

fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
    )
}

fn ok(body: &str, extra_headers: &str) -> Vec<u8> {
    let xml = envelope(body);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n{extra_headers}\r\n{xml}",
        xml.len()
    )
    .into_bytes()
}

/// Reads one request (headers and a `Content-Length` body); `None` when the client is gone.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                buf.drain(..end + 4 + length);
                return Some(body);
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Endpoint {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut buf = Vec::new();
        while let Some(request) = read_request(&mut stream, &mut buf).await {
            let mode = *self.mode.lock().unwrap();
            let method = [
                "RetrieveServiceContent",
                "Login",
                "CreateContainerView",
                "DestroyView",
                "ContinueRetrievePropertiesEx",
                "RetrievePropertiesEx",
                "Logout",
            ]
            .into_iter()
            .find(|m| request.contains(&format!("<{m} ")) || request.contains(&format!("<{m}>")))
            .unwrap_or("unknown");
            let response = match method {
                "RetrieveServiceContent" => ok(SERVICE_CONTENT, ""),
                "Login" => ok(
                    r#"<LoginResponse xmlns="urn:vim25"><returnval><key>session-1</key><userName>user</userName></returnval></LoginResponse>"#,
                    "Set-Cookie: vmware_soap_session=\"c00k1e\"; Path=/; HttpOnly; Secure\r\n",
                ),
                "CreateContainerView" => ok(
                    r#"<CreateContainerViewResponse xmlns="urn:vim25"><returnval type="ContainerView">session[1]view-1</returnval></CreateContainerViewResponse>"#,
                    "",
                ),
                "DestroyView" | "Logout" => {
                    ok(&format!("<{method}Response xmlns=\"urn:vim25\"/>"), "")
                }
                "RetrievePropertiesEx" if request.contains("PerformanceManager") => {
                    ok(PERF_COUNTERS, "")
                }
                "RetrievePropertiesEx" => match mode {
                    Inventory::Empty => {
                        ok(r#"<RetrievePropertiesExResponse xmlns="urn:vim25"/>"#, "")
                    }
                    Inventory::EndlessPages => ok(PAGE_WITH_TOKEN, ""),
                    Inventory::TooDeep => {
                        let levels = 20_000;
                        let deep = format!(
                            "<RetrievePropertiesExResponse xmlns=\"urn:vim25\"><returnval>{}{}</returnval></RetrievePropertiesExResponse>",
                            "<objects>".repeat(levels),
                            "</objects>".repeat(levels)
                        );
                        ok(&deep, "")
                    }
                    Inventory::EndlessBody => {
                        self.endless_body(&mut stream).await;
                        return;
                    }
                    Inventory::HugeLength => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{}",
                            MAX_RESPONSE_BYTES + 1,
                            envelope("").split("</soapenv:Body>").next().unwrap()
                        );
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.flush().await;
                        // Wait for the client to hang up without sending the rest.
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                },
                "ContinueRetrievePropertiesEx" => {
                    self.continuations.fetch_add(1, Ordering::SeqCst);
                    ok(
                        &PAGE_WITH_TOKEN.replace(
                            "RetrievePropertiesExResponse",
                            "ContinueRetrievePropertiesExResponse",
                        ),
                        "",
                    )
                }
                other => panic!("the test endpoint got an unexpected call {other}: {request}"),
            };
            if stream.write_all(&response).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }

    /// Chunks of open elements until the client hangs up, or at most twice the body limit,
    /// so the test's traffic is bounded whatever the client does.
    async fn endless_body<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let payload = "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>"
            .to_string()
            + &"<item>0123456789abcdef</item>".repeat(2048);
        let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
        while self.body_bytes_sent.load(Ordering::SeqCst) < 2 * MAX_RESPONSE_BYTES as usize {
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            self.body_bytes_sent
                .fetch_add(payload.len(), Ordering::SeqCst);
        }
    }
}

struct Fixture {
    endpoint: Arc<Endpoint>,
    url: String,
    ca: Vec<u8>,
    accept: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn hostile_endpoint() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/sdk", listener.local_addr().unwrap());
    let endpoint = Arc::new(Endpoint {
        mode: Mutex::new(Inventory::Empty),
        continuations: AtomicUsize::new(0),
        body_bytes_sent: AtomicUsize::new(0),
    });
    let serving = endpoint.clone();
    let accept = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let endpoint = serving.clone();
            connections.spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    endpoint.serve(tls).await;
                }
            });
        }
    });
    Fixture {
        endpoint,
        url,
        ca,
        accept,
        _dir: dir,
    }
}

async fn connected(f: &Fixture) -> Arc<dyn Hypervisor> {
    connect(HypervisorConfig::VSphere(VSphereConfig {
        url: f.url.clone(),
        username: "user".into(),
        password: Secret::new("secret"),
        tls: TlsTrust::CaPem(f.ca.clone()),
    }))
    .await
    .unwrap_or_else(|e| panic!("connecting to the test endpoint {}: {e}", f.url))
}

/// After a refused answer the adapter still lists an (empty) inventory.
async fn still_works(f: &Fixture, hv: &Arc<dyn Hypervisor>) {
    *f.endpoint.mode.lock().unwrap() = Inventory::Empty;
    let vms = hv.inventory().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(vms.is_empty(), "{vms:?}");
}

#[tokio::test]
async fn an_endless_page_token_ends_after_the_page_limit() {
    let f = hostile_endpoint().await;
    let hv = connected(&f).await;
    *f.endpoint.mode.lock().unwrap() = Inventory::EndlessPages;
    let err = hv.inventory().await.unwrap_err();
    assert!(
        matches!(&err, Error::TooManyPages { limit, url, action }
            if *limit == MAX_PROPERTY_PAGES && url == &f.url && action == "retrieving the inventory"),
        "{err:?}"
    );
    assert_eq!(
        f.endpoint.continuations.load(Ordering::SeqCst),
        MAX_PROPERTY_PAGES - 1,
        "the first page and {} continuations were fetched",
        MAX_PROPERTY_PAGES - 1
    );
    assert_eq!(err.kind(), "limit");
    assert!(
        err.to_string().contains("still had more after 1000 pages"),
        "{err}"
    );
    still_works(&f, &hv).await;
}

#[tokio::test]
async fn an_over_deep_body_is_refused_by_name() {
    let f = hostile_endpoint().await;
    let hv = connected(&f).await;
    *f.endpoint.mode.lock().unwrap() = Inventory::TooDeep;
    let err = hv.inventory().await.unwrap_err();
    assert!(
        matches!(&err, Error::ResponseTooDeep { limit, url, action }
            if *limit == MAX_XML_DEPTH && url == &f.url && action == "retrieving the inventory"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("nests elements deeper than 128 levels"),
        "{err}"
    );
    still_works(&f, &hv).await;
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_size_limit() {
    let f = hostile_endpoint().await;
    let hv = connected(&f).await;
    *f.endpoint.mode.lock().unwrap() = Inventory::EndlessBody;
    let err = hv.inventory().await.unwrap_err();
    assert!(
        matches!(&err, Error::ResponseTooLarge { limit, url, action }
            if *limit == MAX_RESPONSE_BYTES && url == &f.url && action == "retrieving the inventory"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("larger than the 67108864-byte limit"),
        "{err}"
    );
    let sent = f.endpoint.body_bytes_sent.load(Ordering::SeqCst);
    assert!(
        sent < 2 * MAX_RESPONSE_BYTES as usize,
        "the client stopped reading ({sent} bytes sent) before the endpoint's own bound"
    );
    still_works(&f, &hv).await;
}

#[tokio::test]
async fn a_content_length_beyond_the_limit_is_refused_before_reading() {
    let f = hostile_endpoint().await;
    let hv = connected(&f).await;
    *f.endpoint.mode.lock().unwrap() = Inventory::HugeLength;
    let err = hv.inventory().await.unwrap_err();
    assert!(
        matches!(&err, Error::ResponseTooLarge { limit, .. } if *limit == MAX_RESPONSE_BYTES),
        "{err:?}"
    );
    still_works(&f, &hv).await;
}
