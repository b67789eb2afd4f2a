//! Signals to a process by the pid a test recorded, never by name, and whether it still runs.

use crate::{stack_error, Result};

/// `kill -<signal> <pid>` (`signal` as `TERM`, `KILL`, `STOP`…) succeeded.
pub async fn kill(pid: u32, signal: &str) -> Result<bool> {
    let signal = signal.to_string();
    tokio::task::spawn_blocking(move || kill_blocking(pid, &signal))
        .await
        .map_err(|e| stack_error(format!("signalling pid {pid}"), e))?
}

/// [`kill`] for `Drop`, which may run while a panic unwinds, outside any runtime.
pub fn kill_blocking(pid: u32, signal: &str) -> Result<bool> {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map(|status| status.success())
        .map_err(|e| stack_error(format!("running kill -{signal} {pid}"), e))
}

/// The state letter of `/proc/<pid>/stat` (`T`: stopped, `Z`: exited but not yet reaped),
/// after the parenthesised command name; `None` when there is no such process.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The process exists and has not exited (a child that exited stays a zombie until reaped).
pub fn is_running(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_runs_until_killed_by_its_pid_and_a_zombie_does_not_run() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(is_running(pid));
        assert!(kill(pid, "KILL").await.unwrap());
        // Not reaped yet: a zombie, which has exited.
        for _ in 0..100 {
            if state(pid) == Some('Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(state(pid), Some('Z'));
        assert!(!is_running(pid));
        child.wait().unwrap();
        assert_eq!(state(pid), None);
    }
}
