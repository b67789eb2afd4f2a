//! The status vocabulary is defined once, here in `plumbline-crds`: condition types and
//! reasons (`conditions`), Event reasons (`conditions::event`), field managers and annotations
//! (`names`), and the resources' API version (from the types, `apply`). This test reads the
//! other crates' sources and fails on a new string literal that should have been one of them.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file as shipped: comments and `#[cfg(test)]` modules (at the end of a file,
/// by this project's convention) left out.
fn shipped(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).expect("reading a source file");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// A CamelCase literal right after `what` (e.g. `reason: "Recovered"`).
fn literal_after(line: &str, what: &str) -> bool {
    line.match_indices(what).any(|(i, _)| {
        let rest = line[i + what.len()..].trim_start();
        rest.strip_prefix('"')
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_uppercase())
    })
}

fn offences(line: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    if literal_after(line, "reason:") || literal_after(line, "\"reason\":") {
        found.push("a reason literal: use plumbline_crds::conditions");
    }
    if ["\"True\"", "\"False\"", "\"Unknown\""]
        .iter()
        .any(|s| line.contains(s))
    {
        found.push("a condition status literal: use conditions::status");
    }
    if line.contains("mod reason {") || line.contains("mod event {") {
        found.push("a module of reasons: they belong in plumbline_crds::conditions");
    }
    if line.contains("PatchParams::apply(\"") {
        found.push("a field manager literal: use plumbline_crds::names");
    }
    if line.contains("\"plumbline.dev/v1alpha1\"") {
        found.push("the API version spelt out: use plumbline_crds::apply");
    }
    if line.contains("&str = \"plumbline.dev/") {
        found.push("an annotation, label or finalizer name: use plumbline_crds::names");
    }
    found
}

#[test]
fn every_reason_field_manager_and_annotation_is_defined_in_crds() {
    let root = workspace();
    let mut files = Vec::new();
    for krate in ["operator/src", "policies/src", "adapters/src"] {
        sources(&root.join(krate), &mut files);
    }
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        for (n, line) in shipped(file) {
            for why in offences(&line) {
                let shown = file.strip_prefix(&root).unwrap_or(file).display();
                wrong.push(format!("{shown}:{n}: {why}: {}", line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "defined outside crds:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    assert!(!offences(r#"        reason: "Recovered".to_string(),"#).is_empty());
    assert!(!offences(r#"{ "type": "Ready", "reason": "Applied" }"#).is_empty());
    assert!(!offences(r#"c.status == "True""#).is_empty());
    assert!(!offences(r#"&PatchParams::apply("plumbline-x")"#).is_empty());
    assert!(!offences(r#""apiVersion": "plumbline.dev/v1alpha1","#).is_empty());
    assert!(!offences(r#"pub const X: &str = "plumbline.dev/x";"#).is_empty());
    assert!(offences(r#"reason: reason::APPLIED.to_string(),"#).is_empty());
    assert!(offences(r#"reason: format!("{}", x),"#).is_empty());
}
