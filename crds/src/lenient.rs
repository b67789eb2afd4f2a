//! Decoding an object leniently, so that one object the types cannot read never stops a
//! watch of all the others (the kube-rs#774 pattern: one bad list item fails the whole list).
//!
//! The apiserver's schema keeps most bad input out, but not all: objects stored before a
//! bound was added, or values the schema cannot bound. [`decode`] reads what it can: each
//! field that fails is dropped and recorded with its JSON path, and the object is marked with
//! [`DECODE_ERRORS_ANNOTATION`](crate::names::DECODE_ERRORS_ANNOTATION) (in memory only), so
//! that the controller reports it in status instead of acting on a partial spec.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::names::DECODE_ERRORS_ANNOTATION;

/// The most fields dropped from one object before giving up on it.
const MAX_DROPPED: usize = 32;

/// One field that could not be read: `spec.availability.replicaFloor` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Decodes `value` as `K`. A field that cannot be read is dropped and the decode retried;
/// `keep` lists the top-level spec fields that are kept even when others fail (what is needed
/// to find and undo what the object holds, e.g. `target`), every other spec field is dropped
/// once anything failed, so nothing acts on half an object. Status fields that fail are
/// dropped silently (status is Plumbline's own and is rewritten).
///
/// `Err` only when even the kept fields cannot be read: the object cannot be represented.
pub fn decode<K: DeserializeOwned>(
    value: Value,
    keep: &[&str],
) -> Result<(K, Vec<DecodeError>), Vec<DecodeError>> {
    decode_with(value, keep, Vec::new())
}

/// [`decode`], with problems found beforehand (e.g. [`unknown_fields`]) counted as unreadable
/// fields: the object is marked and its spec reduced to the kept fields.
pub fn decode_with<K: DeserializeOwned>(
    mut value: Value,
    keep: &[&str],
    found: Vec<DecodeError>,
) -> Result<(K, Vec<DecodeError>), Vec<DecodeError>> {
    if let Some(annotations) = value
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(DECODE_ERRORS_ANNOTATION);
    }
    let mut errors: Vec<DecodeError> = found;
    // The field dropped last: its parent then missing it is a consequence, not news.
    let mut dropped: Option<Vec<String>> = None;
    for _ in 0..MAX_DROPPED {
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) if errors.is_empty() => return Ok((object, errors)),
            Ok(_) => {
                // Every unreadable field is known; anything but the kept fields goes too, so
                // nothing acts on half a spec.
                if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.retain(|k, _| keep.contains(&k.as_str()));
                }
                mark(&mut value, &errors);
                return match serde_json::from_value(value) {
                    Ok(object) => Ok((object, errors)),
                    Err(e) => {
                        errors.push(DecodeError {
                            path: "spec".into(),
                            message: e.to_string(),
                        });
                        Err(errors)
                    }
                };
            }
            Err(e) => {
                let segments = segments(e.path());
                // The parent of a required field just dropped now misses it: a consequence,
                // not news, so it is dropped in turn without being reported again.
                let consequence =
                    dropped
                        .as_ref()
                        .and_then(|d| d.split_last())
                        .is_some_and(|(field, parent)| {
                            parent == segments.as_slice()
                                && e.inner().to_string() == format!("missing field `{field}`")
                        });
                if !consequence && segments.first().map(String::as_str) != Some("status") {
                    errors.push(DecodeError {
                        path: render(&segments),
                        message: e.inner().to_string(),
                    });
                }
                if !remove(&mut value, &segments) {
                    // A required or structural field: the object cannot be represented.
                    return Err(errors);
                }
                dropped = Some(segments);
            }
        }
    }
    Err(errors)
}

/// Fields of `written` (a spec as the user wrote it) that the type `S` does not know, with their
/// paths under `prefix`: what the apiserver prunes without a word (Kubernetes 1.20 has no
/// server-side field validation). Fields that are known but unreadable are left out (they are
/// reported as such); empty when `written` cannot be represented as `S` at all.
pub fn unknown_fields<S: DeserializeOwned + serde::Serialize>(
    written: &Value,
    prefix: &str,
) -> Vec<DecodeError> {
    let keep_all: Vec<&str> = written
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let Ok((typed, unreadable)) = decode::<S>(written.clone(), &keep_all) else {
        return Vec::new();
    };
    let Ok(known) = serde_json::to_value(&typed) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    diff(written, &known, prefix, &mut found);
    let unreadable: Vec<String> = unreadable
        .iter()
        .map(|e| format!("{prefix}.{}", e.path))
        .collect();
    found.retain(|f| !unreadable.contains(&f.path));
    found
}

