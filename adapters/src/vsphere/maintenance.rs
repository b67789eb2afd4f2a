//! Host maintenance mode: which hosts are in it or on their way in, read in one retrieval,
//! and entering and leaving it exactly once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    inventory::{self, Contents},
    task::{self, Submission},
    VSphereHypervisor,
};
use crate::xml::{Element, MoRef};
use crate::{Error, HostState, Result};

/// What `Task.info.descriptionId` says for an `EnterMaintenanceMode_Task`.
const ENTER_TASK: &str = "HostSystem.enterMaintenanceMode";
/// … and for an `ExitMaintenanceMode_Task`.
const EXIT_TASK: &str = "HostSystem.exitMaintenanceMode";

const HOST_PATHS: &[&str] = &["name", "runtime.inMaintenanceMode", "recentTask", "parent"];
const TASK_PATHS: &[&str] = &["info.descriptionId", "info.state"];

/// How much longer than the call's own timeout the adapter waits for the server to end the
/// task (the server fails it with `Timedout` when that expires).
const SERVER_GRACE: Duration = Duration::from_secs(30);

const ENTERING: &str = "entering maintenance mode";
const LEAVING: &str = "leaving maintenance mode";

/// One host as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostRecord {
    pub moref: MoRef,
    /// The HostSystem's name; its managed object id when it has none (as the inventory does).
    pub name: String,
    pub in_maintenance: bool,
    /// Its `EnterMaintenanceMode_Task`s still queued or running.
    pub entering: Vec<MoRef>,
    /// Its `ExitMaintenanceMode_Task`s still queued or running.
    pub leaving: Vec<MoRef>,
    /// The name of the ClusterComputeResource it belongs to (none for a standalone host).
    pub cluster: Option<String>,
}

impl HostRecord {
    fn state(&self) -> HostState {
        HostState {
            name: self.name.clone(),
            in_maintenance: self.in_maintenance,
            entering: !self.entering.is_empty(),
            cluster: self.cluster.clone(),
        }
    }
}

/// Every host with its maintenance mode, recent tasks and cluster, and each of those tasks'
/// description and state and the cluster's name, in one retrieval: the view holds the hosts,
/// and traversals follow each host's `recentTask` to its tasks and its `parent` to its
/// cluster.
pub(super) async fn hosts(hv: &VSphereHypervisor) -> Result<Vec<HostRecord>> {
    let tasks = Element::new("selectSet")
        .xsi_type("TraversalSpec")
        .child(Element::text("name", "recentTask"))
        .child(Element::text("type", "HostSystem"))
        .child(Element::text("path", "recentTask"))
        .child(Element::text("skip", "false"));
    let parent = Element::new("selectSet")
        .xsi_type("TraversalSpec")
        .child(Element::text("name", "parent"))
        .child(Element::text("type", "HostSystem"))
        .child(Element::text("path", "parent"))
        .child(Element::text("skip", "false"));
    let contents = inventory::retrieve_in_view(
        &hv.inner.session,
        "the hosts",
        &["HostSystem"],
        vec![
            inventory::prop_set("HostSystem", HOST_PATHS),
            inventory::prop_set("Task", TASK_PATHS),
            inventory::prop_set("ClusterComputeResource", &["name"]),
        ],
        vec![tasks, parent],
    )
    .await?;
    Ok(host_records(&contents))
}

