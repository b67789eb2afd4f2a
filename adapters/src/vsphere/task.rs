//! Running a vim25 task to completion and surfacing its fault.

use std::time::{Duration, Instant};

use super::{inventory, session::Session, soap::localized_fault};
use crate::xml::{Element, MoRef};
use crate::{Error, Result};

const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Calls a `*_Task` method and waits until the task succeeds or fails.
pub async fn run(session: &Session, action: &str, target: &str, request: Element) -> Result<()> {
    let body = session.invoke(action, request).await?;
    let task = body
        .first("returnval")
        .and_then(Element::as_moref)
        .ok_or_else(|| Error::Protocol {
            action: action.to_string(),
            url: session.url().to_string(),
            message: "no task in the response".into(),
        })?;
    wait(session, action, target, &task).await
}

async fn wait(session: &Session, action: &str, target: &str, task: &MoRef) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let spec = Element::new("specSet")
            .child(
                Element::new("propSet")
                    .child(Element::text("type", "Task"))
                    .child(Element::text("pathSet", "info")),
            )
            .child(Element::new("objectSet").child(Element::moref("obj", task)));
        let contents = inventory::retrieve(session, "waiting for a task", spec).await?;
        let info = contents
            .iter()
            .find_map(|(_, props)| props.get("info"))
            .cloned();
        let state = info
            .as_ref()
            .and_then(|i| i.path_text(&["state"]))
            .unwrap_or("");
        match state {
            "success" => return Ok(()),
            "error" => {
                let fault = info
                    .as_ref()
                    .and_then(|i| i.first("error"))
                    .map(localized_fault)
                    .unwrap_or_else(|| super::soap::Fault {
                        kind: "UnknownFault".into(),
                        message: "the task failed without saying why".into(),
                    });
                return Err(Error::TaskFailed {
                    action: action.to_string(),
                    target: target.to_string(),
                    url: session.url().to_string(),
                    fault: fault.kind,
                    message: fault.message,
                });
            }
            _ if started.elapsed() > TASK_TIMEOUT => {
                return Err(Error::Protocol {
                    action: action.to_string(),
                    url: session.url().to_string(),
                    message: format!("task {} still {state:?} after {TASK_TIMEOUT:?}", task.value),
                })
            }
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
