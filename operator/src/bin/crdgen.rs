//! Prints Plumbline's CRDs as YAML, or writes one file per CRD into a directory.
//!
//! `cargo run -p plumbline-operator --bin crdgen -- crds/generated` refreshes the committed
//! manifests; `cargo run -p plumbline-operator --bin crdgen | kubectl apply -f -` installs them.

use std::{path::PathBuf, process::ExitCode};

use plumbline_crds::generate;

fn main() -> ExitCode {
    let out_dir = std::env::args_os().nth(1).map(PathBuf::from);
    for (file, crd) in generate::crds() {
        let yaml = match generate::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("crdgen: rendering {file} as YAML: {e}");
                return ExitCode::FAILURE;
            }
        };
        match &out_dir {
            Some(dir) => {
                let path = dir.join(file);
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
