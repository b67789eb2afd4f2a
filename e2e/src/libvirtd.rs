//! Taking the stack's libvirtd away and bringing it back, for tests of how clients live
//! through a daemon outage. `e2e/stack restart-libvirtd` does both at once; these are
//! separate because the tests look at the outage in between.

use std::{path::Path, time::Duration};

use tokio::process::Command;

use crate::{
    process::{self, kill},
    stack_error, Result, Stack,
};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Stack {
    /// The pid the stack recorded for the libvirtd it started.
    pub fn libvirtd_pid(&self) -> Result<String> {
        let pid_file = Path::new(self.get("PLUMBLINE_STACK_DIR")?).join("pids/libvirtd.pid");
        let pid = std::fs::read_to_string(&pid_file).map_err(|e| {
            stack_error(
                format!("the stack records libvirtd's pid in {}", pid_file.display()),
                e,
            )
        })?;
        Ok(pid.trim().to_string())
    }

    /// Stops the stack's libvirtd by its recorded pid and waits until it has exited.
    pub async fn stop_libvirtd(&self) -> Result<()> {
        let pid = self.libvirtd_pid()?;
        let pid: u32 = pid
            .parse()
            .map_err(|e| stack_error(format!("libvirtd's recorded pid {pid:?}"), e))?;
        if !kill(pid, "TERM").await? {
            return Err(stack_error(
                "stopping libvirtd",
                format!("kill -TERM {pid} failed"),
            ));
        }
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        // Until its parent has reaped it: the stack's `up` (like `kill -0`) counts a zombie
        // as running and would not start a new daemon yet.
        while process::state(pid).is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(stack_error(
                    "stopping libvirtd",
                    format!("pid {pid} still running {EXIT_TIMEOUT:?} after TERM"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// Starts libvirtd again the way the stack does: `e2e/stack up libvirt` starts only what
    /// is not running, and returns once the daemon answers.
    pub async fn start_libvirtd(&self) -> Result<()> {
        let out = Command::new(Self::script())
            .args(["up", "libvirt"])
            .output()
            .await
            .map_err(|e| stack_error("running e2e/stack up libvirt", e))?;
        if !out.status.success() {
            return Err(stack_error(
                "e2e/stack up libvirt",
                String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(())
    }
}
