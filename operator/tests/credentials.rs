//! vSphere credentials on the real stack (vcsim): a Secret pinned to its server is never sent
//! anywhere else, whatever the provider's `server` is edited to (a listener of the test's own
//! on loopback records every connection); an unpinned one follows the provider (the control
//! that the listener is reachable, and picked up as soon as the Secret changes); a refused login backs off and shows it in status; TLS
//! verification shows in status and as a metric.

mod common;
mod health_common;

use anyhow::{Context as _, Result};
use common::{eventually, Cluster};
use health_common::{apply_vsphere_provider, delete_provider};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use plumbline_crds::HypervisorProvider;
use plumbline_operator::clock::SystemClock;
use serde_json::json;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

async fn condition(admin: &Client, provider: &str, type_: &str) -> Option<Condition> {
    Api::<HypervisorProvider>::all(admin.clone())
        .get_status(provider)
        .await
        .ok()?
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
}

/// Waits for condition `type_` with `reason` for the provider's current generation.
async fn wait_condition(
    admin: &Client,
    provider: &str,
    type_: &str,
    reason: &str,
) -> Result<Condition> {
    let providers = Api::<HypervisorProvider>::all(admin.clone());
    eventually(
        &format!("{provider}: {type_} with reason {reason}"),
        || async {
            let generation = providers.get(provider).await.ok()?.metadata.generation;
            let c = condition(admin, provider, type_).await?;
            (c.reason == reason && c.observed_generation == generation).then_some(c)
        },
    )
    .await
}

/// A TCP listener on loopback that counts the connections this test process opens to it (a
/// TLS handshake, let alone a Login body, needs one). Operators of other tests on the shared
/// stack watch every provider too; their connections are told apart by the socket's owner.
async fn listener() -> Result<(u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)> {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = socket.local_addr()?.port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, peer)) = socket.accept().await {
            // The stream stays open while its owner is looked up (the client waits for the
            // server's TLS hello meanwhile).
            if opened_by_this_process(peer.port(), port) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            drop(stream);
        }
    });
    Ok((port, seen, task))
}

/// Whether the loopback connection from `client_port` to `server_port` is a socket of this
/// process: its inode (from /proc/net/tcp) is among this process's open file descriptors.
fn opened_by_this_process(client_port: u16, server_port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // Cannot tell: count it.
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| {
            addr.rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        };
        (fields.len() > 9
            && port(fields[1]) == Some(client_port)
            && port(fields[2]) == Some(server_port))
        .then(|| fields[9].to_string())
    });
    let Some(inode) = inode else { return true };
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(|fd| fd.ok())
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target.to_string_lossy() == wanted)
        })
        .unwrap_or(true)
}

async fn patch_secret(admin: &Client, namespace: &str, body: serde_json::Value) -> Result<()> {
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .patch("vcenter", &PatchParams::default(), &Patch::Merge(body))
        .await
        .context("patching the credentials Secret")?;
    Ok(())
}

async fn set_server(admin: &Client, provider: &str, server: &str) -> Result<()> {
    Api::<HypervisorProvider>::all(admin.clone())
        .patch(
            provider,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"vsphere": {"server": server}}})),
        )
        .await
        .context("editing the provider's server")?;
    Ok(())
}

