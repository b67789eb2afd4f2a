//! The scale bed in small (docs/scale.md): 200 simulated vSphere VMs as 200 nodes, 2,000
//! gated pods in 10 Deployments, and the real operator binary. Correctness only, never time:
//! every gated pod gets its condition, and with latency on the 20 VMs behind one
//! Deployment's 200 pods, its guard (10%) holds: exactly 20 go False, the other 180 are
//! held ready, and no other Deployment's pod moves. The benchmark (`e2e/scale bench`) takes
//! the pod count to 10,000.
//!
//! It brings up its own instance of the bed (`e2e/scale --instance smoke`: its own etcd,
//! apiserver, simulator and kubelet-sim on their own ports and state dir) and takes it down by
//! the recorded pids, so it shares nothing with the stack the other tests use.

mod common;

use anyhow::{Context as _, Result};
use common::process::OperatorProcess;
use plumbline_e2e::{
    poll::until as eventually,
    scale::{PodState, ScaleBed, NAMESPACE},
};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

const STATE_DIR: &str = "/var/tmp/plumbline-scale-smoke";
const PODS: usize = 2_000;
const DEPLOYMENTS: usize = 10;
const PER_DEPLOYMENT: usize = PODS / DEPLOYMENTS;
/// The intents' guard: at most 10% of a Deployment's pods taken out for infrastructure.
const GUARDED: usize = PER_DEPLOYMENT / 10;
/// Generous: 2,000 conditions and 4,000 kubelet-sim status writes on a loaded 2-core
/// machine, and vSphere's confirmation of two samples.
const PATIENCE: Duration = Duration::from_secs(300);

/// Takes the smoke bed down (by its recorded pids) however the test ends.
struct Bed;

impl Bed {
    fn scale(args: &[&str]) -> Result<()> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/scale");
        let status = std::process::Command::new(&script)
            .args(["--instance", "smoke"])
            .args(args)
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            status.success(),
            "e2e/scale --instance smoke {args:?}: {status}"
        );
        Ok(())
    }

    async fn up() -> Result<Self> {
        let bed = Bed;
        tokio::task::spawn_blocking(|| {
            Bed::scale(&[
                "up",
                "--clusters",
                "2",
                "--hosts",
                "2",
                "--vms-per-cluster",
                "100",
            ])
        })
        .await??;
        Ok(bed)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Err(e) = Bed::scale(&["down"]) {
            eprintln!("taking the smoke scale bed down: {e:#}");
        }
    }
}

/// The gate states of one Deployment's pods: (True, False, none) counts and the reasons.
fn tally(
    states: &BTreeMap<String, PodState>,
    app: &str,
) -> (usize, usize, usize, BTreeMap<String, usize>) {
    let prefix = format!("{app}-");
    let mut t = (0, 0, 0, BTreeMap::new());
    for PodState { gate, reason, .. } in states
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(_, s)| s)
    {
        match gate.as_str() {
            "True" => t.0 += 1,
            "False" => t.1 += 1,
            _ => t.2 += 1,
        }
        *t.3.entry(reason.clone()).or_default() += 1;
    }
    t
}

#[tokio::test]
async fn scale_smoke_every_gated_pod_gets_its_condition_and_the_guard_holds() -> Result<()> {
    let _bed = Bed::up().await?;
    let bed = ScaleBed::load(std::path::Path::new(STATE_DIR), DEPLOYMENTS).await?;
    assert_eq!(
        bed.nodes.len(),
        200,
        "the smoke bed lists 200 VM-backed nodes"
    );
    bed.prepare("1s").await?;
    bed.apply_intents().await?;
    bed.grow_to(PODS).await?;
    let operator = OperatorProcess::start(
        "scale-smoke",
        NAMESPACE,
        bed.stack.operator_kubeconfig()?,
        &[],
    )
    .await?;

    let result = async {
        // Ready too: the guard counts a pod kubelet-sim has not yet made Ready (it follows
        // the gates, a status write after each gate turns True) as unready for another reason.
        eventually("every gated pod True and Ready", PATIENCE, || async {
            let states = bed.gate_states().await?;
            let ok = states.len() == PODS && states.values().all(PodState::settled);
            let summary = format!(
                "{} pods, {} True, {} Ready",
                states.len(),
                states.values().filter(|s| s.gate == "True").count(),
                states.values().filter(|s| s.ready).count()
            );
            Ok(if ok { Ok(()) } else { Err(summary) })
        })
        .await?;

        // Deployment 1: 200 pods on 20 VMs, a 10% guard.
        let victim = ScaleBed::deployment_name(1);
        let vms = bed.vms_of(1);
        assert_eq!(vms.len(), 20);
        bed.set_latency(&vms, Some(80)).await?;
        let kept = PER_DEPLOYMENT - GUARDED;
        eventually(
            "a tenth of app-1's pods False, the rest held",
            PATIENCE,
            || async {
                let states = bed.gate_states().await?;
                let (t, f, none, reasons) = tally(&states, &victim);
                let held = reasons.get("OverBudgetHeldByGuard").copied().unwrap_or(0);
                let ok = f == GUARDED && t == kept && held == kept && none == 0;
                Ok(if ok {
                    Ok(())
                } else {
                    Err(format!("{t} True, {f} False, {none} none: {reasons:?}"))
                })
            },
        )
        .await?;
        // The guard is a limit, not a moment: it still holds after more samples.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let states = bed.gate_states().await?;
        let (t, f, _, _) = tally(&states, &victim);
        assert_eq!(
            (t, f),
            (kept, GUARDED),
            "the guard holds: {t} True, {f} False"
        );
        for d in (0..DEPLOYMENTS).filter(|d| *d != 1) {
            let app = ScaleBed::deployment_name(d);
            let (t, f, none, reasons) = tally(&states, &app);
            assert_eq!(
                (t, f, none),
                (PER_DEPLOYMENT, 0, 0),
                "{app} is untouched by app-1's latency: {reasons:?}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    let _ = bed.set_latency(&bed.vms_of(1), None).await;
    let stopped = operator.stop().await;
    result.and(stopped)
}
