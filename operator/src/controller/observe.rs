//! Reading what the planner needs from the cluster. Read-only: `explain` uses the same code.

use kube::{api::DynamicObject, runtime::reflector::Store, Api, ResourceExt};
use plumbline_crds::{names::INTENT_LABEL, InfraChange, WorkloadIntent};
use serde_json::Value;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plumbline_crds::names::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use plumbline_policies::{CountOrPercent, ObservedDisruptionBudget};
use std::collections::BTreeMap;

use crate::discovery::ServedApis;

use super::{
    apply::{self, WorkloadRef},
    fields::{self, Baseline, Previous, WorkloadField},
};
use crate::{Error, Result};

/// The target workload as it would be without Plumbline.
#[derive(Debug, Clone)]
pub struct LiveWorkload {
    pub target: WorkloadRef,
    pub object: DynamicObject,
    /// Each settable field as it was before Plumbline set it (live value if Plumbline does
    /// not hold it).
    pub without_plumbline: std::collections::BTreeMap<WorkloadField, Previous>,
    /// `spec.selector`, for the PodDisruptionBudget.
    pub selector: Option<Value>,
    /// The intent currently holding the workload's fields, if any.
    pub holder: Option<String>,
    /// PodDisruptionBudgets in the namespace whose selector covers the workload's pods.
    pub disruption_budgets: Vec<ObservedDisruptionBudget>,
    /// A host maintenance's replica surge on the workload, while its ledger entry exists.
    pub surge: Option<Surge>,
}

/// A maintenance surge as the intent controller honours it: the planner sees the workload's
/// own replicas (the surge's recorded original), and while Plumbline holds the replicas field
/// it holds it at the surged value, so the two never fight over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Surge {
    /// The replicas recorded before the surge.
    pub original: i32,
    /// The replicas the surge asks for; `None` while its entry is being deleted (reverting).
    pub replicas: Option<i32>,
}

impl LiveWorkload {
    pub fn replicas(&self) -> Option<i32> {
        self.without_plumbline
            .get(&WorkloadField::Replicas)
            .and_then(|p| p.value.as_ref())
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    }