#[tokio::test]
async fn a_pinned_secret_is_never_sent_to_an_edited_server() -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = Cluster::connect("credentials").await?;
    let admin = cluster.admin.clone();
    let ns = cluster.namespace.clone();
    let vcsim = stack.get("VSPHERE_URL")?;
    let provider = apply_vsphere_provider(&stack, &admin, &ns).await?;
    patch_secret(
        &admin,
        &ns,
        json!({"metadata": {"annotations": {"plumbline.dev/vsphere-server": vcsim}}}),
    )
    .await?;
    let (port, seen, task) = listener().await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;

    let result = async {
        wait_condition(&admin, &provider, "Connected", "Connected").await?;
        wait_condition(&admin, &provider, "CredentialsPinned", "Pinned").await?;
        wait_condition(&admin, &provider, "TlsVerified", "CaBundle").await?;

        // Someone who may edit providers points this one at their own listener.
        set_server(&admin, &provider, &format!("https://127.0.0.1:{port}/sdk")).await?;
        let refused = wait_condition(&admin, &provider, "Connected", "PinnedElsewhere").await?;
        assert!(
            refused.message.contains("no credentials are sent"),
            "{}",
            refused.message
        );
        // Past the refusal and a retry: still not a single connection.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(
            seen.load(Ordering::SeqCst),
            0,
            "the edited server was contacted"
        );

        // Control: without the pin the password follows the provider, so the listener is
        // reachable and would have seen the login.
        patch_secret(
            &admin,
            &ns,
            json!({"metadata": {"annotations": {"plumbline.dev/vsphere-server": null}}}),
        )
        .await?;
        eventually(
            "the unpinned Secret's provider to contact the listener",
            || async { (seen.load(Ordering::SeqCst) > 0).then_some(()) },
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    task.abort();
    delete_provider(&admin, &provider).await;
    operator.stop().await;
    cluster.cleanup().await;
    result
}

#[tokio::test]
async fn a_wrong_password_backs_off_and_insecure_tls_shows() -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let cluster = Cluster::connect("credentials_backoff").await?;
    let admin = cluster.admin.clone();
    let ns = cluster.namespace.clone();
    let provider = apply_vsphere_provider(&stack, &admin, &ns).await?;
    patch_secret(&admin, &ns, json!({"stringData": {"password": "wrong"}})).await?;
    // Skip verification instead of the CA bundle: shown in status and as a metric.
    Api::<HypervisorProvider>::all(admin.clone())
        .patch(
            &provider,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"vsphere": {"caBundle": null, "insecureSkipVerify": true}}}),
            ),
        )
        .await?;
    let operator = cluster.start_operator(Arc::new(SystemClock)).await?;
    let metrics_url = format!("http://{}/metrics", operator.http_addr);

    // Metrics are this process's own: other tests' operators on the shared stack watch the
    // same provider and write its status too, so the counts are read from here.
    let metric = |name: String| {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
        }
    };
    let failures = format!("plumbline_provider_auth_failures_total{{provider=\"{provider}\"}}");
    let insecure = format!("plumbline_provider_tls_insecure{{provider=\"{provider}\"}}");
    let connected = format!("plumbline_provider_connected{{provider=\"{provider}\"}}");

    let result = async {
        let refused =
            wait_condition(&admin, &provider, "Connected", "AuthenticationFailed").await?;
        assert!(
            refused.message.contains("next login in"),
            "{}",
            refused.message
        );
        wait_condition(&admin, &provider, "TlsVerified", "InsecureSkipVerify").await?;
        eventually("this operator's first refused login", || async {
            (metric(failures.clone()).await? >= 1.0).then_some(())
        })
        .await?;
        assert_eq!(metric(insecure.clone()).await, Some(1.0), "{insecure}");
        // The provider samples every second, and connection failures used to be retried after
        // 1 s, 2 s, 4 s …: a refused login now waits 30 s, so no second one comes meanwhile.
        tokio::time::sleep(std::time::Duration::from_secs(8)).await;
        assert_eq!(metric(failures.clone()).await, Some(1.0), "{failures}");

        // Fixing the Secret ends the wait (checked every 5 s), not after 30 s … 1 h.
        patch_secret(
            &admin,
            &ns,
            json!({"stringData": {"password": stack.get("VSPHERE_PASSWORD")?}}),
        )
        .await?;
        eventually("this operator connected with the fixed Secret", || async {
            (metric(connected.clone()).await? == 1.0).then_some(())
        })
        .await?;
        assert_eq!(metric(failures.clone()).await, Some(1.0), "{failures}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    delete_provider(&admin, &provider).await;
    operator.stop().await;
    cluster.cleanup().await;
    result
}