fn diff(written: &Value, known: &Value, path: &str, found: &mut Vec<DecodeError>) {
    match (written, known) {
        (Value::Object(w), Value::Object(k)) => {
            for (key, value) in w {
                let at = format!("{path}.{key}");
                match k.get(key) {
                    Some(known) => diff(value, known, &at, found),
                    None if value.is_null() => {}
                    None => found.push(DecodeError {
                        path: at,
                        message: "unknown field; the API server dropped it, so it has no effect (check its spelling and place)".into(),
                    }),
                }
            }
        }
        (Value::Array(w), Value::Array(k)) => {
            for (i, (w, k)) in w.iter().zip(k).enumerate() {
                diff(w, k, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// The fields an object could not be read at, from its in-memory marker.
pub fn decode_errors(meta: &kube::api::ObjectMeta) -> Vec<DecodeError> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(DECODE_ERRORS_ANNOTATION))
        .map(|text| {
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|line| match line.split_once(": ") {
                    Some((path, message)) => DecodeError {
                        path: path.to_string(),
                        message: message.to_string(),
                    },
                    None => DecodeError {
                        path: "spec".to_string(),
                        message: line.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

fn mark(value: &mut Value, errors: &[DecodeError]) {
    let text = errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message.replace('\n', " ")))
        .collect::<Vec<_>>()
        .join("\n");
    if !value["metadata"].is_object() {
        value["metadata"] = serde_json::json!({});
    }
    let metadata = &mut value["metadata"];
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = serde_json::json!({});
    }
    metadata["annotations"][DECODE_ERRORS_ANNOTATION] = Value::String(text);
}

fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// `spec.schedule[0].end`, as field errors name paths.
fn render(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    if out.is_empty() {
        "(object)".to_string()
    } else {
        out
    }
}

/// Removes the value at `segments`; false if there is nothing to remove there.
fn remove(value: &mut Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for s in parents {
        at = match at {
            Value::Object(map) => match map.get_mut(s) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(items) => match s.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Object(map) => map.remove(last).is_some(),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkloadIntent;
    use serde_json::json;

    fn intent(spec: Value) -> Value {
        json!({
            "apiVersion": "plumbline.dev/v1alpha1",
            "kind": "WorkloadIntent",
            "metadata": { "name": "x", "namespace": "ns" },
            "spec": spec,
        })
    }

    #[test]
    fn a_readable_object_decodes_unchanged() {
        let value = intent(json!({
            "target": { "kind": "Deployment", "name": "web" },
            "priority": "high",
            "availability": { "replicaFloor": 3 }
        }));
        let (wi, errors) = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap();
        assert!(errors.is_empty());
        assert_eq!(wi.spec.availability.unwrap().replica_floor, Some(3));
        assert!(decode_errors(&wi.metadata).is_empty());
    }

    #[test]
    fn int32_overflows_are_dropped_with_their_paths_and_the_rest_of_the_spec_with_them() {
        let value = intent(json!({
            "target": { "kind": "Deployment", "name": "web" },
            "priority": "high",
            "availability": { "replicaFloor": 2147483648u64, "minAvailable": 2147483648u64 },
            "storage": { "latencyBudget": "20ms", "maxUnready": 9999999999u64 }
        }));
        let (wi, errors) = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            // In the order the stored JSON has them (keys sorted).
            [
                "spec.availability.minAvailable",
                "spec.availability.replicaFloor",
                "spec.storage.maxUnready"
            ],
            "{errors:?}"
        );
        assert!(errors[1].message.contains("2147483648"), "{errors:?}");
        // Nothing of the spec but what finds the workload is left to act on.
        assert_eq!(wi.spec.target.name, "web");
        assert!(wi.spec.availability.is_none() && wi.spec.storage.is_none());
        assert_eq!(decode_errors(&wi.metadata), errors);
    }

    #[test]
    fn an_unreadable_status_is_dropped_and_not_reported() {
        let mut value = intent(
            json!({ "target": { "kind": "Deployment", "name": "web" }, "priority": "high" }),
        );
        value["status"] = json!({ "observedGeneration": "not a number" });
        let (wi, errors) = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap();
        assert!(errors.is_empty());
        assert!(wi.status.unwrap().observed_generation.is_none());
    }

    #[test]
    fn a_user_written_marker_is_ignored() {
        let mut value = intent(
            json!({ "target": { "kind": "Deployment", "name": "web" }, "priority": "high" }),
        );
        value["metadata"]["annotations"] = json!({ DECODE_ERRORS_ANNOTATION: "spec: forged" });
        let (wi, _) = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap();
        assert!(decode_errors(&wi.metadata).is_empty());
    }

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let written = json!({
            "target": { "kind": "Deployment", "name": "web" },
            "priority": "high",
            "replicaFloor": 3,
            "availability": { "replicaFloor": 2, "minAvailabel": 1 },
            "schedule": [{ "start": "08:00", "end": "20:00", "timeZone": "UTC", "tz": "x" }],
            "storage": null
        });
        let found = unknown_fields::<crate::WorkloadIntentSpec>(&written, "spec");
        let paths: Vec<&str> = found.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.availability.minAvailabel",
                "spec.replicaFloor",
                "spec.schedule[0].tz"
            ]
        );
        let clean = json!({ "target": { "kind": "Deployment", "name": "web" }, "priority": "high",
            "storage": { "latencyBudget": "20ms", "readinessGate": false, "maxUnready": "34%" } });
        assert!(unknown_fields::<crate::WorkloadIntentSpec>(&clean, "spec").is_empty());
    }

    #[test]
    fn an_unreadable_kept_field_makes_the_object_unrepresentable() {
        let value =
            intent(json!({ "target": { "kind": "DaemonSet", "name": "web" }, "priority": "high" }));
        let errors = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap_err();
        assert_eq!(errors[0].path, "spec.target.kind");
        // A newer chart's priority: the one field is named, not the parents that then lack it.
        let value = intent(json!({ "target": { "kind": "Deployment", "name": "web" },
            "priority": "platinum" }));
        let errors = decode::<WorkloadIntent>(value, &["target", "priority"]).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.priority");
        assert!(errors[0].message.contains("unknown variant `platinum`"));
    }
}
