//! A real OpenBao dev server on a free loopback port.

use crate::process::ChildGuard;
use crate::{bao_bin, free_port, random_hex};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// An OpenBao server in dev mode (`bao server -dev`): in memory, unsealed, with a random
/// root token, listening on `127.0.0.1:<free port>`. Stopped on drop.
///
/// Dev mode keeps everything in memory: [`OpenBao::restart_same_port`] brings back an
/// *empty* server (same address and root token, but no transit keys, auth methods or
/// policies). To test "Vault down, then back" with state intact, use
/// [`OpenBao::pause`]/[`OpenBao::resume`] (SIGSTOP/SIGCONT: connections hang, like a
/// network partition) or `stop()` followed by `restart_same_port()` and re-creating what
/// the test needs (connections are refused in between).
pub struct OpenBao {
    bin: PathBuf,
    port: u16,
    token: String,
    child: Option<ChildGuard>,
    paused: bool,
    /// `-dev-tls` certificate directory (TLS servers only).
    tls_dir: Option<tempfile::TempDir>,
}

impl OpenBao {
    /// Starts a dev server with the binary from `MESHPASS_BAO_BIN` (or
    /// `<workspace>/.tools/bin/bao`) and waits until `/v1/sys/health` answers 200.
    /// Panics (naming the binary path) when the binary is missing or never gets ready.
    pub fn start() -> OpenBao {
        OpenBao::start_inner(false)
    }

    /// Like [`OpenBao::start`] but serving HTTPS (`-dev-tls`) with a certificate for
    /// 127.0.0.1 from a generated CA: see [`OpenBao::ca_cert_path`].
    pub fn start_tls() -> OpenBao {
        OpenBao::start_inner(true)
    }

    fn start_inner(tls: bool) -> OpenBao {
        let bin = bao_bin();
        if !bin.is_file() {
            panic!(
                "OpenBao binary not found at {} (set MESHPASS_BAO_BIN or run `bash scripts/setup.sh`)",
                bin.display()
            );
        }
        let token = format!("root-{}", random_hex(12));
        let mut bao = OpenBao {
            bin,
            port: 0,
            token,
            child: None,
            paused: false,
            tls_dir: tls.then(|| {
                tempfile::Builder::new()
                    .prefix("meshpass-openbao-tls-")
                    .tempdir()
                    .expect("cannot create a temp dir for OpenBao TLS files")
            }),
        };
        // A free port can be taken before the server binds it: retry with a new one.
        for attempt in 0..3 {
            bao.port = free_port();
            match bao.spawn_and_wait(attempt == 2) {
                Ok(()) => return bao,
                Err(e) => eprintln!("[testkit] OpenBao start attempt {attempt} failed: {e}"),
            }
        }
        panic!("OpenBao ({}) did not start", bao.bin.display());
    }

