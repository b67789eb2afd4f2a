//! One setting on one target, as the actuators need it: read the current value (and an
//! original an earlier run recorded on the target), set a value, restore the original. VM
//! settings go through the provider's adapter, which also records the original on the VM
//! itself; node taints are a read-modify-write of the node guarded by its resourceVersion; a
//! workload's replicas (a maintenance surge) are written in the name of the field's owner; a
//! cluster's DRS rule is read and written whole through the provider's adapter; a VM's host
//! (a relocation) is read from the inventory and set by a vMotion.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::{
    api::{DynamicObject, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_adapters::{AntiAffinityRule, Hypervisor, Setting, Tunable, VmId};
use plumbline_crds::{ChangeTargetKind, InfraChange};
use plumbline_policies::{
    ledger::{ABSENT, DRS_RULE_PREFIX, HOST, MAINTENANCE_MODE, PRESENT, REPLICAS, UNSCHEDULABLE},
    placement::RuleValue,
    WorkloadRef,
};
use serde_json::json;
use std::{sync::Arc, time::Duration};
use tracing::debug;

use crate::controller::{
    apply::workload_api,
    fields::{self, WorkloadField},
};
use plumbline_crds::names::FIELD_MANAGER;

/// Why a call on a target failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// The target cannot take the setting; retrying will not help.
    Unsupported(String),
    /// Anything else, with what was being done (a timeout, a lost connection, a conflict).
    Failed(String),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// A value as read from the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub current: String,
    /// An original recorded on the target by an earlier run (VMs only).
    pub recorded_original: Option<String>,
}

/// The thing an `InfraChange` changes, ready to be called.
pub enum Target {
    Vm {
        adapter: Arc<dyn Hypervisor>,
        vm: VmId,
        tunable: Tunable,
    },
    /// The host a VM runs on (a one-shot relocation).
    Placement {
        adapter: Arc<dyn Hypervisor>,
        vm: VmId,
    },
    Node {
        client: Client,
        name: String,
        setting: NodeSetting,
    },
    /// A hypervisor host's maintenance mode.
    Host {
        adapter: Arc<dyn Hypervisor>,
        host: String,
    },
    /// A DRS anti-affinity rule of a compute cluster.
    Rule {
        adapter: Arc<dyn Hypervisor>,
        cluster: String,
        name: String,
    },
    /// A Deployment's or StatefulSet's `spec.replicas`.
    Replicas {
        client: Client,
        workload: WorkloadRef,
    },
}

/// What is changed on a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSetting {
    /// `taint/KEY:EFFECT`: a taint with no value.
    Taint { key: String, effect: String },
    /// `unschedulable`: the cordon (`spec.unschedulable`).
    Cordon,
}

impl NodeSetting {
    /// The setting as an `InfraChange` names it.
    pub fn parse(setting: &str) -> Option<Self> {
        if setting == UNSCHEDULABLE {
            return Some(Self::Cordon);
        }
        let (key, effect) = setting.strip_prefix("taint/")?.rsplit_once(':')?;
        Some(Self::Taint {
            key: key.to_string(),
            effect: effect.to_string(),
        })
    }
}

