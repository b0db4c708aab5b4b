//! The `[vault]` section of the service configuration (see README-vault.md).

use super::secret::Secret;
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::time::Duration;

/// Most `transit/sign` requests in flight at once (batches, or singles when batching is
/// off); `batch_pipeline_depth` is at most this.
pub const MAX_SIGN_REQUESTS_IN_FLIGHT: usize = 32;

/// Default Kubernetes service-account token path (kubernetes and jwt auth).
pub const DEFAULT_SA_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Vault/OpenBao access and transit signing settings (`[vault]`).
///
/// Precedence, as for the Vault CLI and Vault Agent: `VAULT_ADDR`, `VAULT_CACERT` and
/// `VAULT_NAMESPACE` (or their `BAO_*` spellings) override `address`, `ca_cert` and
/// `namespace` from the file; `VAULT_TOKEN` overrides `auth.token` for `method = "token"`
/// and is otherwise ignored. Everything else comes from the file or the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Server address, e.g. `https://vault.vault.svc:8200` (`VAULT_ADDR` overrides).
    pub address: Option<String>,
    /// Enterprise/OpenBao namespace sent as `X-Vault-Namespace` (`VAULT_NAMESPACE`).
    pub namespace: Option<String>,
    /// PEM file of CA certificates trusted for the server (`VAULT_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// How the service authenticates.
    pub auth: AuthConfig,
    /// Mount path of the transit engine.
    pub transit_mount: String,
    /// Transit key name; the `kid` is `"{key_name}:v{version}"`.
    pub key_name: String,
    /// When set, refuse a transit key of any other type (fail closed).
    pub key_type: Option<KeyType>,
    /// JWS algorithm for RSA keys: `PS256` (default) or `RS256`.
    pub rsa_alg: RsaAlg,
    /// Never publish or use versions below this one (on top of Vault's own
    /// `min_decryption_version`).
    pub min_version: Option<u64>,
    /// How long a new key version is published in the JWKS before it signs.
    #[serde(deserialize_with = "de_duration")]
    pub publish_lead: Duration,
    /// How often the transit key is re-read (rotations, trims).
    #[serde(deserialize_with = "de_duration")]
    pub key_refresh_interval: Duration,
    /// Most signatures coalesced into one `batch_input` request.
    pub batch_max_size: usize,
    /// Longest a signature waits for others to share a request with.
    #[serde(deserialize_with = "de_duration")]
    pub batch_max_wait: Duration,
    /// Most sign requests in flight before a new signature waits for one of them to
    /// return (at most `batch_max_wait`). While nothing is in flight a signature goes out
    /// at once; while fewer than this are, a further request goes out only once
    /// `batch_pipeline_min_size` signatures wait for it.
    pub batch_pipeline_depth: usize,
    /// Signatures that must be waiting before a request goes out beside one already in
    /// flight (capped at `batch_max_size`). Keeps a second slot from being taken by a
    /// lone signature, which pays Vault's whole fixed cost per request.
    pub batch_pipeline_min_size: usize,
    /// Timeout of every Vault HTTP request.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Longest time a verifier of participant tokens keeps a JWKS before fetching it
    /// again (istiod refreshes a `jwksUri` every 20 minutes by default). When set (not
    /// 0), `publish_lead` must be at least this long, so no token is signed by a key a
    /// verifier cannot have seen yet.
    #[serde(deserialize_with = "de_duration")]
    pub verifier_refresh_interval: Duration,
    /// Allow `http://` to a Vault that is not on a loopback address (the token and every
    /// signature travel in clear). Unsafe.
    pub insecure_http: bool,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            namespace: None,
            ca_cert: None,
            auth: AuthConfig::default(),
            transit_mount: "transit".into(),
            key_name: "meshpass-participant".into(),
            key_type: None,
            rsa_alg: RsaAlg::PS256,
            min_version: None,
            // server.jwks_max_age_secs (60) + key_refresh_interval (30): a verifier that
            // cached the JWKS just before another replica saw the version still holds it.
            publish_lead: Duration::from_secs(90),
            key_refresh_interval: Duration::from_secs(30),
            batch_max_size: 64,
            batch_max_wait: Duration::from_millis(2),
            batch_pipeline_depth: 3,
            batch_pipeline_min_size: 12,
            request_timeout: Duration::from_secs(5),
            verifier_refresh_interval: Duration::ZERO,
            insecure_http: false,
        }
    }
}

