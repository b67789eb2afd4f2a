//! The VM-backed nodes, as the hypervisor components list them in
//! `$PLUMBLINE_STACK_DIR/nodes.d/*.json` ([`crate::Stack::nodes_dir`]): what kubelet-sim
//! registers, and what the tests expect to find registered.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{Error, Result};

/// One guest VM that should appear as a Kubernetes Node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SimNode {
    pub name: String,
    /// `libvirt:///<domain-uuid>` or `vsphere://<bios-uuid>`.
    #[serde(rename = "providerID")]
    pub provider_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl SimNode {
    /// The VM's UUID, reported as the node's systemUUID like a kubelet on that VM would.
    pub fn vm_uuid(&self) -> &str {
        self.provider_id.rsplit('/').next().unwrap_or_default()
    }
}

/// Every node listed in `dir`, sorted by name. A missing directory means no nodes yet.
pub fn read_nodes_dir(dir: &Path) -> Result<Vec<SimNode>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadNodeList {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut nodes: BTreeMap<String, (SimNode, PathBuf)> = BTreeMap::new();
    for path in files {
        for node in read_node_list(&path)? {
            if let Some((_, first)) = nodes.get(&node.name) {
                return Err(Error::DuplicateNode {
                    name: node.name,
                    first: first.clone(),
                    second: path,
                });
            }
            nodes.insert(node.name.clone(), (node, path.clone()));
        }
    }
    Ok(nodes.into_values().map(|(node, _)| node).collect())
}

fn read_node_list(path: &Path) -> Result<Vec<SimNode>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadNodeList {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::ParseNodeList {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_lists_sorted_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vcsim.json"),
            r#"[{"name":"vs-b","providerID":"vsphere://4213-ab","labels":{"hv":"vsphere"}}]"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("libvirt.json"),
            r#"[{"name":"lv-a","providerID":"libvirt:///0f1e-22"}]"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let nodes = read_nodes_dir(dir.path()).unwrap();
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lv-a", "vs-b"]);
        assert_eq!(nodes[0].vm_uuid(), "0f1e-22");
        assert_eq!(nodes[1].labels["hv"], "vsphere");

        std::fs::write(
            dir.path().join("zz.json"),
            r#"[{"name":"lv-a","providerID":"libvirt:///other"}]"#,
        )
        .unwrap();
        assert!(matches!(
            read_nodes_dir(dir.path()),
            Err(Error::DuplicateNode { .. })
        ));
    }

    #[test]
    fn missing_dir_means_no_nodes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_nodes_dir(&dir.path().join("nodes.d"))
            .unwrap()
            .is_empty());
    }
}
