//! The middle test tier: the intent controller's reconcile and one storage-health pass against a
//! scripted API server (a `tower` service standing in for the client's connection, in the
//! spirit of controller-rs' `fixtures.rs`), asserting the exact requests they make. No stack;
//! runs in milliseconds.
//!
//! The fake server keeps what it is given: GETs of objects it holds return them, lists return
//! what it holds under the path, and writes (apply, merge patch, create) are recorded and
//! answered with the object as sent, so the controller reads back what it wrote.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::{
    client::Body,
    runtime::{events::Recorder, reflector, watcher},
    Client,
};
use plumbline_crds::WorkloadIntent;
use plumbline_operator::{
    clock::SystemClock,
    context::{Adapters, Context, RetryBackoff},
    discovery::ServedApis,
    metrics::Metrics,
};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query.
    uri: String,
    body: Value,
}

#[derive(Default)]
struct FakeApiServer {
    /// Objects by path (`/apis/apps/v1/namespaces/shop/deployments/web`).
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
}

impl FakeApiServer {
    fn answer(
        &mut self,
        method: &Method,
        path: &str,
        apply_by: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        match *method {
            Method::GET => match self.objects.get(path) {
                Some(o) => (StatusCode::OK, o.clone()),
                None if is_collection(path) => {
                    let items: Vec<Value> = self
                        .objects
                        .iter()
                        .filter(|(p, _)| p.rsplit_once('/').is_some_and(|(dir, _)| dir == path))
                        .map(|(_, o)| o.clone())
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => (StatusCode::NOT_FOUND, not_found(path)),
            },
            Method::PATCH | Method::PUT => {
                let key = path.trim_end_matches("/status").to_string();
                let mut object = self.objects.get(&key).cloned().unwrap_or_else(|| json!({}));
                if let Some(failed) = failed_test(&object, body) {
                    return (StatusCode::UNPROCESSABLE_ENTITY, invalid(path, &failed));
                }
                match body {
                    Value::Array(ops) => json_patch(&mut object, ops),
                    _ => merge(&mut object, body),
                }
                if let (Some(manager), false) = (apply_by, path.ends_with("/status")) {
                    record_apply(&mut object, manager, body);
                }
                object["metadata"]["resourceVersion"] = json!("2");
                self.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or("generated")
                    .to_string();
                self.objects.insert(format!("{path}/{name}"), body.clone());
                (StatusCode::CREATED, body.clone())
            }
            Method::DELETE
                if body["preconditions"]["uid"].as_str().is_some_and(|uid| {
                    self.objects
                        .get(path)
                        .is_some_and(|o| o["metadata"]["uid"].as_str() != Some(uid))
                }) =>
            {
                (StatusCode::CONFLICT, conflict(path))
            }
            Method::DELETE => match self.objects.remove(path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                None => (StatusCode::NOT_FOUND, not_found(path)),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, not_found(path)),
        }
    }
}

fn is_collection(path: &str) -> bool {
    // /api/v1/namespaces/NS/pods, /apis/G/V/namespaces/NS/R: an even number of segments
    // after the version means a collection.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let after_version = if segments.first() == Some(&"api") {
        2
    } else {
        3
    };
    segments.len().saturating_sub(after_version) % 2 == 1
}

fn not_found(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
           "code": 404, "message": format!("{path} not found")})
}

/// Server-side apply's bookkeeping: the manager's entry in `managedFields` becomes exactly the
/// fields it sent (an empty configuration leaves it none, which releases them).
fn record_apply(object: &mut Value, manager: &str, body: &Value) {
    fn fields(v: &Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (format!("f:{k}"), fields(v)))
                    .collect(),
            ),
            _ => json!({}),
        }
    }
    let mut sent = body.clone();
    if let Some(o) = sent.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
    if let Some(meta) = sent.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["name", "namespace", "resourceVersion"] {
            meta.remove(key);
        }
    }
    if let Some(o) = sent.as_object_mut() {
        o.retain(|_, v| v.as_object().is_none_or(|m| !m.is_empty()));
    }
    let entries = object["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut entries: Vec<Value> = entries
        .into_iter()
        .filter(|e| e["manager"] != manager)
        .collect();
    if sent.as_object().is_some_and(|o| !o.is_empty()) {
        entries.push(
            json!({"manager": manager, "operation": "Apply", "apiVersion": "v1",
                            "fieldsType": "FieldsV1", "fieldsV1": fields(&sent)}),
        );
    }
    object["metadata"]["managedFields"] = json!(entries);
}

