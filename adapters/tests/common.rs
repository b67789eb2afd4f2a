//! Shared by the stack tests: reaching the stack and polling.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use plumbline_adapters::{HypervisorConfig, Secret, TlsTrust, VSphereConfig};
use plumbline_e2e::Stack;

pub fn stack() -> Stack {
    Stack::load().unwrap_or_else(|e| panic!("{e}"))
}

pub fn stack_value(stack: &Stack, key: &str) -> String {
    stack.get(key).unwrap_or_else(|e| panic!("{e}")).to_string()
}

pub fn vsphere_config(stack: &Stack) -> VSphereConfig {
    let ca_file = stack_value(stack, "VSPHERE_CA_FILE");
    let ca = std::fs::read(&ca_file)
        .unwrap_or_else(|e| panic!("reading the simulator CA {ca_file}: {e}"));
    VSphereConfig {
        url: stack_value(stack, "VSPHERE_URL"),
        username: stack_value(stack, "VSPHERE_USERNAME"),
        password: Secret::new(stack_value(stack, "VSPHERE_PASSWORD")),
        tls: TlsTrust::CaPem(ca),
    }
}

pub fn vsphere(stack: &Stack) -> HypervisorConfig {
    HypervisorConfig::VSphere(vsphere_config(stack))
}

/// Polls `check` every 500 ms until it returns `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
