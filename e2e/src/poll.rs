//! Waiting for the world to reach a state: the one polling loop every test uses.
//!
//! What the probe returns says how a look that finds nothing is treated ([`Probe`]):
//! - `Option<T>`: `None` is "not yet";
//! - `anyhow::Result<Option<T>>`: an error is retried too, and the last one is reported on
//!   timeout (a call that fails now and then, e.g. an API server under load);
//! - `anyhow::Result<Result<T, String>>`: `Err(seen)` is "not yet, this is what I saw" and is
//!   reported on timeout; an error fails the wait at once (a broken test, not a slow world).

use std::{fmt::Display, future::Future, time::Duration};

const POLL_EVERY: Duration = Duration::from_millis(250);

/// What one look found.
pub enum Look<T> {
    /// What was waited for: the wait ends with it.
    Found(T),
    /// Not yet. `Some` replaces what a timeout reports as the last thing seen.
    NotYet(Option<String>),
    /// Wrong in a way more waiting cannot mend: the wait fails with it at once.
    Failed(anyhow::Error),
}

/// A probe's answer: how [`until`] reads it and how a timeout reports the last thing seen.
pub trait Probe<T> {
    fn look(self) -> Look<T>;
    /// The end of the timeout message, after "timed out after … waiting for …".
    fn last_seen(last: Option<&str>) -> String;
}

impl<T> Probe<T> for Option<T> {
    fn look(self) -> Look<T> {
        match self {
            Some(value) => Look::Found(value),
            None => Look::NotYet(None),
        }
    }

    fn last_seen(_: Option<&str>) -> String {
        String::new()
    }
}

/// Errors are retried; the last one is reported on timeout.
impl<T> Probe<T> for anyhow::Result<Option<T>> {
    fn look(self) -> Look<T> {
        match self {
            Ok(Some(value)) => Look::Found(value),
            Ok(None) => Look::NotYet(None),
            Err(e) => Look::NotYet(Some(format!("{e:#}"))),
        }
    }

    fn last_seen(last: Option<&str>) -> String {
        format!(" (last error: {})", last.unwrap_or("nothing yet"))
    }
}

/// `Err(seen)` is "not yet", with what was seen; an error fails the wait at once.
impl<T> Probe<T> for anyhow::Result<Result<T, String>> {
    fn look(self) -> Look<T> {
        match self {
            Ok(Ok(value)) => Look::Found(value),
            Ok(Err(seen)) => Look::NotYet(Some(seen)),
            Err(e) => Look::Failed(e),
        }
    }

    fn last_seen(last: Option<&str>) -> String {
        format!("; last seen: {}", last.unwrap_or("nothing yet"))
    }
}

/// Polls `probe` every 250 ms until it finds what it waits for; fails after `timeout` with
/// "timed out after `timeout` waiting for `what`" and the last thing seen (see [`Probe`]).
pub async fn until<T, P: Probe<T>, Fut: Future<Output = P>>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match probe().await.look() {
            Look::Found(value) => return Ok(value),
            Look::NotYet(None) => {}
            Look::NotYet(seen) => last = seen,
            Look::Failed(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                P::last_seen(last.as_deref())
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`until`] for synchronous tests (the chart's, which drive kubectl and helm): it runs on a
/// runtime of its own, so it must not be called from inside one.
pub fn until_blocking<T, P: Probe<T>>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl FnMut() -> P,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| anyhow::anyhow!("a runtime to wait for {what} on: {e}"))?
        .block_on(until(&what, timeout, || std::future::ready(probe())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn an_option_probe_waits_for_some() {
        let mut n = 0;
        let found = until("n to reach 3", SHORT, || {
            n += 1;
            std::future::ready((n >= 3).then_some(n))
        })
        .await
        .unwrap();
        assert_eq!(found, 3);
    }

    #[tokio::test]
    async fn an_option_probe_times_out_naming_what() {
        let e = until("never", SHORT, || std::future::ready(None::<()>))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "timed out after 300ms waiting for never");
    }

    #[tokio::test]
    async fn errors_are_retried_and_the_last_one_reported() {
        let mut n = 0;
        let e = until("a call that keeps failing", SHORT, || {
            n += 1;
            std::future::ready(if n == 1 {
                Err(anyhow::anyhow!("refused {n}"))
            } else {
                Ok(None::<()>)
            })
        })
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "timed out after 300ms waiting for a call that keeps failing (last error: refused 1)"
        );
        let e = until("nothing", SHORT, || {
            std::future::ready(anyhow::Ok(None::<()>))
        })
        .await
        .unwrap_err();
        assert!(e.to_string().ends_with("(last error: nothing yet)"), "{e}");
    }

    #[tokio::test]
    async fn an_observation_is_reported_and_an_error_fails_at_once() {
        let mut n = 0;
        let e = until("n to reach 100", SHORT, || {
            n += 1;
            std::future::ready(anyhow::Ok(Err::<(), _>(format!("n = {n}"))))
        })
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("timed out after 300ms waiting for n to reach 100; last seen: n = {n}")
        );
        let mut calls = 0;
        let e = until("a broken probe", SHORT, || {
            calls += 1;
            std::future::ready(Err::<Result<(), String>, _>(anyhow::anyhow!("broken")))
        })
        .await
        .unwrap_err();
        assert_eq!((e.to_string(), calls), ("broken".to_string(), 1));
    }

    #[test]
    fn the_blocking_form_waits_outside_any_runtime() {
        let mut n = 0;
        let found = until_blocking("n to reach 2", SHORT, || {
            n += 1;
            anyhow::Ok(if n >= 2 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            })
        })
        .unwrap();
        assert_eq!(found, 2);
    }
}
