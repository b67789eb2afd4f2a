//! Shared setup for operator tests against the real stack (`e2e/stack up k8s`).
//!
//! Each test gets a fresh namespace and runs its own operator in-process as the restricted
//! `plumbline-operator` identity, scoped to that namespace, so tests sharing one API server do
//! not see each other's intents and RBAC mistakes fail as Forbidden.

#![allow(dead_code)]

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::apps::v1::Deployment,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use plumbline_crds::WorkloadIntent;
use plumbline_e2e::cluster::{TestNamespace, CRD_HELD_ANNOTATION};
use plumbline_operator::{
    clock::{Clock, ManualClock},
    health::HealthSettings,
    leader::LeaseConfig,
    run::{Operator, Settings},
};
use serde_json::json;
use std::{future::Future, sync::Arc, time::Duration};

pub mod process;

/// How long anything the operator does may take before a test gives up. Generous: the
/// machine has two cores shared with builds.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub admin: Client,
    pub operator_identity: Client,
    /// The test's own namespace (`op-<test>-<random>`), the operator's scope.
    pub namespace: String,
    test_namespace: TestNamespace,
}

impl Cluster {
    /// Connects to the stack (failing with how to start it if it is not up), makes sure the
    /// CRDs are installed, and creates a fresh namespace for the test.
    pub async fn connect(test: &str) -> Result<Self> {
        // The in-process operators' logs, when asked for: RUST_LOG=plumbline_operator=debug.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let stack = plumbline_e2e::Stack::load()
            .context("these tests need the real control plane; start it with `e2e/stack up k8s`")?;
        let admin = stack
            .admin_client()
            .await
            .context("admin client for the stack")?;
        let operator_identity = stack
            .operator_client()
            .await
            .context("operator client for the stack")?;
        install_crds(&admin).await?;
        let test_namespace =
            TestNamespace::create(&admin, &format!("op-{}", test.replace('_', "-"))).await?;
        Ok(Self {
            admin,
            operator_identity,
            namespace: test_namespace.name.clone(),
            test_namespace,
        })
    }

    pub fn settings(&self, identity: &str, leader_election: Option<LeaseConfig>) -> Settings {
        Settings {
            metrics_addr: "127.0.0.1:0".parse().expect("loopback address"),
            leader_election,
            concurrency: 2,
            identity: identity.to_string(),
            namespace: Some(self.namespace.clone()),
            health: test_health(),
            prometheus: None,
        }
    }

    /// Starts an operator as the restricted identity, without leader election.
    pub async fn start_operator(&self, clock: Arc<dyn Clock>) -> Result<Operator> {
        Ok(Operator::start(
            self.operator_identity.clone(),
            self.settings("test", None),
            clock,
        )
        .await?)
    }

    /// The same, with these storage-health settings (what `--unknown-readiness` and
    /// `--taint-degraded-nodes` choose).
    pub async fn start_operator_with_health(
        &self,
        clock: Arc<dyn Clock>,
        health: plumbline_operator::health::HealthSettings,
    ) -> Result<Operator> {
        Ok(Operator::start(
            self.operator_identity.clone(),
            Settings {
                health,
                ..self.settings("test", None)
            },
            clock,
        )
        .await?)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    pub fn intents(&self) -> Api<WorkloadIntent> {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    /// A Deployment owned by the field manager `e2e-owner`, as a user's `kubectl apply
    /// --server-side` would make it.
    pub async fn create_deployment(&self, name: &str, replicas: i32) -> Result<Deployment> {
        let body = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "automountServiceAccountToken": false,
                        "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
                    }
                }
            }
        });
        self.deployments()
            .patch(name, &PatchParams::apply("e2e-owner"), &Patch::Apply(&body))
            .await
            .with_context(|| format!("creating Deployment {name}"))
    }

    pub async fn apply_intent(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<WorkloadIntent> {
        let body = json!({
            "apiVersion": "plumbline.dev/v1alpha1",
            "kind": "WorkloadIntent",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        });
        self.intents()
            .patch(name, &PatchParams::apply("e2e-user"), &Patch::Apply(&body))
            .await
            .with_context(|| format!("applying WorkloadIntent {name}"))
    }

    pub async fn delete_intent(&self, name: &str) -> Result<()> {
        self.intents()
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting WorkloadIntent {name}"))?;
        Ok(())
    }

    /// Deletes the test's intents while `operator` still runs (so their finalizers complete),
    /// stops it, and removes the namespace.
    pub async fn finish(self, operator: Operator) -> Result<()> {
        let intents = self.intents();
        for wi in intents.list(&Default::default()).await?.items {
            let _ = intents
                .delete(&wi.name_any(), &DeleteParams::default())
                .await;
        }
        eventually("the test's intents to be finalized", || {
            let intents = intents.clone();
            async move {
                intents
                    .list(&Default::default())
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            }
        })
        .await?;
        operator.stop().await;
        self.cleanup().await;
        Ok(())
    }

    /// Removes the namespace.
    pub async fn cleanup(self) {
        self.test_namespace.delete().await;
    }
}

