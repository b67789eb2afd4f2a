//! Which namespaces may use which priority tiers and infrastructure actions
//! ([`TenantPolicy`](plumbline_crds::TenantPolicy)): the policies in force and an intent's
//! request in, a [`TenantVerdict`] out.
//!
//! The rule, as NetworkPolicies treat pods: a namespace no policy names is unrestricted; a
//! namespace one or more policies name may use what *one* of them allows as a whole (its tier
//! and every action it asks for), so two narrow grants never add up to a wider one. A policy
//! naming `*` therefore restricts every namespace, which is how a platform team makes
//! "nothing unless granted" the default.

use std::collections::BTreeSet;

use plumbline_crds::{Priority, TenantAction, TenantPolicySpec, WorkloadIntentSpec};

/// One TenantPolicy, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPolicy {
    pub name: String,
    pub spec: TenantPolicySpec,
}

/// What an intent asks of its namespace's policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRequest {
    pub namespace: String,
    pub tier: Priority,
    /// The actions the intent turns on. `NodeTaints` is never asked for: it follows from a
    /// storage budget, and is granted or not (see [`TenantVerdict::node_taints`]).
    pub actions: BTreeSet<TenantAction>,
}

impl TenantRequest {
    /// What an intent in `namespace` with `spec` asks for.
    pub fn of(namespace: &str, spec: &WorkloadIntentSpec) -> Self {
        let mut actions = BTreeSet::new();
        if spec.storage.as_ref().is_some_and(|s| s.readiness_gate) {
            actions.insert(TenantAction::ReadinessGate);
        }
        if let Some(infra) = &spec.infrastructure {
            if infra.throttle_noisy_neighbours {
                actions.insert(TenantAction::ThrottleNoisyNeighbours);
            }
            if infra.protect_backing_vms {
                actions.insert(TenantAction::ProtectBackingVms);
            }
        }
        Self {
            namespace: namespace.to_string(),
            tier: spec.priority,
            actions,
        }
    }
}

/// The decision for one intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantVerdict {
    /// No policy names the namespace: everything is allowed.
    Unrestricted,
    /// `policy` allows the tier and every action asked for.
    Allowed {
        policy: String,
        /// Whether a policy allowing the request also grants `NodeTaints`.
        node_taints: bool,
    },
    /// Nothing of the intent may be applied.
    NotAllowed(NotAllowed),
}

impl TenantVerdict {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, TenantVerdict::NotAllowed(_))
    }

    /// Whether the intent's storage budget may taint the nodes under its pods.
    pub fn node_taints(&self) -> bool {
        match self {
            TenantVerdict::Unrestricted => true,
            TenantVerdict::Allowed { node_taints, .. } => *node_taints,
            TenantVerdict::NotAllowed(_) => false,
        }
    }
}

/// What is not allowed, and by which policy, in the words of the `NotAllowed` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    pub namespace: String,
    /// What was refused, e.g. `tier critical` or `action ThrottleNoisyNeighbours`.
    pub refused: Vec<String>,
    /// The policy closest to allowing the request (fewest refusals; first by name on a tie).
    pub policy: String,
    /// What that policy allows, e.g. `tiers [standard, best-effort], actions [ReadinessGate]`.
    pub allows: String,
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "namespace {} may not use {}: TenantPolicy {} allows {}",
            self.namespace,
            self.refused.join(", "),
            self.policy,
            self.allows
        )
    }
}

/// Whether `pattern` (a name, a prefix ending in `*`, or `*`) names `namespace`.
pub fn names_namespace(pattern: &str, namespace: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => pattern == namespace,
    }
}

