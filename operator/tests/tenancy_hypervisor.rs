//! Tenant policies down to the hypervisor: two intents protect the same vSphere simulator VM;
//! the namespace's TenantPolicy allows `high` with ProtectBackingVms but not `critical`. The
//! critical one is NotAllowed and changes nothing on the VM: the VM gets the high tier's 2048
//! CPU shares (not critical's 4096), and the ledger entry is owned by the allowed intent only.
//!
//! Changes a shared simulator VM's shares, so it is `serial_` (same VM as health_protect's
//! vSphere tests). Needs `e2e/stack up`; fails saying so otherwise.

mod common;
mod health_common;

use anyhow::{ensure, Context as _, Result};
use health_common::*;
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api,
};
use plumbline_adapters::Tunable;
use plumbline_crds::TenantPolicy;
use plumbline_operator::clock::SystemClock;
use serde_json::json;
use std::{sync::Arc, time::Duration};

const VM: &str = "DC0_H0_VM1";
const NODE: &str = "dc0-h0-vm1";
const PATIENCE: Duration = Duration::from_secs(90);

fn protecting(target: &str, priority: &str) -> serde_json::Value {
    json!({
        "target": {"kind": "Deployment", "name": target},
        "priority": priority,
        "infrastructure": {"protectBackingVms": true},
    })
}

#[tokio::test]
async fn serial_tenancy_a_not_allowed_intent_changes_nothing_on_the_hypervisor() -> Result<()> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    let hv = vsphere_adapter(&stack).await?;
    let vm = vsphere_vm_with_its_own_shares(hv.as_ref(), VM).await?;
    let before = hv.tunables(&vm).await?.current(&Tunable::CpuShares);

    let cluster = common::Cluster::connect("tenancy_hv").await?;
    let ns = cluster.namespace.clone();
    let policies = Api::<TenantPolicy>::all(cluster.admin.clone());
    let policy = json!({
        "apiVersion": "plumbline.dev/v1alpha1",
        "kind": "TenantPolicy",
        "metadata": {"name": ns},
        "spec": {"namespaces": [ns], "tiers": ["high", "standard"], "actions": ["ProtectBackingVms"]},
    });
    policies
        .patch(
            &ns,
            &PatchParams::apply("e2e-platform-team"),
            &Patch::Apply(&policy),
        )
        .await
        .context("applying the TenantPolicy")?;
    let provider = apply_vsphere_provider(&stack, &cluster.admin, &ns).await?;
    let operator = cluster
        .start_operator_with_health(Arc::new(SystemClock), common::test_health())
        .await?;

    let result = async {
        deploy_pinned(&cluster.admin, &ns, "payments", 1, NODE).await?;
        deploy_pinned(&cluster.admin, &ns, "reports", 1, NODE).await?;
        cluster
            .apply_intent("payments", protecting("payments", "critical"))
            .await?;
        cluster
            .apply_intent("reports", protecting("reports", "high"))
            .await?;

        cluster
            .intent_until("payments", "payments Degraded=True NotAllowed", |wi| {
                common::has_condition(wi, "Degraded", "True", "NotAllowed")
            })
            .await?;
        // The allowed intent's protection is in force: 2048, the high tier's shares.
        let change = eventually(
            "the high tier's shares in the ledger, applied",
            PATIENCE,
            || async {
                let list = ledger(&cluster.admin, &ns).await?;
                Ok(match list.as_slice() {
                    [ic] if ic.spec.setting == "cpu_shares"
                        && ic.status.as_ref().and_then(|s| s.state.as_deref())
                            == Some("Applied") =>
                    {
                        Ok(ic.clone())
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        ensure!(
            change.spec.desired == "2048",
            "critical's shares were asked for: {:?}",
            change.spec
        );
        let owners: Vec<&str> = change
            .spec
            .owners
            .iter()
            .map(|o| o.intent.as_str())
            .collect();
        ensure!(
            owners == [format!("{ns}/reports").as_str()],
            "only the allowed intent owns the change: {owners:?}"
        );
        let shares = hv.tunables(&vm).await?.current(&Tunable::CpuShares);
        ensure!(
            shares == Some(2048),
            "the VM has {shares:?} CPU shares, not the high tier's 2048"
        );
        let status = intent_status(&cluster.admin, &ns, "payments").await?;
        ensure!(
            status
                .get("protectedVms")
                .is_none_or(|v| v.as_array().is_some_and(|a| a.is_empty())),
            "the NotAllowed intent reports protected VMs: {status}"
        );
        Ok(())
    }
    .await;

    let released = release_everything(&cluster.admin, &ns, operator).await;
    strip_ledger(&cluster.admin, &ns).await;
    let _ = hv.revert(&vm, &[Tunable::CpuShares]).await;
    let after = hv
        .tunables(&vm)
        .await
        .ok()
        .and_then(|r| r.current(&Tunable::CpuShares));
    delete_provider(&cluster.admin, &provider).await;
    let _ = policies.delete(&ns, &DeleteParams::default()).await;
    cluster.cleanup().await;
    result.and(released)?;
    ensure!(
        after == before,
        "the VM's shares are back: {after:?}, were {before:?}"
    );
    Ok(())
}