/// The storage-health settings tests run with: the defaults, but changes in force are read
/// back every 2 s instead of every 30 s, so drift shows within a test's patience.
pub fn test_health() -> HealthSettings {
    let mut health = HealthSettings::default();
    health.ledger.policy.readback_every = Duration::from_secs(2);
    // The stack slows a victim down by limiting its own disk, so no throttle of a neighbour
    // ever helps it: the ladder's judgement would undo every step. Tests of other things keep
    // their throttles (policies' unit tests cover the judgement).
    health.ladder.judge_after_samples = 0;
    // Topology labels are node-wide: only the tests of them (topology.rs) write them, so
    // tests of other things leave no field managers of theirs on the shared nodes.
    health.topology_labels = false;
    health
}

/// Applies the generated CRDs (idempotent) and waits until they are established.
pub async fn install_crds(admin: &Client) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(admin.clone());
    for (_, crd) in plumbline_crds::generate::crds() {
        let name = crd.name_any();
        // A test that needs a newer CRD for a while (the chart upgrade test) marks it held:
        // its schema is a superset of the generated one, and re-applying would take it away.
        // The apply carries the resourceVersion the check read, so a CRD held (or widened) in
        // between is never overwritten: the conflict makes it look again. Other test processes
        // installing at the same moment conflict the same way.
        for attempt in 0..=10 {
            let current = api.get_opt(&name).await?;
            if current
                .as_ref()
                .is_some_and(|c| c.annotations().contains_key(CRD_HELD_ANNOTATION))
            {
                break;
            }
            let mut body = crd.clone();
            body.metadata.resource_version = current.and_then(|c| c.metadata.resource_version);
            match api
                .patch(
                    &name,
                    &PatchParams::apply("plumbline-tests").force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 10 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("installing CRD {name}")))
                }
            }
        }
        eventually(&format!("CRD {name} established"), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

/// [`plumbline_e2e::poll::until`] with the operator's [`PATIENCE`], for the plain `Option`
/// probes of these tests: `None` is "not yet".
pub async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> Fut,
) -> Result<T> {
    plumbline_e2e::poll::until(what, PATIENCE, check).await
}

/// `/metrics` of an operator serving at `addr` (its `http_addr`), as text.
pub async fn metrics(addr: std::net::SocketAddr) -> Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

pub fn manual_clock(rfc3339: &str) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(at(rfc3339)))
}

/// The condition `type_` of the intent's status, if set.
pub fn condition(
    wi: &WorkloadIntent,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    wi.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// True when the condition has this status and reason.
pub fn has_condition(wi: &WorkloadIntent, type_: &str, status: &str, reason: &str) -> bool {
    condition(wi, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

impl Cluster {
    /// Polls the intent until `check` accepts it; returns it.
    pub async fn intent_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&WorkloadIntent) -> bool,
    ) -> Result<WorkloadIntent> {
        let api = self.intents();
        let last = std::sync::Mutex::new(None);
        let result = eventually(what, || {
            let api = api.clone();
            let check = &check;
            let last = &last;
            async move {
                let wi = api.get(name).await.ok()?;
                let ok = check(&wi);
                *last.lock().unwrap() = Some(wi.clone());
                ok.then_some(wi)
            }
        })
        .await;
        result.map_err(|e| {
            let status = last.lock().unwrap().as_ref().and_then(|w| w.status.clone());
            e.context(format!("last status of {name}: {status:#?}"))
        })
    }

    /// Polls the Deployment until `check` accepts it; returns it.
    pub async fn deployment_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Deployment) -> bool,
    ) -> Result<Deployment> {
        let api = self.deployments();
        eventually(what, || {
            let api = api.clone();
            let check = &check;
            async move {
                let d = api.get(name).await.ok()?;
                check(&d).then_some(d)
            }
        })
        .await
    }

    /// The PodDisruptionBudget API the server offers (policy/v1beta1 on 1.20).
    pub async fn pdbs(&self) -> Result<Api<kube::api::DynamicObject>> {
        let apis = plumbline_operator::discovery::ServedApis::discover(&self.admin).await?;
        Ok(Api::namespaced_with(
            self.admin.clone(),
            &self.namespace,
            &apis.pdb,
        ))
    }
}

pub fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.replicas
}

pub fn priority_class_name(d: &Deployment) -> Option<String> {
    d.spec.template.spec.as_ref()?.priority_class_name.clone()
}

/// Field managers that own `path` (e.g. `["spec", "replicas"]`) on the object.
pub fn owners(meta: &kube::api::ObjectMeta, path: &[&str]) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            let mut v = entry.fields_v1.as_ref().map(|f| &f.0);
            for key in path {
                v = v.and_then(|v| v.get(format!("f:{key}")));
            }
            v.is_some()
        })
        .filter_map(|entry| entry.manager.clone())
        .collect()
}