/// The first JSON Patch `test` operation that fails on `object`, if any: the whole patch is
/// then refused, as the API server does.
fn failed_test(object: &Value, patch: &Value) -> Option<String> {
    patch.as_array()?.iter().find_map(|op| {
        let path = op["path"].as_str()?;
        (op["op"] == "test" && object.pointer(path) != Some(&op["value"]))
            .then(|| format!("test of {path} failed"))
    })
}

fn invalid(path: &str, why: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
           "code": 422, "message": format!("{path}: {why}")})
}

fn conflict(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
           "code": 409, "message": format!("{path}: Precondition failed: UID in precondition")})
}

/// The JSON Patch operations kube's finalizer helper sends (add, replace, remove; tests are
/// checked first by [`failed_test`]).
fn json_patch(into: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(parent) = into.pointer_mut(parent) else {
            continue;
        };
        match (op["op"].as_str(), parent) {
            (Some("remove"), Value::Object(o)) => {
                o.remove(last);
            }
            (Some("remove"), Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>() {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
            (Some("add" | "replace"), Value::Object(o)) => {
                o.insert(last.to_string(), op["value"].clone());
            }
            (Some("add" | "replace"), Value::Array(a)) => match last.parse::<usize>() {
                Ok(i) if i < a.len() => a[i] = op["value"].clone(),
                _ => a.push(op["value"].clone()),
            },
            _ => {}
        }
    }
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A client whose every request goes to `server`.
fn client(server: Arc<Mutex<FakeApiServer>>) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let server = server.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let uri = parts.uri.to_string();
            let path = parts.uri.path().to_string();
            let apply = parts
                .headers
                .get("content-type")
                .is_some_and(|t| t.as_bytes().starts_with(b"application/apply-patch"));
            let manager = parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("fieldManager="))
                    .map(str::to_string)
            });
            let apply_by = manager.filter(|_| apply);
            let mut s = server.lock().unwrap();
            s.seen.push(Seen {
                method: parts.method.clone(),
                uri,
                body: body.clone(),
            });
            let (status, answer) = s.answer(&parts.method, &path, apply_by.as_deref(), &body);
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            )
        }
    });
    Client::new(service, "default")
}

fn context(client: Client) -> Arc<Context> {
    context_with(client, Vec::new())
}

/// A context whose intent cache holds `cached`.
fn context_with(client: Client, cached: Vec<WorkloadIntent>) -> Arc<Context> {
    let mut registry = prometheus_client::registry::Registry::default();
    // Both caches synced and empty: no other intent, no TenantPolicy (everything allowed).
    let intents = store_of(cached);
    let tenants = store_of(Vec::new());
    let (reconcile, _) = tokio::sync::mpsc::unbounded_channel();
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), Context::reporter("fixture")),
        client,
        metrics: Metrics::register(&mut registry),
        clock: Arc::new(SystemClock),
        apis: ServedApis {
            pdb: kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "policy",
                "v1",
                "PodDisruptionBudget",
            )),
        },
        adapters: Arc::new(Adapters::default()),
        intents,
        tenants,
        reconcile,
        identity: "fixture".into(),
        prometheus: Default::default(),
        retries: RetryBackoff::default(),
        event_namespace_in_reference: Default::default(),
    })
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";
const INTENT: &str = "/apis/plumbline.dev/v1alpha1/namespaces/shop/workloadintents/web";
const PDB: &str = "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/web-plumbline";

fn server_with_web() -> Arc<Mutex<FakeApiServer>> {
    let mut server = FakeApiServer::default();
    server.objects.insert(
        DEPLOYMENT.into(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1", "uid": "d1"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}
        }),
    );
    Arc::new(Mutex::new(server))
}

fn intent(finalizers: &[&str], deleting: bool) -> WorkloadIntent {
    let mut wi: WorkloadIntent = serde_json::from_value(json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
        "metadata": {"name": "web", "namespace": "shop", "uid": "i1", "generation": 1,
                     "resourceVersion": "1", "finalizers": finalizers},
        "spec": {"target": {"kind": "Deployment", "name": "web"}, "priority": "high",
                 "availability": {"replicaFloor": 2, "minAvailable": 1}}
    }))
    .unwrap();
    if deleting {
        wi.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
    }
    wi
}

/// The writes, as `METHOD path` (query left out), in order; reads and Events left out.
fn writes(server: &Arc<Mutex<FakeApiServer>>) -> Vec<String> {
    server
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| s.method != Method::GET && !s.uri.contains("/events"))
        .map(|s| {
            format!(
                "{} {}",
                s.method,
                s.uri.split('?').next().unwrap_or_default()
            )
        })
        .collect()
}