/// Authentication method (`[vault.auth]`, chosen by `method`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A fixed token (`token`, else `VAULT_TOKEN`); renewed if renewable.
    Token {
        /// The token; `VAULT_TOKEN` overrides it.
        #[serde(default, deserialize_with = "de_token")]
        token: Option<Secret>,
    },
    /// A token read from a file and re-read whenever the file changes (Vault Agent sink).
    TokenFile {
        /// File holding the token.
        path: PathBuf,
    },
    /// AppRole login (`auth/{mount}/login`).
    Approle {
        /// Auth mount path.
        #[serde(default = "default_approle_mount")]
        mount: String,
        /// Role ID.
        role_id: String,
        /// Secret ID (or `secret_id_file`).
        #[serde(default, deserialize_with = "de_secret_id")]
        secret_id: Option<Secret>,
        /// File holding the secret ID, read at each login.
        #[serde(default)]
        secret_id_file: Option<PathBuf>,
    },
    /// Kubernetes login with the pod's service-account token.
    Kubernetes {
        /// Auth mount path.
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
        /// Vault role.
        role: String,
        /// Service-account token file, read at each login.
        #[serde(default = "default_sa_token_file")]
        jwt_file: PathBuf,
    },
    /// JWT login (`auth/{mount}/login` with `role` and `jwt`).
    Jwt {
        /// Auth mount path.
        #[serde(default = "default_jwt_mount")]
        mount: String,
        /// Vault role.
        role: String,
        /// File holding the JWT, read at each login.
        #[serde(default = "default_sa_token_file")]
        jwt_file: PathBuf,
    },
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig::Token { token: None }
    }
}

impl AuthConfig {
    /// The method name as written in the config.
    pub fn method(&self) -> &'static str {
        match self {
            AuthConfig::Token { .. } => "token",
            AuthConfig::TokenFile { .. } => "token_file",
            AuthConfig::Approle { .. } => "approle",
            AuthConfig::Kubernetes { .. } => "kubernetes",
            AuthConfig::Jwt { .. } => "jwt",
        }
    }
}

/// A secret that is a string, else an error naming `key` and never the value. Serde
/// reads an internally tagged enum's fields from a buffer, so its own type error would
/// name only `vault.auth` and quote the value (an all-digit token arrives as a number
/// from the environment). `key: …` is how config.rs's `load_error` names a key.
fn de_secret<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Option<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => Ok(Some(Secret::new(s))),
        Raw::Other(_) => Err(serde::de::Error::custom(format!(
            "{key}: invalid type: expected a string (quote a value that looks like a number)"
        ))),
    }
}

fn de_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    de_secret(d, "token")
}

fn de_secret_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    de_secret(d, "secret_id")
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_sa_token_file() -> PathBuf {
    PathBuf::from(DEFAULT_SA_TOKEN_FILE)
}

/// Transit key types meshpass can sign JWS with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    /// `ecdsa-p256` → ES256.
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// `ecdsa-p384` → ES384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// `rsa-2048` → PS256/RS256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// `rsa-3072` → PS256/RS256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// `rsa-4096` → PS256/RS256.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    /// `ed25519` → EdDSA.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl KeyType {
    /// Parses Vault's `type` field.
    pub fn from_vault(s: &str) -> Option<KeyType> {
        Some(match s {
            "ecdsa-p256" => KeyType::EcdsaP256,
            "ecdsa-p384" => KeyType::EcdsaP384,
            "rsa-2048" => KeyType::Rsa2048,
            "rsa-3072" => KeyType::Rsa3072,
            "rsa-4096" => KeyType::Rsa4096,
            "ed25519" => KeyType::Ed25519,
            _ => return None,
        })
    }

    /// Vault's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

/// JWS algorithm used with RSA transit keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RsaAlg {
    /// RSASSA-PSS with SHA-256 (salt length = hash length).
    PS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

/// A `[vault]` setting is wrong; the service refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct VaultConfigError {
    /// The offending key, e.g. `vault.batch_max_size`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> VaultConfigError {
    VaultConfigError {
        field: format!("vault.{field}"),
        reason: reason.into(),
    }
}

/// Reads `VAULT_{name}`, else `BAO_{name}`; empty counts as unset.
fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    [format!("VAULT_{name}"), format!("BAO_{name}")]
        .iter()
        .filter_map(|k| env(k))
        .find(|v| !v.is_empty())
}

impl VaultConfig {
    /// Checks the configuration as the service will use it (environment applied).
    /// The error names the offending field.
    pub fn validate(&self) -> Result<(), VaultConfigError> {
        self.resolved().map(|_| ())
    }

    /// This configuration with `VAULT_*` environment variables applied, validated.
    pub fn resolved(&self) -> Result<VaultConfig, VaultConfigError> {
        self.resolved_with(&|k| std::env::var(k).ok())
    }

