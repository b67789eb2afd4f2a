//! Which API versions the server offers. Plumbline supports Kubernetes 1.20 through current
//! releases, so versions that moved (PodDisruptionBudget: policy/v1beta1 until 1.21, policy/v1
//! since) are discovered, never hard-coded.

use kube::{core::ApiResource, discovery, Client};
use tracing::info;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct ServedApis {
    /// PodDisruptionBudget in the newest version the server offers.
    pub pdb: ApiResource,
}

/// Preferred first.
const PDB_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

impl ServedApis {
    pub async fn discover(client: &Client) -> Result<Self> {
        let policy = discovery::group(client, "policy")
            .await
            .map_err(|source| Error::kube("discovering the policy API group", source))?;
        let pdb = PDB_VERSIONS
            .iter()
            .find_map(|version| {
                policy
                    .versioned_resources(version)
                    .into_iter()
                    .find(|(resource, _)| resource.kind == "PodDisruptionBudget")
                    .map(|(resource, _)| resource)
            })
            .ok_or_else(|| Error::Unsupported {
                what: format!(
                    "PodDisruptionBudget (the policy group serves {:?})",
                    policy.versions().collect::<Vec<_>>()
                ),
            })?;
        info!(pdb = %pdb.api_version, "discovered served API versions");
        Ok(Self { pdb })
    }
}