fn body_of(server: &Arc<Mutex<FakeApiServer>>, method: Method, path: &str) -> Value {
    server
        .lock()
        .unwrap()
        .seen
        .iter()
        .rev()
        .find(|s| s.method == method && s.uri.split('?').next() == Some(path))
        .map(|s| s.body.clone())
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

#[tokio::test]
async fn an_intent_applied_makes_exactly_these_requests() {
    let server = server_with_web();
    server.lock().unwrap().objects.insert(
        INTENT.into(),
        serde_json::to_value(intent(&["plumbline.dev/revert"], false)).unwrap(),
    );
    let ctx = context(client(server.clone()));
    plumbline_operator::controller::reconcile(
        Arc::new(intent(&["plumbline.dev/revert"], false)),
        ctx,
    )
    .await
    .expect("reconcile");

    assert_eq!(
        writes(&server),
        [
            "PATCH /apis/scheduling.k8s.io/v1/priorityclasses/plumbline-high",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
            &format!("PATCH {PDB}"),
            &format!("PATCH {INTENT}/status"),
        ]
    );
    let applied = body_of(&server, Method::PATCH, DEPLOYMENT);
    assert_eq!(applied["spec"]["replicas"], 2);
    assert_eq!(
        applied["spec"]["template"]["spec"]["priorityClassName"],
        "plumbline-high"
    );
    assert_eq!(
        applied["metadata"]["annotations"]["plumbline.dev/held-by"], "web",
        "{applied:#}"
    );
    let pdb = body_of(&server, Method::PATCH, PDB);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let status = body_of(&server, Method::PATCH, &format!("{INTENT}/status"));
    let ready = status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned();
    assert_eq!(
        ready.as_ref().map(|c| c["status"].clone()),
        Some(json!("True")),
        "{status:#}"
    );
}

#[tokio::test]
async fn an_intent_deleted_reverts_with_exactly_these_requests() {
    let server = server_with_web();
    let applied = intent(&["plumbline.dev/revert"], false);
    server
        .lock()
        .unwrap()
        .objects
        .insert(INTENT.into(), serde_json::to_value(&applied).unwrap());
    let ctx = context(client(server.clone()));
    plumbline_operator::controller::reconcile(Arc::new(applied), ctx.clone())
        .await
        .expect("applying");
    // The intent as stored now (with status.plan, the record of what to revert), deleted.
    let stored = server.lock().unwrap().objects[INTENT].clone();
    let mut deleted: WorkloadIntent = serde_json::from_value(stored).unwrap();
    deleted.metadata.deletion_timestamp = intent(&[], true).metadata.deletion_timestamp;
    server.lock().unwrap().seen.clear();

    plumbline_operator::controller::reconcile(Arc::new(deleted), ctx)
        .await
        .expect("reverting");
    let w = writes(&server);
    assert_eq!(
        w,
        [
            format!("DELETE {PDB}"),
            format!("PATCH {DEPLOYMENT}"),
            format!("PATCH {INTENT}"),
        ],
        "in the reverse order of holding: the budget, the workload's fields, then the finalizer"
    );
    let released = body_of(&server, Method::PATCH, DEPLOYMENT);
    assert!(released["spec"].get("replicas").is_none(), "{released:#}");
    let stored = server.lock().unwrap().objects[INTENT].clone();
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!([]),
        "the finalizer removed (a JSON patch guarded by a test of its position)"
    );
}

/// A store holding `objects`, synced.
fn store_of<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: reflector::Lookup<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

fn pod(name: &str) -> plumbline_operator::health::pod::CachedPod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "abc"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                          "uid": "rs1", "controller": true}]},
        "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": "plumbline.dev/storage-healthy"}],
                 "containers": [{"name": "app"}]},
        "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "plumbline.dev/storage-healthy", "status": "True", "reason": "LatencyWithinBudget"}]}
    }))
    .unwrap()
}

