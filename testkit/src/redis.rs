//! Redis: the machine's server (127.0.0.1:6379, `MESHPASS_REDIS_URL`) for tests that
//! only need one, and a private `redis-server` on a reserved port that a test can stop
//! and start again (outage and recovery), stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;

/// The machine's Redis: `MESHPASS_REDIS_URL`, else `redis://127.0.0.1:6379`.
pub fn shared_redis_url() -> String {
    std::env::var("MESHPASS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique key prefix, so tests sharing one Redis never see each other's keys.
pub fn unique_prefix(test: &str) -> String {
    format!("meshpass-test:{test}:{}", crate::random_hex(6))
}

/// The `redis-server` binary: `MESHPASS_REDIS_SERVER_BIN`, else `redis-server` on PATH.
pub fn redis_server_bin() -> PathBuf {
    match std::env::var_os("MESHPASS_REDIS_SERVER_BIN") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("redis-server"),
    }
}

/// Whether a Redis server answers `PING` on `127.0.0.1:port`.
pub fn redis_pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A private Redis (no persistence) on a reserved loopback port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<ChildGuard>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with its log in `dir`; panics (with the
    /// log) when it is missing or does not answer `PING`.
    pub fn start(dir: &Path) -> RedisServer {
        let mut r = RedisServer {
            port: crate::free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.start_again();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM); returns once the port is released.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
            crate::wait_port_released(self.port, Duration::from_secs(10));
        }
    }

    /// Starts the server (again) on the same port, empty. No-op when it runs.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut cmd = Command::new(redis_server_bin());
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir);
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let mut child = ChildGuard::spawn_logging_to("redis-server", cmd, &log);
        let (pid, port) = (child.pid(), self.port);
        child.wait_ready("answering PING", Duration::from_secs(20), || {
            crate::pid_listens_on(pid, port) && redis_pings(port)
        });
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
