//! The simulator's DRS rules as it holds them, and a rejection of rule changes, through its
//! control endpoint (e2e/vcsim/rules.go): what a test checks here does not depend on the
//! adapter under test.

use crate::{stack_error, Result, Stack};

/// One rule of a simulator cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SimRule {
    pub cluster: String,
    pub key: i32,
    pub name: String,
    /// `ClusterAntiAffinityRuleSpec`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub mandatory: bool,
    pub enabled: bool,
    /// The VMs' names, sorted.
    pub vms: Vec<String>,
}

impl Stack {
    /// Every rule of every simulator cluster.
    pub async fn vsphere_rules(&self) -> Result<Vec<SimRule>> {
        let what = "listing the simulator's DRS rules".to_string();
        let url = format!("{}/rules", self.vcsim_control()?);
        let body = self
            .vcsim_call(what.clone(), reqwest::Client::new().get(url))
            .await?;
        serde_json::from_value(body).map_err(|e| stack_error(what, e))
    }

    /// Makes the cluster refuse (`true`) or accept again (`false`) every
    /// `ReconfigureComputeResource_Task`, with the `InvalidArgument` fault vCenter gives a bad
    /// rule.
    pub async fn reject_vsphere_rules(&self, cluster: &str, reject: bool) -> Result<()> {
        let what = format!("setting rule rejection on simulator cluster {cluster} to {reject}");
        let url = format!("{}/rules/reject", self.vcsim_control()?);
        let client = reqwest::Client::new();
        let req = if reject {
            client
                .put(url)
                .json(&serde_json::json!({ "cluster": cluster }))
        } else {
            client.delete(url).query(&[("cluster", cluster)])
        };
        self.vcsim_call(what, req).await.map(|_| ())
    }
}
