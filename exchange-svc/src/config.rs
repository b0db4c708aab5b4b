//! The configuration file (TOML) with `MESHPASS__SECTION__KEY` environment overrides.
//! Unknown keys are errors; [`Config::validate`] checks values and names the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Serialized};
use figment::Figment;
use meshpass_core::{PolicyError, ValidationPolicy};
use serde::{Deserialize, Serialize};

use crate::store::{validate_mapping, validate_scope_claims, Mapping, ScopeClaims, StoreConfig};

mod file;
mod issuer;
mod load;

pub use issuer::{IssuerConfig, KeySourceConfig, TokenReviewConfig};
use load::{check_env_names, load_error};

/// Why the configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override could not be read or has the wrong shape
    /// (figment names the key).
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value is invalid; the first field is its dotted path.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted path of the field, e.g. `issuers[0].audiences`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener and HTTP behaviour.
    pub server: ServerConfig,
    /// `[token]`: what minted tokens look like.
    pub token: TokenConfig,
    /// `[cache]`: the minted-token cache.
    pub cache: CacheConfig,
    /// `[store]`: the mapping store.
    pub store: StoreConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[callers]`: how the caller of `/token` is identified.
    pub callers: CallersConfig,
    /// `[vault]`: Vault/OpenBao access and the transit key.
    pub vault: crate::vault::VaultConfig,
    /// `[validation]`: subject-token limits shared by all issuers.
    pub validation: ValidationConfig,
    /// `[[issuers]]`: accepted subject-token issuers.
    pub issuers: Vec<IssuerConfig>,
    /// `[[mappings]]`: mappings upserted into the store at startup.
    pub mappings: Vec<Mapping>,
    /// `[[scope_claims]]`: scope claims upserted into the store at startup.
    pub scope_claims: Vec<ScopeClaims>,
    /// `[management]`: the management API.
    pub management: crate::mgmt::ManagementConfig,
    /// `[rate_limit]`: where mapping rate limits are counted (local or Redis).
    pub rate_limit: crate::ratelimit::RateLimitConfig,
    /// `[keys]`: scheduled rotation and retirement of the transit key's versions.
    pub keys: crate::key_schedule::KeysConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address of the token endpoint, discovery, health and metrics.
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, how long `/readyz` fails while requests are still served, before
    /// the listener closes (load balancers take the replica out meanwhile).
    pub drain_delay_secs: u64,
    /// `Cache-Control: max-age` of the JWKS document (keep it below the signer's
    /// publish lead so verifiers see a new key before tokens carry it).
    pub jwks_max_age_secs: u64,
    /// `Retry-After` sent with 503 when signing, or any dependency but the store, is
    /// unavailable (`store.retry_after_secs` covers the store).
    pub retry_after_secs: u64,
    /// Upper bound on a whole exchange; slower ones answer 503.
    pub request_timeout_secs: u64,
    /// `[server.tls]`: terminate TLS here; a verified client certificate's SPIFFE ID is
    /// the caller of `/token`.
    pub tls: Option<TlsConfig>,
    /// Base URL the discovery documents advertise for `token_endpoint` and `jwks_uri`
    /// (unset: `token.issuer`), for an issuer that is a name while the service is
    /// reached elsewhere (in a mesh: the Service's plain-HTTP port, behind sidecars).
    pub public_url: Option<String>,
}

/// `[server.tls]` (and `[management.tls]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the service.
    pub cert_file: PathBuf,
    /// PEM private key of the service.
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates (the callers' SVIDs) are verified against.
    pub client_ca_file: PathBuf,
    /// Serve TLS on this address in addition to plain HTTP on `server.listen` (JWKS,
    /// discovery and health stay reachable without TLS; `/token` there has no caller
    /// unless a trusted proxy forwards one). Unset: `server.listen` itself is TLS.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Longest life of a connection whose client certificate names a caller: it is
    /// then closed gracefully (HTTP/2 GOAWAY, in-flight requests finish) and the client
    /// handshakes again, against the CA bundle as it is then. Bounds how long a CA
    /// taken out of `client_ca_file` keeps a caller's open connection; a connection
    /// also ends when its client certificate expires.
    #[serde(default = "default_max_connection_age_secs")]
    pub max_connection_age_secs: u64,
}

