//! A real Envoy on loopback for tests: [`Envoy::start`] writes the bootstrap YAML to a
//! temp dir, starts `MESHPASS_ENVOY_BIN` (else `<workspace>/.tools/bin/envoy`) with an
//! admin listener on an OS-chosen port, waits for `GET /ready` to answer `LIVE` and for
//! every listener to be bound by *this* Envoy, and stops the process on drop.
//!
//! The YAML must not contain an `admin:` block: the launcher adds one (port 0, the
//! actual address is read from `--admin-address-path`, so there is no port race).
//! Listeners may use port 0 too: [`Envoy::listener_port`] reads the bound port.
//! Each instance runs with `--disable-hot-restart` and its own `--base-id`, so several
//! Envoys (in parallel tests) never share memory segments.
//!
//! Admin calls use a plain blocking HTTP/1.1 client over `std::net::TcpStream`, so the
//! launcher works from `#[test]` and from inside a tokio runtime alike.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http::raw_request;
use crate::process::ChildGuard;

static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

/// How long [`Envoy::start`] waits for `/ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Envoy binary: `MESHPASS_ENVOY_BIN` when set and non-empty, else
/// `<workspace root>/.tools/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    crate::envoy_bin()
}

/// How [`Envoy::start_with`] runs Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Name in messages and of the log file.
    pub name: String,
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// Extra command-line arguments (e.g. `["--component-log-level", "wasm:debug"]`).
    pub extra_args: Vec<String>,
    /// Where stdout and stderr go (appended); a file in Envoy's temp dir when `None`.
    pub log_path: Option<PathBuf>,
    /// How long to wait for readiness.
    pub timeout: Duration,
    /// A command Envoy runs under, with its arguments (e.g. `valgrind --tool=callgrind`);
    /// empty: Envoy itself. The child's pid is then the wrapper's (valgrind execs its
    /// tool in the same process).
    pub wrapper: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            name: "envoy".into(),
            concurrency: 1,
            extra_args: Vec::new(),
            log_path: None,
            timeout: START_TIMEOUT,
            wrapper: Vec::new(),
        }
    }
}

/// A running Envoy, stopped and reaped on drop.
pub struct Envoy {
    child: ChildGuard,
    admin: String,
    listeners: Vec<(String, u16)>,
    config_path: PathBuf,
    // Kept for its Drop: removes config, log and admin-address file.
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `yaml` as bootstrap and `--concurrency concurrency`; panics with
    /// the log tail when the binary is missing, Envoy exits or is not ready in time.
    pub fn start(yaml: &str, concurrency: u32) -> Envoy {
        Self::start_with_args(yaml, concurrency, &[])
    }

    /// Like [`Envoy::start`] with extra command-line arguments (e.g.
    /// `["--component-log-level", "wasm:debug"]`).
    pub fn start_with_args(yaml: &str, concurrency: u32, extra: &[&str]) -> Envoy {
        match Self::try_start(yaml, concurrency, extra, START_TIMEOUT) {
            Ok(e) => e,
            Err(msg) => panic!("{msg}"),
        }
    }

