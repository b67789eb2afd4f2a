//! `plumbline explain hostmaintenance/NAME`: the pre-flight and what the next pass would do,
//! decided by the same path the operator's pass takes ([`super::decision`]), against the live
//! cluster and the provider's inventory read now. Reads only; changes nothing.

use kube::{api::ListParams, Api, Client, ResourceExt};
use plumbline_crds::{
    HostMaintenance, HostMaintenanceStatus, HypervisorProvider, InfraChange, WorkloadIntent,
};
use plumbline_policies::maintenance::MaintenancePlan;
use std::{
    fmt::Write,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{decision, status, view};
use crate::{
    cli::ExplainOutput,
    discovery::ServedApis,
    health::{
        book::{HealthBook, ProviderView},
        pod::{CachedPod, Pools, WirePod},
    },
    Error, Result,
};

/// The hypervisor calls of an explanation give up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

pub async fn explain_maintenance(
    client: &Client,
    name: &str,
    output: ExplainOutput,
    now: SystemTime,
) -> Result<String> {
    let kube = |what: &str| {
        let what = what.to_string();
        move |source| Error::kube(what, source)
    };
    let hm = Api::<HostMaintenance>::all(client.clone())
        .get(name)
        .await
        .map_err(kube(&format!("reading HostMaintenance {name}")))?;
    let mut all: Vec<Arc<HostMaintenance>> = list(client)
        .await
        .map_err(kube("listing HostMaintenances"))?;
    all.retain(|o| o.metadata.deletion_timestamp.is_none());
    all.sort_by_key(|o| (o.metadata.creation_timestamp.clone(), o.name_any()));
    let Some(i) = all.iter().position(|o| o.name_any() == name) else {
        return Ok(format!(
            "HostMaintenance {name} is being deleted: its cordons, surges and maintenance mode are being undone\n"
        ));
    };
    let providers: Vec<Arc<HypervisorProvider>> = list(client)
        .await
        .map_err(kube("listing HypervisorProviders"))?;
    let book = Mutex::new(HealthBook::default());
    let mut notes = Vec::new();
    if let Some(hp) = providers.iter().find(|p| p.name_any() == hm.spec.provider) {
        match read_provider(client, hp).await {
            Ok(view) => {
                crate::locks::lock(&book).insert_provider(view);
            }
            Err(e) => notes.push(format!(
                "HypervisorProvider {} could not be read now ({e}); the plan below treats its inventory as unknown",
                hp.name_any()
            )),
        }
    }
    let changes: Vec<Arc<InfraChange>> = list(client).await.unwrap_or_default();
    let owner = view::owner_name(&hm);
    let operator = changes
        .iter()
        .find(|ic| ic.spec.owners.iter().any(|o| o.intent == owner))
        .map(|ic| ic.spec.operator.clone())
        .unwrap_or_else(|| crate::ledger::instance(None));
    let apis = ServedApis::discover(client).await?;
    let mut pools = Pools::default();
    let (nodes, pods, intents) = (
        list(client).await.map_err(kube("listing Nodes"))?,
        list::<WirePod>(client)
            .await
            .map_err(kube("listing Pods"))?
            .into_iter()
            .map(|p| Arc::new(CachedPod::from_wire(Arc::unwrap_or_clone(p), &mut pools)))
            .collect::<Vec<_>>(),
        list::<WorkloadIntent>(client).await.unwrap_or_default(),
    );
    let world = decision::World {
        client,
        apis: &apis,
        all: &all,
        providers: &providers,
        book: &book,
        nodes: &nodes,
        pods: &pods,
        intents: &intents,
        changes: &changes,
        operator: &operator,
    };
    let plan = decision::plan(&world, i, &mut None, now).await;
    let status = status::status_for(&hm, &plan, view::host_in_maintenance(&book, &hm), now);
    match output {
        ExplainOutput::Text => Ok(render(&hm, &plan, &status, &notes)),
        ExplainOutput::Yaml => serde_yaml::to_string(&status).map_err(|source| Error::Yaml {
            what: "the status".into(),
            source,
        }),
        ExplainOutput::Json => serde_json::to_string_pretty(&status)
            .map(|s| s + "\n")
            .map_err(|source| Error::Json {
                what: "encoding the status".into(),
                source,
            }),
    }
}

async fn list<K>(client: &Client) -> std::result::Result<Vec<Arc<K>>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect())
}