/// The verdict for `request` under `policies` (in any order).
pub fn admit(request: &TenantRequest, policies: &[NamedPolicy]) -> TenantVerdict {
    let mut covering: Vec<&NamedPolicy> = policies
        .iter()
        .filter(|p| {
            p.spec
                .namespaces
                .iter()
                .any(|n| names_namespace(n, &request.namespace))
        })
        .collect();
    if covering.is_empty() {
        return TenantVerdict::Unrestricted;
    }
    covering.sort_by(|a, b| a.name.cmp(&b.name));
    let refusals = |p: &NamedPolicy| -> Vec<String> {
        let mut refused = Vec::new();
        if !p.spec.tiers.contains(&request.tier) {
            refused.push(format!("tier {}", request.tier));
        }
        for action in &request.actions {
            if !p.spec.actions.contains(action) {
                refused.push(format!("action {action}"));
            }
        }
        refused
    };
    let allowing: Vec<&&NamedPolicy> = covering.iter().filter(|p| refusals(p).is_empty()).collect();
    if let Some(first) = allowing.first() {
        return TenantVerdict::Allowed {
            policy: first.name.clone(),
            node_taints: allowing
                .iter()
                .any(|p| p.spec.actions.contains(&TenantAction::NodeTaints)),
        };
    }
    let closest = covering
        .iter()
        .min_by_key(|p| refusals(p).len())
        .expect("at least one covering policy");
    TenantVerdict::NotAllowed(NotAllowed {
        namespace: request.namespace.clone(),
        refused: refusals(closest),
        policy: closest.name.clone(),
        allows: describe_grant(&closest.spec),
    })
}

