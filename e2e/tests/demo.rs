//! The demo binary (`make demo`): `--once` walks through and exits 0; without it, the
//! commands it prints for its running stack work. Ctrl-C on what starts real components
//! leaves nothing running: the demo during its start-up or walkthrough, or after it, and
//! `cargo test` while a test holds OpenBao and Envoy
//! (testkit's components run in process groups of their own, so the terminal's SIGINT
//! reaches only the process that started them).
//!
//! Needs the binaries the demo needs (`MESHPASS_EXCHANGE_BIN`, `MESHPASS_CTL_BIN`,
//! `MESHPASS_FILTER_WASM`), Envoy and OpenBao (`make setup`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshpass_testkit::{wait_until, Envoy, OpenBao};

/// `(comm, state, ppid, starttime)` of a process from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(String, char, u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((comm, state, ppid, start))
}

/// A process we saw: pid, start time (against pid reuse) and name.
#[derive(Clone, Debug)]
struct Proc {
    pid: u32,
    start: u64,
    comm: String,
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        let (comm, _, _, start) = proc_stat(pid)?;
        Some(Proc { pid, start, comm })
    }

    /// Still running (a zombie waiting to be reaped counts as gone).
    fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((_, s, _, start))
            if start == self.start && !matches!(s, 'Z' | 'X'))
    }
}

/// The live children of `parent`.
fn children(parent: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((comm, state, ppid, start)) = proc_stat(pid) {
            if ppid == parent && !matches!(state, 'Z' | 'X') {
                out.push(Proc { pid, start, comm });
            }
        }
    }
    out
}

/// `kill -SIG -- TARGET` (a pid, or `-PGID` for a process group).
fn kill(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), target.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit; kills its group when it does not.
fn reap(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill("KILL", &format!("-{}", child.id()));
    let _ = child.wait();
    None
}

/// Which of `procs` are still running 10 s after their parent went; those are then
/// killed (each leads its own process group) so the test leaves nothing behind.
fn survivors(procs: &[Proc]) -> Vec<Proc> {
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        procs.iter().all(|p| !p.alive())
    });
    let left: Vec<Proc> = procs.iter().filter(|p| p.alive()).cloned().collect();
    for p in &left {
        kill("KILL", &format!("-{}", p.pid));
        kill("KILL", &p.pid.to_string());
    }
    left
}

/// `meshpass-demo` (without `--once`) leading its own process group, like a command a
/// shell runs in the foreground, its work dir in `tmp`, and its stdout line by line.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: String,
    stderr: std::path::PathBuf,
}

