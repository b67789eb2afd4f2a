//! Decisions about vSphere credentials: may the password go to this server, and when may a
//! refused login be tried again.

use std::time::Duration;

use crate::validate::vsphere_url;

/// Whether a credentials Secret may be sent to a provider's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The Secret's `plumbline.dev/vsphere-server` names this server.
    Pinned,
    /// The Secret names no server. Allowed for compatibility, reported as a warning: the
    /// password follows the provider's `server` wherever it points.
    Unpinned,
    /// The Secret names another server: nothing may be sent.
    Elsewhere { pinned: String },
}

/// Compares the provider's `server` with the Secret's pin, both as the SDK URLs they stand for
/// (`vc.example` and `https://vc.example/sdk` are the same server; case of the host ignored).
pub fn pin(server: &str, annotation: Option<&str>) -> Pin {
    let Some(pinned) = annotation.map(str::trim) else {
        return Pin::Unpinned;
    };
    let same = match (vsphere_url(server), vsphere_url(pinned)) {
        (Ok(a), Ok(b)) => normalize(&a) == normalize(&b),
        _ => false,
    };
    if same {
        Pin::Pinned
    } else {
        Pin::Elsewhere {
            pinned: pinned.to_string(),
        }
    }
}

/// `https://HOST[:443]/path/` → `https://host/path`.
fn normalize(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix(":443").unwrap_or(&host);
    format!("https://{host}/{}", path.trim_end_matches('/'))
}

/// The first wait after a refused login.
pub const FIRST_LOGIN_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between refused logins.
pub const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(3600);

/// How long to wait before logging in again after a refused login, given the wait before it
/// (`None`: the first refusal). Doubles from 30 s up to 1 h, so a wrong password does not lock
/// the account through an SSO lockout policy.
pub fn login_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => FIRST_LOGIN_BACKOFF,
        Some(d) => d
            .saturating_mul(2)
            .clamp(FIRST_LOGIN_BACKOFF, MAX_LOGIN_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_server_written_two_ways_is_pinned() {
        assert_eq!(
            pin("vc.example", Some("https://VC.example:443/sdk")),
            Pin::Pinned
        );
        assert_eq!(
            pin("https://10.0.0.5:8989/sdk", Some("10.0.0.5:8989")),
            Pin::Pinned
        );
        assert_eq!(pin("vc.example", None), Pin::Unpinned);
    }

    #[test]
    fn another_server_is_refused() {
        assert_eq!(
            pin(
                "https://127.0.0.1:9999/sdk",
                Some("https://127.0.0.1:8989/sdk")
            ),
            Pin::Elsewhere {
                pinned: "https://127.0.0.1:8989/sdk".into()
            }
        );
        // An unreadable pin pins nothing but itself.
        assert!(matches!(
            pin("vc.example", Some("http://vc.example")),
            Pin::Elsewhere { .. }
        ));
    }

    #[test]
    fn refused_logins_back_off_doubling_to_an_hour() {
        let mut waits = Vec::new();
        let mut last = None;
        for _ in 0..10 {
            let next = login_backoff(last);
            waits.push(next.as_secs());
            last = Some(next);
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
    }
}
