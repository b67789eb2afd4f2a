//! DRS VM-VM anti-affinity rules: read from a cluster's `configurationEx.rule` in one
//! retrieval, and written with `ReconfigureComputeResource_Task` (`rulesSpec` add, edit or
//! remove). Every write plans from a fresh read, so a write that landed finds nothing left to
//! do, and an answer lost on the way is settled by reading again, never by sending twice.

use std::collections::HashMap;

use super::{
    inventory::{self, Contents},
    reconfigure::is_lost_session,
    task::{self, Submission},
    VSphereHypervisor,
};
use crate::xml::{Element, MoRef};
use crate::{AntiAffinityRule, Error, Result, VmId};

const CLUSTER_PATHS: &[&str] = &["name", "configurationEx"];
/// The rule type Plumbline writes.
const ANTI_AFFINITY: &str = "ClusterAntiAffinityRuleSpec";
/// Reads, plans and submits at most this often per call.
const ATTEMPTS: usize = 2;

/// One rule of a cluster, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleRecord {
    pub key: i64,
    /// Its `xsi:type`: `ClusterAntiAffinityRuleSpec`, `ClusterAffinityRuleSpec`, …
    pub kind: String,
    pub name: String,
    pub enabled: bool,
    pub mandatory: bool,
    pub vms: Vec<MoRef>,
}

/// One compute cluster and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClusterRecord {
    pub moref: MoRef,
    pub name: String,
    pub rules: Vec<RuleRecord>,
}

/// The clusters in one retrieval's objects, by name.
pub(super) fn cluster_records(contents: &Contents) -> Vec<ClusterRecord> {
    let mut clusters: Vec<ClusterRecord> = contents
        .iter()
        .filter(|(obj, _)| obj.kind == "ClusterComputeResource")
        .map(|(obj, props)| ClusterRecord {
            moref: obj.clone(),
            name: props
                .get("name")
                .map(|v| v.text.trim().to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| obj.value.clone()),
            rules: props
                .get("configurationEx")
                .map(|config| config.all("rule").filter_map(rule_record).collect())
                .unwrap_or_default(),
        })
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters
}

fn rule_record(rule: &Element) -> Option<RuleRecord> {
    let flag = |name: &str| rule.path_text(&[name]).map(str::trim) == Some("true");
    Some(RuleRecord {
        key: rule.path_i64(&["key"])?,
        kind: rule.type_name().unwrap_or_default().to_string(),
        name: rule.path_text(&["name"])?.trim().to_string(),
        enabled: flag("enabled"),
        mandatory: flag("mandatory"),
        vms: rule.all("vm").filter_map(Element::as_moref).collect(),
    })
}

/// What a write sends: a new rule, a changed one (by its key), or the rule's removal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleChange {
    Add,
    Edit(i64),
    Remove(i64),
}

/// The edit that brings `current` to `want`, `None` when nothing is left to do. A rule of
/// another kind under the name is never touched.
fn plan(
    cluster: &str,
    current: Option<&RuleRecord>,
    want: Option<(&AntiAffinityRule, &[MoRef])>,
) -> std::result::Result<Option<RuleChange>, String> {
    if let Some(rule) = current.filter(|r| r.kind != ANTI_AFFINITY) {
        return Err(foreign(cluster, rule));
    }
    Ok(match (current, want) {
        (None, None) => None,
        (Some(rule), None) => Some(RuleChange::Remove(rule.key)),
        (None, Some(_)) => Some(RuleChange::Add),
        (Some(rule), Some((w, vms))) => {
            let mut have = rule.vms.clone();
            have.sort();
            let same = rule.enabled == w.enabled && rule.mandatory == w.mandatory && have == vms;
            (!same).then_some(RuleChange::Edit(rule.key))
        }
    })
}

fn foreign(cluster: &str, rule: &RuleRecord) -> String {
    format!(
        "cluster {cluster} has a rule named {:?} of another kind ({}); it is not Plumbline's \
         to change: rename it, or the intent",
        rule.name, rule.kind
    )
}