    /// [`VaultConfig::resolved`] with an explicit environment (for tests).
    pub fn resolved_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<VaultConfig, VaultConfigError> {
        let mut c = self.clone();
        if let Some(a) = env_var(env, "ADDR") {
            c.address = Some(a);
        }
        if let Some(ns) = env_var(env, "NAMESPACE") {
            c.namespace = Some(ns);
        }
        if let Some(ca) = env_var(env, "CACERT") {
            c.ca_cert = Some(PathBuf::from(ca));
        }
        if let AuthConfig::Token { token } = &mut c.auth {
            if let Some(t) = env_var(env, "TOKEN") {
                *token = Some(Secret::new(t));
            }
        }
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), VaultConfigError> {
        let addr = self
            .address
            .as_deref()
            .ok_or_else(|| bad("address", "not set (set it or VAULT_ADDR)"))?;
        let url = reqwest::Url::parse(addr).map_err(|e| bad("address", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("address", "must be an http:// or https:// URL"));
        }
        if url.path() != "/" && !url.path().is_empty() {
            return Err(bad("address", "must not contain a path"));
        }
        // Every API path is appended to it: after a query it would be part of the query.
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("address", "must not contain a query or a fragment"));
        }
        if let Some(ns) = &self.namespace {
            if ns.trim_matches('/').is_empty() {
                return Err(bad("namespace", "must not be empty"));
            }
        }
        if let Some(ca) = &self.ca_cert {
            if !ca.is_file() {
                return Err(bad(
                    "ca_cert",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        check_path("transit_mount", &self.transit_mount)?;
        if self.key_name.is_empty()
            || !self
                .key_name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(bad("key_name", "must be non-empty [A-Za-z0-9._-]"));
        }
        if self.min_version == Some(0) {
            return Err(bad("min_version", "versions start at 1"));
        }
        if self.publish_lead > Duration::from_secs(7 * 24 * 3600) {
            return Err(bad("publish_lead", "must be at most 7 days"));
        }
        if self.key_refresh_interval < Duration::from_millis(100)
            || self.key_refresh_interval > Duration::from_secs(24 * 3600)
        {
            return Err(bad("key_refresh_interval", "must be 100ms to 1 day"));
        }
        if self.verifier_refresh_interval > Duration::from_secs(7 * 24 * 3600) {
            return Err(bad("verifier_refresh_interval", "must be at most 7 days"));
        }
        if !(1..=1024).contains(&self.batch_max_size) {
            return Err(bad("batch_max_size", "must be between 1 and 1024"));
        }
        if self.batch_max_wait > Duration::from_secs(1) {
            return Err(bad("batch_max_wait", "must be at most 1s"));
        }
        if !(1..=MAX_SIGN_REQUESTS_IN_FLIGHT).contains(&self.batch_pipeline_depth) {
            return Err(bad(
                "batch_pipeline_depth",
                "must be between 1 and 32 (the sign requests in flight at most)",
            ));
        }
        if !(1..=1024).contains(&self.batch_pipeline_min_size) {
            return Err(bad("batch_pipeline_min_size", "must be between 1 and 1024"));
        }
        if self.request_timeout < Duration::from_millis(50)
            || self.request_timeout > Duration::from_secs(300)
        {
            return Err(bad("request_timeout", "must be between 50ms and 300s"));
        }
        if !self.verifier_refresh_interval.is_zero()
            && self.publish_lead < self.verifier_refresh_interval
        {
            return Err(bad(
                "publish_lead",
                format!(
                    "must be at least verifier_refresh_interval ({}s): verifiers would meet tokens signed by a key they cannot have fetched yet",
                    self.verifier_refresh_interval.as_secs()
                ),
            ));
        }
        match &self.auth {
            AuthConfig::Token { token } => {
                if token.as_ref().is_none_or(Secret::is_empty) {
                    return Err(bad("auth.token", "not set (set it or VAULT_TOKEN)"));
                }
            }
            AuthConfig::TokenFile { path } => {
                if path.as_os_str().is_empty() {
                    return Err(bad("auth.path", "must not be empty"));
                }
            }
            AuthConfig::Approle {
                mount,
                role_id,
                secret_id,
                secret_id_file,
            } => {
                check_path("auth.mount", mount)?;
                if role_id.is_empty() {
                    return Err(bad("auth.role_id", "must not be empty"));
                }
                if secret_id.is_some() && secret_id_file.is_some() {
                    return Err(bad(
                        "auth.secret_id_file",
                        "set either secret_id or secret_id_file, not both",
                    ));
                }
            }
            AuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            }
            | AuthConfig::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                check_path("auth.mount", mount)?;
                if role.is_empty() {
                    return Err(bad("auth.role", "must not be empty"));
                }
                if jwt_file.as_os_str().is_empty() {
                    return Err(bad("auth.jwt_file", "must not be empty"));
                }
            }
        }
        let host = url.host_str().unwrap_or("");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if url.scheme() == "http" && !loopback && !self.insecure_http {
            return Err(bad(
                "address",
                "http:// is allowed only to a loopback address; use https (or set insecure_http = true)",
            ));
        }
        Ok(())
    }
}

fn check_path(field: &str, p: &str) -> Result<(), VaultConfigError> {
    let ok = !p.is_empty()
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg != "."
                && seg
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        });
    if ok {
        Ok(())
    } else {
        Err(bad(field, "must be a mount path like `transit` or `a/b`"))
    }
}

/// A duration from an integer (seconds) or a string with a unit: `"2ms"`, `"30s"`,
/// `"5m"`, `"1h"`.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"` (or a bare number of seconds).
pub fn parse_duration(t: &str) -> Result<Duration, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    // Never quote the value: it may be a secret put in the wrong place.
    let n: u64 = num
        .parse()
        .map_err(|_| "not a duration (use e.g. \"2ms\", \"30s\", \"5m\")".to_string())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err("not a duration unit (ms, s, m, h, d)".to_string()),
    };
    Ok(d)
}

#[cfg(test)]
mod tests;
