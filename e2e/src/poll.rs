//! Polling for the hypervisor tests, which fail by panicking. (Tests against the Kubernetes
//! API use [`crate::cluster::eventually`], which returns an error with the last one seen.)

use std::{future::Future, time::Duration};

const POLL_EVERY: Duration = Duration::from_millis(500);

/// Polls `check` every 500 ms until it returns `Some`; panics after `timeout` with
/// "`what` within `timeout`".
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
        tokio::time::sleep(POLL_EVERY).await;
    }
}
