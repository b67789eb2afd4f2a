//! `plumbline recover` on the real stack: a change recorded on a guest whose InfraChange is
//! lost is reported by `--dry-run` without being touched, then restored to its original with
//! the record forgotten; a change an InfraChange still holds is left to it.
//!
//! The changes are made through the libvirt adapter directly, exactly as the operator's
//! actuator makes them (the original is recorded on the guest first), and no InfraChange is
//! written for the lost one. Needs `e2e/stack up`; fails saying so otherwise. Build with
//! `--features libvirt`.

mod common;
mod health_common;

use anyhow::{bail, ensure, Context as _, Result};
use health_common::*;
use kube::{
    api::{DeleteParams, PostParams},
    Api,
};
use plumbline_adapters::{
    DiskLimit, Hypervisor, HypervisorConfig, LibvirtConfig, Setting, Tunable, VmId,
};
use plumbline_crds::{ChangePurpose, ChangeTarget, InfraChange, InfraChangeSpec};
use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
    task::JoinHandle,
};

const LOST_LIMIT: u64 = 333;
const HELD_LIMIT: u64 = 444;

fn iops() -> Tunable {
    Tunable::DiskLimit {
        disk: "vda".into(),
        limit: DiskLimit::TotalIops,
    }
}

/// A guest of the stack as the adapter knows it, and its limit before the test.
struct Guest {
    name: String,
    id: VmId,
    before: u64,
}

struct Scene {
    stack: plumbline_e2e::Stack,
    uri: String,
    cluster: common::Cluster,
    provider: String,
    hv: Arc<dyn Hypervisor>,
    /// Its change has no InfraChange.
    lost: Guest,
    /// Its change has one.
    held: Guest,
    held_change: String,
}

/// `plumbline recover --provider NAME [--dry-run]` as the stack's admin: (success, stdout,
/// stderr).
async fn recover(scene: &Scene, dry_run: bool) -> Result<(bool, String, String)> {
    recover_with(scene, Path::new(scene.stack.get("KUBECONFIG")?), dry_run).await
}

/// The same with this kubeconfig.
async fn recover_with(
    scene: &Scene,
    kubeconfig: &Path,
    dry_run: bool,
) -> Result<(bool, String, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plumbline"));
    command
        .args(["recover", "--provider", &scene.provider])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn");
    if dry_run {
        command.arg("--dry-run");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .await
        .context("running plumbline recover")?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    println!(
        "$ plumbline recover --provider {} {}\n{stdout}{stderr}",
        scene.provider,
        if dry_run { "--dry-run" } else { "" }
    );
    Ok((status.success(), stdout, stderr))
}

/// The output line about the guest's `disk.vda.total_iops_sec` record.
fn line_about<'a>(stdout: &'a str, guest: &Guest) -> Result<&'a str> {
    let start = format!("VM {} ({}) disk.vda.total_iops_sec:", guest.name, guest.id);
    stdout
        .lines()
        .find(|l| l.starts_with(&start))
        .with_context(|| format!("no line starting {start:?} in:\n{stdout}"))
}

/// (current limit as virsh reports it, original recorded on the guest).
async fn state_of(scene: &Scene, guest: &Guest) -> Result<(u64, Option<u64>)> {
    let limit = total_iops_limit(&scene.uri, &guest.name).await?;
    let recorded = scene.hv.tunables(&guest.id).await?.original(&iops());
    Ok((limit, recorded))
}

/// "0 (unlimited)" for 0, as recover prints a limit.
fn shown(limit: u64) -> String {
    if limit == 0 {
        "0 (unlimited)".into()
    } else {
        limit.to_string()
    }
}

