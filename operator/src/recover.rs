//! `plumbline recover`: restores changes to a provider's VMs whose `InfraChange` objects are
//! lost, from the originals the adapter recorded on the VMs themselves. Which records are lost
//! is decided by [`plumbline_policies::ledger::lost`]; this module reads, restores and reports.
//!
//! The VMs are read before the InfraChanges are listed: the operator creates an object before
//! it changes (and records) anything, so every record read has its object in the list that
//! follows, and a change made meanwhile is never taken for a lost one.

use anyhow::{anyhow, Context as _};
use kube::{api::ListParams, Api, Client};
use plumbline_adapters::{BackingVm, Hypervisor, Tunable, TunableReport};
use plumbline_crds::{names::ABANDON_ANNOTATION, HypervisorProvider, InfraChange};
use plumbline_policies::ledger::lost::{fate, Fate, OnDelete};
use std::{fmt::Write as _, future::Future, sync::Arc, time::Duration};

use crate::{cli::RecoverArgs, health::providers::adapter_config};

/// Each call to the hypervisor gives up after this long, so a hung VM fails only its own line.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// What was found and done, for the summary and the exit status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub vms: usize,
    /// VMs whose tunables could not be read: whether they carry lost changes is unknown.
    pub unreadable: usize,
    pub records: usize,
    pub restored: usize,
    pub would_restore: usize,
    /// Records that vanished between reading and restoring (their InfraChange's finalizer, or
    /// someone else, restored them meanwhile).
    pub gone: usize,
    pub left: usize,
    pub failed: usize,
}

impl Summary {
    pub fn line(&self, provider: &str, dry_run: bool) -> String {
        let mut s = format!(
            "Summary for HypervisorProvider {provider}: {}, {}: ",
            count(self.vms, "VM", "VMs"),
            count(self.records, "recorded original", "recorded originals"),
        );
        if dry_run {
            let _ = write!(s, "{} would be restored", self.would_restore);
        } else {
            let _ = write!(s, "{} restored", self.restored);
        }
        let _ = write!(s, ", {} left to InfraChanges", self.left);
        if self.gone > 0 {
            let _ = write!(s, ", {} restored by someone else meanwhile", self.gone);
        }
        let _ = write!(s, ", {} failed", self.failed);
        if self.unreadable > 0 {
            let _ = write!(
                s,
                "; {} could not be read",
                count(self.unreadable, "VM", "VMs")
            );
        }
        if dry_run {
            s.push_str(" (dry run: nothing was changed)");
        }
        s
    }

    /// Whether anything that should have been restored may still be in force.
    pub fn incomplete(&self) -> bool {
        self.failed > 0 || self.unreadable > 0
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A tunable's value for people: limits say when 0 means unlimited.
fn value(tunable: &Tunable, v: u64) -> String {
    match tunable {
        Tunable::DiskLimit { .. } if v == 0 => "0 (unlimited)".to_string(),
        _ => v.to_string(),
    }
}

/// The start of a record's line: the VM, the setting, its current value and the original.
fn found(vm: &BackingVm, tunable: &Tunable, current: Option<u64>, original: u64) -> String {
    let current = current.map_or_else(|| "unknown".to_string(), |v| value(tunable, v));
    format!(
        "VM {} ({}) {tunable}: current {current}, original {}",
        vm.name,
        vm.id,
        value(tunable, original)
    )
}

/// Why a record is left alone.
fn left_to(change: &str, other_provider: Option<&str>, on_delete: OnDelete) -> String {
    let mut s = format!("left to InfraChange {change}");
    if let Some(p) = other_provider {
        let _ = write!(s, " of HypervisorProvider {p}");
    }
    match on_delete {
        OnDelete::RestoresOriginal => {}
        OnDelete::NoFinalizer => {
            s.push_str(" (it has no finalizer: deleting it will not restore the original)")
        }
        OnDelete::Abandoned => {
            let _ = write!(
                s,
                " (annotated {ABANDON_ANNOTATION}=true: deleting it will not restore the original)"
            );
        }
    }
    s
}

/// Restores the lost changes of `args.provider` (or only reports them with `--dry-run`),
/// printing one line per recorded original and a summary. Fails when the provider cannot be
/// read or reached, or when anything could not be read or restored.
pub async fn recover(client: Client, args: &RecoverArgs) -> anyhow::Result<Summary> {
    let name = args.provider.as_str();
    let hp = match Api::<HypervisorProvider>::all(client.clone())
        .get(name)
        .await
    {
        Ok(hp) => hp,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(anyhow!(
                "reading HypervisorProvider {name}: it does not exist; recover needs it to reach \
                 the hypervisor (create it again, with the same endpoint and credentials)"
            ))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("reading HypervisorProvider {name}")))
        }
    };
    let config = adapter_config(&client, &hp)
        .await
        .map_err(|e| anyhow!("configuring the adapter of HypervisorProvider {name}: {e}"))?;
    let adapter = plumbline_adapters::connect(config)
        .await
        .with_context(|| format!("connecting to HypervisorProvider {name}"))?;
    let result = recover_with(&client, &adapter, args).await;
    let _ = adapter.close().await;
    let summary = result?;
    if summary.incomplete() {
        return Err(anyhow!(
            "recovering HypervisorProvider {name}: {} restore(s) failed and {} VM(s) could not be read; \
             see the lines above",
            summary.failed,
            summary.unreadable
        ));
    }
    Ok(summary)
}

