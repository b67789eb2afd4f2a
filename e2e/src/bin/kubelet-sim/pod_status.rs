//! The status a kubelet reports for a running pod, computed without I/O.
//!
//! Containers have no real process behind them, so they are running and ready as soon as
//! the pod is bound, unless the pod is annotated [`PROBE_ANNOTATION`]`: fail`, which stands
//! for the application's own readiness probe failing. Pod readiness then follows the
//! kubelet's rule: `ContainersReady` AND every `spec.readinessGates` condition True. Only the conditions the kubelet owns
//! (Initialized, ContainersReady, Ready) are written; readiness-gate conditions belong to
//! whoever sets them.

use std::net::Ipv4Addr;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use plumbline_e2e::cluster::pod_condition;
use serde_json::{json, Value};

pub const INITIALIZED: &str = "Initialized";
pub const CONTAINERS_READY: &str = "ContainersReady";
pub const READY: &str = "Ready";
const RUNNING: &str = "Running";

/// `fail` makes the pod's containers unready, as a failing readiness probe would; anything
/// else (or nothing) leaves them ready.
pub const PROBE_ANNOTATION: &str = "sim.plumbline.dev/probe";

/// Whether the pod's containers pass their (simulated) readiness probe.
pub fn containers_ready(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROBE_ANNOTATION))
        .is_none_or(|v| v != "fail")
}

/// Where a pod runs: its own IP and its node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPlacement {
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
}

/// The kubelet's verdict on the pod's `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready, in the kubelet's words (reason, message).
    pub why_not: Option<(&'static str, String)>,
}

/// Ready iff the containers are ready and every readiness gate has a True condition.
pub fn readiness(pod: &Pod) -> Readiness {
    if !containers_ready(pod) {
        return Readiness {
            ready: false,
            why_not: Some((
                "ContainersNotReady",
                format!(
                    "containers with unready status: [{}]",
                    container_names(pod).join(" ")
                ),
            )),
        };
    }
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for gate in gates {
        let message = match pod_condition(pod, &gate.condition_type) {
            None => format!(
                "corresponding condition of pod readiness gate \"{}\" does not exist.",
                gate.condition_type
            ),
            Some(c) if c.status != "True" => format!(
                "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                gate.condition_type, c.status
            ),
            Some(_) => continue,
        };
        return Readiness {
            ready: false,
            why_not: Some(("ReadinessGatesNotReady", message)),
        };
    }
    Readiness {
        ready: true,
        why_not: None,
    }
}

fn container_names(pod: &Pod) -> Vec<&str> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default()
}

fn status_str(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// True when the pod already reports what `status_patch` would write, so nothing is sent.
pub fn is_current(pod: &Pod, placement: PodPlacement) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let condition_is = |type_: &str, want: bool| {
        pod_condition(pod, type_).is_some_and(|c| c.status == status_str(want))
    };
    let containers_current = {
        let reported = status.container_statuses.as_deref().unwrap_or_default();
        let names = container_names(pod);
        reported.len() == names.len()
            && reported.iter().zip(&names).all(|(s, name)| {
                s.name == *name
                    && s.ready == containers_ready(pod)
                    && s.state
                        .as_ref()
                        .and_then(|st| st.running.as_ref())
                        .is_some()
            })
    };
    status.phase.as_deref() == Some(RUNNING)
        && status.pod_ip.as_deref() == Some(placement.pod_ip.to_string().as_str())
        && status.host_ip.as_deref() == Some(placement.host_ip.to_string().as_str())
        && condition_is(INITIALIZED, true)
        && condition_is(CONTAINERS_READY, containers_ready(pod))
        && condition_is(READY, readiness(pod).ready)
        && containers_current
}

