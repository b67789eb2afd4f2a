//! Maintenance started on the hypervisor, carried out: the hosts the providers last reported
//! and the HostMaintenances that exist go to `plumbline_policies::maintenance::detect`, and
//! what it decides is created (labelled [`DETECTED_LABEL`]) or deleted here.

use kube::{
    api::{DeleteParams, PostParams},
    Api, ResourceExt,
};
use plumbline_crds::{
    conditions::maintenance as m, names::DETECTED_LABEL, ChangePurpose, HostMaintenance,
    HostMaintenanceSpec, InfraChange,
};
use plumbline_policies::maintenance::detect::{
    detect, detected_name, ExistingMaintenance, ReportedHost,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tracing::{info, warn};

use crate::{context::Context, health::book::HealthBook};

/// Whether a HostMaintenance was created by detection.
pub fn is_detected(hm: &HostMaintenance) -> bool {
    hm.labels().get(DETECTED_LABEL).is_some_and(|v| v == "true")
}

/// What detection remembers: when Plumbline's own maintenance mode was last in the ledger,
/// per `(provider, host)`.
#[derive(Default)]
pub struct Detector {
    own_mode_until: BTreeMap<(String, String), SystemTime>,
}

impl Detector {
    pub async fn pass(
        &mut self,
        ctx: &Context,
        book: &Arc<Mutex<HealthBook>>,
        all: &[Arc<HostMaintenance>],
        changes: &[Arc<InfraChange>],
        now: SystemTime,
    ) {
        for ic in changes
            .iter()
            .filter(|ic| ic.spec.purpose == ChangePurpose::HostMaintenanceMode)
        {
            if let Some(p) = &ic.spec.target.provider {
                self.own_mode_until
                    .insert((p.clone(), ic.spec.target.name.clone()), now);
            }
        }
        let hosts: Vec<ReportedHost> = {
            let book = crate::locks::lock(book);
            book.providers()
                .values()
                .filter_map(|v| Some((v, v.hosts_read_at?)))
                .flat_map(|(v, read_at)| {
                    v.hosts.iter().map(move |h| ReportedHost {
                        provider: v.name.clone(),
                        host: h.name.clone(),
                        in_maintenance: h.in_maintenance,
                        entering: h.entering,
                        read_at,
                    })
                })
                .collect()
        };
        let existing: Vec<ExistingMaintenance> = all
            .iter()
            .map(|hm| ExistingMaintenance {
                name: hm.name_any(),
                provider: hm.spec.provider.clone(),
                host: hm.spec.host.clone(),
                detected: is_detected(hm),
                created_at: hm
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| SystemTime::from(t.0))
                    .unwrap_or(now),
            })
            .collect();
        let decided = detect(&hosts, &existing, &self.own_mode_until);
        let api = Api::<HostMaintenance>::all(ctx.client.clone());
        for (provider, host, reason) in decided.create {
            let name = detected_name(&provider, &host);
            let mut hm = HostMaintenance::new(
                &name,
                HostMaintenanceSpec {
                    provider: provider.clone(),
                    host: host.clone(),
                    reason: Some(reason.clone()),
                    drain_timeout: None,
                    on_timeout: Default::default(),
                    dry_run: false,
                    max_unavailable_nodes: None,
                    enter_maintenance: false,
                },
            );
            hm.metadata.labels = Some([(DETECTED_LABEL.to_string(), "true".to_string())].into());
            match api.create(&PostParams::default(), &hm).await {
                Ok(created) => {
                    info!(maintenance = %name, %provider, %host, "maintenance detected on the hypervisor");
                    ctx.publish_cluster_scoped(
                        &created,
                        crate::context::event(false, m::DETECTED, &reason, "Detect"),
                    )
                    .await;
                }
                // Another instance (or an earlier pass) made it already.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    warn!(maintenance = %name, error = %e, "creating a detected HostMaintenance failed")
                }
            }
        }
        for name in decided.delete {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(maintenance = %name, "the host left maintenance mode: detected maintenance ended")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(maintenance = %name, error = %e, "deleting a detected HostMaintenance failed")
                }
            }
        }
    }
}