async fn recover_with(
    client: &Client,
    adapter: &Arc<dyn Hypervisor>,
    args: &RecoverArgs,
) -> anyhow::Result<Summary> {
    let name = args.provider.as_str();
    let endpoint = adapter.endpoint().clone();
    println!(
        "Recovering lost changes on HypervisorProvider {name} ({} {endpoint}){}",
        endpoint.kind,
        if args.dry_run {
            "; dry run: nothing is changed"
        } else {
            ""
        }
    );
    let mut vms = bounded(CALL_DEADLINE, adapter.inventory())
        .await
        .with_context(|| format!("listing the VMs of HypervisorProvider {name} via {endpoint}"))?;
    vms.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let mut reports: Vec<(BackingVm, Result<TunableReport, String>)> = Vec::new();
    for vm in vms {
        let report = bounded(CALL_DEADLINE, adapter.tunables(&vm.id))
            .await
            .map_err(|e| format!("{e:#}"));
        reports.push((vm, report));
    }

    // After the VMs, never before: see the module comment.
    let ledger = match Api::<InfraChange>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            ensure_not_served(client).await?;
            println!(
                "The InfraChange CRD (infrachanges.plumbline.dev) is not installed: every original \
                 recorded on a VM is a lost change"
            );
            Vec::new()
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "listing InfraChanges (to tell lost changes from those an object still holds)",
            ))
        }
    };

    let mut summary = Summary {
        vms: reports.len(),
        ..Summary::default()
    };
    for (vm, report) in reports {
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                summary.unreadable += 1;
                println!(
                    "VM {} ({}): reading its tunables and recorded originals failed: {e}",
                    vm.name, vm.id
                );
                continue;
            }
        };
        for recorded in &report.originals {
            summary.records += 1;
            let tunable = &recorded.tunable;
            let head = found(&vm, tunable, report.current(tunable), recorded.value);
            let setting = tunable.to_string();
            let what = match fate(name, vm.id.as_str(), &setting, &ledger) {
                Fate::Held {
                    change,
                    other_provider,
                    on_delete,
                } => {
                    summary.left += 1;
                    left_to(&change, other_provider.as_deref(), on_delete)
                }
                Fate::Lost if args.dry_run => {
                    summary.would_restore += 1;
                    "no InfraChange: would restore".to_string()
                }
                Fate::Lost => {
                    let restored = bounded(
                        CALL_DEADLINE,
                        adapter.revert(&vm.id, std::slice::from_ref(tunable)),
                    )
                    .await;
                    match restored {
                        Ok(settings) => match settings.iter().find(|s| &s.tunable == tunable) {
                            Some(s) => {
                                summary.restored += 1;
                                format!("no InfraChange: restored to {}", value(tunable, s.value))
                            }
                            None => {
                                summary.gone += 1;
                                "no InfraChange: the record was gone when restoring (restored meanwhile)"
                                    .to_string()
                            }
                        },
                        Err(e) => {
                            summary.failed += 1;
                            format!(
                                "no InfraChange: restoring {setting} on VM {} failed: {e:#}",
                                vm.name
                            )
                        }
                    }
                }
            };
            println!("{head}: {what}");
        }
    }
    println!("{}", summary.line(name, args.dry_run));
    Ok(summary)
}