impl Target {
    /// Resolves the object's target. `None` while the provider's adapter is not connected;
    /// an error when the setting cannot be understood (nothing will ever apply it).
    pub fn of(
        ic: &InfraChange,
        client: &Client,
        adapter: impl FnOnce(&str) -> Option<Arc<dyn Hypervisor>>,
    ) -> Result<Option<Self>, TargetError> {
        let spec = &ic.spec;
        match spec.target.kind {
            ChangeTargetKind::VirtualMachine => {
                let (Some(provider), Some(id)) = (&spec.target.provider, &spec.target.vm_id) else {
                    return Err(TargetError::Unsupported(
                        "the target names no provider or VM id".into(),
                    ));
                };
                if spec.setting == HOST {
                    return Ok(adapter(provider).map(|adapter| Self::Placement {
                        adapter,
                        vm: VmId::new(id),
                    }));
                }
                let tunable: Tunable = spec
                    .setting
                    .parse()
                    .map_err(|e| TargetError::Unsupported(format!("setting: {e}")))?;
                Ok(adapter(provider).map(|adapter| Self::Vm {
                    adapter,
                    vm: VmId::new(id),
                    tunable,
                }))
            }
            ChangeTargetKind::Node => {
                let Some(setting) = NodeSetting::parse(&spec.setting) else {
                    return Err(TargetError::Unsupported(format!(
                        "unknown node setting {:?} (expected taint/KEY:EFFECT or {UNSCHEDULABLE})",
                        spec.setting
                    )));
                };
                Ok(Some(Self::Node {
                    client: client.clone(),
                    name: spec.target.name.clone(),
                    setting,
                }))
            }
            ChangeTargetKind::Host => {
                let Some(provider) = &spec.target.provider else {
                    return Err(TargetError::Unsupported(
                        "the target names no provider".into(),
                    ));
                };
                if spec.setting != MAINTENANCE_MODE {
                    return Err(TargetError::Unsupported(format!(
                        "unknown host setting {:?} (expected {MAINTENANCE_MODE})",
                        spec.setting
                    )));
                }
                Ok(adapter(provider).map(|adapter| Self::Host {
                    adapter,
                    host: spec.target.name.clone(),
                }))
            }
            ChangeTargetKind::Cluster => {
                let Some(provider) = &spec.target.provider else {
                    return Err(TargetError::Unsupported(
                        "the target names no provider".into(),
                    ));
                };
                let Some(name) = spec.setting.strip_prefix(DRS_RULE_PREFIX) else {
                    return Err(TargetError::Unsupported(format!(
                        "unknown cluster setting {:?} (expected {DRS_RULE_PREFIX}NAME)",
                        spec.setting
                    )));
                };
                Ok(adapter(provider).map(|adapter| Self::Rule {
                    adapter,
                    cluster: spec.target.name.clone(),
                    name: name.to_string(),
                }))
            }
            ChangeTargetKind::Deployment | ChangeTargetKind::StatefulSet => {
                let (Some(kind), Some(namespace)) =
                    (spec.target.workload_kind(), spec.target.namespace.clone())
                else {
                    return Err(TargetError::Unsupported(
                        "the target names no namespace".into(),
                    ));
                };
                if spec.setting != REPLICAS {
                    return Err(TargetError::Unsupported(format!(
                        "unknown workload setting {:?} (expected {REPLICAS})",
                        spec.setting
                    )));
                }
                Ok(Some(Self::Replicas {
                    client: client.clone(),
                    workload: WorkloadRef {
                        kind,
                        namespace,
                        name: spec.target.name.clone(),
                    },
                }))
            }
        }
    }

    pub async fn read(&self, deadline: Duration) -> Result<Reading, TargetError> {
        match self {
            Self::Vm {
                adapter,
                vm,
                tunable,
            } => {
                let report = bounded(deadline, "reading", adapter.tunables(vm)).await?;
                if let Some((_, why)) = report.unsupported.iter().find(|(t, _)| t == tunable) {
                    return Err(TargetError::Unsupported(format!("{tunable}: {why}")));
                }
                let current = report.current(tunable).ok_or_else(|| {
                    TargetError::Failed(format!(
                        "VM {vm} reports no {tunable} (no such disk, or not running)"
                    ))
                })?;
                Ok(Reading {
                    current: current.to_string(),
                    recorded_original: report.original(tunable).map(|v| v.to_string()),
                })
            }
            Self::Placement { adapter, vm } => {
                let vms = bounded(deadline, "reading", adapter.inventory()).await?;
                let found = vms.iter().find(|v| &v.id == vm).ok_or_else(|| {
                    TargetError::Failed(format!("the provider reports no VM {vm}"))
                })?;
                Ok(Reading {
                    current: found.host.clone(),
                    recorded_original: None,
                })
            }
            Self::Node {
                client,
                name,
                setting,
            } => {
                let node = bounded(
                    deadline,
                    "reading",
                    Api::<Node>::all(client.clone()).get(name),
                )
                .await?;
                let present = match setting {
                    NodeSetting::Taint { key, effect } => {
                        taints_of(&node).iter().any(|t| is(t, key, effect))
                    }
                    NodeSetting::Cordon => {
                        node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
                    }
                };
                Ok(Reading {
                    current: if present { PRESENT } else { ABSENT }.to_string(),
                    recorded_original: None,
                })
            }
            Self::Host { adapter, host } => {
                let hosts = bounded(deadline, "reading", adapter.host_states()).await?;
                let state = hosts.iter().find(|h| &h.name == host).ok_or_else(|| {
                    TargetError::Failed(format!("the provider reports no host {host}"))
                })?;
                Ok(Reading {
                    current: if state.in_maintenance {
                        PRESENT
                    } else {
                        ABSENT
                    }
                    .to_string(),
                    recorded_original: None,
                })
            }
            Self::Rule {
                adapter,
                cluster,
                name,
            } => {
                let rule = bounded(
                    deadline,
                    "reading",
                    adapter.anti_affinity_rule(cluster, name),
                )
                .await?;
                Ok(Reading {
                    current: rule.map_or_else(|| ABSENT.to_string(), |r| rule_value(&r)),
                    recorded_original: None,
                })
            }
            Self::Replicas { client, workload } => {
                let obj = bounded(
                    deadline,
                    "reading",
                    workload_api(client, workload).get(&workload.name),
                )
                .await?;
                Ok(Reading {
                    current: replicas_of(&obj).to_string(),
                    recorded_original: None,
                })
            }
        }
    }

