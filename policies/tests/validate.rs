//! What the 1.20 schema cannot check, reported with field paths.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use plumbline_crds::{
    Availability, HypervisorProviderSpec, LibvirtConnection, NodeMapping, NodeMappingStrategy,
    Priority, SecretRef, Storage, TargetKind, VsphereConnection, WorkloadIntentSpec,
    WorkloadTarget,
};
use plumbline_policies::{
    quantity::{parse_interval, parse_latency},
    validate_intent, validate_provider, CountOrPercent, FieldError, Invalid,
};
use proptest::prelude::*;

fn libvirt() -> HypervisorProviderSpec {
    HypervisorProviderSpec {
        libvirt: Some(LibvirtConnection {
            uri: "qemu:///system".into(),
        }),
        vsphere: None,
        node_mapping: None,
        sample_interval: None,
    }
}

fn vsphere() -> VsphereConnection {
    VsphereConnection {
        server: "https://127.0.0.1:8989/sdk".into(),
        credentials_secret_ref: SecretRef {
            name: "vcsim".into(),
            namespace: "plumbline".into(),
        },
        ca_bundle: None,
        insecure_skip_verify: false,
    }
}

fn messages(invalid: Invalid) -> Vec<String> {
    invalid
        .field_errors()
        .iter()
        .map(FieldError::to_string)
        .collect()
}

#[test]
fn provider_defaults() {
    let valid = validate_provider(&libvirt()).unwrap();
    assert_eq!(valid.sample_interval, Duration::from_secs(10));
    assert_eq!(valid.node_mapping, NodeMappingStrategy::ProviderId);
    assert_eq!(valid.node_label, None);
}

#[test]
fn provider_problems_have_paths() {
    let both = HypervisorProviderSpec {
        vsphere: Some(vsphere()),
        ..libvirt()
    };
    assert_eq!(
        messages(validate_provider(&both).unwrap_err()),
        ["spec: sets both libvirt and vsphere; set exactly one"]
    );

    let neither = HypervisorProviderSpec {
        libvirt: None,
        ..libvirt()
    };
    assert_eq!(
        messages(validate_provider(&neither).unwrap_err()),
        ["spec: sets neither libvirt nor vsphere; set exactly one"]
    );

    let confused = HypervisorProviderSpec {
        libvirt: None,
        vsphere: Some(VsphereConnection {
            ca_bundle: Some("PEM".into()),
            insecure_skip_verify: true,
            ..vsphere()
        }),
        node_mapping: Some(NodeMapping {
            by: NodeMappingStrategy::Label,
            label: None,
        }),
        sample_interval: Some("50ms".into()),
    };
    assert_eq!(
        messages(validate_provider(&confused).unwrap_err()),
        [
            "spec.vsphere.insecureSkipVerify: is true while caBundle is set; verify with the CA bundle or skip verification, not both",
            "spec.sampleInterval: \"50ms\" is shorter than 100ms",
            "spec.nodeMapping.label: is required when nodeMapping.by is label",
        ]
    );

    let stray_label = HypervisorProviderSpec {
        node_mapping: Some(NodeMapping {
            by: NodeMappingStrategy::NodeName,
            label: Some("vm".into()),
        }),
        libvirt: Some(LibvirtConnection {
            uri: "localhost".into(),
        }),
        ..libvirt()
    };
    assert_eq!(
        messages(validate_provider(&stray_label).unwrap_err()),
        [
            "spec.libvirt.uri: \"localhost\" is not a libvirt URI such as qemu:///system",
            "spec.nodeMapping.label: is only used when nodeMapping.by is label",
        ]
    );
}

#[test]
fn intent_storage_defaults_and_problems() {
    let mut spec = WorkloadIntentSpec {
        target: WorkloadTarget {
            kind: TargetKind::StatefulSet,
            name: "db".into(),
        },
        priority: Priority::High,
        schedule: None,
        availability: None,
        storage: Some(Storage {
            latency_budget: "1.5ms".into(),
            readiness_gate: true,
            max_unready: None,
        }),
        infrastructure: None,
        placement: None,
        activation: None,
    };
    let valid = validate_intent(&spec).unwrap();
    let storage = valid.storage.unwrap();
    assert_eq!(storage.latency_budget, Duration::from_micros(1500));
    assert_eq!(
        storage.max_unready,
        CountOrPercent::Percent(34),
        "the documented default guard"
    );
    assert!(valid.schedule.is_none());

    spec.storage = Some(Storage {
        latency_budget: "0ms".into(),
        readiness_gate: false,
        max_unready: Some(IntOrString::String("101%".into())),
    });
    spec.availability = Some(Availability {
        replica_floor: Some(0),
        min_available: Some(IntOrString::Int(-2)),
    });
    assert_eq!(
        messages(validate_intent(&spec).unwrap_err()),
        [
            "spec.availability.replicaFloor: 0 is less than 1",
            "spec.availability.minAvailable: -2 is negative; use a count such as 2 or a percentage such as \"50%\"",
            "spec.storage.latencyBudget: \"0ms\" is zero; a latency budget must be positive",
            "spec.storage.maxUnready: \"101%\" is more than 100%",
        ]
    );
}

