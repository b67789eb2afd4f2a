//! Server-side-apply bodies for Plumbline's own resources: `apiVersion` and `kind` come from the
//! type, so no body spells out `plumbline.dev/v1alpha1`.

use kube::Resource;
use serde_json::{Map, Value};

/// `{apiVersion, kind}` of `K` merged with `fields` (e.g. `{"status": ...}` or
/// `{"metadata": ..., "spec": ...}`).
pub fn body<K: Resource<DynamicType = ()>>(fields: Value) -> Value {
    let mut object = Map::new();
    object.insert(
        "apiVersion".into(),
        Value::String(K::api_version(&()).into_owned()),
    );
    object.insert("kind".into(), Value::String(K::kind(&()).into_owned()));
    if let Value::Object(extra) = fields {
        object.extend(extra);
    }
    Value::Object(object)
}

/// A body that sets `status` of a `K`.
pub fn status<K: Resource<DynamicType = ()>>(status: Value) -> Value {
    body::<K>(serde_json::json!({ "status": status }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InfraChange, WorkloadIntent};
    use serde_json::json;

    #[test]
    fn the_type_names_itself() {
        assert_eq!(
            status::<WorkloadIntent>(json!({"guard": {}})),
            json!({"apiVersion": "plumbline.dev/v1alpha1", "kind": "WorkloadIntent", "status": {"guard": {}}})
        );
        let b = body::<InfraChange>(json!({"metadata": {"name": "x"}}));
        assert_eq!(b["kind"], "InfraChange");
        assert_eq!(b["metadata"]["name"], "x");
    }
}
