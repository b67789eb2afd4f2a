//! The committed CRD YAML must be exactly what the code generates.

use std::path::PathBuf;

use plumbline_crds::generate;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated");
    for (file, crd) in generate::crds() {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}; regenerate with `{}`",
                path.display(),
                generate::REGENERATE
            )
        });
        let generated = generate::to_yaml(&crd).expect("rendering the CRD as YAML");
        assert!(
            committed == generated,
            "{} drifted from crds/src; regenerate with `{}` (from the repository root) and commit it",
            path.display(),
            generate::REGENERATE
        );
    }
}

#[test]
fn generated_dir_holds_only_generated_crds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("generated");
    let expected: Vec<&str> = generate::crds().into_iter().map(|(file, _)| file).collect();
    for entry in std::fs::read_dir(&dir).expect("listing crds/generated") {
        let name = entry
            .expect("reading crds/generated")
            .file_name()
            .into_string()
            .expect("utf-8 file name");
        assert!(
            expected.contains(&name.as_str()),
            "crds/generated/{name} is not produced by crdgen; remove it or regenerate with `{}`",
            generate::REGENERATE
        );
    }
}