proptest! {
    #[test]
    fn parsers_never_panic(text in ".{0,12}") {
        let _ = parse_latency(&text);
        let _ = parse_interval(&text);
        let _ = CountOrPercent::parse(&text);
        let _ = plumbline_policies::quantity::parse_clock(&text, true);
    }

    #[test]
    fn any_schema_valid_latency_parses(whole in 1u32..100_000, frac in proptest::option::of(0u32..1000), unit in proptest::sample::select(vec!["us", "ms", "s"])) {
        let text = match frac { Some(f) => format!("{whole}.{f}{unit}"), None => format!("{whole}{unit}") };
        prop_assert!(parse_latency(&text).is_ok(), "{}", text);
    }
}

#[test]
fn provider_bounds_have_paths() {
    let hostile = HypervisorProviderSpec {
        libvirt: None,
        vsphere: Some(VsphereConnection {
            server: "http://vc.example/sdk".into(),
            credentials_secret_ref: SecretRef {
                name: "Bad_Name".into(),
                namespace: "a.b".into(),
            },
            ca_bundle: Some("x".repeat(300 * 1024)),
            insecure_skip_verify: false,
        }),
        node_mapping: None,
        sample_interval: Some("6200000000000000000s".into()),
    };
    let errors = messages(validate_provider(&hostile).unwrap_err());
    let paths: Vec<&str> = errors
        .iter()
        .map(|e| e.split_once(':').unwrap().0)
        .collect();
    assert_eq!(
        paths,
        [
            "spec.vsphere.server",
            "spec.vsphere.credentialsSecretRef.name",
            "spec.vsphere.credentialsSecretRef.namespace",
            "spec.vsphere.caBundle",
            "spec.sampleInterval",
        ],
        "{errors:?}"
    );
    assert!(errors[0].contains("only https:// is allowed"), "{errors:?}");

    for (interval, ok) in [
        ("100ms", true),
        ("60m", true),
        ("3600s", true),
        ("3601s", false),
        ("61m", false),
        ("99ms", false),
    ] {
        let spec = HypervisorProviderSpec {
            sample_interval: Some(interval.into()),
            ..libvirt()
        };
        assert_eq!(validate_provider(&spec).is_ok(), ok, "{interval}");
    }
    for (server, ok) in [
        ("vc.example", true),
        ("10.0.0.5:8989", true),
        ("https://127.0.0.1:8989/sdk", true),
        ("http://vc.example", false),
        ("ftp://vc.example", false),
        ("https://", false),
        ("vc.example:notaport", false),
    ] {
        assert_eq!(
            plumbline_policies::vsphere_url(server).is_ok(),
            ok,
            "{server}"
        );
    }
}

#[test]
fn intent_bounds_have_paths() {
    let window = plumbline_crds::TimeWindow {
        days: None,
        start: "08:00".into(),
        end: "20:00".into(),
        time_zone: "UTC".into(),
    };
    let spec = WorkloadIntentSpec {
        target: WorkloadTarget {
            kind: TargetKind::Deployment,
            name: "a".repeat(254),
        },
        priority: Priority::High,
        schedule: Some(vec![window; 33]),
        availability: None,
        storage: Some(Storage {
            latency_budget: "120s".into(),
            readiness_gate: false,
            max_unready: None,
        }),
        infrastructure: None,
        placement: None,
        activation: None,
    };
    assert_eq!(
        messages(validate_intent(&spec).unwrap_err()),
        [
            "spec.target.name: is longer than 253 characters",
            "spec.schedule: has 33 windows; at most 32",
            "spec.storage.latencyBudget: \"120s\" is more than 60s; a storage latency budget is milliseconds",
        ]
    );
}
