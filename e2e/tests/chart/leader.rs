//! One acting leader, whatever the replica count: the chart always passes the Lease flags
//! (Recreate does not cover a node failure or a drain), and with two replicas spreads them
//! over nodes and keeps one through drains with a PodDisruptionBudget.

use crate::lint::{operator_args, rendered};
use serde_yaml::Value;

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn deployment(objects: &[Value]) -> &Value {
    of_kind(objects, "Deployment")[0]
}

#[test]
fn one_replica_still_takes_the_lease_and_rolls_without_a_budget() {
    let objects = rendered(&[]);
    let args = operator_args(&objects);
    for flag in [
        "--leader-elect=true",
        "--lease-name=t-plumbline-leader",
        "--lease-duration=15s",
        "--lease-renew-deadline=10s",
        "--lease-retry-period=2s",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a == "--leader-elect=false"),
        "{args:?}"
    );
    let d = deployment(&objects);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert!(
        of_kind(&objects, "PodDisruptionBudget").is_empty(),
        "a budget for one replica would block every drain"
    );
    assert!(d["spec"]["template"]["spec"]["affinity"].is_null());
    let role = of_kind(&objects, "Role");
    assert!(
        role.iter().any(|r| r["rules"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|rule| rule["resources"]
                .as_sequence()
                .is_some_and(|l| l.iter().any(|x| x == "leases")))),
        "the Lease is granted with one replica too: {role:?}"
    );
}

#[test]
fn two_replicas_are_spread_over_nodes_and_kept_through_drains() {
    let objects = rendered(&["replicas=2"]);
    let d = deployment(&objects);
    assert_eq!(d["spec"]["replicas"], 2);
    let anti = &d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname", "{anti:?}");
    assert_eq!(
        term["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "t"
    );
    let pdb = of_kind(&objects, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(pdb[0]["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb[0]["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"],
        "the budget covers exactly the operator's pods"
    );

    let required = rendered(&["replicas=2", "podAntiAffinity=required"]);
    let anti = &deployment(&required)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert_eq!(
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let none = rendered(&["replicas=2", "podAntiAffinity=none"]);
    assert!(deployment(&none)["spec"]["template"]["spec"]["affinity"].is_null());
    let no_budget = rendered(&["replicas=2", "podDisruptionBudget.enabled=false"]);
    assert!(of_kind(&no_budget, "PodDisruptionBudget").is_empty());
}