impl Demo {
    fn spawn(tmp: &std::path::Path) -> Demo {
        let stderr = tmp.join("demo.stderr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshpass-demo"))
            // Its work dir (and whatever the components leave there) goes with `tmp`.
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("cannot run meshpass-demo");
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: String::new(),
            stderr,
        }
    }

    /// Reads lines until one satisfies `done`; panics (after stopping the demo) when the
    /// demo exits or `timeout` passes first.
    fn wait_for_line(&mut self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if done(&line) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.child.try_wait().unwrap().is_some() {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        reap(&mut self.child, Duration::from_secs(1));
        panic!(
            "the demo did not print {what}:\n{}\nstderr:\n{}",
            self.seen,
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// Ctrl-C (SIGINT to the terminal's foreground group), then what is still running of
    /// `started` once the demo has exited.
    fn interrupt(&mut self, started: &[Proc]) -> (Option<std::process::ExitStatus>, Vec<Proc>) {
        kill("INT", &format!("-{}", self.child.id()));
        let status = reap(&mut self.child, Duration::from_secs(30));
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status, survivors(started))
    }
}

fn names(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("{} (pid {})", p.comm, p.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn demo_once_walks_through_an_exchange_and_a_rejection_then_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshpass-demo"))
        .arg("--once")
        .output()
        .expect("cannot run meshpass-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "meshpass-demo --once exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for line in [
        "[3/8] the caller's JWT-SVID",
        "\"sub\": \"spiffe://cluster.local/ns/demo/sa/frontend\"",
        "POST /token grant_type=token-exchange",
        "exchanges sent by the client sidecar: 0 -> 1",
        "kid    meshpass-participant:v1",
        "\"participant\": \"acme\"",
        "authorization: Bearer ",
        "the original JWT-SVID reached the app: no",
        "served from the filter's cache: exchanges 1 -> 1",
        "HTTP 401",
        "token subject does not match",
        "HTTP 403",
        "mapping batch-echo created",
        "batch's next request: HTTP 200",
        "[8/8] a revocation",
        "revocations add --subject spiffe://cluster.local/ns/demo/sa/frontend",
        "created",
        "refused",
        "\"error_description\":\"revoked: demo: compromised node\"",
        "lifted",
        "frontend is served again",
        "--once: walkthrough complete; the stack stops now",
        "stopped; nothing left running.",
    ] {
        assert!(
            stdout.contains(line),
            "demo output lacks {line:?}:\n{stdout}"
        );
    }
    // Commands for a stack that is about to stop would fail; the demo without --once
    // prints them (the next test runs them).
    for gone in ["try it yourself", "curl "] {
        assert!(
            !stdout.contains(gone),
            "--once printed {gone:?} for a stack it stops:\n{stdout}"
        );
    }
}

/// Ctrl-C in the terminal of `make demo` while the demo is walking through its steps
/// (the stack is up, step 1 printed its ports): the terminal sends SIGINT to the
/// foreground process group, i.e. the demo. testkit starts each component in a process
/// group of its own (so the Ctrl-C does not reach them) on the promise that the process
/// that started them stops them; the demo installs its Ctrl-C handler only after the
/// walkthrough, so it dies of the signal and Envoy, OpenBao and the exchange service
/// keep running, holding their ports, with nobody left to stop them.
#[test]
fn ctrl_c_during_the_demo_walkthrough_stops_every_component_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::spawn(tmp.path());
    demo.wait_for_line(Duration::from_secs(180), "its stack up", |l| {
        l.trim_start().starts_with("up in ")
    });
    let started = children(demo.child.id());
    assert!(
        started.iter().any(|p| p.comm == "envoy") && started.iter().any(|p| p.comm == "bao"),
        "the demo's stack is up but it has no Envoy/OpenBao child: {started:?}"
    );
    let (status, left) = demo.interrupt(&started);
    assert!(
        left.is_empty(),
        "Ctrl-C during the walkthrough: the demo exited ({status:?}) and left running: {}\ndemo output:\n{}",
        names(&left),
        demo.seen
    );
}

/// `make demo` (no `--once`) ends its walkthrough with "try it yourself" commands for the stack it
/// keeps running: each printed `curl` gets the answer its comment promises, on the
/// running stack, and Ctrl-C then stops everything and exits 0.
#[test]
fn the_demos_printed_curl_commands_work_on_its_running_stack_until_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::spawn(tmp.path());
    demo.wait_for_line(
        Duration::from_secs(300),
        "that its stack keeps running",
        |l| l.starts_with("the stack keeps running"),
    );
    let started = children(demo.child.id());
    // The commands, each with the comment above it.
    let mut commands = Vec::new();
    let mut comment = String::new();
    for line in demo
        .seen
        .lines()
        .skip_while(|l| !l.contains("try it yourself"))
    {
        let line = line.trim_start();
        if let Some(c) = line.strip_prefix("# ") {
            comment = c.to_string();
        } else if line.starts_with("curl ") {
            commands.push((comment.clone(), line.to_string()));
        }
    }
    assert!(
        commands.len() >= 7,
        "the demo printed {} curl commands:\n{}",
        commands.len(),
        demo.seen
    );
    let mut failures = Vec::new();
    for (comment, cmd) in &commands {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let status_line = body.lines().next().unwrap_or_default().to_string();
        let expected_ok = if comment.contains("rejected (401)") {
            status_line.contains(" 401")
        } else if comment.contains("served now") {
            status_line.contains(" 200")
        } else if comment.contains("mode") {
            // The echo app's report: the participant token, never the JWT-SVID.
            body.contains("\"authorization\":\"Bearer ") && body.contains("\"path\":\"/orders\"")
        } else if comment.contains("keys") {
            body.contains("\"keys\"") || body.contains("\"issuer\"")
        } else {
            body.contains("meshpass")
        };
        if !out.status.success() || !expected_ok {
            failures.push(format!("# {comment}\n{cmd}\n=> {:?}: {body}", out.status));
        }
    }
    let (status, left) = demo.interrupt(&started);
    assert!(
        failures.is_empty(),
        "printed commands that do not work:\n{}",
        failures.join("\n")
    );
    assert!(
        status.is_some_and(|s| s.success()) && left.is_empty(),
        "Ctrl-C after the walkthrough: the demo exited {status:?}, left running: {}\n{}",
        names(&left),
        demo.seen
    );
}

/// Set in the copy of this test binary that the next test interrupts.
const INTERRUPTED_CHILD: &str = "MESHPASS_INTERRUPTED_TEST_CHILD";

/// One listener on a port Envoy picks, answering 200 itself.
const SMALL_ENVOY: &str = r#"
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// Ctrl-C on `cargo test` while a test runs: SIGINT reaches the test binary (the
/// terminal's foreground group), never the components, which testkit puts in groups of
/// their own "so that a terminal's Ctrl-C goes to the test (which stops its children)"
/// (process.rs). Nothing stops them: the test binary dies of the signal without running
/// a destructor, and OpenBao and Envoy stay up (only `OpenBao::shared` has a watchdog).
/// Every interrupted run leaks them, with their ports and temp dirs (their log files).
#[test]
fn ctrl_c_on_a_running_test_stops_the_openbao_and_envoy_it_started() {
    if let Some(report) = std::env::var_os(INTERRUPTED_CHILD) {
        // The child: start the components, report them, wait to be interrupted.
        let bao = OpenBao::start();
        let envoy = Envoy::start(SMALL_ENVOY, 1);
        fs::write(&report, format!("{} {}\n", bao.pid(), envoy.pid())).unwrap();
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("pids");
    let mut test = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ctrl_c_on_a_running_test_stops_the_openbao_and_envoy_it_started",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(INTERRUPTED_CHILD, &report)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        fs::read_to_string(&report).is_ok_and(|s| s.ends_with('\n'))
    });
    if !ready {
        reap(&mut test, Duration::from_secs(1));
        panic!("the child test did not start OpenBao and Envoy");
    }
    let started: Vec<Proc> = fs::read_to_string(&report)
        .unwrap()
        .split_whitespace()
        .filter_map(|p| Proc::of(p.parse().unwrap()))
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    kill("INT", &format!("-{}", test.id()));
    let status = reap(&mut test, Duration::from_secs(30));
    let left = survivors(&started);
    assert!(
        left.is_empty(),
        "the interrupted test exited ({status:?}) and left running: {}",
        names(&left)
    );
}