impl Scene {
    async fn start() -> Result<Self> {
        let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
        let uri = stack.libvirt_uri()?.to_string();
        let noisy = stack.noisy_domain()?.to_string();
        // Not pl-vm2: other tests slow it down as their victim.
        let second = stack
            .libvirt_domains()?
            .into_iter()
            .find(|d| *d != noisy && d != "pl-vm2")
            .context("the stack has no second guest")?;
        let hv = plumbline_adapters::connect(HypervisorConfig::Libvirt(LibvirtConfig {
            uri: uri.clone(),
        }))
        .await
        .with_context(|| format!("connecting to {uri}"))?;
        let inventory = hv.inventory().await?;
        let mut guests = Vec::new();
        for name in [&noisy, &second] {
            let vm = inventory
                .iter()
                .find(|vm| &vm.name == name)
                .with_context(|| format!("guest {name} is not in the inventory of {uri}"))?;
            let report = hv.tunables(&vm.id).await?;
            if let Some(original) = report.original(&iops()) {
                bail!(
                    "guest {name} already carries a recorded original ({original}) of \
                     disk.vda.total_iops_sec: another test is changing it, or one left it behind"
                );
            }
            guests.push(Guest {
                name: name.clone(),
                id: vm.id.clone(),
                before: total_iops_limit(&uri, name).await?,
            });
        }
        let held = guests.pop().expect("two guests");
        let lost = guests.pop().expect("two guests");
        let cluster = common::Cluster::connect("recover").await?;
        let provider = apply_libvirt_provider(&cluster.admin, &cluster.namespace, &uri).await?;
        let held_change = InfraChange::name_for(
            &ChangeTarget::vm(&provider, held.id.as_str(), &held.name),
            &iops().to_string(),
        );
        Ok(Self {
            stack,
            uri,
            cluster,
            provider,
            hv,
            lost,
            held,
            held_change,
        })
    }

    /// An InfraChange for the held guest's limit, as the operator scoped to the test's
    /// namespace would have written it, but without a finalizer so it can go freely.
    async fn hold(&self) -> Result<()> {
        let spec = InfraChangeSpec {
            target: ChangeTarget::vm(&self.provider, self.held.id.as_str(), &self.held.name),
            setting: iops().to_string(),
            desired: HELD_LIMIT.to_string(),
            purpose: ChangePurpose::NeighbourThrottle,
            owners: vec![],
            operator: format!("namespace/{}", self.cluster.namespace),
            throttle: None,
            relocation: None,
        };
        Api::<InfraChange>::all(self.cluster.admin.clone())
            .create(
                &PostParams::default(),
                &InfraChange::new(&self.held_change, spec),
            )
            .await
            .with_context(|| {
                format!(
                    "creating InfraChange {} (it exists when another test holds that setting)",
                    self.held_change
                )
            })?;
        Ok(())
    }

    /// Both changes in force, as the actuator makes them: the adapter records the original,
    /// then changes the limit. Only the held one gets an InfraChange.
    async fn change_both(&self) -> Result<()> {
        self.hv
            .apply(&self.lost.id, &[Setting::new(iops(), LOST_LIMIT)])
            .await?;
        self.hv
            .apply(&self.held.id, &[Setting::new(iops(), HELD_LIMIT)])
            .await?;
        self.hold().await?;
        ensure!(
            state_of(self, &self.lost).await? == (LOST_LIMIT, Some(self.lost.before))
                && state_of(self, &self.held).await? == (HELD_LIMIT, Some(self.held.before)),
            "both changes are in force and recorded"
        );
        Ok(())
    }

    /// Fails when a dry run would restore anything on guests other than `ours`: the guests
    /// are shared, and a test must never restore what another one holds.
    fn only_ours(&self, dry_run_out: &str, ours: &[&Guest]) -> Result<()> {
        let others: Vec<&str> = dry_run_out
            .lines()
            .filter(|l| {
                l.ends_with("would restore")
                    && !ours
                        .iter()
                        .any(|g| l.starts_with(&format!("VM {} ", g.name)))
            })
            .collect();
        ensure!(
            others.is_empty(),
            "other lost changes on the stack's guests (another test is changing them, or one \
             left them behind); not restoring them from this test: {others:?}"
        );
        Ok(())
    }

    /// Leaves the guests and the cluster as they were, whatever happened.
    async fn finish(self, result: Result<()>) -> Result<()> {
        let mut restored = Ok(());
        for guest in [&self.lost, &self.held] {
            let _ = self.hv.revert(&guest.id, &[iops()]).await;
            // Without a record (recover ran, or the test failed half-way), set it by hand.
            match total_iops_limit(&self.uri, &guest.name).await {
                Ok(l) if l == guest.before => {}
                _ => {
                    if let Err(e) = set_total_iops_limit(&self.uri, &guest.name, guest.before).await
                    {
                        restored =
                            Err(anyhow::Error::new(e).context(format!("restoring {}", guest.name)));
                    }
                }
            }
        }
        let _ = Api::<InfraChange>::all(self.cluster.admin.clone())
            .delete(&self.held_change, &DeleteParams::default())
            .await;
        delete_provider(&self.cluster.admin, &self.provider).await;
        let _ = self.hv.close().await;
        self.cluster.cleanup().await;
        result.and(restored)
    }
}

