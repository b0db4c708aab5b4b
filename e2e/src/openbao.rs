//! OpenBao (Vault API) on loopback with the transit engine and a signing key.
//!
//! Two flavours: the in-memory dev server (what `make demo` runs: nothing to unseal),
//! and a persistent server (raft storage in a temp dir, initialised with one unseal
//! key) that can be stopped and started again without losing its keys, which the
//! "OpenBao stopped" fault scenario needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::process::ManagedChild;

/// How OpenBao keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaoStorage {
    /// `bao server -dev`: in memory, unsealed, root token chosen by us.
    Dev,
    /// Raft storage on disk: survives restarts (unsealed again by [`OpenBao::start`]).
    Persistent,
}

/// A running (or stopped) OpenBao server.
pub struct OpenBao {
    bin: PathBuf,
    dir: PathBuf,
    storage: BaoStorage,
    port: u16,
    root_token: String,
    unseal_key: Option<String>,
    child: Option<ManagedChild>,
    http: reqwest::Client,
    transit_key: String,
}

impl OpenBao {
    /// Starts OpenBao in `dir` on a free port, enables `transit/` and creates the
    /// `ecdsa-p256` key `transit_key`.
    pub async fn start_with_transit(
        bin: &Path,
        dir: &Path,
        storage: BaoStorage,
        transit_key: &str,
    ) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "OpenBao binary not found at {} (set MESHPASS_BAO_BIN or run `make setup`)",
                bin.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let mut bao = OpenBao {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            storage,
            port: crate::free_port()?,
            root_token: format!("root-{}", crate::jwt::random_suffix()),
            unseal_key: None,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            transit_key: transit_key.to_string(),
        };
        bao.spawn().await?;
        if storage == BaoStorage::Persistent {
            bao.init_and_unseal().await?;
        }
        bao.wait_active().await?;
        bao.call(
            "POST",
            "sys/mounts/transit",
            Some(json!({"type": "transit"})),
        )
        .await
        .context("enabling transit")?;
        bao.call(
            "POST",
            &format!("transit/keys/{transit_key}"),
            Some(json!({"type": "ecdsa-p256"})),
        )
        .await
        .context("creating the transit key")?;
        Ok(bao)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The root token (the exchange service authenticates with it in tests).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The transit key name.
    pub fn transit_key(&self) -> &str {
        &self.transit_key
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("openbao.log")
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        match self.storage {
            BaoStorage::Dev => {
                cmd.args(["server", "-dev", "-dev-no-store-token"])
                    .arg(format!("-dev-root-token-id={}", self.root_token))
                    .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port));
            }
            BaoStorage::Persistent => {
                let data = self.dir.join("raft");
                std::fs::create_dir_all(&data)?;
                let cluster_port = crate::free_port()?;
                let hcl = format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"e2e\"\n  performance_multiplier = 1\n}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                     api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                    data.display(),
                    port = self.port,
                );
                let cfg = self.dir.join("openbao.hcl");
                std::fs::write(&cfg, hcl)?;
                cmd.arg("server").arg(format!("-config={}", cfg.display()));
            }
        }
        // Keep the developer's own Vault settings out of the test server.
        cmd.env_remove("VAULT_ADDR").env_remove("BAO_ADDR");
        let mut child = ManagedChild::spawn("openbao", cmd, &self.log_path())?;
        let http = self.http.clone();
        let url = format!("{}/v1/sys/health", self.addr());
        child
            .wait_ready("listening", Duration::from_secs(30), || {
                let http = http.clone();
                let url = url.clone();
                async move { http.get(&url).send().await.is_ok() }
            })
            .await?;
        self.child = Some(child);
        Ok(())
    }

    async fn init_and_unseal(&mut self) -> Result<()> {
        if self.unseal_key.is_none() {
            let r: Value = self
                .http
                .put(format!("{}/v1/sys/init", self.addr()))
                .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
                .send()
                .await?
                .error_for_status()
                .context("sys/init")?
                .json()
                .await?;
            let key = r["keys"][0]
                .as_str()
                .ok_or_else(|| anyhow!("sys/init returned no unseal key"))?;
            let token = r["root_token"]
                .as_str()
                .ok_or_else(|| anyhow!("sys/init returned no root token"))?;
            self.unseal_key = Some(key.to_string());
            self.root_token = token.to_string();
        }
        let key = self.unseal_key.clone().unwrap_or_default();
        self.http
            .put(format!("{}/v1/sys/unseal", self.addr()))
            .json(&json!({"key": key}))
            .send()
            .await?
            .error_for_status()
            .context("sys/unseal")?;
        Ok(())
    }

    /// Waits until `sys/health` says active and unsealed (200).
    async fn wait_active(&mut self) -> Result<()> {
        let http = self.http.clone();
        let url = format!("{}/v1/sys/health", self.addr());
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("OpenBao is not running"))?;
        child
            .wait_ready("active and unsealed", Duration::from_secs(60), || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    matches!(http.get(&url).send().await, Ok(r) if r.status().as_u16() == 200)
                }
            })
            .await
    }

    /// A Vault API call with the root token; the JSON answer (Null on 204).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/v1/{path}", self.addr());
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(m, &url)
            .header("X-Vault-Token", &self.root_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Rotates the transit key; returns its new latest version.
    pub async fn rotate_transit_key(&self) -> Result<u64> {
        let r = self
            .call(
                "POST",
                &format!("transit/keys/{}/rotate", self.transit_key),
                None,
            )
            .await?;
        let v = match r["data"]["latest_version"].as_u64() {
            Some(v) => v,
            None => self
                .call("GET", &format!("transit/keys/{}", self.transit_key), None)
                .await?["data"]["latest_version"]
                .as_u64()
                .ok_or_else(|| anyhow!("transit key has no latest_version"))?,
        };
        Ok(v)
    }

    /// Stops the server (the data of a persistent one stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().map(|c| c.is_running()).unwrap_or(false)
    }

    /// Starts a stopped persistent server again on the same port and unseals it.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.storage == BaoStorage::Dev {
            bail!("an in-memory dev server cannot be restarted without losing its keys");
        }
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn().await?;
        self.init_and_unseal().await?;
        self.wait_active().await
    }
}