    pub async fn set(&self, value: &str, deadline: Duration) -> Result<(), TargetError> {
        match self {
            Self::Vm {
                adapter,
                vm,
                tunable,
            } => {
                let value: u64 = value.parse().map_err(|_| {
                    TargetError::Unsupported(format!("{tunable}: {value:?} is not a whole number"))
                })?;
                bounded(
                    deadline,
                    "applying",
                    adapter.apply(vm, &[Setting::new(tunable.clone(), value)]),
                )
                .await
            }
            Self::Placement { adapter, vm } => {
                // A vMotion copies memory: minutes, not the seconds a setting takes.
                let deadline = deadline.max(RELOCATION_DEADLINE);
                bounded(
                    deadline,
                    "relocating",
                    adapter.relocate(vm, value, deadline),
                )
                .await
            }
            Self::Node {
                client,
                name,
                setting,
            } => {
                let want = value == PRESENT;
                match setting {
                    NodeSetting::Taint { key, effect } => {
                        bounded(
                            deadline,
                            "changing the taint",
                            set_taint(client, name, key, effect, want),
                        )
                        .await
                    }
                    NodeSetting::Cordon => {
                        bounded(
                            deadline,
                            if want { "cordoning" } else { "uncordoning" },
                            set_cordon(client, name, want),
                        )
                        .await
                    }
                }
            }
            Self::Host { adapter, host } => {
                if value == PRESENT {
                    bounded(
                        deadline,
                        "entering maintenance mode",
                        adapter.enter_maintenance(host, deadline),
                    )
                    .await
                } else {
                    bounded(
                        deadline,
                        "leaving maintenance mode",
                        adapter.exit_maintenance(host, deadline),
                    )
                    .await
                }
            }
            Self::Rule {
                adapter,
                cluster,
                name,
            } => {
                if value == ABSENT {
                    return bounded(
                        deadline,
                        "removing the rule",
                        adapter.remove_anti_affinity_rule(cluster, name),
                    )
                    .await;
                }
                // An original can be someone's disabled rule of this name.
                let (enabled, value) = match value.strip_prefix(DISABLED) {
                    Some(rest) => (false, rest),
                    None => (true, value),
                };
                let wanted = RuleValue::decode(value).ok_or_else(|| {
                    TargetError::Unsupported(format!(
                        "rule {name}: {value:?} is not should:VM,VM… or must:VM,VM…"
                    ))
                })?;
                let rule = AntiAffinityRule {
                    name: name.clone(),
                    mandatory: wanted.mandatory,
                    enabled,
                    vms: wanted.vms.iter().map(VmId::new).collect(),
                };
                bounded(
                    deadline,
                    "writing the rule",
                    adapter.set_anti_affinity_rule(cluster, &rule),
                )
                .await
            }
            Self::Replicas { client, workload } => {
                let replicas: i32 = value.parse().map_err(|_| {
                    TargetError::Unsupported(format!("replicas: {value:?} is not a whole number"))
                })?;
                bounded(
                    deadline,
                    "scaling",
                    set_replicas(client, workload, replicas),
                )
                .await
            }
        }
    }

    /// Restores `original`. On a VM the adapter restores the original recorded on the VM and
    /// forgets the record; a VM without a record (dropped with a restart of the domain) is
    /// fine when it already has the original, and an error otherwise (never guessed).
    pub async fn restore(&self, original: &str, deadline: Duration) -> Result<(), TargetError> {
        match self {
            Self::Vm {
                adapter,
                vm,
                tunable,
            } => {
                let restored = bounded(
                    deadline,
                    "restoring",
                    adapter.revert(vm, std::slice::from_ref(tunable)),
                )
                .await?;
                if !restored.is_empty() {
                    return Ok(());
                }
                let now = self.read(deadline).await?.current;
                if now == original {
                    Ok(())
                } else {
                    Err(TargetError::Failed(format!(
                        "VM {vm} has no original recorded for {tunable} and it is {now}, not the \
                         ledger's original {original}: set it back by hand, or annotate the \
                         InfraChange {}=true to drop it",
                        plumbline_crds::names::ABANDON_ANNOTATION
                    )))
                }
            }
            // Never called: a relocation is one-shot (the actuator releases it).
            Self::Placement { .. } => Err(TargetError::Unsupported(
                "a relocation is not undone".into(),
            )),
            Self::Node { .. } if original == PRESENT => Ok(()),
            Self::Node { .. } => self.set(ABSENT, deadline).await,
            Self::Replicas { .. } | Self::Host { .. } | Self::Rule { .. } => {
                self.set(original, deadline).await
            }
        }
    }
}