/// `ReconfigureComputeResource_Task` with one `rulesSpec`, fields in the WSDL's order.
fn request(
    cluster: &MoRef,
    edit: &RuleChange,
    want: Option<(&AntiAffinityRule, &[MoRef])>,
) -> Element {
    let rules_spec = match (edit, want) {
        (RuleChange::Remove(key), _) => Element::new("rulesSpec")
            .child(Element::text("operation", "remove"))
            .child(Element::text("removeKey", key.to_string()).xsi_type("xsd:int")),
        (RuleChange::Add | RuleChange::Edit(_), Some((rule, vms))) => {
            let key = match edit {
                RuleChange::Edit(key) => Some(Element::text("key", key.to_string())),
                _ => None,
            };
            let info = Element::new("info")
                .xsi_type(ANTI_AFFINITY)
                .children(key)
                .child(Element::text("enabled", rule.enabled.to_string()))
                .child(Element::text("name", rule.name.clone()))
                .child(Element::text("mandatory", rule.mandatory.to_string()))
                .child(Element::text("userCreated", "true"))
                .children(vms.iter().map(|vm| Element::moref("vm", vm)));
            let operation = if matches!(edit, RuleChange::Add) {
                "add"
            } else {
                "edit"
            };
            Element::new("rulesSpec")
                .child(Element::text("operation", operation))
                .child(info)
        }
        (RuleChange::Add | RuleChange::Edit(_), None) => {
            unreachable!("an add or edit always has a rule")
        }
    };
    Element::new("ReconfigureComputeResource_Task")
        .child(Element::moref("_this", cluster))
        .child(
            Element::new("spec")
                .xsi_type("ClusterConfigSpecEx")
                .child(rules_spec),
        )
        .child(Element::text("modify", "true"))
}

