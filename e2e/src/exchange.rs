//! The meshpass exchange service as a process: `meshpass-exchange serve --config FILE`
//! with a TOML file generated from a JSON value (exchange-svc/README.md has the keys).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::process::ManagedChild;

/// A running (or stopped) exchange service.
pub struct ExchangeService {
    bin: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    child: Option<ManagedChild>,
    http: reqwest::Client,
}

/// Renders a JSON object as TOML (the exchange service's config format).
pub fn to_toml(config: &Value) -> Result<String> {
    let t = toml::Value::try_from(config).context("config is not representable as TOML")?;
    toml::to_string_pretty(&t).context("cannot render TOML")
}

impl ExchangeService {
    /// Writes `config` (a JSON object following the service's TOML schema) to
    /// `dir/exchange.toml`, starts the service and waits until its JWKS lists a key.
    pub async fn start(bin: &Path, dir: &Path, port: u16, config: &Value) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "exchange service binary not found at {} (set MESHPASS_EXCHANGE_BIN or run `make build`)",
                bin.display()
            );
        }
        let config_path = dir.join("exchange.toml");
        std::fs::write(&config_path, to_toml(config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut svc = ExchangeService {
            bin: bin.to_path_buf(),
            config_path,
            log_path: dir.join("exchange.log"),
            port,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        svc.start_again().await?;
        Ok(svc)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The generated TOML file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::log_tail(&self.log_path, n)
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().map(|c| c.is_running()).unwrap_or(false)
    }

    /// Stops the service (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(5));
        }
    }

    /// Starts the service (again) with the same config and port; waits for its JWKS.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").arg("--config").arg(&self.config_path);
        // The generated file is the whole configuration: no developer Vault settings
        // leak in.
        for var in [
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "VAULT_CACERT",
            "VAULT_NAMESPACE",
            "BAO_ADDR",
            "BAO_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        let mut child = ManagedChild::spawn("meshpass-exchange", cmd, &self.log_path)?;
        let http = self.http.clone();
        let url = format!("{}/.well-known/jwks.json", self.base_url());
        child
            .wait_ready("serving its JWKS", Duration::from_secs(60), || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r
                            .json::<Value>()
                            .await
                            .map(|j| j["keys"].as_array().is_some_and(|k| !k.is_empty()))
                            .unwrap_or(false),
                        _ => false,
                    }
                }
            })
            .await?;
        self.child = Some(child);
        Ok(())
    }

    /// The published JWKS.
    pub async fn jwks(&self) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.base_url()))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(anyhow!("JWKS: HTTP {}", r.status()));
        }
        Ok(r.json().await?)
    }
}
