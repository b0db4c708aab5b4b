//! A real OpenBao server on a reserved loopback port: the in-memory dev server, or a
//! persistent one (raft storage on disk, initialised and unsealed by us) that keeps its
//! keys across stop and start.

use crate::http::{client, http_status, off_runtime};
use crate::process::ChildGuard;
use crate::{bao_bin, free_port, random_hex};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How OpenBao keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaoStorage {
    /// `bao server -dev`: in memory, unsealed, root token chosen by us. A restart
    /// brings back an *empty* server.
    Dev,
    /// Raft storage in the server's directory, initialised with one unseal key: stop
    /// and start keep every mount, key and policy (unsealed again on start).
    Persistent,
}

/// What [`OpenBao::start_with`] starts.
#[derive(Clone, Debug)]
pub struct OpenBaoOptions {
    /// Dev (in memory) or persistent (raft on disk).
    pub storage: BaoStorage,
    /// Serve HTTPS with a generated CA (`-dev-tls`; dev servers only).
    pub tls: bool,
    /// Where the log (`openbao.log`), config and data go; a private temp dir when `None`.
    pub dir: Option<PathBuf>,
}

impl Default for OpenBaoOptions {
    fn default() -> Self {
        OpenBaoOptions {
            storage: BaoStorage::Dev,
            tls: false,
            dir: None,
        }
    }
}

/// [`OpenBao::shared`]'s server and the watchdog that stops it when the process exits.
struct SharedBao {
    bao: OpenBao,
    // Holds the write end of the watchdog's stdin (Rust opens pipes close-on-exec, so
    // no other child inherits it).
    _watchdog: Child,
}

/// An OpenBao server listening on `127.0.0.1:<reserved port>`, stopped on drop.
///
/// To test "Vault down, then back" with state intact, use [`OpenBao::pause`] /
/// [`OpenBao::resume`] (SIGSTOP/SIGCONT, verified in `/proc`: connections hang, like a
/// network partition), or a [`BaoStorage::Persistent`] server with `stop()` then
/// `start_again()` (connections refused in between). A dev server's
/// [`OpenBao::restart_same_port`] comes back empty.
pub struct OpenBao {
    bin: PathBuf,
    options: OpenBaoOptions,
    dir: PathBuf,
    port: u16,
    token: String,
    unseal_key: Option<String>,
    child: Option<ChildGuard>,
    // Kept for its Drop when no directory was given.
    _tmp: Option<tempfile::TempDir>,
}

impl OpenBao {
    /// A dev server (binary from `MESHPASS_BAO_BIN`, else `<workspace>/.tools/bin/bao`)
    /// with a random root token, once `/v1/sys/health` answers 200. Panics (naming the
    /// binary path) when the binary is missing or never gets ready.
    pub fn start() -> OpenBao {
        OpenBao::start_with(OpenBaoOptions::default())
    }

    /// Like [`OpenBao::start`] but serving HTTPS (`-dev-tls`) with a certificate for
    /// 127.0.0.1 from a generated CA: see [`OpenBao::ca_cert_path`].
    pub fn start_tls() -> OpenBao {
        OpenBao::start_with(OpenBaoOptions {
            tls: true,
            ..OpenBaoOptions::default()
        })
    }

    /// A persistent (raft) server, initialised and unsealed: see [`BaoStorage`].
    pub fn start_persistent() -> OpenBao {
        OpenBao::start_with(OpenBaoOptions {
            storage: BaoStorage::Persistent,
            ..OpenBaoOptions::default()
        })
    }