/// Longest `*.tls.max_connection_age_secs` accepted. Beyond the time a removed CA may
/// keep trusting a connection, a much larger value overflowed the instant the
/// connection's identity lapses, and every mTLS handshake panicked.
pub const MAX_CONNECTION_AGE_SECS: u64 = 86_400;

fn default_max_connection_age_secs() -> u64 {
    300
}

/// `[callers]`: how the service identifies who calls `/token` (DESIGN.md "Subject
/// tokens" item 5). In CLIENT mode the caller must be the subject; otherwise it must
/// match the mapping's `allowed_callers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallersConfig {
    /// Peer IP addresses of the service's own sidecar: only their
    /// `x-forwarded-client-cert` is believed (any other is refused).
    pub xfcc_trusted_proxies: Vec<std::net::IpAddr>,
    /// Allow exchanges whose caller cannot be identified (no client certificate, no
    /// trusted XFCC): anyone holding a subject token can then spend it. Unsafe.
    pub insecure_unbound_callers: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_grace_secs: 30,
            drain_delay_secs: 5,
            jwks_max_age_secs: 60,
            retry_after_secs: 2,
            request_timeout_secs: 10,
            tls: None,
            public_url: None,
        }
    }
}

/// `[token]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `iss` of minted tokens and base of the discovery URLs (https URL, no trailing `/`).
    pub issuer: String,
    /// Name of the participant-context claim.
    pub participant_claim: String,
    /// Hard cap on a minted token's lifetime, whatever a mapping says.
    pub max_ttl_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: String::new(),
            participant_claim: "participant".into(),
            max_ttl_secs: 3600,
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether minted tokens are cached.
    pub enabled: bool,
    /// Maximum number of cached tokens (oldest-expiring evicted first).
    pub max_entries: usize,
    /// A cached token is served while more than this fraction of its life is left.
    pub min_remaining_fraction: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_entries: 10_000,
            min_remaining_fraction: 0.5,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directive (`RUST_LOG` wins when set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[validation]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest subject/actor token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Seconds a verified subject/actor token is remembered (never past its `exp`) so
    /// its signature is not verified again; 0 turns the cache off. Claims and time
    /// are re-checked on every use; a key-set change drops the entries.
    pub subject_cache_secs: u64,
    /// Most verified tokens remembered (the one closest to expiry is evicted first).
    pub subject_cache_max_entries: usize,
}

/// Longest `validation.subject_cache_secs` accepted.
pub const MAX_SUBJECT_CACHE_SECS: u64 = 3600;

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_token_bytes: meshpass_core::DEFAULT_MAX_TOKEN_BYTES,
            subject_cache_secs: 60,
            subject_cache_max_entries: 10_000,
        }
    }
}

/// Loads a TLS section's files once, so a bad one refuses the start naming its field.
fn check_tls_files(section: &'static str, tls: &TlsConfig) -> Result<(), ConfigError> {
    crate::tls::section_config(section, &tls.cert_file, &tls.key_file, &tls.client_ca_file)
        .map(|_| ())
        .map_err(|e| match e {
            crate::tls::TlsError::File { field, reason } => bad(field, reason),
            other => bad(section, other.to_string()),
        })
}

/// Whether two listeners would take the same port (the same address, or either on
/// every address).
pub fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks an URL: https, or http to a loopback host (tests, sidecars).
pub fn check_url(field: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    match u.scheme() {
        "https" => Ok(u),
        "http" => {
            let host = u.host_str().unwrap_or("");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if loopback {
                Ok(u)
            } else {
                Err(bad(
                    field,
                    "must be https (http only to a loopback address)",
                ))
            }
        }
        _ => Err(bad(field, "must be an https URL")),
    }
}

/// The path of `url` (the issuer or the public URL) when it has one: the discovery
/// documents and the token endpoint are served under it too, so it must be plain
/// segments of letters, digits, `-`, `.`, `_` and `~`, none starting with `.` (no
/// `..`, no `.well-known`), no escapes.
pub fn base_path(url: &str) -> Result<Option<String>, &'static str> {
    let u = reqwest::Url::parse(url).map_err(|_| "is not a URL")?;
    let path = u.path();
    // As written, not as the URL parser resolved it (`/a/../b` is `/b`): the issuer
    // is compared byte for byte.
    let written = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    if written.is_empty() {
        return Ok(None);
    }
    let plain = path[1..].split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    if !plain || written != path {
        return Err(
            "must have a path of plain segments (letters, digits, - . _ ~; none starting with .)",
        );
    }
    Ok(Some(path.to_string()))
}

