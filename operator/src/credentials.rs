//! vSphere credentials: reading the Secret, refusing to send it anywhere it is not pinned to,
//! and what the provider's status says about TLS and the pin.
//!
//! The Secret may carry the annotation `plumbline.dev/vsphere-server` naming the one server its
//! password is for. When it names another server than the provider's, nothing is sent and the
//! provider is `Connected=False` with reason `PinnedElsewhere`, so that whoever may edit a
//! HypervisorProvider cannot point it at their own listener to collect the password. An
//! unpinned Secret is still used (compatibility), with `CredentialsPinned=False`/`Unpinned`.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use plumbline_adapters::{HypervisorConfig, LibvirtConfig, TlsTrust, VSphereConfig};
use plumbline_crds::{
    conditions::{provider as cond, reason},
    names::VSPHERE_SERVER_ANNOTATION,
    HypervisorProvider, VsphereConnection,
};
use plumbline_policies::credentials::{pin, Pin};

/// One extra condition on a provider's status: type, and (ok, reason, message).
pub type SecurityCondition = (&'static str, (bool, &'static str, String));

/// What connecting needs, and what the status says about it.
pub struct Prepared {
    pub config: HypervisorConfig,
    /// The credentials Secret's resourceVersion: a changed Secret is tried at once, even while
    /// refused logins back off.
    pub secret_version: Option<String>,
    /// `TlsVerified` and `CredentialsPinned` (vSphere only).
    pub security: Vec<SecurityCondition>,
}

/// Why nothing was sent: the `Connected` reason and message, and the security conditions.
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
    pub security: Vec<SecurityCondition>,
    /// The Secret's resourceVersion when it was read: a change ends the retry wait.
    pub secret_version: Option<String>,
}

/// The adapter configuration of `hp`, or why no credentials may be sent.
pub async fn prepare(client: &kube::Client, hp: &HypervisorProvider) -> Result<Prepared, Refused> {
    if let Some(l) = &hp.spec.libvirt {
        return Ok(Prepared {
            config: HypervisorConfig::Libvirt(LibvirtConfig { uri: l.uri.clone() }),
            secret_version: None,
            security: Vec::new(),
        });
    }
    let Some(v) = &hp.spec.vsphere else {
        return Err(Refused {
            reason: reason::INVALID_SPEC,
            message: "the spec sets neither libvirt nor vsphere".into(),
            security: Vec::new(),
            secret_version: None,
        });
    };
    let tls = tls_condition(v);
    let url = plumbline_policies::vsphere_url(&v.server).map_err(|e| Refused {
        reason: reason::INVALID_SPEC,
        message: format!("spec.vsphere.server: {e}"),
        security: vec![tls.clone()],
        secret_version: None,
    })?;
    let secret_name = format!(
        "{}/{}",
        v.credentials_secret_ref.namespace, v.credentials_secret_ref.name
    );
    let secret = Api::<Secret>::namespaced(client.clone(), &v.credentials_secret_ref.namespace)
        .get(&v.credentials_secret_ref.name)
        .await
        .map_err(|e| Refused {
            reason: reason::CREDENTIALS_MISSING,
            message: format!("reading Secret {secret_name}: {e}"),
            security: vec![tls.clone()],
            secret_version: None,
        })?;
    let pinned = pin(
        &v.server,
        secret
            .annotations()
            .get(VSPHERE_SERVER_ANNOTATION)
            .map(String::as_str),
    );
    let pin_condition = match &pinned {
        Pin::Pinned => (
            cond::CREDENTIALS_PINNED,
            (
                true,
                reason::PINNED,
                format!("Secret {secret_name} is pinned to {}", v.server),
            ),
        ),
        Pin::Unpinned => (
            cond::CREDENTIALS_PINNED,
            (
                false,
                reason::UNPINNED,
                format!(
                    "Secret {secret_name} names no server: its password goes wherever spec.vsphere.server points; annotate it {VSPHERE_SERVER_ANNOTATION}={}",
                    v.server
                ),
            ),
        ),
        Pin::Elsewhere { pinned } => {
            let message = format!(
                "Secret {secret_name} is pinned to {pinned} ({VSPHERE_SERVER_ANNOTATION}), not to {}: no credentials are sent",
                v.server
            );
            return Err(Refused {
                reason: reason::PINNED_ELSEWHERE,
                message: message.clone(),
                security: vec![
                    tls,
                    (
                        cond::CREDENTIALS_PINNED,
                        (false, reason::PINNED_ELSEWHERE, message),
                    ),
                ],
                secret_version: secret.resource_version(),
            });
        }
    };
    let security = vec![tls, pin_condition];
    let field = |key: &str| -> Result<String, Refused> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .cloned()
            })
            .ok_or_else(|| Refused {
                reason: reason::CREDENTIALS_MISSING,
                message: format!("Secret {secret_name} has no key {key}"),
                security: security.clone(),
                secret_version: secret.resource_version(),
            })
    };
    let tls_trust = match (&v.ca_bundle, v.insecure_skip_verify) {
        (Some(pem), _) => TlsTrust::CaPem(pem.as_bytes().to_vec()),
        (None, true) => TlsTrust::Insecure,
        (None, false) => TlsTrust::PublicRoots,
    };
    Ok(Prepared {
        config: HypervisorConfig::VSphere(VSphereConfig {
            url,
            username: field("username")?,
            password: field("password")?.into(),
            tls: tls_trust,
        }),
        secret_version: secret.resource_version(),
        security,
    })
}

/// The credentials Secret's current resourceVersion (`None` if it cannot be read).
pub async fn secret_version(client: &kube::Client, hp: &HypervisorProvider) -> Option<String> {
    let v = hp.spec.vsphere.as_ref()?;
    Api::<Secret>::namespaced(client.clone(), &v.credentials_secret_ref.namespace)
        .get_metadata(&v.credentials_secret_ref.name)
        .await
        .ok()
        .and_then(|m| m.resource_version())
}

/// `TlsVerified`, from the spec alone.
pub fn tls_condition(v: &VsphereConnection) -> SecurityCondition {
    let verdict = match (&v.ca_bundle, v.insecure_skip_verify) {
        (Some(_), _) => (
            true,
            reason::CA_BUNDLE,
            "the server certificate is verified with spec.vsphere.caBundle".to_string(),
        ),
        (None, true) => (
            false,
            reason::INSECURE_SKIP_VERIFY,
            "spec.vsphere.insecureSkipVerify is true: any certificate is accepted, so the password can be intercepted; use caBundle".to_string(),
        ),
        (None, false) => (
            true,
            reason::PUBLIC_ROOTS,
            "the server certificate is verified with the public roots".to_string(),
        ),
    };
    (cond::TLS_VERIFIED, verdict)
}
