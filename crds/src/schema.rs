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
/// A latency such as `20ms`, `500us`, `1.5s`.
pub const LATENCY: &str = r"^[0-9]+(\.[0-9]+)?(us|ms|s)$";
/// An interval such as `1s`, `500ms`, `2m`.
pub const INTERVAL: &str = r"^[0-9]+(ms|s|m)$";
/// A whole percentage from 0% to 100%.
pub const PERCENTAGE: &str = r"^(100|[1-9]?[0-9])%$";
/// The shape of an IANA zone name (`Europe/Berlin`, `UTC`); whether it exists is checked later.
pub const TIME_ZONE: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";
/// A DNS-1123 subdomain, the name of a Deployment or StatefulSet.
pub const OBJECT_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A namespace name (DNS-1123 label), a prefix ending in `*`, or `*` alone.
pub const NAMESPACE_PATTERN: &str = r"^([*]|[a-z0-9]([-a-z0-9]*[a-z0-9])?|[a-z0-9][-a-z0-9]*[*])$";

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
        "pattern": PERCENTAGE,
    })
}
