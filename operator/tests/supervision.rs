//! Supervised loops, proven on the real binary: a leader loop that dies makes `/healthz` fail
//! and the process step down and exit non-zero; a health loop that hangs makes `/healthz`
//! fail within 5 intervals. The loops are broken with the hidden `--test-fault` switch.
//!
//! Needs `e2e/stack up`; fails saying so otherwise.

mod common;

use anyhow::{ensure, Context as _, Result};
use common::{
    eventually,
    process::{lease_holder, OperatorProcess},
    Cluster,
};
use std::{path::PathBuf, time::Instant};

fn operator_kubeconfig() -> Result<PathBuf> {
    let stack = plumbline_e2e::Stack::load().context("needs the real stack: e2e/stack up")?;
    Ok(PathBuf::from(stack.get("PLUMBLINE_OPERATOR_KUBECONFIG")?))
}

#[tokio::test]
async fn a_dead_health_loop_fails_healthz_and_the_process_steps_down_and_exits_non_zero(
) -> Result<()> {
    let cluster = Cluster::connect("loop_dies").await?;
    let mut op = OperatorProcess::start(
        "dies",
        &cluster.namespace,
        &operator_kubeconfig()?,
        &["--test-fault=health-loop-exit"],
    )
    .await?;
    let result = async {
        op.http_addr().await?;
        // /healthz fails (it names the loop) before the process goes.
        let (code, body) = eventually("/healthz to fail", || async {
            op.healthz().await.ok().filter(|(code, _)| *code != 200)
        })
        .await?;
        println!("/healthz answered {code}: {body}");
        ensure!(
            code == 503 && body.contains("storage-health"),
            "{code}: {body}"
        );
        let status = op.exited().await?;
        println!("the process exited with {status}");
        ensure!(
            !status.success(),
            "a dead loop must exit non-zero: {status}"
        );
        let died = op
            .logged_at("test fault: the storage-health loop exits")
            .context("the fault fired")?;
        let stepped = op
            .logged_at("leader loops stopped")
            .context("it stepped down")?;
        println!(
            "loop died at {died}, leader loops stopped {} ms later",
            (stepped - died).num_milliseconds()
        );
        ensure!(
            lease_holder(&cluster).await.is_none(),
            "stepping down releases the Lease"
        );
        Ok(())
    }
    .await;
    let _ = op.stop().await;
    cluster.cleanup().await;
    result
}

#[tokio::test]
async fn a_hung_health_loop_fails_healthz_within_five_intervals() -> Result<()> {
    let cluster = Cluster::connect("loop_hangs").await?;
    let mut op = OperatorProcess::start(
        "hangs",
        &cluster.namespace,
        &operator_kubeconfig()?,
        &["--test-fault=health-loop-hang"],
    )
    .await?;
    let result = async {
        let (code, _) = eventually("/healthz to answer ok", || async {
            op.healthz().await.ok().filter(|(code, _)| *code == 200)
        })
        .await?;
        ensure!(code == 200);
        eventually("the loop to hang", || async {
            op.logged_at("test fault: the storage-health loop hangs")
        })
        .await?;
        let hung = Instant::now();
        let (code, body) = eventually("/healthz to fail", || async {
            op.healthz().await.ok().filter(|(code, _)| *code != 200)
        })
        .await?;
        println!(
            "/healthz answered {code} {:.1?} after the hang: {body}",
            hung.elapsed()
        );
        ensure!(
            code == 503 && body.contains("has not completed"),
            "{code}: {body}"
        );
        ensure!(
            op.running()?,
            "a hung loop is the liveness probe's to act on"
        );
        Ok(())
    }
    .await;
    let _ = op.stop().await;
    cluster.cleanup().await;
    result
}