/// A server-side-apply body for `pods/status` with everything the kubelet owns.
/// Transition and start times are kept from the current status when nothing changed.
pub fn status_patch(pod: &Pod, placement: PodPlacement, now: &Time) -> Value {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    let since = |type_: &str, value: bool| -> Time {
        pod_condition(pod, type_)
            .filter(|c| c.status == status_str(value))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone())
    };
    let started = status
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(|| now.clone());

    let verdict = readiness(pod);
    let containers_ready = containers_ready(pod);
    let mut ready = json!({
        "type": READY,
        "status": status_str(verdict.ready),
        "lastProbeTime": null,
        "lastTransitionTime": since(READY, verdict.ready),
    });
    if let Some((reason, message)) = &verdict.why_not {
        ready["reason"] = json!(reason);
        ready["message"] = json!(message);
    }

    let reported = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            let started_at = reported
                .iter()
                .find(|s| s.name == c.name)
                .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone())
                .unwrap_or_else(|| started.clone());
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("kubelet-sim://{uid}/{}", c.name),
                "ready": containers_ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}},
            })
        })
        .collect();

    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "status": {
            "phase": RUNNING,
            "hostIP": placement.host_ip.to_string(),
            "podIP": placement.pod_ip.to_string(),
            "podIPs": [{"ip": placement.pod_ip.to_string()}],
            "startTime": started,
            "conditions": [
                {"type": INITIALIZED, "status": "True", "lastProbeTime": null,
                 "lastTransitionTime": since(INITIALIZED, true)},
                {"type": CONTAINERS_READY, "status": status_str(containers_ready), "lastProbeTime": null,
                 "lastTransitionTime": since(CONTAINERS_READY, containers_ready)},
                ready,
            ],
            "containerStatuses": containers,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(gates: &[&str], conditions: &[(&str, &str)]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "default", "uid": "u1"},
            "spec": {
                "nodeName": "vm1",
                "containers": [{"name": "app", "image": "nginx"}],
                "readinessGates": gates.iter().map(|g| json!({"conditionType": g})).collect::<Vec<_>>(),
            },
            "status": {
                "conditions": conditions.iter()
                    .map(|(t, s)| json!({"type": t, "status": s}))
                    .collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn placement() -> PodPlacement {
        PodPlacement {
            pod_ip: Ipv4Addr::new(10, 244, 0, 2),
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
        }
    }

    const GATE: &str = "plumbline.dev/storage-healthy";

    /// The pod's status as the API server has it once `patch` is applied, with the gate
    /// condition its owner set to `gate`.
    fn apply(p: &mut Pod, patch: &Value, gate: &str) {
        let mut status: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(patch["status"].clone()).unwrap();
        status
            .conditions
            .as_mut()
            .unwrap()
            .push(serde_json::from_value(json!({"type": GATE, "status": gate})).unwrap());
        p.status = Some(status);
    }

    #[test]
    fn ready_without_gates() {
        assert!(readiness(&pod(&[], &[])).ready);
    }

    #[test]
    fn missing_or_false_gate_keeps_pod_unready() {
        let missing = readiness(&pod(&[GATE], &[]));
        assert!(!missing.ready);
        assert!(missing.why_not.unwrap().1.contains("does not exist"));
        let false_gate = readiness(&pod(&[GATE], &[(GATE, "False")]));
        assert!(!false_gate.ready);
        assert_eq!(false_gate.why_not.unwrap().0, "ReadinessGatesNotReady");
        assert!(readiness(&pod(&[GATE], &[(GATE, "True")])).ready);
        // Every gate must be True, not just one.
        assert!(
            !readiness(&pod(
                &[GATE, "other"],
                &[(GATE, "True"), ("other", "Unknown")]
            ))
            .ready
        );
    }

    #[test]
    fn patch_writes_only_kubelet_conditions() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let patch = status_patch(&pod(&[GATE], &[(GATE, "False")]), placement(), &now);
        let types: Vec<_> = patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, [INITIALIZED, CONTAINERS_READY, READY]);
        assert_eq!(patch["status"]["conditions"][2]["status"], "False");
        assert_eq!(patch["status"]["podIP"], "10.244.0.2");
        assert_eq!(patch["status"]["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn applied_status_is_current_until_a_gate_flips() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut p = pod(&[GATE], &[(GATE, "False")]);
        assert!(!is_current(&p, placement()));
        let patch = status_patch(&p, placement(), &now);
        apply(&mut p, &patch, "False");
        assert!(is_current(&p, placement()));
        for c in p.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            if c.type_ == GATE {
                c.status = "True".into();
            }
        }
        assert!(!is_current(&p, placement()));
    }

    #[test]
    fn a_failing_probe_makes_containers_and_pod_unready_and_a_passing_one_ready_again() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut p = pod(&[GATE], &[(GATE, "True")]);
        p.metadata.annotations = Some([(PROBE_ANNOTATION.to_string(), "fail".to_string())].into());
        let verdict = readiness(&p);
        assert!(!verdict.ready);
        assert_eq!(verdict.why_not.unwrap().0, "ContainersNotReady");
        let patch = status_patch(&p, placement(), &now);
        assert_eq!(patch["status"]["conditions"][1]["status"], "False");
        assert_eq!(patch["status"]["conditions"][2]["status"], "False");
        assert_eq!(patch["status"]["containerStatuses"][0]["ready"], false);
        apply(&mut p, &patch, "True");
        assert!(is_current(&p, placement()));
        // The probe passes again: the status is stale until rewritten.
        p.metadata.annotations = None;
        assert!(!is_current(&p, placement()));
        assert!(readiness(&p).ready);
    }
}
