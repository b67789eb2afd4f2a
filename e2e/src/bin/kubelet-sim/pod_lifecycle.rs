//! Watches pods bound to registered nodes and reports what a kubelet would: Running with a
//! pod IP, ready containers, and `Ready` per readiness gates. A watch (not polling) drives
//! it, so a readiness-gate condition set by someone else is reflected at once. Pods being
//! deleted are removed with grace 0, as a kubelet does once its containers have stopped.
//! Writes go through a [`WriteQueue`], many pods at a time.

use std::{collections::BTreeMap, net::Ipv4Addr, pin::pin};

use futures::{stream::FuturesUnordered, StreamExt};
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
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{
    error::is_not_found,
    pod_ips::PodIpPool,
    pod_status::{is_current, status_patch, PodPlacement},
    write_queue::{WriteQueue, WRITERS},
    Error, RegisteredNodes, Result, Settings, FIELD_MANAGER,
};

struct PodLoop {
    nodes: RegisteredNodes,
    /// Per node name, with the CIDR the pool was made for.
    pools: BTreeMap<String, PodIpPool>,
}

/// What a kubelet would send for one pod.
#[derive(Debug)]
enum Write {
    /// Remove the terminating pod with grace 0 (if it is still this pod, by uid).
    Delete { uid: String },
    /// Apply the status the kubelet owns.
    Status(Value),
}

#[derive(Debug)]
struct Job {
    namespace: String,
    name: String,
    write: Write,
}

pub async fn run(client: Client, settings: Settings, nodes: RegisteredNodes) -> Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = pin!(reflector(writer, watcher::watcher(pods, config)).default_backoff());
    let mut this = PodLoop {
        nodes,
        pools: BTreeMap::new(),
    };
    let mut queue = WriteQueue::default();
    let mut in_flight = FuturesUnordered::new();
    // Catches pods whose node registered after their last event, and failed writes.
    let mut resync = tokio::time::interval(settings.resync_every);
    loop {
        while in_flight.len() < WRITERS {
            let Some((key, job)) = queue.start() else {
                break;
            };
            in_flight.push(execute(client.clone(), key, job));
        }
        tokio::select! {
            Some(key) = in_flight.next(), if !in_flight.is_empty() => queue.done(&key),
            event = events.next() => match event {
                Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => this.queue(&pod, &mut queue).await,
                Some(Ok(Event::Delete(pod))) => this.forget(&pod),
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => warn!(error = %e, "pod watch error; retrying with backoff"),
                None => return Err(Error::WatchEnded),
            },
            _ = resync.tick() => {
                for pod in store.state() {
                    this.queue(&pod, &mut queue).await;
                }
                debug!(queued = queue.len(), in_flight = in_flight.len(), "resync");
            }
        }
    }
}

/// Sends one pod's write; a failure is logged and retried by the next resync.
async fn execute(client: Client, key: String, job: Job) -> String {
    let api: Api<Pod> = Api::namespaced(client, &job.namespace);
    let result = match job.write {
        Write::Delete { uid } => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&job.name, &params).await {
                Ok(_) => {
                    info!(pod = %key, "pod terminated");
                    Ok(())
                }
                // Gone already, or replaced by a new pod of the same name.
                Err(e)
                    if is_not_found(&e) || matches!(&e, kube::Error::Api(s) if s.code == 409) =>
                {
                    Ok(())
                }
                Err(source) => Err(Error::kube("deleting pod", key.clone())(source)),
            }
        }
        Write::Status(body) => {
            debug!(pod = %key, ready = %body["status"]["conditions"][2]["status"], "posting pod status");
            api.patch_status(
                &job.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map(drop)
            .map_err(Error::kube("posting status of pod", key.clone()))
        }
    };
    if let Err(e) = result {
        warn!(pod = %key, error = %e, "syncing pod status; will retry");
    }
    key
}

impl PodLoop {
    /// Queues what the pod needs written, if anything.
    async fn queue(&mut self, pod: &Pod, queue: &mut WriteQueue<Job>) {
        match self.plan(pod).await {
            Ok(Some(write)) => queue.push(
                pod_key(pod),
                Job {
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    write,
                },
            ),
            Ok(None) => {}
            Err(e) => warn!(pod = %pod_key(pod), error = %e, "syncing pod status; will retry"),
        }
    }

    /// What a kubelet would write for the pod now; no I/O.
    async fn plan(&mut self, pod: &Pod) -> Result<Option<Write>> {
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(None);
        };
        let Some(node) = self.nodes.read().await.get(&node_name).cloned() else {
            return Ok(None);
        };
        let uid = pod.uid().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(Some(Write::Delete { uid }));
        }
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return Ok(None);
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
            return Ok(None);
        }
        Ok(Some(Write::Status(status_patch(
            pod,
            placement,
            &Time(Timestamp::now()),
        ))))
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