    /// Spawns the server on `self.port` and waits for readiness. On early exit returns
    /// Err (so the caller can retry), unless `last` (then the readiness wait panics with
    /// the log tail).
    fn spawn_and_wait(&mut self, last: bool) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={}", self.token))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .arg("-dev-no-store-token")
            .args(
                self.tls_dir
                    .as_ref()
                    .map(|d| {
                        vec![
                            "-dev-tls".to_string(),
                            format!("-dev-tls-cert-dir={}", d.path().display()),
                        ]
                    })
                    .unwrap_or_default(),
            )
            // Never pick up the developer's own Vault/OpenBao settings.
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN");
        let mut child = ChildGuard::spawn("openbao", cmd);
        let health = format!("{}/v1/sys/health", self.addr());
        let ca = self.ca_cert_path();
        if !last {
            let deadline = std::time::Instant::now() + READY_TIMEOUT;
            loop {
                if http_status(&health, ca.clone()) == Some(200) {
                    break;
                }
                if child.exited().is_some() {
                    return Err(format!("exited early; log tail:\n{}", child.log_tail(20)));
                }
                if std::time::Instant::now() >= deadline {
                    return Err(format!("not healthy; log tail:\n{}", child.log_tail(20)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            let what = format!("{health} answered 200 (binary {})", self.bin.display());
            child.wait_ready(&what, READY_TIMEOUT, || {
                http_status(&health, ca.clone()) == Some(200)
            });
        }
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `http://127.0.0.1:PORT`, or `https://` for [`OpenBao::start_tls`] (what
    /// `VAULT_ADDR` would be).
    pub fn addr(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that issued the server certificate (TLS servers only;
    /// what `VAULT_CACERT` would be). Regenerated by each (re)start.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls_dir.as_ref().map(|d| d.path().join("vault-ca.pem"))
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root token.
    pub fn root_token(&self) -> &str {
        &self.token
    }

    /// The server's process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// The tail of the server's log.
    pub fn log_tail(&self, max_lines: usize) -> String {
        self.child
            .as_ref()
            .map(|c| c.log_tail(max_lines))
            .unwrap_or_default()
    }

    /// Calls the HTTP API as root: `method` (`GET`, `POST`, `PUT`, `DELETE`, `LIST`...) on
    /// `/v1/{path}` with an optional JSON body. Returns the status and the JSON body
    /// (`Value::Null` when empty or not JSON). Panics only when OpenBao is unreachable.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_with_token(&self.token, method, path, body)
    }

    /// Like [`OpenBao::api`] with another token.
    pub fn api_with_token(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/{}", self.addr(), path.trim_start_matches('/'));
        let token = token.to_string();
        let method = method.to_string();
        let ca = self.ca_cert_path();
        off_runtime(move || {
            let client = client(ca);
            let m = reqwest::Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|_| panic!("bad HTTP method {method}"));
            let mut req = client.request(m, &url).header("X-Vault-Token", token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .unwrap_or_else(|e| panic!("OpenBao request {method} {url} failed: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            let json = serde_json::from_str(&text).unwrap_or(Value::Null);
            (status, json)
        })
    }

    /// Like [`OpenBao::api`] but panics unless the status is 2xx; returns the body.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.api(method, path, body);
        if !(200..300).contains(&status) {
            panic!("OpenBao {method} /v1/{path} answered {status}: {json}");
        }
        json
    }

    /// Mounts the transit secrets engine at `transit/`.
    pub fn enable_transit(&self) {
        self.enable_secrets("transit", "transit");
    }

    /// Mounts secrets engine `kind` at `path`.
    pub fn enable_secrets(&self, kind: &str, path: &str) {
        self.api_ok(
            "POST",
            &format!("sys/mounts/{path}"),
            Some(json!({ "type": kind })),
        );
    }

    /// Enables auth method `kind` at `auth/{path}`.
    pub fn enable_auth(&self, kind: &str, path: &str) {
        self.api_ok(
            "POST",
            &format!("sys/auth/{path}"),
            Some(json!({ "type": kind })),
        );
    }

    /// Creates transit key `name` of `key_type` (`ecdsa-p256`, `rsa-2048`, `ed25519`...)
    /// on the `transit/` mount.
    pub fn create_transit_key(&self, name: &str, key_type: &str) {
        self.api_ok(
            "POST",
            &format!("transit/keys/{name}"),
            Some(json!({ "type": key_type })),
        );
    }

    /// Rotates transit key `name`; returns the new latest version.
    pub fn rotate_key(&self, name: &str) -> u64 {
        self.api_ok("POST", &format!("transit/keys/{name}/rotate"), None);
        let key = self.api_ok("GET", &format!("transit/keys/{name}"), None);
        key["data"]["latest_version"].as_u64().unwrap_or(0)
    }

    /// Writes ACL policy `name` (HCL).
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.api_ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// Creates a token with `policies` and `ttl` (e.g. `"1h"`); returns its client token.
    pub fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let v = self.api_ok(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": policies, "ttl": ttl })),
        );
        v["auth"]["client_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no client_token in {v}"))
            .to_string()
    }

    /// Pauses the server (SIGSTOP): it keeps its port and state but answers nothing, so
    /// clients see timeouts. Resumed by [`OpenBao::resume`] (and before stop/drop).
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            c.signal("STOP");
            self.paused = true;
        }
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            c.signal("CONT");
            self.paused = false;
        }
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stops the server (connections are then refused). All state is lost.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
        self.paused = false;
    }

    /// Stops the server if running and starts a fresh dev server on the same port with
    /// the same root token. Dev mode is in memory: transit keys, mounts, auth methods
    /// and policies are gone and must be created again.
    pub fn restart_same_port(&mut self) {
        self.stop();
        // The old socket may linger briefly; retry the bind a few times.
        for attempt in 0..5 {
            match self.spawn_and_wait(attempt == 4) {
                Ok(()) => return,
                Err(e) => {
                    eprintln!("[testkit] OpenBao restart attempt {attempt} failed: {e}");
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client_builder(ca: Option<PathBuf>) -> reqwest::blocking::ClientBuilder {
    let mut b = reqwest::blocking::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
        let cert = reqwest::Certificate::from_pem(&pem)
            .unwrap_or_else(|e| panic!("CA {}: {e}", ca.display()));
        b = b.add_root_certificate(cert);
    }
    b
}

fn client(ca: Option<PathBuf>) -> reqwest::blocking::Client {
    client_builder(ca)
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("cannot build HTTP client")
}

fn http_status(url: &str, ca: Option<PathBuf>) -> Option<u16> {
    let url = url.to_string();
    off_runtime(move || {
        // The CA file appears only once the server has generated it.
        if ca.as_ref().is_some_and(|c| !c.is_file()) {
            return None;
        }
        client_builder(ca)
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?
            .get(&url)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    })
}

/// Runs `f` on a fresh OS thread: reqwest's blocking client panics when created, used or
/// dropped on a thread driving a tokio runtime, and tests call us from `#[tokio::test]`s.
pub(crate) fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openbao_starts_signs_pauses_and_restarts_on_the_same_port() {
        let mut bao = OpenBao::start();
        bao.enable_transit();
        bao.create_transit_key("k", "ecdsa-p256");
        assert_eq!(bao.rotate_key("k"), 2);
        let (status, _) = bao.api("GET", "transit/keys/k", None);
        assert_eq!(status, 200);

        bao.pause();
        assert!(bao.is_paused());
        assert_eq!(
            http_status(&format!("{}/v1/sys/health", bao.addr()), None),
            None
        );
        bao.resume();
        assert_eq!(bao.api("GET", "sys/health", None).0, 200);

        let port = bao.port();
        bao.restart_same_port();
        assert_eq!(bao.port(), port);
        // Dev mode is in memory: the transit mount is gone after a restart.
        assert_ne!(bao.api("GET", "transit/keys/k", None).0, 200);
    }

    #[test]
    fn tls_openbao_serves_https_with_a_certificate_from_its_ca() {
        let bao = OpenBao::start_tls();
        assert!(bao.addr().starts_with("https://127.0.0.1:"));
        let ca = bao.ca_cert_path().unwrap();
        assert!(ca.is_file());
        assert_eq!(bao.api("GET", "sys/health", None).0, 200);
        // Without the CA the server is not trusted.
        let health = format!("{}/v1/sys/health", bao.addr());
        assert_eq!(http_status(&health, None), None);
    }

    #[tokio::test]
    async fn openbao_helpers_work_inside_a_tokio_runtime() {
        let bao = OpenBao::start();
        let token = bao.create_token(&["default"], "1h");
        let (status, v) = bao.api_with_token(&token, "GET", "auth/token/lookup-self", None);
        assert_eq!(status, 200, "{v}");
    }
}
