//! A real Envoy on loopback for tests: [`Envoy::start`] writes the bootstrap YAML to a
//! temp dir, starts `MESHPASS_ENVOY_BIN` (else `<workspace>/.tools/bin/envoy`) with an
//! admin listener on an OS-chosen port, waits for `GET /ready` to answer `LIVE`, and kills
//! the process on drop.
//!
//! The YAML must not contain an `admin:` block: the launcher adds one (port 0, the
//! actual address is read from `--admin-address-path`, so there is no port race).
//! Each instance gets its own `--base-id` and runs with `--disable-hot-restart`, so
//! several Envoys (in parallel tests) never share memory segments.
//!
//! Admin calls use a plain blocking HTTP/1.1 client over `std::net::TcpStream`, so the
//! launcher works from `#[test]` and from inside a tokio runtime alike.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

/// How long [`Envoy::start`] waits for `/ready`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Envoy, killed and reaped on drop.
pub struct Envoy {
    child: Child,
    admin: String,
    log_path: PathBuf,
    config_path: PathBuf,
    // Kept for its Drop: removes config, log and admin-address file.
    _dir: tempfile::TempDir,
}

/// The Envoy binary: `MESHPASS_ENVOY_BIN` when set and non-empty, else
/// `<workspace root>/.tools/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    match std::env::var_os("MESHPASS_ENVOY_BIN") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            here.parent()
                .map(PathBuf::from)
                .unwrap_or(here)
                .join(".tools/bin/envoy")
        }
    }
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
        let log_path = dir.path().join("envoy.log");
        let log = fs::File::create(&log_path).expect("cannot create Envoy log");
        let log2 = log.try_clone().expect("cannot clone Envoy log handle");
        let base_id =
            (std::process::id() % 20_000) * 50 + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 50;
        let admin_yaml = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}";
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--config-yaml")
            .arg(admin_yaml)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--disable-hot-restart")
            .args(["--log-format", "[%Y-%m-%d %T.%e][%l][%n] %v"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy ({}): {e}", bin.display()));
        let mut envoy = Envoy {
            child,
            admin: String::new(),
            log_path,
            config_path,
            _dir: dir,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!(
                    "Envoy exited ({status}) before it was ready; log:\n{}",
                    envoy.log_tail(60)
                ));
            }
            if envoy.admin.is_empty() {
                if let Ok(a) = fs::read_to_string(&admin_path) {
                    if a.trim().contains(':') {
                        envoy.admin = a.trim().to_string();
                    }
                }
            }
            if !envoy.admin.is_empty() {
                if let Ok((200, body)) = envoy.admin_get("/ready") {
                    if body.trim() == "LIVE" {
                        return Ok(envoy);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {timeout:?}; log:\n{}",
                    envoy.log_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` of the admin listener.
    pub fn admin_address(&self) -> &str {
        &self.admin
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether Envoy is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The bootstrap file Envoy was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Envoy's whole log (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET path` on the admin listener: `(status, body)`.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(&self.admin, path)
    }

    /// `POST path` on the admin listener (e.g. `/reset_counters`).
    pub fn admin_post(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_request(&self.admin, "POST", path)
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

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A minimal HTTP/1.1 request with `Connection: close`; enough for Envoy's admin API.
fn http_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_starts_serves_a_direct_response_and_reports_stats() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "hi"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        );
        let envoy = Envoy::start(&yaml, 1);
        let (status, body) = http_get(&format!("127.0.0.1:{port}"), "/").unwrap();
        assert_eq!((status, body.as_str()), (200, "hi"));
        assert!(envoy.wait_stat("http.t.downstream_rq_2xx", 1, Duration::from_secs(10)) >= 1);
        assert!(envoy
            .prometheus()
            .contains("envoy_http_downstream_rq_total"));
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
