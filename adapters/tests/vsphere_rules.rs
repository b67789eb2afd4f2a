//! DRS VM-VM anti-affinity rules through the vSphere adapter, against the stack's simulator:
//! a rule added, read back, made mandatory, narrowed and removed, each write landing once and
//! a repeated one changing nothing; a rejected change reported with vCenter's fault; an
//! unknown cluster refused by name. What the simulator holds is checked through its control
//! endpoint, not through the adapter. Needs `e2e/stack up vcsim`.
//!
//! `serial_`: a rejection refuses every rule change of the cluster while it is armed.

mod common;

use std::sync::Arc;

use common::vsphere;
use plumbline_adapters::{connect, AntiAffinityRule, Error, Hypervisor, VmId};
use plumbline_e2e::{stack, vsphere_rules::SimRule};

const RULE: &str = "adapter-test-keep-apart";

async fn adapter() -> Arc<dyn Hypervisor> {
    connect(vsphere(&stack()))
        .await
        .unwrap_or_else(|e| panic!("connecting to the simulator: {e}"))
}

async fn sim_rule(name: &str) -> Option<SimRule> {
    stack()
        .vsphere_rules()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|r| r.name == name)
}

#[tokio::test]
async fn serial_anti_affinity_rules_are_written_once_read_back_and_removed() {
    let hv = adapter().await;
    let stack = stack();
    let inventory = hv.inventory().await.unwrap();
    // The cluster and its VMs, as the inventory names them.
    let mut in_cluster: Vec<_> = inventory.iter().filter(|v| v.cluster.is_some()).collect();
    in_cluster.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(in_cluster.len() >= 2, "the simulator's cluster has 2 VMs");
    let cluster = in_cluster[0].cluster.clone().unwrap();
    let mut ids: Vec<VmId> = in_cluster.iter().map(|v| v.id.clone()).collect();
    ids.sort();
    let mut names: Vec<String> = in_cluster.iter().map(|v| v.name.clone()).collect();
    names.sort();
    stack.reject_vsphere_rules(&cluster, false).await.unwrap();
    hv.remove_anti_affinity_rule(&cluster, RULE).await.unwrap();

    let should = AntiAffinityRule {
        name: RULE.into(),
        mandatory: false,
        enabled: true,
        vms: ids.clone(),
    };
    assert_eq!(hv.anti_affinity_rule(&cluster, RULE).await.unwrap(), None);
    hv.set_anti_affinity_rule(&cluster, &should).await.unwrap();
    assert_eq!(
        hv.anti_affinity_rule(&cluster, RULE).await.unwrap(),
        Some(should.clone())
    );
    let added = sim_rule(RULE).await.expect("the simulator lists the rule");
    assert_eq!(
        (
            added.kind.as_str(),
            added.mandatory,
            added.enabled,
            &added.vms
        ),
        ("ClusterAntiAffinityRuleSpec", false, true, &names),
        "{added:?}"
    );
    // The same rule again: nothing is sent (an add would be refused as a duplicate).
    hv.set_anti_affinity_rule(&cluster, &should).await.unwrap();
    assert_eq!(sim_rule(RULE).await.unwrap().key, added.key);

    let must = AntiAffinityRule {
        mandatory: true,
        ..should.clone()
    };
    hv.set_anti_affinity_rule(&cluster, &must).await.unwrap();
    let edited = sim_rule(RULE).await.unwrap();
    assert!(edited.mandatory, "{edited:?}");
    assert_eq!(edited.key, added.key, "edited in place, not added again");
    assert_eq!(
        hv.anti_affinity_rule(&cluster, RULE).await.unwrap(),
        Some(must.clone())
    );

    // vCenter refusing the change: its fault, and the rule as it was.
    stack.reject_vsphere_rules(&cluster, true).await.unwrap();
    let refused = hv.set_anti_affinity_rule(&cluster, &should).await;
    stack.reject_vsphere_rules(&cluster, false).await.unwrap();
    match refused {
        Err(Error::SoapFault { fault, message, .. }) => {
            assert_eq!(fault, "InvalidArgument");
            assert!(message.contains("rulesSpec"), "{message}");
        }
        other => panic!("expected vCenter's InvalidArgument, got {other:?}"),
    }
    assert!(
        sim_rule(RULE).await.unwrap().mandatory,
        "nothing half-applied"
    );

    hv.remove_anti_affinity_rule(&cluster, RULE).await.unwrap();
    assert_eq!(sim_rule(RULE).await, None);
    assert_eq!(hv.anti_affinity_rule(&cluster, RULE).await.unwrap(), None);
    // Removing what is not there changes nothing.
    hv.remove_anti_affinity_rule(&cluster, RULE).await.unwrap();
}

#[tokio::test]
async fn an_unknown_cluster_is_refused_by_name_with_the_clusters_there_are() {
    let hv = adapter().await;
    let err = hv
        .anti_affinity_rule("no-such-cluster", RULE)
        .await
        .unwrap_err();
    let Error::ClusterNotFound { cluster, known, .. } = &err else {
        panic!("expected ClusterNotFound, got {err:?}");
    };
    assert_eq!(cluster, "no-such-cluster");
    assert_eq!(known, &["DC0_C0".to_string()], "{err}");
}
