//! Child processes (Envoy, OpenBao, the exchange service) that never outlive their owner.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A spawned process whose stdout and stderr go to `log_path`; killed and reaped on drop
/// (or by [`ManagedChild::stop`]), so a failing test leaves nothing running.
pub struct ManagedChild {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ManagedChild {
    /// Spawns `cmd` with stdin closed and its output appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot create log file {}", log_path.display()))?;
        let err = out.try_clone().context("cannot clone a log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({program})"))?;
        Ok(ManagedChild {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        })
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file holding the process's output.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `max_lines` lines of the process's output.
    pub fn log_tail(&self, max_lines: usize) -> String {
        log_tail(&self.log_path, max_lines)
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills it.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(c.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.stop();
    }

    /// Polls `ready` every 100 ms until it returns true; fails after `timeout`, or as
    /// soon as the process exits, with the tail of its log.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                bail!(
                    "{} exited before {what}; last output:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not {what} after {timeout:?}; last output:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `max_lines` lines of a log file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}
