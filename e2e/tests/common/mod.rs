//! Shared by the scenario tests: a runner that executes named scenarios against one
//! topology and reports every failure by name, and the assertions they share.

// Test support may unwrap and panic (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use meshpass_e2e::jwt::decode_unverified;
use meshpass_e2e::topology::{
    Reply, Topology, APP_RESOURCE, DEFAULT_SCOPE, PARTICIPANT_CLAIM, SCOPE_CLAIM, TRANSIT_KEY,
};
use serde_json::Value;

/// Runs scenarios one after the other; a failing one does not stop the others.
pub struct Scenarios {
    suite: &'static str,
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    started: Instant,
}

impl Scenarios {
    pub fn new(suite: &'static str) -> Self {
        eprintln!("[{suite}] topology up");
        Scenarios {
            suite,
            passed: vec![],
            failed: vec![],
            started: Instant::now(),
        }
    }

    pub async fn run<Fut>(&mut self, name: &str, fut: Fut)
    where
        Fut: Future<Output = Result<()>>,
    {
        let t = Instant::now();
        match fut.await {
            Ok(()) => {
                eprintln!(
                    "[{}] scenario {name} ... ok ({:.1?})",
                    self.suite,
                    t.elapsed()
                );
                self.passed.push(name.to_string());
            }
            Err(e) => {
                eprintln!("[{}] scenario {name} ... FAILED: {e:#}", self.suite);
                self.failed.push((name.to_string(), format!("{e:#}")));
            }
        }
    }

    /// Panics (failing the test) when any scenario failed, with component logs.
    pub fn finish(self, topo: &Topology) {
        eprintln!(
            "[{}] {} passed, {} failed in {:.1?}",
            self.suite,
            self.passed.len(),
            self.failed.len(),
            self.started.elapsed()
        );
        if !self.failed.is_empty() {
            let list = self
                .failed
                .iter()
                .map(|(n, e)| format!("  - {n}: {e}"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} scenario(s) failed:\n{list}\n\ncomponent logs (dir {}):\n{}",
                self.failed.len(),
                topo.dir().display(),
                topo.diagnostics(30)
            );
        }
    }
}

/// The app got a participant token for `workload` (not `original`) with every claim
/// the contract promises; returns its claims.
pub fn assert_participant_token(
    topo: &Topology,
    reply: &Reply,
    workload: &str,
    participant: &str,
    original: &str,
) -> Result<Value> {
    ensure!(reply.status == 200, "expected 200, got {reply}");
    let seen = reply.echo()?;
    let bearer = seen
        .bearer()
        .context("the app received no Bearer token")?
        .to_string();
    ensure!(bearer != original, "the app received the original JWT-SVID");
    for (name, value) in &seen.headers {
        ensure!(
            !value.contains(original),
            "the original JWT-SVID reached the app in header {name}"
        );
    }
    let jwt = decode_unverified(&bearer)?;
    let c = &jwt.claims;
    ensure!(
        c["iss"] == topo.exchange_issuer().as_str(),
        "iss {} != {}",
        c["iss"],
        topo.exchange_issuer()
    );
    ensure!(
        c["sub"] == topo.spiffe_id(workload).as_str(),
        "sub {} != {}",
        c["sub"],
        topo.spiffe_id(workload)
    );
    let aud_ok = c["aud"] == APP_RESOURCE
        || c["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == APP_RESOURCE));
    ensure!(aud_ok, "aud {} does not contain {APP_RESOURCE}", c["aud"]);
    ensure!(
        c["scope"] == DEFAULT_SCOPE,
        "scope {} != {DEFAULT_SCOPE}",
        c["scope"]
    );
    ensure!(
        c[PARTICIPANT_CLAIM] == participant,
        "{PARTICIPANT_CLAIM} {} != {participant}",
        c[PARTICIPANT_CLAIM]
    );
    ensure!(
        c[SCOPE_CLAIM.0] == SCOPE_CLAIM.1,
        "scope claim {} = {} (expected {})",
        SCOPE_CLAIM.0,
        c[SCOPE_CLAIM.0],
        SCOPE_CLAIM.1
    );
    for claim in ["iat", "exp", "jti"] {
        ensure!(!c[claim].is_null(), "claim {claim} missing: {c}");
    }
    let kid = jwt.header["kid"].as_str().unwrap_or_default();
    ensure!(
        kid.starts_with(&format!("{TRANSIT_KEY}:v")),
        "kid {kid:?} is not {TRANSIT_KEY}:vN"
    );
    ensure!(jwt.header["alg"] == "ES256", "alg {}", jwt.header["alg"]);
    Ok(c.clone())
}

/// The request was refused by the sidecar with `status` and an RFC 6749-style
/// `error`, whose description contains `because`; the app never saw it.
pub fn assert_rejected(reply: &Reply, status: u16, error: &str, because: &str) -> Result<()> {
    ensure!(reply.status == status, "expected {status}, got {reply}");
    ensure!(
        reply.echo().is_err(),
        "the request reached the app: {reply}"
    );
    let body: Value = serde_json::from_str(&reply.body)
        .with_context(|| format!("error body is not JSON: {reply}"))?;
    ensure!(
        body["error"] == error,
        "error {} != {error}: {reply}",
        body["error"]
    );
    let desc = body["error_description"].as_str().unwrap_or_default();
    ensure!(
        desc.to_lowercase().contains(&because.to_lowercase()),
        "error_description {desc:?} does not say {because:?}"
    );
    if status == 401 {
        ensure!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "401 without WWW-Authenticate: {reply}"
        );
    }
    Ok(())
}

/// Polls `f` every 250 ms until it returns Ok(true), failing after `timeout` with the
/// last error or state.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => "condition false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            Instant::now() < deadline,
            "{what}: not true after {timeout:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The machine's shared PostgreSQL cluster (`pg_ctlcluster VERSION main ...`). Dropping
/// the guard makes sure the cluster is running again, whatever happened in between.
pub struct SharedPostgres {
    version: String,
}

impl SharedPostgres {
    pub fn new() -> Result<Self> {
        let version = std::fs::read_dir("/etc/postgresql")
            .context("no /etc/postgresql: is PostgreSQL installed?")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .context("no cluster under /etc/postgresql")?;
        Ok(SharedPostgres { version })
    }

    fn ctl(&self, action: &str) -> Result<()> {
        let out = std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", action])
            .output()
            .context("cannot run pg_ctlcluster")?;
        ensure!(
            out.status.success(),
            "pg_ctlcluster {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Restarts the cluster (stop + start; a few seconds of downtime).
    pub fn restart(&self) -> Result<()> {
        self.ctl("restart")
    }

    fn is_running(&self) -> bool {
        std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", "status"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for SharedPostgres {
    fn drop(&mut self) {
        if !self.is_running() {
            let _ = self.ctl("start");
        }
    }
}