/// After a 404 on listing InfraChanges: fails unless discovery confirms that no version of
/// the API group serves them. A CRD that serves only a newer version (or is just being
/// installed) also answers 404 here, and taking its objects for lost would restore every
/// change they hold.
async fn ensure_not_served(client: &Client) -> anyhow::Result<()> {
    let doing = "checking whether the InfraChange CRD is installed (listing InfraChanges \
                 answered 404)";
    let groups = client.list_api_groups().await.context(doing)?;
    let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else {
        return Ok(());
    };
    for version in &group.versions {
        let resources = client
            .list_api_group_resources(&version.group_version)
            .await
            .with_context(|| {
                format!(
                    "{doing}: listing the resources of {}",
                    version.group_version
                )
            })?;
        if resources.resources.iter().any(|r| r.name == "infrachanges") {
            return Err(anyhow!(
                "{doing}: {} serves infrachanges, so they are not lost; this plumbline reads \
                 {GROUP}/v1alpha1 (use the plumbline that matches the installed CRD, or run again \
                 if the CRD was just installed)",
                version.group_version
            ));
        }
    }
    Ok(())
}

const GROUP: &str = "plumbline.dev";

/// A hypervisor call that gives up at the deadline.
async fn bounded<T>(
    deadline: Duration,
    call: impl Future<Output = plumbline_adapters::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(anyhow!("no answer within {deadline:?}")),
        Ok(r) => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_adapters::{DiskLimit, VmId};

    fn vm() -> BackingVm {
        BackingVm {
            id: VmId::new("8C1E0D2A-0000-4000-8000-000000000001"),
            name: "pl-noisy".into(),
            provider_id: "libvirt:///8c1e0d2a-0000-4000-8000-000000000001".into(),
            host: "h".into(),
            cluster: None,
            datastores: vec![],
            disks: vec![],
            running: true,
        }
    }

    #[test]
    fn a_line_names_the_vm_the_setting_its_value_and_the_original() {
        let iops = Tunable::DiskLimit {
            disk: "vda".into(),
            limit: DiskLimit::TotalIops,
        };
        assert_eq!(
            found(&vm(), &iops, Some(333), 0),
            "VM pl-noisy (8c1e0d2a-0000-4000-8000-000000000001) disk.vda.total_iops_sec: \
             current 333, original 0 (unlimited)"
        );
        assert_eq!(
            found(&vm(), &Tunable::CpuShares, None, 1024),
            "VM pl-noisy (8c1e0d2a-0000-4000-8000-000000000001) cpu_shares: current unknown, \
             original 1024"
        );
    }

    #[test]
    fn a_record_left_alone_says_to_which_object_and_whether_deleting_it_restores() {
        assert_eq!(
            left_to("x.1", None, OnDelete::RestoresOriginal),
            "left to InfraChange x.1"
        );
        assert_eq!(
            left_to("x.1", Some("kvm-b"), OnDelete::NoFinalizer),
            "left to InfraChange x.1 of HypervisorProvider kvm-b (it has no finalizer: deleting \
             it will not restore the original)"
        );
        assert!(left_to("x.1", None, OnDelete::Abandoned).contains("plumbline.dev/abandon=true"));
    }

    #[test]
    fn the_summary_counts_what_was_done_and_failures_make_it_incomplete() {
        let s = Summary {
            vms: 4,
            records: 2,
            restored: 1,
            left: 1,
            ..Summary::default()
        };
        assert_eq!(
            s.line("kvm", false),
            "Summary for HypervisorProvider kvm: 4 VMs, 2 recorded originals: 1 restored, \
             1 left to InfraChanges, 0 failed"
        );
        assert!(!s.incomplete());
        let dry = Summary {
            vms: 1,
            records: 1,
            would_restore: 1,
            unreadable: 1,
            ..Summary::default()
        };
        assert_eq!(
            dry.line("kvm", true),
            "Summary for HypervisorProvider kvm: 1 VM, 1 recorded original: 1 would be \
             restored, 0 left to InfraChanges, 0 failed; 1 VM could not be read (dry run: \
             nothing was changed)"
        );
        assert!(dry.incomplete());
        assert!(Summary {
            failed: 1,
            ..Summary::default()
        }
        .incomplete());
    }
}