impl VSphereHypervisor {
    async fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        let contents = inventory::retrieve_in_view(
            &self.inner.session,
            "the compute clusters",
            &["ClusterComputeResource"],
            vec![inventory::prop_set("ClusterComputeResource", CLUSTER_PATHS)],
            Vec::new(),
        )
        .await?;
        Ok(cluster_records(&contents))
    }

    async fn cluster(&self, name: &str) -> Result<ClusterRecord> {
        let clusters = self.clusters().await?;
        let known = clusters.iter().map(|c| c.name.clone()).collect();
        clusters
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::ClusterNotFound {
                cluster: name.to_string(),
                endpoint: self.inner.endpoint.url.clone(),
                known,
            })
    }

    /// VM UUID → managed object, from the cache the inventory keeps; read again when the
    /// cache does not `cover` what is asked.
    async fn morefs(
        &self,
        cover: impl Fn(&HashMap<VmId, MoRef>) -> bool,
    ) -> Result<HashMap<VmId, MoRef>> {
        let cached = self.inner.morefs.lock().expect("moref cache lock").clone();
        if cover(&cached) {
            return Ok(cached);
        }
        self.all_vms(inventory::VM_PATHS).await?;
        Ok(self.inner.morefs.lock().expect("moref cache lock").clone())
    }

    pub(super) async fn read_rule(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<AntiAffinityRule>> {
        let record = self.cluster(cluster).await?;
        let Some(rule) = record.rules.iter().find(|r| r.name == name) else {
            return Ok(None);
        };
        if rule.kind != ANTI_AFFINITY {
            return Err(self.not_ours("reading an anti-affinity rule", foreign(cluster, rule)));
        }
        let ids_of: HashMap<MoRef, VmId> = self
            .morefs(|m| {
                let known: std::collections::HashSet<&MoRef> = m.values().collect();
                rule.vms.iter().all(|v| known.contains(v))
            })
            .await?
            .into_iter()
            .map(|(id, m)| (m, id))
            .collect();
        // A VM that is gone drops out: the rule then differs from what is wanted, and is
        // rewritten.
        let mut vms: Vec<VmId> = rule
            .vms
            .iter()
            .filter_map(|m| ids_of.get(m).cloned())
            .collect();
        vms.sort();
        Ok(Some(AntiAffinityRule {
            name: rule.name.clone(),
            mandatory: rule.mandatory,
            enabled: rule.enabled,
            vms,
        }))
    }

    /// Brings the cluster's rule `name` to `want` (`None`: no such rule).
    pub(super) async fn write_rule(
        &self,
        cluster: &str,
        name: &str,
        want: Option<&AntiAffinityRule>,
    ) -> Result<()> {
        let action = if want.is_some() {
            "writing an anti-affinity rule"
        } else {
            "removing an anti-affinity rule"
        };
        let target = format!("rule {name} of cluster {cluster}");
        let vms: Vec<MoRef> = match want {
            Some(rule) => {
                let morefs = self
                    .morefs(|m| rule.vms.iter().all(|id| m.contains_key(id)))
                    .await?;
                let mut vms = rule
                    .vms
                    .iter()
                    .map(|id| {
                        morefs.get(id).cloned().ok_or_else(|| Error::VmNotFound {
                            vm: id.clone(),
                            endpoint: self.inner.endpoint.url.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                vms.sort();
                vms
            }
            None => Vec::new(),
        };
        let want = want.map(|rule| (rule, vms.as_slice()));
        let mut attempt = 1;
        loop {
            let record = self.cluster(cluster).await?;
            let current = record.rules.iter().find(|r| r.name == name);
            let edit = match plan(cluster, current, want) {
                Ok(Some(edit)) => edit,
                Ok(None) => return Ok(()),
                Err(why) => return Err(self.not_ours(action, why)),
            };
            let failure = match task::submit(
                &self.inner.session,
                action,
                &target,
                request(&record.moref, &edit, want),
            )
            .await
            {
                Submission::Finished(result) => return result,
                Submission::Refused(e) if is_lost_session(&e) => e,
                Submission::Refused(e) => return Err(e),
                Submission::Unknown(e) => e,
            };
            // A lost session (logged in again by now) or a lost answer: the next read says
            // what is left to do.
            if attempt == ATTEMPTS {
                return Err(failure);
            }
            tracing::warn!(%target, error = %failure, "rule write interrupted; reading the cluster again");
            attempt += 1;
        }
    }

    fn not_ours(&self, operation: &'static str, reason: String) -> Error {
        Error::UnsupportedOperation {
            operation,
            endpoint: self.inner.endpoint.url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster's `configurationEx` as govmomi's simulator answers it: our rule, someone's
    /// VM-host rule, and a cluster without rules.
    const CLUSTERS: &[u8] =
        br#"<returnval xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance">
  <objects><obj type="ClusterComputeResource">domain-c29</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC0_C0</val></propSet>
    <propSet><name>configurationEx</name><val XMLSchema-instance:type="ClusterConfigInfoEx">
      <dasConfig><enabled>false</enabled></dasConfig>
      <rule XMLSchema-instance:type="ClusterAntiAffinityRuleSpec">
        <key>3</key><enabled>true</enabled><name>plumbline-shop-web</name>
        <mandatory>false</mandatory><userCreated>true</userCreated><ruleUuid>5d7c</ruleUuid>
        <vm type="VirtualMachine">vm-57</vm><vm type="VirtualMachine">vm-54</vm>
      </rule>
      <rule XMLSchema-instance:type="ClusterVmHostRuleInfo">
        <key>4</key><enabled>true</enabled><name>db-on-rack-1</name>
      </rule>
    </val></propSet>
  </objects>
  <objects><obj type="ClusterComputeResource">domain-c40</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC1_C0</val></propSet>
  </objects>
</returnval>"#;

    fn clusters() -> Vec<ClusterRecord> {
        let mut contents = Vec::new();
        inventory::object_contents(Element::parse(CLUSTERS).unwrap(), &mut contents);
        cluster_records(&contents)
    }

    fn vm(v: &str) -> MoRef {
        MoRef::new("VirtualMachine", v)
    }

    fn rule(mandatory: bool) -> AntiAffinityRule {
        AntiAffinityRule {
            name: "plumbline-shop-web".into(),
            mandatory,
            enabled: true,
            vms: vec![VmId::new("a"), VmId::new("b")],
        }
    }

    #[test]
    fn rules_are_read_with_their_kind_key_and_vms() {
        let c = clusters();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "DC0_C0");
        assert_eq!(
            c[0].moref,
            MoRef::new("ClusterComputeResource", "domain-c29")
        );
        assert_eq!(
            c[0].rules[0],
            RuleRecord {
                key: 3,
                kind: ANTI_AFFINITY.into(),
                name: "plumbline-shop-web".into(),
                enabled: true,
                mandatory: false,
                vms: vec![vm("vm-57"), vm("vm-54")],
            }
        );
        assert_eq!(c[0].rules[1].kind, "ClusterVmHostRuleInfo");
        assert!(c[1].rules.is_empty());
    }

    #[test]
    fn a_write_adds_edits_removes_or_does_nothing() {
        let c = clusters();
        let ours = c[0].rules.first();
        let vms = [vm("vm-54"), vm("vm-57")];
        let (should, must) = (rule(false), rule(true));
        assert_eq!(plan("DC0_C0", ours, Some((&should, &vms))), Ok(None));
        assert_eq!(
            plan("DC0_C0", ours, Some((&must, &vms))),
            Ok(Some(RuleChange::Edit(3)))
        );
        assert_eq!(
            plan("DC0_C0", ours, Some((&should, &vms[..1]))),
            Ok(Some(RuleChange::Edit(3)))
        );
        assert_eq!(plan("DC0_C0", ours, None), Ok(Some(RuleChange::Remove(3))));
        assert_eq!(
            plan("DC1_C0", None, Some((&should, &vms))),
            Ok(Some(RuleChange::Add))
        );
        assert_eq!(plan("DC1_C0", None, None), Ok(None));
        let theirs = plan("DC0_C0", c[0].rules.get(1), None).unwrap_err();
        assert!(
            theirs.contains("of another kind (ClusterVmHostRuleInfo)"),
            "{theirs}"
        );
    }

    #[test]
    fn requests_follow_the_wsdl() {
        let cluster = MoRef::new("ClusterComputeResource", "domain-c29");
        let vms = [vm("vm-54"), vm("vm-57")];
        let r = rule(true);
        let edit = request(&cluster, &RuleChange::Edit(3), Some((&r, &vms)));
        let spec = edit.first("spec").unwrap();
        assert_eq!(spec.type_name(), Some("ClusterConfigSpecEx"));
        assert_eq!(spec.path_text(&["rulesSpec", "operation"]), Some("edit"));
        let info = spec.path(&["rulesSpec", "info"]).unwrap();
        assert_eq!(info.type_name(), Some(ANTI_AFFINITY));
        let names: Vec<_> = info.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "key",
                "enabled",
                "name",
                "mandatory",
                "userCreated",
                "vm",
                "vm"
            ]
        );
        assert_eq!(info.path_text(&["mandatory"]), Some("true"));
        assert_eq!(edit.path_text(&["modify"]), Some("true"));
        let add = request(&cluster, &RuleChange::Add, Some((&r, &vms)));
        assert!(add.path(&["spec", "rulesSpec", "info", "key"]).is_none());
        let remove = request(&cluster, &RuleChange::Remove(3), None);
        let removal = remove.path(&["spec", "rulesSpec", "removeKey"]).unwrap();
        assert_eq!(
            (removal.text.as_str(), removal.type_name()),
            ("3", Some("int"))
        );
    }
}