    /// The dev server shared by every caller in this process (all the tests of one test
    /// binary), with transit mounted at `transit/`; the first call starts it, later ones
    /// get the same server. Callers only get `&OpenBao`: nothing can pause, stop or
    /// restart it (a test that breaks OpenBao starts its own), and each test should use
    /// transit keys of its own (unique names), so tests stay independent.
    ///
    /// A static is never dropped, so a watchdog stops it instead: a `sh` in its own
    /// process group that reads a pipe whose only write end this process holds. When
    /// the process exits, however it exits (end of the test binary, panic, SIGKILL), the
    /// watchdog reads end-of-file, kills the server's process group and removes its
    /// directory.
    pub fn shared() -> &'static OpenBao {
        static SHARED: OnceLock<SharedBao> = OnceLock::new();
        &SHARED
            .get_or_init(|| {
                let bao = OpenBao::start();
                let watchdog = bao.kill_when_this_process_exits();
                bao.enable_transit();
                SharedBao {
                    bao,
                    _watchdog: watchdog,
                }
            })
            .bao
    }

    /// Starts the watchdog of [`OpenBao::shared`]; keep the returned child (its stdin)
    /// for as long as the server should live.
    fn kill_when_this_process_exits(&self) -> Child {
        let mut cmd = Command::new("sh");
        // `env kill`: the kill(1) that `ChildGuard` uses (dash's builtin takes no
        // process group).
        cmd.arg("-c")
            .arg(r#"read -r _ignored; env kill -KILL -- "-$0"; rm -rf -- "$1""#)
            .arg(self.pid().to_string())
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in our group: a Ctrl-C that kills the tests must not kill it first.
            .process_group(0);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start the OpenBao watchdog (sh): {e}"))
    }

    /// Starts the server `options` describe; ready when `sys/health` answers 200 (active
    /// and unsealed) from the process we started.
    pub fn start_with(options: OpenBaoOptions) -> OpenBao {
        assert!(
            !(options.tls && options.storage == BaoStorage::Persistent),
            "TLS is only available for dev OpenBao servers"
        );
        let bin = bao_bin();
        if !bin.is_file() {
            panic!(
                "OpenBao binary not found at {} (set MESHPASS_BAO_BIN or run `bash scripts/setup.sh`)",
                bin.display()
            );
        }
        let (dir, tmp) = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("meshpass-openbao-")
                    .tempdir()
                    .expect("cannot create a temp dir for OpenBao");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut bao = OpenBao {
            bin,
            options,
            dir,
            port: 0,
            token: format!("root-{}", random_hex(12)),
            unseal_key: None,
            child: None,
            _tmp: tmp,
        };
        // A reserved port is free, but a start can still fail: retry on a new one.
        let mut last = String::new();
        for _ in 0..3 {
            bao.port = free_port();
            match bao.spawn_and_wait() {
                Ok(()) => return bao,
                Err(e) => {
                    eprintln!("[testkit] OpenBao start on port {} failed: {e}", bao.port);
                    last = e;
                }
            }
        }
        panic!("OpenBao ({}) did not start: {last}", bao.bin.display());
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        match self.options.storage {
            BaoStorage::Dev => {
                cmd.args(["server", "-dev", "-dev-no-store-token"])
                    .arg(format!("-dev-root-token-id={}", self.token))
                    .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port));
                if self.options.tls {
                    let tls = self.dir.join("tls");
                    std::fs::create_dir_all(&tls).expect("cannot create the TLS directory");
                    cmd.arg("-dev-tls").arg(format!(
                        "-dev-tls-cert-dir={}",
                        self.dir.join("tls").display()
                    ));
                }
            }
            BaoStorage::Persistent => {
                let cfg = self.write_persistent_config();
                cmd.arg("server").arg(format!("-config={}", cfg.display()));
            }
        }
        // Never pick up the developer's own Vault/OpenBao settings.
        for var in ["VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn write_persistent_config(&self) -> PathBuf {
        let data = self.dir.join("raft");
        std::fs::create_dir_all(&data).expect("cannot create the raft directory");
        let cluster_port = free_port();
        let hcl = format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"testkit\"\n  performance_multiplier = 1\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
            data.display(),
            port = self.port,
        );
        let cfg = self.dir.join("openbao.hcl");
        std::fs::write(&cfg, hcl).expect("cannot write the OpenBao config");
        cfg
    }

    /// Spawns the server on `self.port` and waits until it is ours and active. On
    /// failure the child is stopped and the reason returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut child = ChildGuard::spawn_logging_to("openbao", self.command(), &self.log_path());
        let health = format!("{}/v1/sys/health", self.addr());
        let (ca, port, pid) = (self.ca_cert_path(), self.port, child.pid());
        // Listening, and on a socket of the process we started: a server of another
        // test that got the same port would answer the probe too.
        child.try_wait_ready("listening on its port", READY_TIMEOUT, || {
            crate::pid_listens_on(pid, port) && http_status(&health, ca.clone()).is_some()
        })?;
        self.child = Some(child);
        if self.options.storage == BaoStorage::Persistent {
            self.init_and_unseal()?;
        }
        let child = self.child.as_mut().ok_or("OpenBao is not running")?;
        child.try_wait_ready("active and unsealed (health 200)", READY_TIMEOUT, || {
            http_status(&health, ca.clone()) == Some(200)
        })
    }

    fn init_and_unseal(&mut self) -> Result<(), String> {
        let addr = self.addr();
        if self.unseal_key.is_none() {
            let r = off_runtime(move || {
                client(None, HTTP_TIMEOUT)
                    .put(format!("{addr}/v1/sys/init"))
                    .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
                    .send()
                    .and_then(|r| r.error_for_status())
                    .and_then(|r| r.json::<Value>())
                    .map_err(|e| format!("sys/init: {e}"))
            })?;
            let (Some(key), Some(token)) = (r["keys"][0].as_str(), r["root_token"].as_str()) else {
                return Err(format!("sys/init answered without key or token: {r}"));
            };
            self.unseal_key = Some(key.to_string());
            self.token = token.to_string();
        }
        let (addr, key) = (self.addr(), self.unseal_key.clone().unwrap_or_default());
        off_runtime(move || {
            client(None, HTTP_TIMEOUT)
                .put(format!("{addr}/v1/sys/unseal"))
                .json(&json!({ "key": key }))
                .send()
                .and_then(|r| r.error_for_status())
                .map(|_| ())
                .map_err(|e| format!("sys/unseal: {e}"))
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://` for [`OpenBao::start_tls`] (what
    /// `VAULT_ADDR` would be).
    pub fn addr(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that issued the server certificate (TLS servers only;
    /// what `VAULT_CACERT` would be). Regenerated by each (re)start.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.options
            .tls
            .then(|| self.dir.join("tls").join("vault-ca.pem"))
    }

    /// The listening port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root token.
    pub fn root_token(&self) -> &str {
        &self.token
    }

    /// How the server keeps its data.
    pub fn storage(&self) -> BaoStorage {
        self.options.storage
    }

    /// The server's process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// The server's directory (log, config, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file (one for every start of this server).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("openbao.log")
    }

    /// The tail of the server's log.
    pub fn log_tail(&self, max_lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), max_lines)
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
            let m = reqwest::Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|_| panic!("bad HTTP method {method}"));
            let mut req = client(ca, HTTP_TIMEOUT)
                .request(m, &url)
                .header("X-Vault-Token", token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .unwrap_or_else(|e| panic!("OpenBao request {method} {url} failed: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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
        let body = Some(json!({ "type": kind }));
        self.api_ok("POST", &format!("sys/mounts/{path}"), body);
    }

    /// Enables auth method `kind` at `auth/{path}`.
    pub fn enable_auth(&self, kind: &str, path: &str) {
        let body = Some(json!({ "type": kind }));
        self.api_ok("POST", &format!("sys/auth/{path}"), body);
    }

    /// Enables AppRole at `auth/approle` and writes its role `role` with `settings`
    /// (`token_policies`, `token_ttl`, ...); returns the role ID and a new secret ID.
    pub fn approle(&self, role: &str, settings: Value) -> (String, String) {
        self.enable_auth("approle", "approle");
        let base = format!("auth/approle/role/{role}");
        self.api_ok("POST", &base, Some(settings));
        let id = |v: Value, field: &str| {
            v["data"][field]
                .as_str()
                .unwrap_or_else(|| panic!("OpenBao answered no {field}: {v}"))
                .to_string()
        };
        let role_id = id(
            self.api_ok("GET", &format!("{base}/role-id"), None),
            "role_id",
        );
        let secret = self.api_ok("POST", &format!("{base}/secret-id"), Some(json!({})));
        (role_id, id(secret, "secret_id"))
    }

    /// Creates transit key `name` of `key_type` (`ecdsa-p256`, `rsa-2048`, `ed25519`...)
    /// on the `transit/` mount.
    pub fn create_transit_key(&self, name: &str, key_type: &str) {
        let body = Some(json!({ "type": key_type }));
        self.api_ok("POST", &format!("transit/keys/{name}"), body);
    }

    /// The latest version of transit key `name`.
    pub fn transit_key_version(&self, name: &str) -> u64 {
        let key = self.api_ok("GET", &format!("transit/keys/{name}"), None);
        key["data"]["latest_version"].as_u64().unwrap_or(0)
    }

    /// Rotates transit key `name`; returns the new latest version.
    pub fn rotate_key(&self, name: &str) -> u64 {
        self.api_ok("POST", &format!("transit/keys/{name}/rotate"), None);
        self.transit_key_version(name)
    }

    /// Writes ACL policy `name` (HCL).
    pub fn write_policy(&self, name: &str, hcl: &str) {
        let body = Some(json!({ "policy": hcl }));
        self.api_ok("PUT", &format!("sys/policies/acl/{name}"), body);
    }

    /// Creates a token with `policies` and `ttl` (e.g. `"1h"`); returns its client token.
    pub fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let body = Some(json!({ "policies": policies, "ttl": ttl }));
        let v = self.api_ok("POST", "auth/token/create", body);
        v["auth"]["client_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no client_token in {v}"))
            .to_string()
    }

    /// Freezes the server (SIGSTOP); returns once the kernel reports every thread
    /// stopped, so no request is answered from then on (see [`ChildGuard::pause`]).
    /// Resumed by [`OpenBao::resume`] (and before stop/drop).
    pub fn pause(&mut self) {
        self.child.iter_mut().for_each(ChildGuard::pause);
    }

    /// Resumes a paused server (SIGCONT); returns once it runs again.
    pub fn resume(&mut self) {
        self.child.iter_mut().for_each(ChildGuard::resume);
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.child.as_ref().is_some_and(ChildGuard::is_paused)
    }

    /// Whether the server process runs (paused counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// Stops the server and returns once it has exited and its port is released
    /// (connections are then refused). A dev server loses all state; a persistent one
    /// keeps it (raft storage survives a kill, so no graceful shutdown is waited for).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop_with_grace(Duration::ZERO);
            crate::wait_port_released(self.port, Duration::from_secs(10));
        }
    }

    /// Starts a stopped server again on the same port (a persistent one unsealed, with
    /// everything it had; a dev one empty, with the same root token). No-op when it
    /// runs.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        // The port stays reserved for this process; a start can still fail (slow exit
        // of the old server): retry a few times.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    eprintln!(
                        "[testkit] OpenBao restart on port {} failed: {e}",
                        self.port
                    );
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!("OpenBao did not start again on port {}: {last}", self.port);
    }

    /// [`OpenBao::stop`] then [`OpenBao::start_again`]. Dev mode is in memory: transit
    /// keys, mounts, auth methods and policies are gone and must be created again.
    pub fn restart_same_port(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
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
    fn paused_openbao_answers_nothing_from_the_moment_pause_returns() {
        let mut bao = OpenBao::start();
        bao.enable_transit();
        bao.create_transit_key("k", "ecdsa-p256");
        let url = format!("{}/v1/sys/health", bao.addr());
        // Keep its threads busy while it is stopped, as a loaded machine would.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = client(None, Duration::from_millis(300));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c.get(&url).send();
                }
            })
        };
        for _ in 0..5 {
            bao.pause();
            // No grace period: the very first request after pause() must go unanswered.
            let u = url.clone();
            let r = off_runtime(move || {
                client(None, Duration::from_millis(500))
                    .get(&u)
                    .send()
                    .map(|r| r.status())
            });
            assert!(r.is_err(), "a paused OpenBao answered {r:?}");
            bao.resume();
            assert_eq!(bao.api("GET", "sys/health", None).0, 200);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap();
    }

    #[test]
    fn persistent_openbao_keeps_its_keys_across_stop_and_start_on_the_same_port() {
        let mut bao = OpenBao::start_persistent();
        assert_eq!(bao.storage(), BaoStorage::Persistent);
        bao.enable_transit();
        bao.create_transit_key("k", "ecdsa-p256");
        assert_eq!(bao.rotate_key("k"), 2);
        let (port, pid) = (bao.port(), bao.pid());
        bao.stop();
        assert!(!bao.is_running());
        assert!(http_status(&format!("{}/v1/sys/health", bao.addr()), None).is_none());
        bao.start_again();
        assert_eq!(bao.port(), port);
        assert_ne!(bao.pid(), pid);
        assert!(crate::pid_listens_on(bao.pid(), port));
        assert_eq!(bao.transit_key_version("k"), 2);
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

    /// Set in the copy of this test binary that the test below runs.
    const SHARED_CHILD: &str = "MESHPASS_TESTKIT_SHARED_OPENBAO_CHILD";

    #[test]
    fn shared_openbao_is_one_server_per_process_and_is_killed_when_the_process_exits() {
        if std::env::var_os(SHARED_CHILD).is_some() {
            // The child: start the shared server, report it, exit without dropping it.
            let bao = OpenBao::shared();
            assert!(std::ptr::eq(bao, OpenBao::shared()));
            bao.create_transit_key("k", "ecdsa-p256");
            println!(
                "shared-openbao pid={} port={} dir={}",
                bao.pid(),
                bao.port(),
                bao.dir().display()
            );
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "openbao::tests::shared_openbao_is_one_server_per_process_and_is_killed_when_the_process_exits",
                "--nocapture",
            ])
            .env(SHARED_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("shared-openbao "))
            .unwrap_or_else(|| panic!("the child did not report its server: {stdout}"));
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .to_string()
        };
        let (pid, port) = (field("pid"), field("port").parse::<u16>().unwrap());
        let dir = PathBuf::from(field("dir"));
        // Gone (or a zombie waiting for init to reap it), its port closed, its files removed.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
                .unwrap_or(true)
        };
        assert!(
            crate::wait_until(Duration::from_secs(10), Duration::from_millis(20), dead),
            "the shared OpenBao (pid {pid}) outlived its process"
        );
        assert!(crate::wait_port_released(port, Duration::from_secs(10)));
        assert!(
            crate::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                !dir.exists()
            }),
            "{} was not removed",
            dir.display()
        );
    }

    #[tokio::test]
    async fn openbao_helpers_work_inside_a_tokio_runtime() {
        let bao = OpenBao::start();
        let token = bao.create_token(&["default"], "1h");
        let (status, v) = bao.api_with_token(&token, "GET", "auth/token/lookup-self", None);
        assert_eq!(status, 200, "{v}");
    }
}
