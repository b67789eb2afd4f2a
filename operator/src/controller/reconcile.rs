use std::sync::Arc;
use kube::runtime::controller::Action;
use plumbline_crds::WorkloadIntent;
use crate::{context::Context, Result};

pub const CONTROLLER: &str = "workloadintent";

pub async fn reconcile(wi: Arc<WorkloadIntent>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let _ = wi;
    Ok(Action::await_change())
}

pub fn plan_for() {}