#[tokio::test]
async fn serial_recover_restores_a_change_whose_infrachange_is_lost_and_leaves_a_held_one(
) -> Result<()> {
    let scene = Scene::start().await?;
    let result = async {
        let (lost, held) = (&scene.lost, &scene.held);
        scene.change_both().await?;

        // A dry run reports both and changes nothing.
        let (ok, out, err) = recover(&scene, true).await?;
        ensure!(ok, "the dry run succeeds: {out}{err}");
        let line = line_about(&out, lost)?;
        ensure!(
            line.ends_with(&format!(
                "current {LOST_LIMIT}, original {}: no InfraChange: would restore",
                shown(lost.before)
            )),
            "the lost change, its value and original: {line}"
        );
        let line = line_about(&out, held)?;
        ensure!(
            line.contains(&format!(
                "current {HELD_LIMIT}, original {}",
                shown(held.before)
            )) && line.contains(&format!("left to InfraChange {} (", scene.held_change))
                && line
                    .contains("(it has no finalizer: deleting it will not restore the original)"),
            "the held change is left to its object, which will not restore it: {line}"
        );
        ensure!(
            out.lines().any(|l| l.starts_with(&format!(
                "Summary for HypervisorProvider {}:",
                scene.provider
            )) && l.ends_with("(dry run: nothing was changed)")),
            "a summary: {out}"
        );
        scene.only_ours(&out, &[lost])?;
        ensure!(
            state_of(&scene, lost).await? == (LOST_LIMIT, Some(lost.before)),
            "the dry run changed nothing on {}",
            lost.name
        );
        ensure!(
            state_of(&scene, held).await? == (HELD_LIMIT, Some(held.before)),
            "the dry run changed nothing on {}",
            held.name
        );

        // For real: the lost one is restored and forgotten, the held one stays.
        let (ok, out, err) = recover(&scene, false).await?;
        ensure!(ok, "recover succeeds: {out}{err}");
        let line = line_about(&out, lost)?;
        ensure!(
            line.ends_with(&format!(
                "no InfraChange: restored to {}",
                shown(lost.before)
            )),
            "the lost change is restored: {line}"
        );
        ensure!(
            line_about(&out, held)?.contains(&format!("left to InfraChange {}", scene.held_change)),
            "the held change is left alone: {out}"
        );
        ensure!(
            state_of(&scene, lost).await? == (lost.before, None),
            "{} has its original back and no record",
            lost.name
        );
        ensure!(
            state_of(&scene, held).await? == (HELD_LIMIT, Some(held.before)),
            "{} keeps its change and its record",
            held.name
        );

        // Nothing is left to do a second time.
        let (ok, out, err) = recover(&scene, false).await?;
        ensure!(ok, "a second run succeeds: {out}{err}");
        ensure!(
            line_about(&out, lost).is_err(),
            "nothing more about {}: {out}",
            lost.name
        );
        Ok(())
    }
    .await;
    scene.finish(result).await
}

/// The stack's API server as it looks once the InfraChange CRD is deleted: a plain-HTTP shim
/// on loopback that forwards GETs (all `recover` sends) with the caller's token, answers 404
/// for infrachanges and leaves them out of discovery. Deleting the real CRD would take every
/// other test's InfraChanges with it.
struct WithoutInfraChanges {
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    server: JoinHandle<()>,
}

