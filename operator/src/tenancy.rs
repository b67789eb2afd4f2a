//! Wiring of the tenant policies (`TenantPolicy`, decided by `plumbline_policies::tenancy`):
//! the cache the loops read them from, and the one filter the storage-health loop applies
//! where it reads intents, so an intent that is not allowed triggers no infrastructure action.

use futures::FutureExt;
use kube::{api::ListParams, runtime::reflector::Store, Api, Client, ResourceExt};
use plumbline_crds::{TenantPolicy, WorkloadIntent};
use plumbline_policies::{admit, NamedPolicy, TenantRequest, TenantVerdict};
use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::{context::Context, Error, Result};

/// How long a reconcile waits for the first list of TenantPolicies before it fails (and is
/// retried with backoff). Nothing is planned on a guess: an empty cache would allow everything.
const SYNC_PATIENCE: Duration = Duration::from_secs(10);

fn named(policies: impl IntoIterator<Item = Arc<TenantPolicy>>) -> Vec<NamedPolicy> {
    policies
        .into_iter()
        .map(|p| NamedPolicy {
            name: p.name_any(),
            spec: p.spec.clone(),
        })
        .collect()
}

/// The policies in the cache, once it has listed them.
pub async fn cached_policies(store: &Store<TenantPolicy>) -> Result<Vec<NamedPolicy>> {
    tokio::time::timeout(SYNC_PATIENCE, store.wait_until_ready())
        .await
        .ok()
        .and_then(|r| r.ok())
        .ok_or(Error::NotSynced {
            what: "TenantPolicies (is the tenantpolicies.plumbline.dev CRD installed, and may the operator list them?)",
        })?;
    Ok(named(store.state()))
}

/// The policies in the cluster, read once (for `plumbline explain`). A cluster without the
/// TenantPolicy CRD has no policies.
pub async fn list_policies(client: &Client) -> Result<Vec<NamedPolicy>> {
    match Api::<TenantPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok(named(list.items.into_iter().map(Arc::new))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::kube("listing TenantPolicies", e)),
    }
}

/// The verdict for `wi` under `policies`.
pub fn verdict(wi: &WorkloadIntent, policies: &[NamedPolicy]) -> TenantVerdict {
    admit(
        &TenantRequest::of(&wi.namespace().unwrap_or_default(), &wi.spec),
        policies,
    )
}

/// The intents the storage-health loop may act for: every intent its tenant policies allow.
pub struct InfrastructureIntents {
    pub intents: Vec<Arc<WorkloadIntent>>,
    /// `(namespace, name)` of allowed intents whose storage budget may not taint nodes (nor
    /// judge them: those nodes are judged by the operator's default budget).
    without_node_taints: HashSet<(String, String)>,
}

impl InfrastructureIntents {
    /// The intents in the cache, filtered. Until the policy cache has listed, no intent is
    /// held back (the ledger is not written until it has; see `health::ledger_ready`).
    pub fn read(ctx: &Context) -> Self {
        let policies = named(ctx.tenants.state());
        let mut intents = Vec::new();
        let mut without_node_taints = HashSet::new();
        for wi in ctx.intents.state() {
            let v = verdict(&wi, &policies);
            if !v.is_allowed() {
                continue;
            }
            if !v.node_taints() {
                without_node_taints.insert((wi.namespace().unwrap_or_default(), wi.name_any()));
            }
            intents.push(wi);
        }
        Self {
            intents,
            without_node_taints,
        }
    }

    /// Whether the intent's storage budget may judge (and taint) the nodes under its pods.
    pub fn may_judge_nodes(&self, namespace: &str, name: &str) -> bool {
        !self
            .without_node_taints
            .contains(&(namespace.to_string(), name.to_string()))
    }
}

/// Whether the policy cache has listed (the ledger waits for it).
pub fn synced(store: &Store<TenantPolicy>) -> bool {
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}
