//! Freezing a guest's QEMU process (SIGSTOP) and thawing it (SIGCONT), for tests of what
//! clients do when one guest stops answering while libvirtd and the other guests carry on:
//! libvirt's monitor calls to that QEMU then wait for a reply that does not come.

use std::time::Duration;

use crate::{
    process::{self, kill, kill_blocking},
    stack_error, Result, Stack,
};

/// Where libvirt's system QEMU driver writes each running guest's pid.
const PID_DIR: &str = "/run/libvirt/qemu";
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// A frozen guest; dropping it thaws the guest, so a failing test never leaves it stopped.
#[derive(Debug)]
#[must_use = "dropping it thaws the guest at once"]
pub struct FrozenGuest {
    pub domain: String,
    pub pid: i32,
}

impl Drop for FrozenGuest {
    fn drop(&mut self) {
        // Synchronous: drop may run while a panic unwinds, outside any runtime.
        let pid = self.pid;
        match kill_blocking(pid as u32, "CONT") {
            Ok(true) => {}
            other => eprintln!(
                "thawing guest {} (pid {pid}) failed: {other:?}; run `kill -CONT {pid}`",
                self.domain
            ),
        }
    }
}

async fn wait_for_state(domain: &str, pid: i32, stopped: bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STATE_TIMEOUT;
    loop {
        let state = process::state(pid as u32);
        if (state == Some('T')) == stopped {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(stack_error(
                format!(
                    "waiting for guest {domain} (pid {pid}) to be {}",
                    if stopped { "stopped" } else { "running" }
                ),
                format!("its state is still {state:?} after {STATE_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signal(domain: &str, pid: i32, signal: &str) -> Result<()> {
    if kill(pid as u32, signal).await? {
        Ok(())
    } else {
        Err(stack_error(
            format!("signalling guest {domain}"),
            format!("kill -{signal} {pid} failed"),
        ))
    }
}

impl Stack {
    /// The pid of the domain's QEMU, from the pidfile libvirt writes. Checked against the
    /// process's command line, so a stale pidfile never gets another process signalled.
    pub fn qemu_pid(&self, domain: &str) -> Result<i32> {
        let path = format!("{PID_DIR}/{domain}.pid");
        let what = || format!("finding the QEMU of guest {domain}");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| stack_error(what(), format!("reading {path}: {e}")))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|e| stack_error(what(), format!("{path} holds {text:?}: {e}")))?;
        // libvirt starts QEMU with `-name guest=<domain>,…`; arguments are NUL-separated.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| stack_error(what(), format!("pid {pid} from {path}: {e}")))?;
        let name = format!("guest={domain}");
        let is_it = cmdline.split(|b| *b == 0).any(|arg| {
            arg.strip_prefix(name.as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b","))
        });
        if !is_it {
            return Err(stack_error(
                what(),
                format!("pid {pid} from {path} is not that guest's QEMU"),
            ));
        }
        Ok(pid)
    }

    /// Stops the guest's QEMU (SIGSTOP, by pid) and waits until it is stopped. The returned
    /// guard thaws it when dropped.
    pub async fn freeze_guest(&self, domain: &str) -> Result<FrozenGuest> {
        let pid = self.qemu_pid(domain)?;
        signal(domain, pid, "STOP").await?;
        let frozen = FrozenGuest {
            domain: domain.to_string(),
            pid,
        };
        wait_for_state(domain, pid, true).await?;
        Ok(frozen)
    }

    /// Lets the guest's QEMU run again (SIGCONT, by pid) and waits until it does.
    pub async fn thaw_guest(&self, domain: &str) -> Result<()> {
        let pid = self.qemu_pid(domain)?;
        signal(domain, pid, "CONT").await?;
        wait_for_state(domain, pid, false).await
    }
}
