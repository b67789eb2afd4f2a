//! Reaching the stack's vSphere simulator, shared by the vSphere test binaries.

use plumbline_adapters::{HypervisorConfig, Secret, TlsTrust, VSphereConfig};
use plumbline_e2e::Stack;

pub fn stack_value(stack: &Stack, key: &str) -> String {
    stack.get(key).unwrap_or_else(|e| panic!("{e}")).to_string()
}

pub fn vsphere_config(stack: &Stack) -> VSphereConfig {
    VSphereConfig {
        url: stack_value(stack, "VSPHERE_URL"),
        username: stack_value(stack, "VSPHERE_USERNAME"),
        password: Secret::new(stack_value(stack, "VSPHERE_PASSWORD")),
        tls: TlsTrust::CaPem(stack.vsphere_ca_pem().unwrap_or_else(|e| panic!("{e}"))),
    }
}

pub fn vsphere(stack: &Stack) -> HypervisorConfig {
    HypervisorConfig::VSphere(vsphere_config(stack))
}
