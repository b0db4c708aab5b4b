//! Child processes that never outlive the test that started them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A spawned process, killed (SIGTERM, then SIGKILL after 5 s) and reaped on drop.
/// Its stdout and stderr go to a log file in a private temp dir; [`ChildGuard::log_tail`]
/// shows the end of it (readiness waits print it when they give up).
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
    // Kept for its Drop: removes the log when the guard goes.
    _dir: tempfile::TempDir,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin null, stdout+stderr to the log). Panics with the program
    /// path when it cannot be started (missing binary...).
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshpass-{name}-"))
            .tempdir()
            .expect("cannot create a temp dir for a child log");
        let log_path = dir.path().join(format!("{name}.log"));
        let out = File::create(&log_path).expect("cannot create child log file");
        let err = out.try_clone().expect("cannot clone child log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path,
            _dir: dir,
        }
    }

    /// The OS process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `max_lines` lines of the child's output.
    pub fn log_tail(&self, max_lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    /// `Some(status)` when the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Waits until `ready()` is true, panicking after `timeout` (or as soon as the child
    /// exits) with `what` and the tail of the child's log.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before {what}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready after {timeout:?} ({what}); log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`...) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok && sig != "TERM" && sig != "CONT" {
            panic!("kill -{sig} {pid} ({}) failed", self.name);
        }
    }

    /// Stops the process now: SIGCONT (in case it is paused), SIGTERM, then SIGKILL if
    /// it is still alive after 5 s; reaps it. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let pid = child.id().to_string();
            for sig in ["-CONT", "-TERM"] {
                let _ = Command::new("kill")
                    .args([sig, &pid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every `interval` until it returns true; false when `timeout` passes first.
pub fn wait_until(timeout: Duration, interval: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