    pub fn priority_class_name(&self) -> Option<String> {
        self.without_plumbline
            .get(&WorkloadField::PriorityClassName)
            .and_then(|p| p.value.as_ref())
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The topology spread constraints other owners set.
    pub fn topology_spread_constraints(&self) -> Vec<Value> {
        self.without_plumbline
            .get(&WorkloadField::TopologySpreadConstraints)
            .and_then(|p| p.value.as_ref())
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Condition types of the readiness gates other owners set.
    pub fn readiness_gates(&self) -> Vec<String> {
        self.without_plumbline
            .get(&WorkloadField::ReadinessGates)
            .and_then(|p| p.value.as_ref())
            .and_then(Value::as_array)
            .map(|gates| {
                gates
                    .iter()
                    .filter_map(|g| g.get("conditionType").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What `wi` finds in the cluster.
#[derive(Debug, Clone)]
pub struct IntentObservation {
    /// None: the target does not exist.
    pub workload: Option<LiveWorkload>,
    /// Another intent that holds (or, being older, has the first claim on) the same workload.
    pub conflicting: Option<String>,
    /// What the change ledger holds for the intent and what the storage-health loop last saw
    /// under it (from the intent's status).
    pub infra: plumbline_policies::ObservedInfra,
}

/// Reads the target and the disruption budgets covering it. `intents` is every intent the
/// caller knows of (the controller's cache, or a fresh list for `explain`).
pub async fn observe(
    client: &kube::Client,
    apis: &ServedApis,
    wi: &WorkloadIntent,
    intents: &[WorkloadIntent],
) -> Result<IntentObservation> {
    let target = WorkloadRef::of(wi);
    let object = apply::workload_api(client, &target)
        .get_opt(&target.name)
        .await
        .map_err(|source| Error::kube(format!("reading {target}"), source))?;
    let budgets = match &object {
        Some(_) => list_pdbs(client, apis, &target.namespace).await?,
        None => Vec::new(),
    };
    let changes = list_changes(client).await?;
    let workload = object.map(|object| {
        let pod_labels: BTreeMap<String, String> = object
            .data
            .pointer("/spec/template/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let baseline = Baseline::from_annotation(&object);
        let without_plumbline = WorkloadField::ALL
            .into_iter()
            .map(|f| (f, baseline.without_plumbline(&object, f)))
            .collect();
        LiveWorkload {
            selector: object
                .data
                .get("spec")
                .and_then(|s| s.get("selector"))
                .cloned(),
            holder: fields::holder(&object).map(str::to_string),
            disruption_budgets: budgets
                .iter()
                .filter_map(|pdb| covering_budget(pdb, &pod_labels))
                .collect(),
            surge: surge_on(&target, &changes),
            target: target.clone(),
            without_plumbline,
            object,
        }
    });
    let conflicting = conflicting_intent(
        wi,
        workload.as_ref().and_then(|w| w.holder.as_deref()),
        intents,
    );
    Ok(IntentObservation {
        workload,
        conflicting,
        infra: observe_infra(wi, changes),
    })
}

/// Every InfraChange. A cluster without the InfraChange CRD has no ledger entries.
async fn list_changes(client: &kube::Client) -> Result<Vec<InfraChange>> {
    match Api::<InfraChange>::all(client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(source) => Err(Error::kube("listing InfraChanges", source)),
    }
}

/// The surge on `target` whose original is recorded (before that, nothing has changed yet).
fn surge_on(target: &WorkloadRef, changes: &[InfraChange]) -> Option<Surge> {
    changes.iter().find_map(|ic| {
        let t = &ic.spec.target;
        let ours = ic.spec.purpose == plumbline_crds::ChangePurpose::MaintenanceSurge
            && t.workload_kind() == Some(target.kind)
            && t.namespace.as_deref() == Some(target.namespace.as_str())
            && t.name == target.name
            && ic.has_finalizer();
        let original = ic.status.as_ref()?.original.as_deref()?.parse().ok()?;
        ours.then(|| Surge {
            original,
            replicas: ic
                .metadata
                .deletion_timestamp
                .is_none()
                .then(|| ic.spec.desired.parse().ok())
                .flatten(),
        })
    })
}

/// What the intent cache keeps of each intent's status `backing`: the first pod on each VM, which
/// is all [`observe_infra`] reads. At 10,000 pods, ten intents' lists of 1,000 pods were 3.4 MB
/// of the cache (docs/scale.md).
pub fn prune_backing(wi: &mut WorkloadIntent) {
    if let Some(status) = wi.status.as_mut() {
        let mut seen = std::collections::HashSet::new();
        status.backing.retain(|p| {
            p.vm.is_some()
                && p.provider.is_some()
                && seen.insert((p.provider.clone(), p.vm.clone()))
        });
        status.backing.shrink_to_fit();
    }
}

/// The InfraChanges naming the intent among their owners, and the VMs and neighbours its
/// status reports.
fn observe_infra(
    wi: &WorkloadIntent,
    changes: Vec<InfraChange>,
) -> plumbline_policies::ObservedInfra {
    let label = format!("{}/{}", wi.namespace().unwrap_or_default(), wi.name_any());
    let changes = changes
        .into_iter()
        .filter(|ic| ic.spec.owners.iter().any(|o| o.intent == label))
        .collect();
    let status = wi.status.clone().unwrap_or_default();
    let mut backing: Vec<plumbline_policies::ObservedBackingVm> = Vec::new();
    for pod in &status.backing {
        let (Some(vm), Some(provider)) = (&pod.vm, &pod.provider) else {
            continue;
        };
        let vm = plumbline_policies::VmRef {
            provider: provider.clone(),
            name: vm.clone(),
        };
        if backing.iter().any(|b| b.vm == vm) {
            continue;
        }
        backing.push(plumbline_policies::ObservedBackingVm {
            vm,
            host: pod.host.clone(),
            datastores: pod.datastores.clone(),
        });
    }
    plumbline_policies::ObservedInfra {
        changes,
        backing,
        neighbours: status.neighbour_candidates,
        placement: status.placement,
    }
}

/// The intent that has the first claim on `wi`'s workload, if it is not `wi`: the intent that
/// holds it if that one still exists, else the oldest (then alphabetically first) intent.
pub fn conflicting_intent(
    wi: &WorkloadIntent,
    holder: Option<&str>,
    intents: &[WorkloadIntent],
) -> Option<String> {
    let me = wi.name_any();
    // An intent on its way out only keeps its claim while it still holds the workload (its
    // revert is not done yet); after that the next intent may take over at once.
    let rivals: Vec<&WorkloadIntent> = intents
        .iter()
        .filter(|other| other.namespace() == wi.namespace() && other.spec.target == wi.spec.target)
        .filter(|other| {
            other.metadata.deletion_timestamp.is_none() || holder == Some(other.name_any().as_str())
        })
        .collect();
    if let Some(holder) = holder {
        if rivals.iter().any(|r| r.name_any() == holder) {
            return (holder != me).then(|| holder.to_string());
        }
    }
    let first = rivals
        .iter()
        .copied()
        .chain(std::iter::once(wi))
        .min_by_key(|r| (r.creation_timestamp().map(|t| t.0), r.name_any()))?;
    (first.name_any() != me).then(|| first.name_any())
}

/// Every intent from the controller's cache.
pub fn cached_intents(store: &Store<WorkloadIntent>) -> Vec<WorkloadIntent> {
    store.state().iter().map(|wi| wi.as_ref().clone()).collect()
}

/// Every intent in `namespace`, read from the API (for `explain`, which has no cache).
pub async fn list_intents(client: &kube::Client, namespace: &str) -> Result<Vec<WorkloadIntent>> {
    super::lenient::list(client, namespace)
        .await
        .map_err(|source| Error::kube(format!("listing WorkloadIntents in {namespace}"), source))
}

/// Label selector matching PodDisruptionBudgets made for `wi`.
pub fn own_pdb_selector(wi: &WorkloadIntent) -> String {
    format!("{INTENT_LABEL}={}", wi.name_any())
}

async fn list_pdbs(
    client: &kube::Client,
    apis: &ServedApis,
    namespace: &str,
) -> Result<Vec<DynamicObject>> {
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &apis.pdb)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .map_err(|source| {
            Error::kube(
                format!("listing PodDisruptionBudgets in {namespace}"),
                source,
            )
        })
}

/// The budget as the planner sees it, if its selector selects pods with `pod_labels`. Only
/// `matchLabels` is evaluated; a budget with `matchExpressions` is counted as covering when its
/// labels match, which errs on the side of not adding a second budget.
fn covering_budget(
    pdb: &DynamicObject,
    pod_labels: &BTreeMap<String, String>,
) -> Option<ObservedDisruptionBudget> {
    let selector = pdb.data.pointer("/spec/selector")?;
    let match_labels: BTreeMap<String, String> = selector
        .get("matchLabels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let has_expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if match_labels.is_empty() && !has_expressions {
        return None;
    }
    if !match_labels
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v))
    {
        return None;
    }
    let min_available = pdb
        .data
        .pointer("/spec/minAvailable")
        .and_then(|v| serde_json::from_value::<IntOrString>(v.clone()).ok())
        .and_then(|v| match v {
            IntOrString::Int(n) => u32::try_from(n).ok().map(CountOrPercent::Count),
            IntOrString::String(s) => s
                .strip_suffix('%')?
                .parse()
                .ok()
                .map(CountOrPercent::Percent),
        });
    Some(ObservedDisruptionBudget {
        name: pdb.name_any(),
        managed_by_plumbline: pdb.labels().get(MANAGED_BY_LABEL).map(String::as_str)
            == Some(MANAGED_BY_VALUE),
        min_available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pruned_backing_keeps_what_the_controller_reads() {
        let pod = |name: &str, vm: Option<&str>| json!({"pod": name, "node": "n", "vm": vm, "provider": "vc", "host": "h1", "datastores": ["ds1"]});
        let mut wi: WorkloadIntent = serde_json::from_value(json!({
            "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"target": {"kind": "Deployment", "name": "web"}, "priority": "critical"},
            "status": {"backing": [
                pod("web-1", Some("vm1")), pod("web-2", Some("vm1")),
                pod("web-3", Some("vm2")), pod("web-4", None)
            ]}
        }))
        .unwrap();
        let before = observe_infra(&wi, Vec::new());
        prune_backing(&mut wi);
        let kept: Vec<&str> = wi
            .status
            .as_ref()
            .unwrap()
            .backing
            .iter()
            .map(|p| p.pod.as_str())
            .collect();
        assert_eq!(kept, ["web-1", "web-3"]);
        let after = observe_infra(&wi, Vec::new());
        assert_eq!(
            format!("{:?}", after.backing),
            format!("{:?}", before.backing)
        );
        assert_eq!(after.backing.len(), 2);
    }
}