impl Drop for WithoutInfraChanges {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn without_infrachanges(stack: &plumbline_e2e::Stack) -> Result<WithoutInfraChanges> {
    let upstream = stack.apiserver_url()?.to_string();
    let ca = std::fs::read(stack.get("KUBE_CA_FILE")?).context("reading the API server's CA")?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (http, upstream) = (http.clone(), upstream.clone());
            tokio::spawn(async move {
                if let Err(e) = shim_one(socket, &http, &upstream).await {
                    eprintln!("shim: {e:#}");
                }
            });
        }
    });
    // The admin kubeconfig (its token), pointed at the shim.
    let path = stack.get("KUBECONFIG")?;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).context("reading the kubeconfig")?)?;
    for cluster in config["clusters"]
        .as_sequence_mut()
        .context("the kubeconfig has no clusters")?
    {
        let cluster = cluster["cluster"]
            .as_mapping_mut()
            .context("a kubeconfig cluster without settings")?;
        cluster.insert("server".into(), format!("http://{addr}").into());
        cluster.remove("certificate-authority-data");
        cluster.remove("certificate-authority");
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config)?)?;
    Ok(WithoutInfraChanges {
        _dir: dir,
        kubeconfig,
        server,
    })
}

/// Answers one request on the connection, then closes it.
async fn shim_one(socket: TcpStream, http: &reqwest::Client, upstream: &str) -> Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let request = lines.next_line().await?.context("no request line")?;
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let mut headers = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" {
        (
            405,
            "text/plain".to_string(),
            b"the shim forwards GETs only\n".to_vec(),
        )
    } else if path.split('/').any(|segment| segment == "infrachanges") {
        (
            404,
            "text/plain".to_string(),
            b"404 page not found\n".to_vec(),
        )
    } else {
        let mut forwarded = http.get(format!("{upstream}{target}"));
        for (k, v) in &headers {
            if k == "authorization" || k == "accept" {
                forwarded = forwarded.header(k.as_str(), v.as_str());
            }
        }
        let answer = forwarded.send().await?;
        let status = answer.status().as_u16();
        let content_type = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let mut body = answer.bytes().await?.to_vec();
        if status == 200 && path.starts_with("/apis/plumbline.dev/") {
            let mut doc: serde_json::Value = serde_json::from_slice(&body)?;
            if let Some(resources) = doc.get_mut("resources").and_then(|r| r.as_array_mut()) {
                resources.retain(|r| {
                    !r["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("infrachanges"))
                });
                body = serde_json::to_vec(&doc)?;
            }
        }
        (status, content_type, body)
    };
    let head = format!(
        "HTTP/1.1 {status} -\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(&body).await?;
    write.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn serial_recover_restores_every_recorded_change_once_the_infrachange_crd_is_gone(
) -> Result<()> {
    let scene = Scene::start().await?;
    let result = async {
        let (lost, held) = (&scene.lost, &scene.held);
        // The held one has its object in the real API; the shim hides it with the CRD.
        scene.change_both().await?;
        let gone = without_infrachanges(&scene.stack).await?;

        let (ok, out, err) = recover_with(&scene, &gone.kubeconfig, true).await?;
        ensure!(ok, "the dry run succeeds: {out}{err}");
        ensure!(
            out.contains("The InfraChange CRD (infrachanges.plumbline.dev) is not installed"),
            "says the CRD is gone: {out}"
        );
        for (guest, limit) in [(lost, LOST_LIMIT), (held, HELD_LIMIT)] {
            let line = line_about(&out, guest)?;
            ensure!(
                line.ends_with(&format!(
                    "current {limit}, original {}: no InfraChange: would restore",
                    shown(guest.before)
                )),
                "without the CRD every record is lost: {line}"
            );
        }
        scene.only_ours(&out, &[lost, held])?;
        ensure!(
            state_of(&scene, lost).await? == (LOST_LIMIT, Some(lost.before))
                && state_of(&scene, held).await? == (HELD_LIMIT, Some(held.before)),
            "the dry run changed nothing"
        );

        let (ok, out, err) = recover_with(&scene, &gone.kubeconfig, false).await?;
        ensure!(ok, "recover succeeds: {out}{err}");
        for guest in [lost, held] {
            let line = line_about(&out, guest)?;
            ensure!(
                line.ends_with(&format!(
                    "no InfraChange: restored to {}",
                    shown(guest.before)
                )),
                "restored: {line}"
            );
            ensure!(
                state_of(&scene, guest).await? == (guest.before, None),
                "{} has its original back and no record",
                guest.name
            );
        }
        Ok(())
    }
    .await;
    scene.finish(result).await
}
