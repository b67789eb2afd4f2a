//! Watches pods bound to registered nodes and reports what a kubelet would: Running with a
//! pod IP, ready containers, and `Ready` per readiness gates. A watch (not polling) drives
//! it, so a readiness-gate condition set by someone else is reflected at once. Pods being
//! deleted are removed with grace 0, as a kubelet does once its containers have stopped.

use std::{collections::BTreeMap, net::Ipv4Addr, pin::pin};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{
        reflector,
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, ResourceExt,
};
use tracing::{debug, info, warn};

use super::{
    error::is_not_found,
    pod_ips::PodIpPool,
    pod_status::{is_current, status_patch, PodPlacement},
    Error, RegisteredNodes, Result, Settings, FIELD_MANAGER,
};

struct PodLoop {
    client: Client,
    nodes: RegisteredNodes,
    /// Per node name, with the CIDR the pool was made for.
    pools: BTreeMap<String, PodIpPool>,
}

pub async fn run(client: Client, settings: Settings, nodes: RegisteredNodes) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = pin!(reflector(writer, watcher::watcher(pods, config)).default_backoff());
    let mut this = PodLoop {
        client,
        nodes,
        pools: BTreeMap::new(),
    };
    // Catches pods whose node registered after their last event, and failed writes.
    let mut resync = tokio::time::interval(settings.resync_every);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => this.sync(&pod).await,
                Some(Ok(Event::Delete(pod))) => this.forget(&pod),
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => warn!(error = %e, "pod watch error; retrying with backoff"),
                None => return Err(Error::WatchEnded),
            },
            _ = resync.tick() => {
                for pod in store.state() {
                    this.sync(&pod).await;
                }
            }
        }
    }
}

impl PodLoop {
    async fn sync(&mut self, pod: &Pod) {
        if let Err(e) = self.try_sync(pod).await {
            warn!(pod = %pod_key(pod), error = %e, "syncing pod status; will retry");
        }
    }

    async fn try_sync(&mut self, pod: &Pod) -> Result<()> {
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(());
        };
        let Some(node) = self.nodes.read().await.get(&node_name).cloned() else {
            return Ok(());
        };
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let uid = pod.uid().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => info!(pod = %pod_key(pod), "pod terminated"),
                // Gone already, or replaced by a new pod of the same name.
                Err(e)
                    if is_not_found(&e) || matches!(&e, kube::Error::Api(s) if s.code == 409) => {}
                Err(source) => return Err(Error::kube("deleting pod", pod_key(pod))(source)),
            }
            return Ok(());
        }
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return Ok(());
        }

        let pool = self
            .pools
            .entry(node_name.clone())
            .or_insert_with(|| PodIpPool::new(&node_name, node.pod_cidr));
        if pool.cidr() != node.pod_cidr {
            *pool = PodIpPool::new(&node_name, node.pod_cidr);
        }
        let host_ip = node.pod_cidr.node_ip();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let pod_ip = if host_network {
            host_ip
        } else {
            let reported = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            pool.ip_for(&uid, reported)?
        };
        let placement = PodPlacement { pod_ip, host_ip };
        if is_current(pod, placement) {
            return Ok(());
        }
        let body = status_patch(pod, placement, &Time(Timestamp::now()));
        debug!(pod = %pod_key(pod), ready = %body["status"]["conditions"][2]["status"], "posting pod status");
        api.patch_status(
            &pod.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::kube("posting status of pod", pod_key(pod)))?;
        Ok(())
    }

    fn forget(&mut self, pod: &Pod) {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if let Some(pool) = node.and_then(|n| self.pools.get_mut(n)) {
            pool.release(&pod.uid().unwrap_or_default());
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}