/// The provider's inventory and hosts, read now as its sampler reads them.
async fn read_provider(
    client: &Client,
    hp: &HypervisorProvider,
) -> std::result::Result<ProviderView, String> {
    let valid = plumbline_policies::validate_provider(&hp.spec).map_err(|e| e.to_string())?;
    let config = crate::health::providers::adapter_config(client, hp).await?;
    let adapter = tokio::time::timeout(DEADLINE, plumbline_adapters::connect(config))
        .await
        .map_err(|_| format!("no connection within {DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let read = async {
        let inventory = adapter.inventory().await?;
        let hosts = adapter.host_states().await.unwrap_or_default();
        Ok::<_, plumbline_adapters::Error>((inventory, hosts))
    };
    let result = tokio::time::timeout(DEADLINE, read).await;
    let _ = adapter.close().await;
    let (inventory, hosts) = result
        .map_err(|_| format!("no answer within {DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let mut view = ProviderView::new(
        &hp.name_any(),
        valid.sample_interval,
        valid.node_mapping,
        valid.node_label.clone(),
    )
    .with_inventory(inventory);
    view.hosts = hosts;
    view.hosts_read_at = Some(SystemTime::now());
    Ok(view)
}

fn render(
    hm: &HostMaintenance,
    plan: &MaintenancePlan,
    status: &HostMaintenanceStatus,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "HostMaintenance {}: host {} of {}{}",
        hm.name_any(),
        hm.spec.host,
        hm.spec.provider,
        hm.spec
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    for n in notes {
        let _ = writeln!(out, "Note: {n}");
    }
    let _ = writeln!(
        out,
        "Phase: {} (now {}){}",
        plan.phase,
        hm.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("not started"),
        if hm.spec.dry_run {
            "; dryRun: nothing is done"
        } else {
            ""
        }
    );
    if let Some(in_maintenance) = status.host_in_maintenance {
        let _ = writeln!(
            out,
            "Host in maintenance mode (or entering it): {in_maintenance}"
        );
    }
    let _ = writeln!(out, "\nNodes on the host ({}):", plan.nodes.len());
    for n in &plan.nodes {
        let _ = writeln!(
            out,
            "  {} (VM {}): {}, {} pod(s) to move",
            n.name, n.vm, n.state, n.pending_pods
        );
    }
    let _ = writeln!(
        out,
        "\nWorkloads with pods on the host ({}):",
        plan.workloads.len()
    );
    for w in &plan.workloads {
        let _ = writeln!(
            out,
            "  {}{}: {} pod(s) on the host, {} ready in the cluster, {}: {}",
            w.workload,
            w.intent
                .as_deref()
                .map(|i| format!(" (WorkloadIntent {i})"))
                .unwrap_or_default(),
            w.pods_on_host,
            w.ready,
            if w.evictable { "can move now" } else { "held" },
            w.message
        );
    }
    let _ = writeln!(out, "\nThe next pass would:");
    let mut actions: Vec<String> = Vec::new();
    if !plan.cordon.is_empty() {
        actions.push(format!("keep cordoned: {}", plan.cordon.join(", ")));
    }
    actions.extend(plan.surge.iter().map(|s| {
        format!(
            "surge {} to {} replicas (+{}) for WorkloadIntent {}",
            s.workload, s.replicas, s.by, s.intent
        )
    }));
    actions.extend(
        plan.evict
            .iter()
            .map(|(ns, pod)| format!("evict pod {ns}/{pod}")),
    );
    actions.extend(
        plan.delete
            .iter()
            .map(|(ns, pod)| format!("delete pod {ns}/{pod} (onTimeout: Force)")),
    );
    if plan.host_mode {
        actions.push("keep the host in maintenance mode (enterMaintenance)".to_string());
    }
    if actions.is_empty() {
        actions.push(if hm.spec.dry_run {
            "nothing: dryRun is set; remove it to start".to_string()
        } else {
            "nothing".to_string()
        });
    }
    for a in actions {
        let _ = writeln!(out, "  {a}");
    }
    if !plan.blockers.is_empty() {
        let _ = writeln!(out, "\nWaiting on:");
        for b in &plan.blockers {
            let _ = writeln!(out, "  {}: {}", b.reason, b.message);
        }
    }
    out
}
