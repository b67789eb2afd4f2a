//! Hand-written schema pieces the derive cannot produce, all within what a Kubernetes 1.20
//! apiserver enforces (no CEL): list-type maps, int-or-percentage, and the patterns.
//!
//! 1.20 prints a failed pattern verbatim ("spec.storage.latencyBudget in body should match
//! '^…$'"), so every pattern is kept simple enough to read in that message.

use schemars::{json_schema, Schema, SchemaGenerator};

/// `HH:MM` from 00:00 to 23:59.
pub const CLOCK_TIME: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]$";
/// `HH:MM` from 00:01 to 24:00: an end may be the end of the day.
pub const CLOCK_TIME_OR_MIDNIGHT: &str = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$";
/// A latency such as `20ms`, `500us`, `1.5s`; at most 9 digits before and 6 after the point,
/// so no latency overflows (the range, above zero and at most [`MAX_LATENCY_BUDGET_SECS`], is
/// checked by `plumbline-policies`).
pub const LATENCY: &str = r"^[0-9]{1,9}(\.[0-9]{1,6})?(us|ms|s)$";
/// An interval such as `1s`, `500ms`, `2m`; at most 7 digits, so no interval overflows (the
/// range, 100ms to 1h, is checked by `plumbline-policies`).
pub const INTERVAL: &str = r"^[0-9]{1,7}(ms|s|m)$";
/// A vSphere server: a host name (`vcenter.example.com`, `10.0.0.5:8989`) or an `https://` URL.
/// Plain `http://` (or any other scheme) is refused: the password would cross the network in
/// clear text.
pub const VSPHERE_SERVER: &str = r"^(https://[^\s]+|[^:/\s]+(:[0-9]{1,5})?(/[^\s]*)?)$";
/// A duration such as `90s`, `10m`, `1h`; at most 6 digits.
pub const DURATION: &str = r"^[0-9]{1,6}(s|m|h)$";
/// A DNS-1123 label, the name of a namespace.
pub const NAMESPACE_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A whole percentage from 0% to 100%.
pub const PERCENTAGE: &str = r"^(100|[1-9]?[0-9])%$";
/// The shape of an IANA zone name (`Europe/Berlin`, `UTC`); whether it exists is checked later.
pub const TIME_ZONE: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";
/// A DNS-1123 subdomain, the name of a Deployment or StatefulSet.
pub const OBJECT_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A namespace name (DNS-1123 label), a prefix ending in `*`, or `*` alone.
pub const NAMESPACE_PATTERN: &str = r"^([*]|[a-z0-9]([-a-z0-9]*[a-z0-9])?|[a-z0-9][-a-z0-9]*[*])$";

/// The largest count anywhere in the API (replicas, pods): what a Kubernetes int32 holds.
pub const MAX_COUNT: i64 = i32::MAX as i64;
/// The most windows in one schedule (a week of overnight spans is 14).
pub const MAX_WINDOWS: u32 = 32;
/// The most Prometheus signals on one intent.
pub const MAX_SIGNALS: u32 = 8;
/// The largest latency budget, in seconds: beyond it nothing is a storage latency.
pub const MAX_LATENCY_BUDGET_SECS: u64 = 60;
/// The shortest and longest sample interval, in milliseconds.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 100;
pub const MAX_SAMPLE_INTERVAL_MS: u64 = 3_600_000;
/// The longest URL or URI (server, libvirt URI).
pub const MAX_URL_LEN: u32 = 2048;
/// The largest PEM CA bundle, in bytes.
pub const MAX_CA_BUNDLE_LEN: u32 = 256 * 1024;
/// The longest label key (a 253-character prefix, `/`, a 63-character name).
pub const MAX_LABEL_KEY_LEN: u32 = 317;

/// `status.conditions`: a list-type map keyed on `type`, so server-side apply merges
/// conditions by type (as in kube-rs `examples/crd_derive.rs`).
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Current state as Kubernetes conditions, one per type.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "properties": {
                "lastTransitionTime": { "format": "date-time", "type": "string" },
                "message": { "type": "string" },
                "observedGeneration": { "type": "integer", "format": "int64" },
                "reason": { "type": "string" },
                "status": { "type": "string" },
                "type": { "type": "string" }
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"]
        }
    })
}

/// A count (`2`) or a percentage (`"50%"`) of a workload's pods.
pub fn count_or_percentage(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": true,
        "minimum": 0,
        "maximum": MAX_COUNT,
        "maxLength": 4,
        "pattern": PERCENTAGE,
    })
}
