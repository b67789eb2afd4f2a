//! The chart ships the CRDs crdgen writes to `crds/generated/`; they must be byte-identical.
//! (crds/ has its own test that `crds/generated/` matches the Rust types.)

use std::{collections::BTreeSet, fs, path::PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &PathBuf) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".yaml").then_some(name)
        })
        .collect()
}

#[test]
fn chart_crds_match_generated_crds() {
    let generated = repo().join("crds/generated");
    let chart = repo().join("charts/plumbline/crds");
    let generated_files = yaml_files(&generated);
    assert!(
        !generated_files.is_empty(),
        "no CRDs in {}: run crdgen (see crds/src/generate.rs)",
        generated.display()
    );
    let chart_files = yaml_files(&chart);
    assert_eq!(
        chart_files, generated_files,
        "the chart's CRD files differ from crds/generated/: run charts/sync-crds"
    );
    for name in &generated_files {
        let want = fs::read_to_string(generated.join(name)).unwrap();
        let got = fs::read_to_string(chart.join(name)).unwrap();
        assert!(
            got == want,
            "charts/plumbline/crds/{name} drifted from crds/generated/{name}: run charts/sync-crds"
        );
        assert!(
            want.contains("kind: CustomResourceDefinition"),
            "crds/generated/{name} is not a CustomResourceDefinition"
        );
    }
}