fn describe_grant(spec: &TenantPolicySpec) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            format!("[{}]", items.join(", "))
        }
    };
    let tiers: Vec<String> = Priority::ALL
        .iter()
        .filter(|t| spec.tiers.contains(t))
        .map(|t| t.to_string())
        .collect();
    let actions: Vec<String> = TenantAction::ALL
        .iter()
        .filter(|a| spec.actions.contains(a))
        .map(|a| a.to_string())
        .collect();
    format!("tiers {}, actions {}", list(tiers), list(actions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbline_crds::{Infrastructure, Storage, TargetKind, WorkloadTarget};

    fn policy(
        name: &str,
        namespaces: &[&str],
        tiers: &[Priority],
        actions: &[TenantAction],
    ) -> NamedPolicy {
        NamedPolicy {
            name: name.into(),
            spec: TenantPolicySpec {
                namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                tiers: tiers.to_vec(),
                actions: actions.to_vec(),
            },
        }
    }

    fn request(namespace: &str, tier: Priority, actions: &[TenantAction]) -> TenantRequest {
        TenantRequest {
            namespace: namespace.into(),
            tier,
            actions: actions.iter().copied().collect(),
        }
    }

    use Priority::*;
    use TenantAction::*;

    #[test]
    fn no_policy_or_none_naming_the_namespace_leaves_it_unrestricted() {
        let r = request("team-a", Critical, &[ThrottleNoisyNeighbours]);
        assert_eq!(admit(&r, &[]), TenantVerdict::Unrestricted);
        let other = policy("team-b", &["team-b", "team-b-*"], &[BestEffort], &[]);
        assert_eq!(admit(&r, &[other]), TenantVerdict::Unrestricted);
        assert!(TenantVerdict::Unrestricted.node_taints());
    }

    #[test]
    fn a_covering_policy_refuses_a_tier_it_does_not_list_and_names_everything() {
        let p = policy(
            "tenants",
            &["team-*"],
            &[Standard, BestEffort],
            &[ReadinessGate],
        );
        let verdict = admit(
            &request("team-a", Critical, &[ThrottleNoisyNeighbours]),
            &[p],
        );
        let TenantVerdict::NotAllowed(n) = verdict else {
            panic!("expected NotAllowed, got {verdict:?}")
        };
        assert_eq!(
            n.to_string(),
            "namespace team-a may not use tier critical, action ThrottleNoisyNeighbours: \
             TenantPolicy tenants allows tiers [standard, best-effort], actions [ReadinessGate]"
        );
    }

    #[test]
    fn a_policy_with_nothing_listed_allows_nothing() {
        let p = policy("lockdown", &["*"], &[], &[]);
        let TenantVerdict::NotAllowed(n) = admit(&request("x", BestEffort, &[]), &[p]) else {
            panic!("expected NotAllowed")
        };
        assert!(
            n.to_string()
                .ends_with("TenantPolicy lockdown allows tiers none, actions none"),
            "{n}"
        );
    }

    #[test]
    fn one_policy_must_allow_the_whole_request() {
        // Critical without actions from one, throttling at standard from the other: together
        // they would grant critical + throttling, which neither does.
        let tiers = policy("a-tiers", &["team-a"], &[Critical], &[]);
        let actions = policy(
            "b-actions",
            &["team-a"],
            &[Standard],
            &[ThrottleNoisyNeighbours],
        );
        let both = [tiers.clone(), actions.clone()];
        assert!(!admit(
            &request("team-a", Critical, &[ThrottleNoisyNeighbours]),
            &both
        )
        .is_allowed());
        assert_eq!(
            admit(&request("team-a", Critical, &[]), &both),
            TenantVerdict::Allowed {
                policy: "a-tiers".into(),
                node_taints: false
            }
        );
        assert_eq!(
            admit(
                &request("team-a", Standard, &[ThrottleNoisyNeighbours]),
                &both
            ),
            TenantVerdict::Allowed {
                policy: "b-actions".into(),
                node_taints: false
            }
        );
    }

    #[test]
    fn the_closest_policy_is_named_and_ties_go_by_name() {
        let far = policy("aaa", &["*"], &[], &[]);
        let near = policy("zzz", &["team-a"], &[Critical], &[]);
        let TenantVerdict::NotAllowed(n) = admit(
            &request("team-a", Critical, &[ProtectBackingVms]),
            &[far.clone(), near],
        ) else {
            panic!("expected NotAllowed")
        };
        assert_eq!(
            (n.policy.as_str(), n.refused.clone()),
            ("zzz", vec!["action ProtectBackingVms".to_string()])
        );
        let twin = policy("bbb", &["*"], &[], &[]);
        let TenantVerdict::NotAllowed(n) = admit(&request("q", High, &[]), &[twin, far]) else {
            panic!("expected NotAllowed")
        };
        assert_eq!(n.policy, "aaa");
    }

    #[test]
    fn node_taints_come_from_any_policy_allowing_the_request() {
        let plain = policy("plain", &["*"], &[Standard], &[]);
        let taints = policy("taints", &["team-*"], &[Standard], &[NodeTaints]);
        let v = admit(&request("team-a", Standard, &[]), &[plain.clone(), taints]);
        assert_eq!(
            v,
            TenantVerdict::Allowed {
                policy: "plain".into(),
                node_taints: true
            }
        );
        assert!(!admit(&request("ops", Standard, &[]), &[plain]).node_taints());
    }

    #[test]
    fn namespace_patterns() {
        assert!(names_namespace("*", "anything"));
        assert!(names_namespace("team-*", "team-a"));
        assert!(names_namespace("team-*", "team-"));
        assert!(!names_namespace("team-*", "teams"));
        assert!(names_namespace("team-a", "team-a"));
        assert!(!names_namespace("team-a", "team-ab"));
    }

    #[test]
    fn the_request_lists_what_the_spec_turns_on() {
        let mut spec = WorkloadIntentSpec {
            target: WorkloadTarget {
                kind: TargetKind::Deployment,
                name: "web".into(),
            },
            priority: High,
            schedule: None,
            availability: None,
            storage: None,
            infrastructure: None,
            placement: None,
            activation: None,
        };
        assert_eq!(TenantRequest::of("ns", &spec), request("ns", High, &[]));
        spec.storage = Some(Storage {
            latency_budget: "20ms".into(),
            readiness_gate: true,
            max_unready: None,
        });
        spec.infrastructure = Some(Infrastructure {
            protect_backing_vms: true,
            throttle_noisy_neighbours: true,
            relocate_noisy_neighbours: false,
        });
        assert_eq!(
            TenantRequest::of("ns", &spec),
            request(
                "ns",
                High,
                &[ReadinessGate, ThrottleNoisyNeighbours, ProtectBackingVms]
            )
        );
        spec.storage = Some(Storage {
            latency_budget: "20ms".into(),
            readiness_gate: false,
            max_unready: None,
        });
        spec.infrastructure = Some(Infrastructure::default());
        assert_eq!(TenantRequest::of("ns", &spec), request("ns", High, &[]));
    }
}