/// A claim value read from TOML that JSON can carry as written: TOML has no null, so a
/// null is a non-finite float (`inf`, `nan`) serde_json could not keep, and a date or
/// time arrives as the toml crate's private marker object; both would be minted as
/// something else than the operator wrote.
fn toml_claim_value(v: &serde_json::Value) -> Result<(), &'static str> {
    use serde_json::Value;
    match v {
        Value::Null => Err("inf and nan have no JSON number; write a finite number or a string"),
        Value::Object(o) if o.keys().any(|k| k.starts_with("$__toml_private")) => {
            Err("a TOML date or time has no JSON type; write it as a string")
        }
        Value::Object(o) => o.values().try_for_each(toml_claim_value),
        Value::Array(a) => a.iter().try_for_each(toml_claim_value),
        _ => Ok(()),
    }
}

impl Config {
    /// How long after a key version's last signature a token it signed can still be
    /// accepted: `token.max_ttl_secs` plus `keys.verifier_leeway` (rounded up). The one
    /// rule both retirement paths (the schedule and `POST /keys/retire`) wait out.
    pub fn token_acceptance_secs(&self) -> u64 {
        let leeway =
            u64::try_from(self.keys.verifier_leeway.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
        self.token.max_ttl_secs.saturating_add(leeway)
    }

    /// Loads `path` (if any), then `MESHPASS__SECTION__KEY` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(bad("--config", format!("{} does not exist", p.display())));
            }
            // figment reads what is not a file (the ConfigMap's mount point) as no file.
            if !p.is_file() {
                return Err(bad("--config", format!("{} is not a file", p.display())));
            }
            // Its relative paths are read from its own directory.
            fig = fig.merge(file::ConfigFile::new(p));
        }
        check_env_names()?;
        fig = fig.merge(Env::prefixed("MESHPASS__").split("__"));
        // `vault.auth.method` defaults to `token` in a `[vault.auth]` table too (one with
        // only the token, or MESHPASS__VAULT__AUTH__TOKEN alone), not only without one.
        let auth_table = matches!(
            fig.find_value("vault.auth"),
            Ok(figment::value::Value::Dict(..))
        );
        if auth_table && fig.find_value("vault.auth.method").is_err() {
            // Joined, not merged: `vault.auth` keeps its source (the file or the
            // environment), which an error in it names.
            fig = fig.join(Serialized::default("vault.auth.method", "token"));
        }
        let cfg: Config = fig.extract().map_err(load_error)?;
        if let Some(why) =
            path.and_then(|p| file::database_left_behind(&cfg.store.url, &file::dir_of(p)))
        {
            return Err(bad("store.url", why));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token.issuer.is_empty() {
            return Err(bad("token.issuer", "is required (the service's https URL)"));
        }
        let iss = check_url("token.issuer", &self.token.issuer)?;
        if !iss.username().is_empty() || iss.password().is_some() {
            // Not quoted: the password would be in every minted token's `iss`.
            return Err(bad("token.issuer", "must have no user or password"));
        }
        if iss.query().is_some() || iss.fragment().is_some() || self.token.issuer.ends_with('/') {
            return Err(bad(
                "token.issuer",
                "must have no query, fragment or trailing /",
            ));
        }
        base_path(&self.token.issuer).map_err(|e| bad("token.issuer", e))?;
        if let Some(public) = &self.server.public_url {
            let field = "server.public_url";
            let u =
                reqwest::Url::parse(public).map_err(|e| bad(field, format!("not a URL: {e}")))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(bad(field, "must be an http or https URL"));
            }
            if u.query().is_some()
                || u.fragment().is_some()
                || !u.username().is_empty()
                || u.password().is_some()
                || public.ends_with('/')
            {
                return Err(bad(
                    field,
                    "must have no user, query, fragment or trailing /",
                ));
            }
            base_path(public).map_err(|e| bad(field, e))?;
        }
        if self.token.participant_claim.is_empty()
            || crate::store::RESERVED_CLAIMS
                .iter()
                .any(|r| crate::store::same_claim_name(&self.token.participant_claim, r))
        {
            return Err(bad(
                "token.participant_claim",
                "must be a non-reserved claim name",
            ));
        }
        if self.token.max_ttl_secs == 0 {
            return Err(bad("token.max_ttl_secs", "must be at least 1"));
        }
        if !(self.cache.min_remaining_fraction > 0.0 && self.cache.min_remaining_fraction < 1.0) {
            return Err(bad(
                "cache.min_remaining_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if self.cache.enabled && self.cache.max_entries == 0 {
            return Err(bad(
                "cache.max_entries",
                "must be at least 1 when the cache is enabled",
            ));
        }
        let max_retry = crate::error::MAX_RETRY_AFTER_SECS;
        if !(1..=max_retry).contains(&self.server.retry_after_secs) {
            return Err(bad(
                "server.retry_after_secs",
                format!("must be 1 to {max_retry}"),
            ));
        }
        if self.server.drain_delay_secs > 300 {
            return Err(bad("server.drain_delay_secs", "must be at most 300"));
        }
        if self.server.request_timeout_secs == 0 {
            return Err(bad("server.request_timeout_secs", "must be at least 1"));
        }
        if let Some(tls) = &self.server.tls {
            if !(1..=MAX_CONNECTION_AGE_SECS).contains(&tls.max_connection_age_secs) {
                return Err(bad(
                    "server.tls.max_connection_age_secs",
                    "must be 1 to 86400 (a day: it bounds how long a CA taken out of the bundle is trusted)",
                ));
            }
            if let Some(l) = tls.listen {
                if listeners_overlap(l, self.server.listen) {
                    return Err(bad(
                        "server.tls.listen",
                        "must differ from server.listen (each is its own listener)",
                    ));
                }
            }
            check_tls_files("server.tls", tls)?;
        }
        if let Some(tls) = &self.management.tls {
            if !(1..=MAX_CONNECTION_AGE_SECS).contains(&tls.max_connection_age_secs) {
                return Err(bad(
                    "management.tls.max_connection_age_secs",
                    "must be 1 to 86400 (a day: it bounds how long a CA taken out of the bundle is trusted)",
                ));
            }
            if tls.listen.is_some() {
                return Err(bad(
                    "management.tls.listen",
                    "not used here: management.listen itself serves TLS",
                ));
            }
            check_tls_files("management.tls", tls)?;
        }
        if self.validation.max_token_bytes < 256 {
            return Err(bad("validation.max_token_bytes", "must be at least 256"));
        }
        if self.validation.subject_cache_secs > MAX_SUBJECT_CACHE_SECS {
            return Err(bad(
                "validation.subject_cache_secs",
                format!("must be at most {MAX_SUBJECT_CACHE_SECS}"),
            ));
        }
        if self.validation.subject_cache_secs > 0 && self.validation.subject_cache_max_entries == 0
        {
            return Err(bad(
                "validation.subject_cache_max_entries",
                "must be at least 1 when the subject cache is on",
            ));
        }
        self.store.validate().map_err(|e| match e {
            crate::store::StoreError::Invalid { field, reason } => bad(&field, reason),
            other => bad("store", other.to_string()),
        })?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| bad("log.level", e.to_string()))?;
        if self.issuers.is_empty() {
            return Err(bad("issuers", "at least one issuer is required"));
        }
        self.validation_policy()?;
        for (i, iss) in self.issuers.iter().enumerate() {
            let f = format!("issuers[{i}]");
            let source = iss.key_source(&f)?;
            if matches!(
                source,
                KeySourceConfig::Inline(_) | KeySourceConfig::File(_)
            ) && iss.bearer_token_file.is_some()
            {
                return Err(bad(
                    format!("{f}.bearer_token_file"),
                    "is sent with jwks_url and discovery_url only: remove it beside jwks or jwks_file",
                ));
            }
            match source {
                KeySourceConfig::Inline(j) => {
                    meshpass_core::jwk::KeySet::parse(j.as_bytes())
                        .map_err(|e| bad(format!("{f}.jwks"), e.to_string()))?;
                }
                KeySourceConfig::File(_) => {}
                KeySourceConfig::Url(u) => {
                    check_url(&format!("{f}.jwks_url"), &u)?;
                }
                KeySourceConfig::Discovery(u) => {
                    check_url(&format!("{f}.discovery_url"), &u)?;
                }
            }
            if iss.refresh_secs == 0 {
                return Err(bad(format!("{f}.refresh_secs"), "must be at least 1"));
            }
            if iss.min_refetch_secs == 0 {
                return Err(bad(
                    format!("{f}.min_refetch_secs"),
                    "must be at least 1 (0 would fetch the JWKS for every unknown kid)",
                ));
            }
            if let Some(tr) = &iss.token_review {
                tr.check(&format!("{f}.token_review"))?;
                crate::tokenreview::check_files(tr, iss.ca_file.as_ref())
                    .map_err(|e| bad(format!("{f}.token_review"), e.to_string()))?;
            }
        }
        // What `serve` builds from the issuers (an inline set with no usable key, a CA
        // file that cannot be read) is refused here too, so check-config says it.
        crate::keys::IssuerKeys::from_config(self)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.mappings.iter().enumerate() {
            validate_mapping(m).map_err(|e| bad(format!("mappings[{i}]"), e.to_string()))?;
            crate::store::check_ttl_cap(m, self.token.max_ttl_secs)
                .map_err(|e| bad(format!("mappings[{i}]"), e.to_string()))?;
            if !names.insert(&m.name) {
                return Err(bad(format!("mappings[{i}].name"), "is used twice"));
            }
        }
        for (i, row) in self.scope_claims.iter().enumerate() {
            for (name, value) in &row.claims {
                toml_claim_value(value)
                    .map_err(|e| bad(format!("scope_claims[{i}].claims.{name}"), e))?;
            }
            validate_scope_claims(row, &self.token.participant_claim)
                .map_err(|e| bad(format!("scope_claims[{i}]"), e.to_string()))?;
            crate::store::check_claim_conflicts(row, &self.scope_claims)
                .map_err(|e| bad(format!("scope_claims[{i}]"), e.to_string()))?;
        }
        let tls_listen = self.server.tls.as_ref().and_then(|t| t.listen);
        self.management
            .validate(self.server.listen, tls_listen)
            .map_err(|(field, reason)| bad(field, reason))?;
        if let Some(k) = &self.management.kubernetes {
            k.reviewed_issuer(&self.validation_policy()?)
                .map_err(|(field, reason)| bad(field, reason))?;
            crate::tokenreview::check_files(&k.client_config(), None)
                .map_err(|e| bad("management.kubernetes", e.to_string()))?;
        }
        self.rate_limit
            .validate()
            .map_err(|(field, reason)| bad(field, reason))?;
        self.vault.validate().map_err(|e| ConfigError::Invalid {
            field: e.field,
            reason: e.reason,
        })?;
        self.keys
            .validate(&self.vault)
            .map_err(|(field, reason)| bad(field, reason))?;
        // DESIGN.md: a key version may sign once every verifier can hold it: their JWKS
        // refresh, plus how late this service sees the version, plus how long a JWKS
        // may be cached.
        let v = &self.vault;
        if !v.verifier_refresh_interval.is_zero() {
            let need = v
                .verifier_refresh_interval
                .saturating_add(v.key_refresh_interval)
                .saturating_add(std::time::Duration::from_secs(
                    self.server.jwks_max_age_secs,
                ));
            if v.publish_lead < need {
                return Err(bad(
                    "vault.publish_lead",
                    format!(
                        "must be at least verifier_refresh_interval + key_refresh_interval + server.jwks_max_age_secs ({}s)",
                        need.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The core validation policy of the configured issuers, checked by core
    /// ([`ValidationPolicy::check`]: distinct issuers, non-empty lists, ID patterns
    /// inside the trust domains).
    pub fn validation_policy(&self) -> Result<ValidationPolicy, ConfigError> {
        let policy = ValidationPolicy {
            issuers: self.issuers.iter().map(|c| c.policy.clone()).collect(),
            max_token_bytes: self.validation.max_token_bytes,
        };
        policy.check().map_err(policy_error)?;
        Ok(policy)
    }
}

/// Core's policy errors name the field as `issuers[N].key` (or `max_token_bytes`).
fn policy_error(e: PolicyError) -> ConfigError {
    let text = e.to_string();
    let (field, reason) = text.split_once(": ").unwrap_or(("issuers", text.as_str()));
    let field = if field == "max_token_bytes" {
        "validation.max_token_bytes".to_string()
    } else {
        field.to_string()
    };
    bad(field, reason)
}
