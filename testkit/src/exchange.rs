//! The meshpass exchange service as a child process of the built binary:
//! `meshpass-exchange serve --config FILE` with a TOML file generated from a JSON value
//! (exchange-svc/README.md has the keys). Tests that need the service in-process build
//! its router directly (exchange-svc/tests/common).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::http::http_get_text;
use crate::process::ChildGuard;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Renders a JSON object as TOML (the exchange service's config format).
pub fn to_toml(config: &Value) -> Result<String, String> {
    let t = toml::Value::try_from(config)
        .map_err(|e| format!("config is not representable as TOML: {e}"))?;
    toml::to_string_pretty(&t).map_err(|e| format!("cannot render TOML: {e}"))
}

/// A running (or stopped) exchange service, stopped on drop.
pub struct ExchangeService {
    bin: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    child: Option<ChildGuard>,
}

impl ExchangeService {
    /// Writes `config` (a JSON object following the service's TOML schema, listening on
    /// `127.0.0.1:port`: take `port` from [`crate::free_port`]) to `dir/exchange.toml`,
    /// starts [`crate::exchange_bin`] and returns once the process itself listens on
    /// `port` and its JWKS lists a key. Panics with the log tail when it does not.
    /// `server.drain_delay_secs` is 0 unless `config` sets it.
    pub fn start(dir: &Path, port: u16, config: &Value) -> ExchangeService {
        let bin = crate::exchange_bin();
        if !bin.is_file() {
            panic!(
                "exchange service binary not found at {} (set MESHPASS_EXCHANGE_BIN or run `make build`)",
                bin.display()
            );
        }
        let config_path = dir.join("exchange.toml");
        // Tests stop and restart services often: no drain delay unless the test sets one
        // (the service's default, 5 s, would make every stop wait for it).
        let mut config = config.clone();
        if let Some(server) = config.get_mut("server").and_then(Value::as_object_mut) {
            server.entry("drain_delay_secs").or_insert(Value::from(0));
        } else if let Some(obj) = config.as_object_mut() {
            obj.insert("server".into(), serde_json::json!({"drain_delay_secs": 0}));
        }
        let toml = to_toml(&config).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&config_path, toml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let mut svc = ExchangeService {
            bin,
            config_path,
            log_path: dir.join("exchange.log"),
            port,
            child: None,
        };
        svc.start_again();
        svc
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// The generated TOML file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (one for every start).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::log_tail(&self.log_path, n)
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Sends `sig` (`"TERM"`, `"KILL"`, ...) to the service and returns at once.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            c.signal(sig);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (after
    /// [`ExchangeService::signal`]); its exit status, or None when it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the service; returns once every thread is stopped.
    pub fn pause(&mut self) {
        self.child.iter_mut().for_each(ChildGuard::pause);
    }

    /// Resumes a paused service.
    pub fn resume(&mut self) {
        self.child.iter_mut().for_each(ChildGuard::resume);
    }

    /// Stops the service (SIGTERM, SIGKILL after 5 s); returns once it has exited and
    /// released its port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
            crate::wait_port_released(self.port, Duration::from_secs(10));
        }
    }

    /// Starts the service (again) with the same config and port; returns once it serves
    /// its JWKS from its own socket. No-op when it runs.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").arg("--config").arg(&self.config_path);
        // The generated file is the whole configuration: no developer Vault settings
        // leak in.
        for var in crate::VAULT_ENV {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        let mut child = ChildGuard::spawn_logging_to("meshpass-exchange", cmd, &self.log_path);
        let (pid, port) = (child.pid(), self.port);
        let url = format!("{}/.well-known/jwks.json", self.base_url());
        child.wait_ready("serving its JWKS", READY_TIMEOUT, || {
            crate::pid_listens_on(pid, port) && jwks_has_keys(&url)
        });
        self.child = Some(child);
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Result<Value, String> {
        let url = format!("{}/.well-known/jwks.json", self.base_url());
        match http_get_text(&url, None) {
            Some((200, body)) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            Some((status, body)) => Err(format!("JWKS: HTTP {status}: {body}")),
            None => Err(format!("JWKS: {url} does not answer")),
        }
    }
}

fn jwks_has_keys(url: &str) -> bool {
    match http_get_text(url, None) {
        Some((200, body)) => serde_json::from_str::<Value>(&body)
            .map(|j| j["keys"].as_array().is_some_and(|k| !k.is_empty()))
            .unwrap_or(false),
        _ => false,
    }
}

impl Drop for ExchangeService {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_config_renders_as_toml_tables() {
        let t =
            to_toml(&json!({"server": {"listen": "127.0.0.1:1"}, "mappings": [{"a": 1}]})).unwrap();
        assert!(t.contains("[server]"), "{t}");
        assert!(t.contains("listen = \"127.0.0.1:1\""), "{t}");
        assert!(t.contains("[[mappings]]"), "{t}");
    }
}