/// One storage-health pass: three pods of `web` (critical, 5 ms budget, `maxUnready: 2`) on
/// node `n1`, backed by libvirt guest `vm1` whose disk took 40 ms per operation in the last
/// three samples; with `noisy`, a guest `vm2` on the same datastore doing 400 IOPS, and the
/// intent allowed to throttle noisy neighbours. Returns the server and the changes the pass
/// wants in the ledger.
async fn health_pass(
    noisy: bool,
) -> (
    Arc<Mutex<FakeApiServer>>,
    Vec<plumbline_crds::InfraChangeSpec>,
) {
    use plumbline_adapters::{
        BackingVm, Capability, DiskLatency, OpLatency, Support, VmDisk, VmId,
    };
    use plumbline_operator::health::{
        book::{HealthBook, ProviderView},
        caches::Caches,
        feedback::Feedback,
        HealthSettings,
    };
    use std::time::{Duration, SystemTime};

    let server = Arc::new(Mutex::new(FakeApiServer::default()));
    let wi: WorkloadIntent = serde_json::from_value(json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent",
        "metadata": {"name": "web", "namespace": "shop", "uid": "i1", "generation": 1},
        "spec": {"target": {"kind": "Deployment", "name": "web"}, "priority": "critical",
                 "storage": {"latencyBudget": "5ms", "readinessGate": true, "maxUnready": 2},
                 "infrastructure": {"throttleNoisyNeighbours": noisy}}
    }))
    .unwrap();
    server
        .lock()
        .unwrap()
        .objects
        .insert(INTENT.into(), serde_json::to_value(&wi).unwrap());
    let ctx = context_with(client(server.clone()), vec![wi]);
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"}, "spec": {"providerID": "libvirt:///u1"}
    }))
    .unwrap();
    let caches = Caches {
        pods: store_of(vec![pod("web-abc-1"), pod("web-abc-2"), pod("web-abc-3")]),
        nodes: store_of(vec![node]),
        providers: store_of(Vec::new()),
        changes: store_of(Vec::new()),
        maintenances: store_of(Vec::new()),
    };
    let guest = |id: &str, name: &str| BackingVm {
        id: VmId::new(id),
        name: name.into(),
        provider_id: format!("libvirt:///{id}"),
        host: "h1".into(),
        cluster: None,
        datastores: vec!["/ds".into()],
        disks: vec![VmDisk {
            name: "vda".into(),
            path: None,
            datastore: Some("/ds".into()),
        }],
        running: true,
    };
    let mut provider = ProviderView::new(
        "kvm",
        Duration::from_secs(1),
        plumbline_crds::NodeMappingStrategy::ProviderId,
        None,
    );
    provider.connected = true;
    provider
        .capabilities
        .entries
        .insert(Capability::DiskIopsLimit, Support::Supported);
    let mut vms = vec![guest("u1", "vm1")];
    if noisy {
        vms.push(guest("u2", "vm2"));
    }
    let mut book = HealthBook::default();
    book.insert_provider(provider.with_inventory(vms));
    let now = SystemTime::now();
    for i in (0..3).rev() {
        let at = now - Duration::from_secs(i);
        let disk = |vm: &str, ms: u64, ops: u64| {
            let op = Some(OpLatency {
                mean: Duration::from_millis(ms),
                ops: Some(ops),
            });
            DiskLatency {
                vm: VmId::new(vm),
                disk: "vda".into(),
                read: op,
                write: op,
                flush: None,
                window: Duration::from_secs(1),
                observed_at: at,
            }
        };
        book.record_samples("kvm", at, &[disk("u1", 40, 100), disk("u2", 1, 200)]);
    }
    let book = Arc::new(Mutex::new(book));
    let (_term, end) = plumbline_operator::term::TermEnd::new();
    let mut feedback = Feedback::new(&ctx, end, true);
    let (wanted, _) = feedback
        .pass(
            &ctx,
            &caches,
            &book,
            &HealthSettings::default(),
            "namespace/shop",
            now,
        )
        .await;
    // The intent's status is written in the background, after the pass.
    for _ in 0..250 {
        if writes(&server)
            .iter()
            .any(|w| w.ends_with("/workloadintents/web/status"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, wanted)
}

#[tokio::test]
async fn a_health_pass_marks_pods_unready_under_the_guard_with_exactly_these_requests() {
    let (server, wanted) = health_pass(false).await;
    assert_eq!(
        writes(&server),
        [
            "PATCH /api/v1/namespaces/shop/pods/web-abc-1/status",
            "PATCH /api/v1/namespaces/shop/pods/web-abc-2/status",
            "PATCH /api/v1/namespaces/shop/pods/web-abc-3/status",
            "PATCH /api/v1/nodes/n1/status",
            "PATCH /apis/plumbline.dev/v1alpha1/namespaces/shop/workloadintents/web/status",
        ]
    );
    let reasons: Vec<String> = (1..=3)
        .map(|i| {
            let path = format!("/api/v1/namespaces/shop/pods/web-abc-{i}/status");
            let body = body_of(&server, Method::PATCH, &path);
            let c = &body["status"]["conditions"][0];
            format!(
                "{} {}",
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "False LatencyOverBudget")
            .count(),
        2,
        "maxUnready 2: {reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "True OverBudgetHeldByGuard")
            .count(),
        1,
        "the last ready pod is held: {reasons:?}"
    );
    let status = body_of(&server, Method::PATCH, &format!("{INTENT}/status"));
    assert_eq!(status["status"]["guard"]["allowedUnready"], 2, "{status:#}");
    assert!(wanted.is_empty(), "no throttle asked for: {wanted:?}");
}

#[tokio::test]
async fn a_health_pass_decides_a_throttle_and_asks_the_ledger_for_it() {
    let (server, wanted) = health_pass(true).await;
    // The pass writes what it writes without a throttle; the throttle itself is a ledger
    // entry it returns (the writer creates it, an actuator carries it out), never a call.
    assert_eq!(writes(&server).len(), 5, "{:?}", writes(&server));
    assert_eq!(wanted.len(), 1, "{wanted:#?}");
    let throttle = &wanted[0];
    assert_eq!(
        throttle.purpose,
        plumbline_crds::ChangePurpose::NeighbourThrottle
    );
    assert_eq!(throttle.target.name, "vm2");
    assert_eq!(throttle.operator, "namespace/shop");
    let limit: u64 = throttle.desired.parse().expect("an IOPS figure");
    // 200 reads and 200 writes a second: the first step is a fraction of 400 IOPS.
    assert!(
        limit > 0 && limit < 400,
        "below the 400 IOPS it did: {limit}"
    );
    assert!(
        throttle.owners.iter().any(|o| o.intent == "shop/web"),
        "{throttle:#?}"
    );
}

const CHANGE: &str = "/apis/plumbline.dev/v1alpha1/infrachanges/vm2.disk.vda.total-iops-sec.1";

/// The ledger entry `CHANGE` as instance `operator` made it, with `uid`, deleted and held by
/// its finalizer.
fn change(uid: &str, operator: &str) -> plumbline_crds::InfraChange {
    serde_json::from_value(json!({
        "apiVersion": "plumbline.dev/v1alpha1", "kind": "InfraChange",
        "metadata": {"name": "vm2.disk.vda.total-iops-sec.1", "uid": uid, "resourceVersion": "1",
                     "finalizers": [plumbline_crds::names::INFRA_CHANGE_FINALIZER],
                     "deletionTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"target": {"kind": "VirtualMachine", "name": "vm2", "provider": "kvm", "vmId": "vm2"},
                 "setting": "disk.vda.total_iops_sec", "desired": "120",
                 "purpose": "NeighbourThrottle", "operator": operator},
        "status": {"state": "Applied", "original": "0"}
    }))
    .unwrap()
}

/// One instance's view lags: its entry is gone and another instance made a new one of the
/// same name (the same setting on the same VM). Nothing the first one still does about its
/// own entry may land on the new one: no finalizer removed, no status written, no delete.
#[tokio::test]
async fn a_lagging_instance_never_touches_a_new_entry_of_the_same_name() {
    use plumbline_operator::ledger::{report, writer::Writer};
    let server = Arc::new(Mutex::new(FakeApiServer::default()));
    let theirs = serde_json::to_value(change("new", "namespace/b")).unwrap();
    server
        .lock()
        .unwrap()
        .objects
        .insert(CHANGE.into(), theirs.clone());
    let ctx = context(client(server.clone()));
    let ours = change("old", "namespace/a");

    report::remove_finalizer(&ctx, &ours)
        .await
        .expect("ours is gone: nothing to do");
    let refused = report::write_status(&ctx, &ours, &Default::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "the status patch tests the uid first: {refused:?}"
    );
    let mut writer = Writer::new(Some("a"));
    let mut not_deleting = ours.clone();
    not_deleting.metadata.deletion_timestamp = None;
    writer
        .sync(
            &ctx,
            &store_of(vec![not_deleting]),
            &store_of(Vec::new()),
            Vec::new(),
        )
        .await;

    let delete = body_of(&server, Method::DELETE, CHANGE);
    assert_eq!(delete["preconditions"]["uid"], "old", "{delete:#}");
    assert_eq!(
        server.lock().unwrap().objects.get(CHANGE),
        Some(&theirs),
        "the other instance's entry is as it made it"
    );
}