    /// Starts Envoy and returns `Err(message with the log tail)` instead of panicking
    /// when it exits or does not become ready within `timeout` (tests of refused
    /// configuration use this). A missing binary still panics: that is a broken
    /// environment, never an expected outcome.
    pub fn try_start(
        yaml: &str,
        concurrency: u32,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<Envoy, String> {
        Self::start_with(
            yaml,
            &EnvoyOptions {
                concurrency,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                timeout,
                ..EnvoyOptions::default()
            },
        )
    }

    /// Starts Envoy as `options` say; `Err(message with the log tail)` when it exits or
    /// is not ready in time (a missing binary panics).
    pub fn start_with(yaml: &str, options: &EnvoyOptions) -> Result<Envoy, String> {
        let bin = envoy_binary();
        assert!(
            bin.exists(),
            "Envoy binary not found at {} (run `make setup` or set MESHPASS_ENVOY_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("meshpass-envoy-")
            .tempdir()
            .expect("cannot create a temp dir for Envoy");
        let config_path = dir.path().join("envoy.yaml");
        fs::write(&config_path, yaml).expect("cannot write Envoy config");
        let admin_path = dir.path().join("admin-address");
        let log_path = options
            .log_path
            .clone()
            .unwrap_or_else(|| dir.path().join("envoy.log"));
        let base_id =
            (std::process::id() % 20_000) * 50 + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 50;
        let admin_yaml = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}";
        let mut cmd = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--config-yaml")
            .arg(admin_yaml)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--disable-hot-restart")
            .args(["--log-format", "[%Y-%m-%d %T.%e][%l][%n] %v"])
            .args(&options.extra_args);
        let child = ChildGuard::spawn_logging_to(&options.name, cmd, &log_path);
        let mut envoy = Envoy {
            child,
            admin: String::new(),
            listeners: Vec::new(),
            config_path,
            _dir: dir,
        };
        envoy.wait_ready(&admin_path, options.timeout)?;
        Ok(envoy)
    }

    /// Waits for `/ready` = `LIVE` and for every listener to be bound by this process.
    fn wait_ready(&mut self, admin_path: &Path, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.exited() {
                return Err(format!(
                    "Envoy exited ({status}) before it was ready; log:\n{}",
                    self.log_tail(60)
                ));
            }
            if self.admin.is_empty() {
                if let Ok(a) = fs::read_to_string(admin_path) {
                    if a.trim().contains(':') {
                        self.admin = a.trim().to_string();
                    }
                }
            }
            if !self.admin.is_empty() && self.is_live() {
                if let Some(listeners) = self.bound_listeners() {
                    self.listeners = listeners;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {timeout:?}; log:\n{}",
                    self.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_live(&self) -> bool {
        matches!(self.admin_get("/ready"), Ok((200, body)) if body.trim() == "LIVE")
    }

    /// `(name, port)` of every listener, once each is bound by this process.
    fn bound_listeners(&self) -> Option<Vec<(String, u16)>> {
        let (status, body) = self.admin_get("/listeners?format=json").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut out = Vec::new();
        for l in v["listener_statuses"].as_array()? {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
            let port = u16::try_from(port).ok()?;
            if !self.child.listens_on(port) {
                return None;
            }
            out.push((name, port));
        }
        Some(out)
    }

    /// `host:port` of the admin listener.
    pub fn admin_address(&self) -> &str {
        &self.admin
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        self.admin
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The port listener `name` is bound to (configured as 0 or not).
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
    }

    /// The OS process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether Envoy is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Freezes Envoy; returns once every thread is stopped (see [`ChildGuard::pause`]).
    pub fn pause(&mut self) {
        self.child.pause();
    }

    /// Resumes a paused Envoy.
    pub fn resume(&mut self) {
        self.child.resume();
    }

    /// Stops Envoy; returns once it has exited and its listener ports are released.
    pub fn stop(&mut self) {
        self.child.stop();
        for (_, port) in &self.listeners {
            crate::wait_port_released(*port, Duration::from_secs(10));
        }
    }

    /// The bootstrap file Envoy was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// Envoy's whole log (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.log_tail(n)
    }

    /// `GET path` on the admin listener: `(status, body)`.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        raw_request(&self.admin, "GET", path)
    }

    /// `POST path` on the admin listener (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> std::io::Result<(u16, String)> {
        raw_request(&self.admin, "POST", path)
    }

    /// The Prometheus text of `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        match self.admin_get("/stats/prometheus") {
            Ok((200, body)) => body,
            other => panic!("GET /stats/prometheus failed: {other:?}"),
        }
    }

    /// Every counter and gauge of `/stats?format=json` by name (histograms are left
    /// out; read them from [`Envoy::prometheus`]).
    pub fn stats(&self) -> HashMap<String, u64> {
        let body = match self.admin_get("/stats?format=json") {
            Ok((200, body)) => body,
            other => panic!("GET /stats?format=json failed: {other:?}"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&body).expect("/stats?format=json is not JSON");
        let mut out = HashMap::new();
        if let Some(stats) = v.get("stats").and_then(|s| s.as_array()) {
            for s in stats {
                if let (Some(name), Some(value)) = (
                    s.get("name").and_then(|n| n.as_str()),
                    s.get("value").and_then(|n| n.as_u64()),
                ) {
                    out.insert(name.to_string(), value);
                }
            }
        }
        out
    }

    /// One counter or gauge, 0 when Envoy does not (yet) report it.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Waits up to `timeout` for `stat(name) >= at_least`; returns the last value.
    pub fn wait_stat(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `envoy --mode validate` on `yaml` (which may hold its own `admin:` block); the
/// error carries Envoy's complaint.
pub fn validate(yaml: &str) -> Result<(), String> {
    let bin = envoy_binary();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("envoy.yaml");
    fs::write(&path, yaml).map_err(|e| e.to_string())?;
    let out = Command::new(&bin)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "envoy rejects the config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bootstrap (JSON is YAML) with one listener answering `hi` on `port`.
    fn direct_response(port: u16) -> String {
        let router = serde_json::json!({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
        let hcm = serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "t",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}}
            ]}]},
            "http_filters": [router],
        });
        serde_json::json!({"static_resources": {"listeners": [{
            "name": "l",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
            ]}],
        }]}})
        .to_string()
    }

    #[test]
    fn envoy_starts_serves_a_direct_response_and_reports_stats() {
        let port = crate::free_port();
        let envoy = Envoy::start(&direct_response(port), 1);
        assert_eq!(envoy.listener_port("l"), Some(port));
        let (status, body) = raw_request(&format!("127.0.0.1:{port}"), "GET", "/").unwrap();
        assert_eq!((status, body.as_str()), (200, "hi"));
        assert!(envoy.wait_stat("http.t.downstream_rq_2xx", 1, Duration::from_secs(10)) >= 1);
        assert!(envoy
            .prometheus()
            .contains("envoy_http_downstream_rq_total"));
    }

    #[test]
    fn envoy_on_port_zero_reports_its_port_answers_nothing_paused_and_releases_it_on_stop() {
        let mut envoy = Envoy::start(&direct_response(0), 2);
        let port = envoy.listener_port("l").unwrap();
        assert!(crate::pid_listens_on(envoy.pid(), port));
        envoy.pause();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let r = std::io::Read::read(&mut s, &mut buf);
        assert!(r.is_err(), "a paused Envoy answered: {r:?}");
        envoy.resume();
        let (status, _) = raw_request(&format!("127.0.0.1:{port}"), "GET", "/").unwrap();
        assert_eq!(status, 200);
        envoy.stop();
        assert!(!envoy.is_running());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn envoy_with_a_broken_config_is_reported_not_hung() {
        let err = Envoy::try_start(
            "static_resources: {listeners: [{name: 1}]}",
            1,
            &[],
            START_TIMEOUT,
        )
        .err()
        .expect("a broken config must not start");
        assert!(err.contains("exited"), "{err}");
    }
}
