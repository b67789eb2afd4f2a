//! The fields of a workload Plumbline may set, and who owned them before it did.
//!
//! Server-side apply tracks an owner per field. When Plumbline sets a field it takes it over
//! (forced apply), so on revert it must hand the field back: restore the value and make the
//! previous owner own it again. Both are remembered in the [`Baseline`], an annotation on the
//! workload itself that is part of Plumbline's own apply configuration, so it survives operator
//! restarts and disappears with the rest of Plumbline's fields.

use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use plumbline_crds::names::{BASELINE_ANNOTATION, FIELD_MANAGER, HOLDER_ANNOTATION};

/// The intent holding the workload, if any.
pub fn holder(obj: &DynamicObject) -> Option<&str> {
    obj.metadata
        .annotations
        .as_ref()?
        .get(HOLDER_ANNOTATION)
        .map(String::as_str)
}

/// Whether Plumbline's field manager owns anything on the object.
pub fn has_plumbline_fields(obj: &DynamicObject) -> bool {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|entry| entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.subresource.is_none())
}

/// A field of a Deployment/StatefulSet that Plumbline may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WorkloadField {
    #[serde(rename = "spec.replicas")]
    Replicas,
    #[serde(rename = "spec.template.spec.priorityClassName")]
    PriorityClassName,
    /// An atomic list in the PodSpec schema: whoever sets it owns the whole list, so the
    /// gates of other owners are kept in what Plumbline applies.
    #[serde(rename = "spec.template.spec.readinessGates")]
    ReadinessGates,
    /// A list keyed by topology key and `whenUnsatisfiable`; what Plumbline applies keeps the
    /// other owners' constraints too.
    #[serde(rename = "spec.template.spec.topologySpreadConstraints")]
    TopologySpreadConstraints,
}

impl WorkloadField {
    pub const ALL: [WorkloadField; 4] = [
        Self::Replicas,
        Self::PriorityClassName,
        Self::ReadinessGates,
        Self::TopologySpreadConstraints,
    ];

    pub fn path(self) -> &'static [&'static str] {
        match self {
            Self::Replicas => &["spec", "replicas"],
            Self::PriorityClassName => &["spec", "template", "spec", "priorityClassName"],
            Self::ReadinessGates => &["spec", "template", "spec", "readinessGates"],
            Self::TopologySpreadConstraints => {
                &["spec", "template", "spec", "topologySpreadConstraints"]
            }
        }
    }

    pub fn dotted(self) -> String {
        self.path().join(".")
    }

    /// The live value of this field on `obj`.
    pub fn get(self, obj: &DynamicObject) -> Option<&Value> {
        let mut v = &obj.data;
        for key in self.path() {
            v = v.get(key)?;
        }
        (!v.is_null()).then_some(v)
    }

    /// Builds `{"spec": {...: value}}` for a patch or apply body.
    pub fn insert(self, body: &mut Value, value: Value) {
        let path = self.path();
        let mut v = body;
        for key in &path[..path.len() - 1] {
            if !v.get(*key).is_some_and(Value::is_object) {
                v[*key] = Value::Object(Default::default());
            }
            v = &mut v[*key];
        }
        v[path[path.len() - 1]] = value;
    }
}

/// What a field was before Plumbline set it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    /// The value; absent if the field was unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The field manager that owned it; absent if nobody did (unset, or filled by defaulting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// The previous state of every field Plumbline currently holds on one workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline(pub BTreeMap<WorkloadField, Previous>);

impl Baseline {
    pub fn from_annotation(obj: &DynamicObject) -> Self {
        obj.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BASELINE_ANNOTATION))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a baseline always serializes")
    }

    /// What the field is without Plumbline: the recorded previous state while Plumbline holds
    /// it, else the live state.
    pub fn without_plumbline(&self, obj: &DynamicObject, field: WorkloadField) -> Previous {
        match self.0.get(&field) {
            Some(previous) if owned_by(obj, field, FIELD_MANAGER) => previous.clone(),
            _ => Previous {
                value: field.get(obj).cloned(),
                manager: other_owner(obj, field),
            },
        }
    }
}

fn fields_v1_has(fields: &Value, path: &[&str]) -> bool {
    let mut v = fields;
    for key in path {
        match v.get(format!("f:{key}")) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

/// Whether `manager` owns `field` according to the object's managedFields.
pub fn owned_by(obj: &DynamicObject, field: WorkloadField, manager: &str) -> bool {
    obj.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.subresource.is_none()
            && entry
                .fields_v1
                .as_ref()
                .is_some_and(|f| fields_v1_has(&f.0, field.path()))
    })
}

/// A manager other than Plumbline that owns `field`, if any.
pub fn other_owner(obj: &DynamicObject, field: WorkloadField) -> Option<String> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.is_none())
        .filter(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
        .find(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|f| fields_v1_has(&f.0, field.path()))
        })
        .and_then(|entry| entry.manager.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    fn deployment(managed: Vec<(&str, Value)>, data: Value) -> DynamicObject {
        let mut obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}
        }))
        .unwrap();
        obj.data = data;
        obj.metadata.managed_fields = Some(
            managed
                .into_iter()
                .map(|(m, f)| ManagedFieldsEntry {
                    manager: Some(m.into()),
                    operation: Some("Update".into()),
                    fields_v1: Some(FieldsV1(f)),
                    ..Default::default()
                })
                .collect(),
        );
        obj
    }

    #[test]
    fn previous_state_comes_from_live_fields_until_plumbline_holds_them() {
        let obj = deployment(
            vec![("kubectl-create", json!({"f:spec": {"f:replicas": {}}}))],
            json!({"spec": {"replicas": 1}}),
        );
        let baseline = Baseline::default();
        assert_eq!(
            baseline.without_plumbline(&obj, WorkloadField::Replicas),
            Previous {
                value: Some(json!(1)),
                manager: Some("kubectl-create".into())
            }
        );
        assert_eq!(
            baseline.without_plumbline(&obj, WorkloadField::PriorityClassName),
            Previous {
                value: None,
                manager: None
            }
        );

        let held = deployment(
            vec![(FIELD_MANAGER, json!({"f:spec": {"f:replicas": {}}}))],
            json!({"spec": {"replicas": 3}}),
        );
        let mut baseline = Baseline::default();
        baseline.0.insert(
            WorkloadField::Replicas,
            Previous {
                value: Some(json!(1)),
                manager: Some("kubectl-create".into()),
            },
        );
        let round_trip = Baseline(
            serde_json::from_str(&baseline.to_annotation())
                .map(|b: Baseline| b.0)
                .unwrap(),
        );
        assert_eq!(round_trip, baseline);
        assert_eq!(
            baseline
                .without_plumbline(&held, WorkloadField::Replicas)
                .value,
            Some(json!(1))
        );
    }

    #[test]
    fn insert_builds_nested_bodies() {
        let mut body = json!({"apiVersion": "apps/v1"});
        WorkloadField::PriorityClassName.insert(&mut body, json!("plumbline-critical"));
        WorkloadField::Replicas.insert(&mut body, json!(3));
        assert_eq!(
            body,
            json!({"apiVersion": "apps/v1", "spec": {"replicas": 3, "template": {"spec": {"priorityClassName": "plumbline-critical"}}}})
        );
    }
}
