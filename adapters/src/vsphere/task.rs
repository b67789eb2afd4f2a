//! Running a vim25 task to completion, and telling a task that failed from one whose
//! outcome the client never learned.

use std::time::{Duration, Instant};

use super::{inventory, session::Session, soap::localized_fault};
use crate::xml::{Element, MoRef};
use crate::{Error, Result};

const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// What became of a `*_Task` call.
#[derive(Debug)]
pub enum Submission {
    /// The server answered the call with a fault: no task started.
    Refused(Error),
    /// The task ran to its end; its fault if it failed.
    Finished(Result<()>),
    /// The call or the wait for its task was cut off: the task may have run, may still be
    /// running, or may never have started.
    Unknown(Error),
}

/// Calls a `*_Task` method once and waits until the task succeeds or fails. A task whose
/// result was lost on the way (the session ended while waiting) is looked up again, never
/// started again.
pub async fn submit(session: &Session, action: &str, target: &str, request: Element) -> Submission {
    submit_within(session, action, target, request, TASK_TIMEOUT).await
}

/// [`submit`] for a task that may run longer than the usual bound: a task still queued or
/// running after `limit` is an [`Submission::Unknown`].
pub async fn submit_within(
    session: &Session,
    action: &str,
    target: &str,
    request: Element,
    limit: Duration,
) -> Submission {
    let body = match session.invoke_once(action, request).await {
        Ok(body) => body,
        Err(e @ (Error::SoapFault { .. } | Error::Authentication { .. })) => {
            return Submission::Refused(e)
        }
        Err(e) => return Submission::Unknown(e),
    };
    let Some(task) = body.first("returnval").and_then(Element::as_moref) else {
        return Submission::Unknown(Error::Protocol {
            action: action.to_string(),
            url: session.url().to_string(),
            message: "no task in the response".into(),
        });
    };
    match wait_within(session, action, target, &task, limit).await {
        Ok(()) => Submission::Finished(Ok(())),
        Err(e @ Error::TaskFailed { .. }) => Submission::Finished(Err(e)),
        Err(e) => Submission::Unknown(e),
    }
}

/// Waits for every task of `description` (e.g. `VirtualMachine.reconfigure`) that is still
/// queued or running on the entity, so that what is read next is what those tasks left.
/// Fails when one is still running after the task timeout.
pub async fn settle(
    session: &Session,
    action: &str,
    target: &str,
    entity: &MoRef,
    description: &str,
) -> Result<()> {
    let spec = Element::new("specSet")
        .child(
            Element::new("propSet")
                .child(Element::text("type", entity.kind.as_str()))
                .child(Element::text("pathSet", "recentTask")),
        )
        .child(Element::new("objectSet").child(Element::moref("obj", entity)));
    let contents = inventory::retrieve(session, "listing the recent tasks", spec).await?;
    let recent: Vec<MoRef> = contents
        .iter()
        .filter_map(|(_, props)| props.get("recentTask"))
        .flat_map(|list| list.children.iter().filter_map(Element::as_moref))
        .collect();
    for task in recent {
        let Some(info) = info(session, &task).await? else {
            continue;
        };
        let state = info.path_text(&["state"]).unwrap_or("");
        if info.path_text(&["descriptionId"]) != Some(description)
            || !matches!(state, "queued" | "running")
        {
            continue;
        }
        tracing::info!(task = %task.value, %target, "waiting for a task already in flight");
        match wait(session, action, target, &task).await {
            Ok(()) | Err(Error::TaskFailed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The task's `info`, `None` when the server no longer knows the task.
async fn info(session: &Session, task: &MoRef) -> Result<Option<Element>> {
    let spec = Element::new("specSet")
        .child(
            Element::new("propSet")
                .child(Element::text("type", "Task"))
                .child(Element::text("pathSet", "info")),
        )
        .child(Element::new("objectSet").child(Element::moref("obj", task)));
    let contents = match inventory::retrieve(session, "waiting for a task", spec).await {
        Ok(c) => c,
        Err(Error::SoapFault { fault, .. }) if fault == "ManagedObjectNotFound" => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(contents
        .into_iter()
        .find_map(|(_, mut props)| props.remove("info")))
}

async fn wait(session: &Session, action: &str, target: &str, task: &MoRef) -> Result<()> {
    wait_within(session, action, target, task, TASK_TIMEOUT).await
}

/// Waits until the task succeeds (`Ok`) or fails ([`Error::TaskFailed`]); a task still queued
/// or running after `limit` is an [`Error::Protocol`], and so is one the server forgot.
pub async fn wait_within(
    session: &Session,
    action: &str,
    target: &str,
    task: &MoRef,
    limit: Duration,
) -> Result<()> {
    match ended_within(session, action, target, task, limit).await? {
        Some(result) => result,
        None => Err(Error::Protocol {
            action: action.to_string(),
            url: session.url().to_string(),
            message: format!("task {} has not ended after {limit:?}", task.value),
        }),
    }
}

/// How the task ended, `None` while it is still queued or running after `limit`.
pub async fn ended_within(
    session: &Session,
    action: &str,
    target: &str,
    task: &MoRef,
    limit: Duration,
) -> Result<Option<Result<()>>> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let info = info(session, task).await?.ok_or_else(|| Error::Protocol {
            action: action.to_string(),
            url: session.url().to_string(),
            message: format!("task {} is no longer known to the server", task.value),
        })?;
        let state = info.path_text(&["state"]).unwrap_or("");
        match state {
            "success" => return Ok(Some(Ok(()))),
            "error" => {
                let fault = info.first("error").map(localized_fault).unwrap_or_else(|| {
                    super::soap::Fault {
                        kind: "UnknownFault".into(),
                        message: "the task failed without saying why".into(),
                    }
                });
                return Ok(Some(Err(Error::TaskFailed {
                    action: action.to_string(),
                    target: target.to_string(),
                    url: session.url().to_string(),
                    fault: fault.kind,
                    message: fault.message,
                })));
            }
            _ if started.elapsed() > limit => return Ok(None),
            _ => {
                let left = limit.saturating_sub(started.elapsed());
                tokio::time::sleep(pause.min(left).max(Duration::from_millis(10))).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}
