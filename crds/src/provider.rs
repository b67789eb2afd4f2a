//! `HypervisorProvider`: how to reach one hypervisor and how its VMs map to Nodes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// How to reach one hypervisor: exactly one of `libvirt` or `vsphere`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "plumbline.dev",
    version = "v1alpha1",
    kind = "HypervisorProvider",
    shortname = "hvp",
    category = "plumbline",
    status = "HypervisorProviderStatus",
    derive = "PartialEq",
    doc = "How Plumbline reaches one hypervisor (libvirt or vSphere) and maps its VMs to Nodes.",
    printcolumn(
        name = "Libvirt",
        type_ = "string",
        json_path = ".spec.libvirt.uri",
        description = "libvirt connection URI"
    ),
    printcolumn(
        name = "vSphere",
        type_ = "string",
        json_path = ".spec.vsphere.server",
        description = "vCenter/ESXi server"
    ),
    printcolumn(
        name = "Connected",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Connected\")].status"
    ),
    printcolumn(name = "VMs", type_ = "integer", json_path = ".status.vmCount"),
    printcolumn(
        name = "Last Sample",
        type_ = "date",
        json_path = ".status.lastSampleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{ "required": ["libvirt"] }, { "required": ["vsphere"] }]))]
pub struct HypervisorProviderSpec {
    /// A libvirt daemon (set exactly one of libvirt or vsphere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtConnection>,
    /// A vCenter or ESXi server (set exactly one of libvirt or vsphere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsphere: Option<VsphereConnection>,
    /// How Nodes map to this hypervisor's VMs. Default: by spec.providerID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mapping: Option<NodeMapping>,
    /// How often storage latency is sampled, e.g. 1s, 500ms, 1m; from 100ms to 1h. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 9), pattern(schema::INTERVAL))]
    pub sample_interval: Option<String>,
}

impl HypervisorProviderSpec {
    /// The connection, when exactly one kind is set (admission guarantees it).
    pub fn connection(&self) -> Option<Connection<'_>> {
        match (&self.libvirt, &self.vsphere) {
            (Some(l), None) => Some(Connection::Libvirt(l)),
            (None, Some(v)) => Some(Connection::Vsphere(v)),
            _ => None,
        }
    }
}

/// The one connection a provider spec names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Connection<'a> {
    Libvirt(&'a LibvirtConnection),
    Vsphere(&'a VsphereConnection),
}

/// A libvirt connection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LibvirtConnection {
    /// libvirt URI, e.g. qemu:///system or qemu+tls://host/system.
    #[schemars(length(min = 1, max = schema::MAX_URL_LEN))]
    pub uri: String,
}

/// A vSphere connection (vim25 SOAP API).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VsphereConnection {
    /// Server host name or https:// URL, e.g. vcenter.example.com or
    /// https://127.0.0.1:8989/sdk. Plain http:// is refused.
    #[schemars(length(min = 1, max = schema::MAX_URL_LEN), pattern(schema::VSPHERE_SERVER))]
    pub server: String,
    /// Secret with keys `username` and `password`. Pin it to this server with the annotation
    /// `plumbline.dev/vsphere-server` on the Secret: the password is then never sent to any
    /// other server, whatever the provider says.
    pub credentials_secret_ref: SecretRef,
    /// PEM CA bundle to verify the server with, instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = schema::MAX_CA_BUNDLE_LEN))]
    pub ca_bundle: Option<String>,
    /// Skip TLS verification (test setups only); cannot be combined with caBundle.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A Secret by name and namespace (providers are cluster-scoped).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253), pattern(schema::OBJECT_NAME))]
    pub name: String,
    #[schemars(length(min = 1, max = 63), pattern(schema::NAMESPACE_NAME))]
    pub namespace: String,
}

/// How a Node finds the VM that backs it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMapping {
    /// providerID (libvirt:///UUID or vsphere://UUID), nodeName (VM name equals Node name) or
    /// label (VM name in a Node label).
    pub by: NodeMappingStrategy,
    /// Node label holding the VM name, when by is label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = schema::MAX_LABEL_KEY_LEN))]
    pub label: Option<String>,
}

/// Strategies to map a Node to its VM.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeMappingStrategy {
    #[default]
    #[serde(rename = "providerID")]
    ProviderId,
    NodeName,
    Label,
}

/// What Plumbline knows about the hypervisor.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorProviderStatus {
    /// Connected and Ready, with reasons (see `plumbline_crds::conditions`).
    #[serde(default)]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// VMs in the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_count: Option<i32>,
    /// What works on this hypervisor, e.g. iotune, cpu-shares, blkio-weight, migrate.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// When the last storage sample arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_time: Option<Time>,
}
