//! Child processes that never outlive the test that started them, and that pause,
//! resume and stop only as far as the kernel says they did.
//!
//! Each child runs in its own process group, so signals reach everything it forks.
//! `kill(SIGSTOP)` returns once the signal is *queued*: the threads of a multi-threaded
//! server (OpenBao is Go, Envoy has workers) stop only when each gets scheduled, and on
//! a loaded machine one of them can still answer a request after `kill` returned. So
//! [`ChildGuard::pause`] returns only once every thread of every process in the group is
//! in state `T` in `/proc`, [`ChildGuard::resume`] once none is, and
//! [`ChildGuard::stop`] once the child has exited and been reaped.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long pause/resume wait for the kernel before panicking.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A spawned process, stopped (SIGTERM, SIGKILL after 5 s) and reaped on drop. Its
/// stdout and stderr go to a log file ([`ChildGuard::log_tail`] shows the end of it;
/// readiness waits print it when they give up).
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
    paused: bool,
    /// Kills the child's group when this process dies without dropping the guard (see
    /// [`watchdog`]); killed itself once the child is stopped.
    watchdog: Option<Child>,
    // Kept for its Drop: removes a private log when the guard goes.
    _dir: Option<tempfile::TempDir>,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin null) with its output in a log in a private temp dir. Panics
    /// with the program path when it cannot be started (missing binary...).
    pub fn spawn(name: &str, cmd: Command) -> ChildGuard {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshpass-{name}-"))
            .tempdir()
            .expect("cannot create a temp dir for a child log");
        let log_path = dir.path().join(format!("{name}.log"));
        let mut guard = ChildGuard::spawn_logging_to(name, cmd, &log_path);
        guard._dir = Some(dir);
        guard
    }

    /// Spawns `cmd` (stdin null) with its output appended to `log_path` (kept after the
    /// guard goes: a restarted component keeps one log).
    pub fn spawn_logging_to(name: &str, mut cmd: Command, log_path: &Path) -> ChildGuard {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log_path.display()));
        let err = out.try_clone().expect("cannot clone a log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own process group: signals reach whatever it forks, and a terminal's
        // Ctrl-C goes to the test rather than to them (the test's guards, or when it
        // dies of it their watchdogs, stop them).
        cmd.process_group(0);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        let watchdog = watchdog(child.id());
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
            paused: false,
            watchdog: Some(watchdog),
            _dir: None,
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
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
        log_tail(&self.log_path, max_lines)
    }

    /// `Some(status)` when the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running (a paused one is running).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Whether [`ChildGuard::pause`] is in effect.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether the child itself listens on `port` (see [`crate::pid_listens_on`]).
    pub fn listens_on(&self, port: u16) -> bool {
        let pid = self.pid();
        pid != 0 && crate::pid_listens_on(pid, port)
    }

    /// Waits until `ready()` is true, panicking after `timeout` (or as soon as the child
    /// exits) with `what` and the tail of the child's log.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, ready: impl FnMut() -> bool) {
        if let Err(e) = self.try_wait_ready(what, timeout, ready) {
            panic!("{e}");
        }
    }

    /// Like [`ChildGuard::wait_ready`] but returns the message instead of panicking (a
    /// starter that retries on another port uses it).
    pub fn try_wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before {what}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready after {timeout:?} ({what}); log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`, `"HUP"`...) to the child's process
    /// group and returns at once (use [`ChildGuard::pause`]/[`ChildGuard::resume`] to
    /// wait for the effect).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        if pid != 0 && !signal_group(pid, sig) && sig != "TERM" && sig != "CONT" {
            panic!("kill -{sig} -{pid} ({}) failed", self.name);
        }
    }

    /// Freezes the child (SIGSTOP to its group) and returns only once the kernel reports
    /// every thread of every process in the group stopped: from then on nothing it
    /// holds answers (connections are still accepted by the kernel and hang).
    pub fn pause(&mut self) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        self.signal("STOP");
        self.paused = true;
        let ok = crate::wait_until(SIGNAL_TIMEOUT, Duration::from_millis(2), || {
            group_threads(pid)
                .iter()
                .all(|s| matches!(s, 'T' | 't' | 'Z' | 'X'))
        });
        assert!(ok, "{} (pid {pid}) did not stop after SIGSTOP", self.name);
    }

    /// Undoes [`ChildGuard::pause`] (SIGCONT) and returns once no thread of the group is
    /// stopped any more.
    pub fn resume(&mut self) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        self.signal("CONT");
        self.paused = false;
        let ok = crate::wait_until(SIGNAL_TIMEOUT, Duration::from_millis(2), || {
            !group_threads(pid).iter().any(|s| matches!(s, 'T' | 't'))
        });
        assert!(ok, "{} (pid {pid}) did not resume after SIGCONT", self.name);
    }

    /// Stops the process now and returns once it has exited and been reaped: SIGCONT
    /// (in case it is paused) and SIGTERM to its group, SIGKILL to the group if it is
    /// still alive after `grace`. Idempotent.
    pub fn stop_with_grace(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if child.try_wait().ok().flatten().is_none() {
            signal_group(pid, "CONT");
            signal_group(pid, "TERM");
            let deadline = Instant::now() + grace;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever the leader left behind in its group goes too.
        signal_group(pid, "KILL");
        let _ = child.kill();
        let _ = child.wait();
        self.paused = false;
        // Killed, not let go: its own `kill` could hit a group that reused the id.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// [`ChildGuard::stop_with_grace`] with 5 s of grace.
    pub fn stop(&mut self) {
        self.stop_with_grace(Duration::from_secs(5));
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `sh`, in a group of its own, that kills group `pgid` once it reads end-of-file on
/// its stdin, whose only write end this process holds: when the process dies without
/// dropping its guards (Ctrl-C on `cargo test` or on the demo: the components, in their
/// own groups, never get that SIGINT; a SIGKILL; a `timeout`), the child still goes.
/// Not `PR_SET_PDEATHSIG`, which fires when the spawning *thread* ends (components are
/// started from short-lived blocking threads).
fn watchdog(pgid: u32) -> Child {
    let mut cmd = Command::new("sh");
    // `env kill`: kill(1), as `signal_group` uses (dash's builtin takes no group).
    cmd.arg("-c")
        .arg(r#"read -r _ignored; env kill -KILL -- "-$0""#)
        .arg(pgid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Not in our group: the Ctrl-C that ends the test must not end it first.
        .process_group(0);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start a child's watchdog (sh): {e}"))
}

/// `kill -SIG -- -PGID` (the group the child leads); false when `kill` failed.
fn signal_group(pgid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The state letter of every thread of every process whose process group is `pgid`.
fn group_threads(pgid: u32) -> Vec<char> {
    let mut states = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return states;
    };
    for p in procs.filter_map(|e| e.ok()) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if stat_fields(&format!("/proc/{pid}/stat")).and_then(|f| f.2) != Some(pgid) {
            continue;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.filter_map(|e| e.ok()) {
            if let Some((state, _, _)) = stat_fields(&t.path().join("stat").to_string_lossy()) {
                states.push(state);
            }
        }
    }
    states
}

/// `(state, ppid, pgrp)` of a `/proc/.../stat` file.
fn stat_fields(path: &str) -> Option<(char, Option<u32>, Option<u32>)> {
    let stat = fs::read_to_string(path).ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next().and_then(|s| s.parse().ok());
    let pgrp = f.next().and_then(|s| s.parse().ok());
    Some((state, ppid, pgrp))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell with a busy child and a sleeping child: three processes in one group.
    fn busy_family() -> ChildGuard {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("(while :; do :; done) & sleep 600 & wait");
        let mut c = ChildGuard::spawn("family", cmd);
        let pid = c.pid();
        c.wait_ready("forked", Duration::from_secs(10), || {
            group_threads(pid).len() >= 3
        });
        c
    }

    #[test]
    fn pause_returns_only_when_every_thread_of_the_group_is_stopped() {
        let mut c = busy_family();
        let pid = c.pid();
        for _ in 0..20 {
            c.pause();
            // No sleep, no retry: the kernel already reports all of them stopped.
            let states = group_threads(pid);
            assert!(states.len() >= 3, "{states:?}");
            assert!(states.iter().all(|s| *s == 'T'), "{states:?}");
            c.resume();
            assert!(!group_threads(pid).contains(&'T'));
        }
    }

    #[test]
    fn stop_returns_once_the_whole_group_is_gone_even_when_paused() {
        let mut c = busy_family();
        let pid = c.pid();
        c.pause();
        c.stop();
        assert_eq!(c.pid(), 0);
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                group_threads(pid).iter().all(|s| matches!(s, 'Z' | 'X'))
            }),
            "left behind: {:?}",
            group_threads(pid)
        );
    }
}