/// A rule as a ledger value: `should:…`/`must:…`, or `disabled:…` for a rule someone turned
/// off (never what is wanted, so it is corrected).
fn rule_value(rule: &AntiAffinityRule) -> String {
    let value = RuleValue {
        mandatory: rule.mandatory,
        vms: rule.vms.iter().map(|v| v.as_str().to_string()).collect(),
    }
    .encode();
    if rule.enabled {
        value
    } else {
        format!("{DISABLED}{value}")
    }
}

const DISABLED: &str = "disabled:";

/// How long a relocation (vMotion) may take before the call gives up. The server's task goes
/// on; the entry's retry (with backoff) finds the VM moved, or is refused while that task
/// still runs.
const RELOCATION_DEADLINE: Duration = Duration::from_secs(600);

/// A call that gives up at the deadline; the error says what was being done.
async fn bounded<T, E: Into<TargetError>>(
    deadline: Duration,
    doing: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, TargetError> {
    match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(TargetError::Failed(format!(
            "{doing}: no answer within the deadline of {deadline:?}"
        ))),
        Ok(Err(e)) => Err(match e.into() {
            TargetError::Unsupported(m) => TargetError::Unsupported(format!("{doing}: {m}")),
            TargetError::Failed(m) => TargetError::Failed(format!("{doing}: {m}")),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

impl From<plumbline_adapters::Error> for TargetError {
    fn from(e: plumbline_adapters::Error) -> Self {
        match e {
            e if e.is_unsupported() => Self::Unsupported(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

impl From<kube::Error> for TargetError {
    fn from(e: kube::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn is(t: &Taint, key: &str, effect: &str) -> bool {
    t.key == key && t.effect == effect
}

/// `spec.unschedulable` is one scalar: a merge patch sets it (`null` uncordons, as
/// `kubectl uncordon` leaves it).
async fn set_cordon(client: &Client, name: &str, want: bool) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"unschedulable": if want { json!(true) } else { json!(null) }}});
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Attempts per taint change when others write the node at the same moment.
const ATTEMPTS: usize = 3;

/// `spec.taints` is shared with the node lifecycle controller, admins and other tools, and it
/// is an atomic list (no merge key; server-side apply would make one manager own all of it).
/// So the node is read fresh, only this taint is added or removed, and the list goes back in
/// a merge patch carrying the resourceVersion read: a concurrent change makes the write fail
/// with a conflict instead of being overwritten, and it is retried on fresh data.
async fn set_taint(
    client: &Client,
    name: &str,
    key: &str,
    effect: &str,
    want: bool,
) -> Result<(), kube::Error> {
    let api = Api::<Node>::all(client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = api.get(name).await?;
        let taints = taints_of(&node);
        let has = taints.iter().any(|t| is(t, key, effect));
        if has == want {
            return Ok(());
        }
        let mut next: Vec<Taint> = taints
            .iter()
            .filter(|t| !is(t, key, effect))
            .cloned()
            .collect();
        if want {
            next.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                ..Taint::default()
            });
        }
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": if next.is_empty() { json!(null) } else { json!(next) } },
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < ATTEMPTS => {
                debug!(node = %name, attempt, "node changed while tainting; retrying on fresh data");
            }
            Err(e) => return Err(e),
        }
    }
}

/// `spec.replicas`; unset means 1 to Kubernetes.
fn replicas_of(obj: &DynamicObject) -> i64 {
    WorkloadField::Replicas
        .get(obj)
        .and_then(|v| v.as_i64())
        .unwrap_or(1)
}

/// The field manager a surge writes replicas as when nobody owns the field.
pub const SURGE_MANAGER: &str = "plumbline-maintenance";

/// Sets `spec.replicas` with a merge patch carrying the resourceVersion read, in the name of
/// the manager that owns the field (the intent's own field manager while its replica floor
/// holds it, else the user's tool): the surge and its undo leave the field's ownership where
/// it was, so neither the intent controller nor the user's next apply sees a new owner.
async fn set_replicas(
    client: &Client,
    workload: &WorkloadRef,
    replicas: i32,
) -> Result<(), kube::Error> {
    let api = workload_api(client, workload);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let obj = api.get(&workload.name).await?;
        if replicas_of(&obj) == i64::from(replicas) {
            return Ok(());
        }
        let manager = if fields::owned_by(&obj, WorkloadField::Replicas, FIELD_MANAGER) {
            FIELD_MANAGER.to_string()
        } else {
            fields::other_owner(&obj, WorkloadField::Replicas)
                .unwrap_or_else(|| SURGE_MANAGER.to_string())
        };
        let patch = json!({
            "metadata": { "resourceVersion": obj.resource_version() },
            "spec": { "replicas": replicas },
        });
        let params = PatchParams {
            field_manager: Some(manager),
            ..Default::default()
        };
        match api
            .patch(&workload.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < ATTEMPTS => {
                debug!(workload = %workload, attempt, "workload changed while scaling; retrying on fresh data");
            }
            Err(e) => return Err(e),
        }
    }
}