/// The hosts in one retrieval's objects, by name. A task the server no longer reports (it
/// drops old ones) counts as ended.
pub(super) fn host_records(contents: &Contents) -> Vec<HostRecord> {
    let text = |props: &HashMap<String, Element>, name: &str| {
        props.get(name).map(|v| v.text.trim().to_string())
    };
    // Task → what it does, for the tasks still queued or running.
    let in_flight: HashMap<&MoRef, String> = contents
        .iter()
        .filter(|(obj, props)| {
            obj.kind == "Task"
                && matches!(
                    text(props, "info.state").as_deref(),
                    Some("queued" | "running")
                )
        })
        .filter_map(|(obj, props)| Some((obj, text(props, "info.descriptionId")?)))
        .collect();
    let recent = |props: &HashMap<String, Element>, description: &str| -> Vec<MoRef> {
        props
            .get("recentTask")
            .map(|list| {
                list.children
                    .iter()
                    .filter_map(Element::as_moref)
                    .filter(|t| in_flight.get(t).is_some_and(|d| d == description))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cluster_names: HashMap<&MoRef, String> = contents
        .iter()
        .filter(|(obj, _)| obj.kind == "ClusterComputeResource")
        .filter_map(|(obj, props)| Some((obj, text(props, "name")?)))
        .collect();
    let cluster_of = |props: &HashMap<String, Element>| {
        let parent = props.get("parent").and_then(Element::as_moref)?;
        (parent.kind == "ClusterComputeResource").then(|| {
            cluster_names
                .get(&parent)
                .cloned()
                .unwrap_or_else(|| parent.value.clone())
        })
    };
    let mut hosts: Vec<HostRecord> = contents
        .iter()
        .filter(|(obj, _)| obj.kind == "HostSystem")
        .map(|(obj, props)| HostRecord {
            moref: obj.clone(),
            name: text(props, "name")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| obj.value.clone()),
            in_maintenance: text(props, "runtime.inMaintenanceMode").as_deref() == Some("true"),
            entering: recent(props, ENTER_TASK),
            leaving: recent(props, EXIT_TASK),
            cluster: cluster_of(props),
        })
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts
}

pub(super) fn states(records: &[HostRecord]) -> Vec<HostState> {
    records.iter().map(HostRecord::state).collect()
}

/// Which way a call moves the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Enter,
    Exit,
}

impl Direction {
    fn action(self) -> &'static str {
        match self {
            Self::Enter => ENTERING,
            Self::Exit => LEAVING,
        }
    }

    fn done(self, host: &HostRecord) -> bool {
        host.in_maintenance == (self == Self::Enter)
    }

    fn request(self, host: &MoRef, timeout: Duration) -> Element {
        let secs = timeout.as_secs().max(1).to_string();
        match self {
            Self::Enter => Element::new("EnterMaintenanceMode_Task")
                .child(Element::moref("_this", host))
                .child(Element::text("timeout", secs))
                .child(Element::text("evacuatePoweredOffVms", "false")),
            Self::Exit => Element::new("ExitMaintenanceMode_Task")
                .child(Element::moref("_this", host))
                .child(Element::text("timeout", secs)),
        }
    }
}

