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
use std::{process::Output, sync::Arc};
use tokio::process::Command;

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
    let mut command = Command::new(env!("CARGO_BIN_EXE_plumbline"));
    command
        .args(["recover", "--provider", &scene.provider])
        .env("KUBECONFIG", scene.stack.get("KUBECONFIG")?)
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

    /// Leaves the guests and the cluster as they were, whatever happened.
    async fn finish(self, result: Result<()>) -> Result<()> {
        let mut restored = Ok(());
        for guest in [&self.lost, &self.held] {
            let _ = self.hv.revert(&guest.id, &[iops()]).await;
            // Without a record (recover ran, or the test failed half-way), set it by hand.
            match total_iops_limit(&self.uri, &guest.name).await {
                Ok(l) if l == guest.before => {}
                _ => {
                    if let Err(e) = set_limit(&self.uri, &guest.name, guest.before).await {
                        restored = Err(e.context(format!("restoring {}", guest.name)));
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

async fn set_limit(uri: &str, domain: &str, iops: u64) -> Result<()> {
    let out = Command::new("virsh")
        .args(["-q", "-c", uri, "blkdeviotune", domain, "vda"])
        .args(["--total-iops-sec", &iops.to_string(), "--live"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "virsh blkdeviotune {domain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn serial_recover_restores_a_change_whose_infrachange_is_lost_and_leaves_a_held_one(
) -> Result<()> {
    let scene = Scene::start().await?;
    let result = async {
        let (lost, held) = (&scene.lost, &scene.held);
        // What the actuator does: the adapter records the original, then changes the limit.
        scene
            .hv
            .apply(&lost.id, &[Setting::new(iops(), LOST_LIMIT)])
            .await?;
        scene
            .hv
            .apply(&held.id, &[Setting::new(iops(), HELD_LIMIT)])
            .await?;
        scene.hold().await?;
        ensure!(
            state_of(&scene, lost).await? == (LOST_LIMIT, Some(lost.before)),
            "the lost change is in force and recorded"
        );

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
                && line.contains("no finalizer"),
            "the held change is left to its object, which will not restore it: {line}"
        );
        ensure!(
            out.lines().any(|l| l.starts_with(&format!(
                "Summary for HypervisorProvider {}:",
                scene.provider
            )) && l.ends_with("(dry run: nothing was changed)")),
            "a summary: {out}"
        );
        // Never restore what someone else's test holds on the shared guests.
        let others: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.ends_with("would restore") && !l.starts_with(&format!("VM {} ", lost.name))
            })
            .collect();
        ensure!(
            others.is_empty(),
            "other lost changes on the stack's guests (another test is changing them, or one \
             left them behind); not restoring them from this test: {others:?}"
        );
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