impl VSphereHypervisor {
    pub(super) async fn host_record(&self, name: &str) -> Result<HostRecord> {
        let records = hosts(self).await?;
        let known = records.iter().map(|h| h.name.clone()).collect();
        records
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::HostNotFound {
                host: name.to_string(),
                endpoint: self.inner.endpoint.url.clone(),
                known,
            })
    }

    /// Moves the host into or out of maintenance mode unless it is there already. A
    /// maintenance-mode task in flight (someone's, or ours whose answer was lost) is waited
    /// for first: entering, it may do the job; leaving, the host must not fall into
    /// maintenance after the exit.
    async fn move_host(&self, name: &str, to: Direction, timeout: Duration) -> Result<()> {
        let session = &self.inner.session;
        let action = to.action();
        let deadline = Instant::now() + timeout;
        let mut host = self.settled_host(name, action, deadline).await?;
        let mut attempt = 1;
        loop {
            if to.done(&host) {
                return Ok(());
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let request = to.request(&host.moref, left);
            let limit = left + SERVER_GRACE;
            let failure = match task::submit_within(session, action, name, request, limit).await {
                Submission::Finished(result) => return result,
                Submission::Refused(e) | Submission::Unknown(e) => e,
            };
            // Refused because the session was lost (the session layer has logged in again),
            // or the outcome was lost: where the host is now says whether it landed.
            host = self.settled_host(name, action, deadline).await?;
            let lost_session = super::reconfigure::is_lost_session(&failure);
            if to.done(&host) || (lost_session && attempt == 1) {
                attempt += 1;
                continue;
            }
            return Err(failure);
        }
    }

    /// The host once its maintenance-mode tasks in flight have ended; a
    /// [`Error::TaskFailed`] with `Timedout` when one is still running at `deadline`.
    async fn settled_host(
        &self,
        name: &str,
        action: &str,
        deadline: Instant,
    ) -> Result<HostRecord> {
        let session = &self.inner.session;
        let host = self.host_record(name).await?;
        if host.entering.is_empty() && host.leaving.is_empty() {
            return Ok(host);
        }
        for task in host.entering.iter().chain(&host.leaving) {
            let left = deadline.saturating_duration_since(Instant::now());
            tracing::info!(host = %name, task = %task.value, "waiting for a maintenance-mode task already in flight");
            // Its own failure is its starter's business; what matters is where the host ends.
            if task::ended_within(session, action, name, task, left)
                .await?
                .is_none()
            {
                return Err(Error::TaskFailed {
                    action: action.to_string(),
                    target: name.to_string(),
                    url: session.url().to_string(),
                    fault: "Timedout".into(),
                    message: format!(
                        "a maintenance-mode task already in flight ({}) had not ended by the deadline",
                        task.value
                    ),
                });
            }
        }
        self.host_record(name).await
    }

    pub(super) async fn enter_maintenance_mode(&self, host: &str, timeout: Duration) -> Result<()> {
        self.move_host(host, Direction::Enter, timeout).await
    }

    pub(super) async fn exit_maintenance_mode(&self, host: &str, timeout: Duration) -> Result<()> {
        self.move_host(host, Direction::Exit, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `RetrievePropertiesEx` answer as govmomi's simulator gives it (Go's encoder binds
    /// XMLSchema-instance as its own prefix): one host in maintenance, one entering it with
    /// an older, finished exit in its recentTask, one whose only task is a finished enter,
    /// and a host whose `runtime.inMaintenanceMode` is left out (false is an empty field).
    const HOSTS: &[u8] = br#"<returnval xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance">
  <objects><obj type="HostSystem">host-21</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC0_H0</val></propSet>
    <propSet><name>runtime.inMaintenanceMode</name><val XMLSchema-instance:type="xsd:boolean">true</val></propSet>
    <propSet><name>parent</name><val XMLSchema-instance:type="ManagedObjectReference" type="ComputeResource">domain-s20</val></propSet>
  </objects>
  <objects><obj type="ClusterComputeResource">domain-c7</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC0_C0</val></propSet>
  </objects>
  <objects><obj type="HostSystem">host-34</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC0_C0_H0</val></propSet>
    <propSet><name>parent</name><val XMLSchema-instance:type="ManagedObjectReference" type="ClusterComputeResource">domain-c7</val></propSet>
    <propSet><name>recentTask</name><val XMLSchema-instance:type="ArrayOfManagedObjectReference">
      <ManagedObjectReference type="Task">task-60</ManagedObjectReference>
      <ManagedObjectReference type="Task">task-61</ManagedObjectReference>
    </val></propSet>
  </objects>
  <objects><obj type="HostSystem">host-42</obj>
    <propSet><name>name</name><val XMLSchema-instance:type="xsd:string">DC0_C0_H1</val></propSet>
    <propSet><name>parent</name><val XMLSchema-instance:type="ManagedObjectReference" type="ClusterComputeResource">domain-c7</val></propSet>
    <propSet><name>runtime.inMaintenanceMode</name><val XMLSchema-instance:type="xsd:boolean">false</val></propSet>
    <propSet><name>recentTask</name><val XMLSchema-instance:type="ArrayOfManagedObjectReference">
      <ManagedObjectReference type="Task">task-59</ManagedObjectReference>
      <ManagedObjectReference type="Task">task-99</ManagedObjectReference>
    </val></propSet>
  </objects>
  <objects><obj type="HostSystem">host-50</obj></objects>
  <objects><obj type="Task">task-59</obj>
    <propSet><name>info.descriptionId</name><val XMLSchema-instance:type="xsd:string">HostSystem.enterMaintenanceMode</val></propSet>
    <propSet><name>info.state</name><val XMLSchema-instance:type="TaskInfoState">success</val></propSet>
  </objects>
  <objects><obj type="Task">task-60</obj>
    <propSet><name>info.descriptionId</name><val XMLSchema-instance:type="xsd:string">HostSystem.exitMaintenanceMode</val></propSet>
    <propSet><name>info.state</name><val XMLSchema-instance:type="TaskInfoState">running</val></propSet>
  </objects>
  <objects><obj type="Task">task-61</obj>
    <propSet><name>info.descriptionId</name><val XMLSchema-instance:type="xsd:string">HostSystem.enterMaintenanceMode</val></propSet>
    <propSet><name>info.state</name><val XMLSchema-instance:type="TaskInfoState">running</val></propSet>
  </objects>
</returnval>"#;

    fn records() -> Vec<HostRecord> {
        let mut contents = Vec::new();
        inventory::object_contents(Element::parse(HOSTS).unwrap(), &mut contents);
        host_records(&contents)
    }

    #[test]
    fn hosts_in_and_entering_maintenance_are_told_apart() {
        let state = |name: &str, in_maintenance, entering, cluster: Option<&str>| HostState {
            name: name.into(),
            in_maintenance,
            entering,
            cluster: cluster.map(String::from),
        };
        assert_eq!(
            states(&records()),
            [
                state("DC0_C0_H0", false, true, Some("DC0_C0")),
                state("DC0_C0_H1", false, false, Some("DC0_C0")),
                state("DC0_H0", true, false, None),
                state("host-50", false, false, None),
            ]
        );
    }

    #[test]
    fn tasks_in_flight_are_told_apart_by_what_they_do_and_a_forgotten_one_has_ended() {
        let records = records();
        let by_name: HashMap<&str, &HostRecord> =
            records.iter().map(|h| (h.name.as_str(), h)).collect();
        // task-60 runs too, but it is an exit; task-59 has ended; task-99 is not reported.
        assert_eq!(
            by_name["DC0_C0_H0"].entering,
            [MoRef::new("Task", "task-61")]
        );
        assert_eq!(
            by_name["DC0_C0_H0"].leaving,
            [MoRef::new("Task", "task-60")]
        );
        assert!(by_name["DC0_C0_H1"].leaving.is_empty());
        assert!(by_name["DC0_C0_H1"].entering.is_empty());
        assert_eq!(by_name["DC0_H0"].moref, MoRef::new("HostSystem", "host-21"));
    }

    #[test]
    fn requests_carry_the_timeout_in_whole_seconds_and_leave_powered_off_vms() {
        let host = MoRef::new("HostSystem", "host-21");
        let enter = Direction::Enter.request(&host, Duration::from_millis(90_500));
        let names: Vec<_> = enter.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["_this", "timeout", "evacuatePoweredOffVms"]);
        assert_eq!(enter.path_text(&["timeout"]), Some("90"));
        assert_eq!(enter.path_text(&["evacuatePoweredOffVms"]), Some("false"));
        let exit = Direction::Exit.request(&host, Duration::ZERO);
        assert_eq!(exit.name, "ExitMaintenanceMode_Task");
        assert_eq!(exit.path_text(&["timeout"]), Some("1"));
        assert_eq!(exit.first("_this").and_then(Element::as_moref), Some(host));
    }
}
