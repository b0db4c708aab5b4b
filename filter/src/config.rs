//! Plugin configuration: the JSON an operator writes (typed `serde` structs, unknown
//! fields refused) and the checked form the filter runs on. [`Config::parse`] is one
//! validation pass that names the offending field (`rules[1].audience: ...`). Issuer
//! policy is core's own [`IssuerPolicy`] (deserialised by core, checked by
//! [`ValidationPolicy::check`]); scope tokens are checked by core's one rule.

use std::collections::HashMap;

use meshpass_core::oauth::is_scope_token;
use meshpass_core::{BindingMode, IssuerPolicy, KeySet, SpiffeId, TrustDomain, ValidationPolicy};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why a configuration was refused: the JSON path of the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field, e.g. `issuers[0].trust_domains[1]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.reason)
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Deserialises `value` as `T`, naming the failing field as `prefix` + serde's path.
fn typed<T: DeserializeOwned>(prefix: &str, value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "configuration".to_string(),
            (p, ".") => p.to_string(),
            ("", p) => p.to_string(),
            (pre, p) => format!("{pre}.{p}"),
        };
        err(field, e.into_inner().to_string())
    })
}

// ---------------------------------------------------------------- raw JSON shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    noop_for_benchmarks: bool,
    #[serde(default)]
    validate_only_for_benchmarks: bool,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    insecure_disable_binding: bool,
    #[serde(default)]
    own_identity: Option<RawOwnIdentity>,
    /// Each entry: core's `IssuerPolicy` fields plus the key source (split apart in
    /// [`issuer`]).
    #[serde(default)]
    issuers: Vec<Map<String, Value>>,
    #[serde(default = "default_token_header")]
    token_header: String,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default)]
    bypass: Vec<RawBypass>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default_rule: Option<RawTarget>,
    exchange: Option<RawExchange>,
    #[serde(default)]
    set_subject_header: bool,
    /// Deprecated: stripping every `x-meshpass-*` is the default now; ignored.
    #[serde(default, rename = "strip_all_x_meshpass_headers")]
    _strip_all_x_meshpass_headers: Option<bool>,
    #[serde(default)]
    insecure_keep_x_meshpass_headers: bool,
    #[serde(default)]
    allow_unnormalised_paths: bool,
    #[serde(default)]
    danger_trap_on_path: Option<String>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default = "default_retry_after")]
    retry_after_secs: u64,
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
}

fn default_token_header() -> String {
    "authorization".into()
}
fn default_max_token_bytes() -> usize {
    meshpass_core::DEFAULT_MAX_TOKEN_BYTES
}
fn default_retry_after() -> u64 {
    5
}
fn default_tick_ms() -> u64 {
    1000
}
fn default_exchange_path() -> String {
    "/token".into()
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_margin_secs() -> u64 {
    10
}
fn default_refresh_percent() -> u64 {
    75
}
fn default_slots() -> u32 {
    4096
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_min_refetch_secs() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwnIdentity {
    #[serde(default)]
    spiffe_id: Option<SpiffeId>,
    #[serde(default)]
    trust_domain: Option<TrustDomain>,
}

/// The key source of an issuer entry (the rest is core's `IssuerPolicy`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySource {
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_cluster: Option<String>,
    #[serde(default)]
    jwks_path: Option<String>,
    #[serde(default)]
    jwks_authority: Option<String>,
    #[serde(default = "default_jwks_refresh_secs")]
    jwks_refresh_secs: u64,
    #[serde(default = "default_min_refetch_secs")]
    jwks_min_refetch_secs: u64,
}

const KEY_SOURCE_FIELDS: [&str; 6] = [
    "jwks",
    "jwks_cluster",
    "jwks_path",
    "jwks_authority",
    "jwks_refresh_secs",
    "jwks_min_refetch_secs",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBypass {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    audience: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    failure_mode: FailureMode,
}

impl RawRule {
    fn split(self) -> (RawTarget, Option<String>, Option<String>, Vec<String>) {
        let t = RawTarget {
            resource: self.resource,
            audience: self.audience,
            scopes: self.scopes,
            failure_mode: self.failure_mode,
        };
        (t, self.authority, self.path_prefix, self.methods)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    audience: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    failure_mode: FailureMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    cluster: String,
    #[serde(default = "default_exchange_path")]
    path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    actor_token_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_margin_secs")]
    expiry_margin_secs: u64,
    #[serde(default = "default_refresh_percent")]
    refresh_ahead_percent: u64,
    #[serde(default = "default_slots")]
    slots: u32,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            expiry_margin_secs: default_margin_secs(),
            refresh_ahead_percent: default_refresh_percent(),
            slots: default_slots(),
        }
    }
}

// ---------------------------------------------------------------- checked form

/// Binding mode (DESIGN.md "Subject tokens", rule 4), spelled as Istio's WasmPlugin
/// `match.mode` is; [`Mode::binding_mode`] gives core's [`BindingMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Mode {
    /// Subject must equal the mTLS peer's URI SAN (inbound sidecar).
    #[default]
    #[serde(rename = "SERVER")]
    Server,
    /// Subject must equal the proxy's own identity (outbound sidecar).
    #[serde(rename = "CLIENT")]
    Client,
    /// No binding: only with `insecure_disable_binding: true`.
    #[serde(rename = "NONE")]
    NoneInsecure,
}

impl Mode {
    /// Core's binding mode for this configuration mode.
    pub fn binding_mode(self) -> BindingMode {
        match self {
            Mode::Server => BindingMode::Server,
            Mode::Client => BindingMode::Client,
            Mode::NoneInsecure => BindingMode::None,
        }
    }
}

/// What to do when the exchange service cannot answer (5xx, timeout, unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Answer 503 with `Retry-After` (default).
    #[default]
    Deny,
    /// Forward the request without a participant token (subject token still removed).
    Allow,
}

/// Where remote keys of an issuer come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// Envoy cluster serving the JWKS.
    pub cluster: String,
    /// Request path.
    pub path: String,
    /// `:authority` of the request.
    pub authority: String,
    /// Regular refresh interval, ms.
    pub refresh_ms: u64,
    /// Minimum time between two unknown-`kid` refetches, ms.
    pub min_refetch_ms: u64,
    /// Shared-data key of the fetched document (unique per issuer + source).
    pub shared_key: String,
    /// Shared-data key of the fetch schedule / lease.
    pub lease_key: String,
}

/// Keys of one issuer.
#[derive(Debug, Clone)]
pub enum IssuerKeys {
    /// Inline JWKS, parsed at configuration time.
    Inline(KeySet),
    /// Fetched through Envoy and kept in shared data.
    Remote(RemoteJwks),
}

/// What one request is exchanged for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// RFC 8693 `resource`.
    pub resource: Option<String>,
    /// RFC 8693 `audience` values.
    pub audience: Vec<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Behaviour when the exchange service is unavailable.
    pub failure_mode: FailureMode,
    /// sha256 over everything that makes two cached answers differ (binding mode,
    /// issuer policy, exchange endpoint, then the target): the cache key prefix.
    pub digest: [u8; 32],
}

/// A rule: the first whose matchers all hold picks the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Exact `:authority` (port ignored) or `*.suffix`.
    pub authority: Option<String>,
    /// `:path` prefix.
    pub path_prefix: Option<String>,
    /// Allowed methods (empty: any).
    pub methods: Vec<String>,
    /// The target.
    pub target: Target,
}

/// A route that skips the filter (health checks...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bypass {
    /// Path equal to this (query ignored).
    Exact(String),
    /// Path starting with this.
    Prefix(String),
}

/// The exchange endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Envoy cluster (Istio: `outbound|PORT||HOST`).
    pub cluster: String,
    /// Path, default `/token`.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// Timeout, ms.
    pub timeout_ms: u64,
    /// CLIENT mode: request header carrying the proxy's own token, sent as
    /// `actor_token` (and removed from the request).
    pub actor_token_header: Option<String>,
}

/// How the proxy's own identity (CLIENT mode) is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnIdentity {
    /// Configured explicitly.
    Fixed(SpiffeId),
    /// `connection.uri_san_local_certificate`, else Istio node metadata
    /// (`NAMESPACE`, `SERVICE_ACCOUNT`) in this trust domain.
    Discover(TrustDomain),
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Benchmark aid: return Continue at once (measures the bare wasm cost).
    pub noop: bool,
    /// Benchmark aid (`validate_only_for_benchmarks`): validate the subject token on
    /// every request (the miss path's cost), never cache, never exchange; the token is
    /// removed from allowed requests. Only valid without exchange / rules / default_rule.
    pub validate_only: bool,
    /// Binding mode.
    pub mode: Mode,
    /// CLIENT mode identity source.
    pub own_identity: Option<OwnIdentity>,
    /// The core validation policy.
    pub policy: ValidationPolicy,
    /// Keys per issuer.
    pub keys: HashMap<String, IssuerKeys>,
    /// Lower-case header carrying the subject token.
    pub token_header: String,
    /// Whether the token is `Bearer`-prefixed (the `authorization` header).
    pub bearer: bool,
    /// Bypass routes.
    pub bypass: Vec<Bypass>,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Target when no rule matches (none: 403).
    pub default_target: Option<Target>,
    /// The exchange endpoint.
    pub exchange: Exchange,
    /// Set `x-meshpass-subject` on allowed requests.
    pub set_subject_header: bool,
    /// Read headers one by one and strip only `x-meshpass-subject` (client-sent
    /// `x-meshpass-*` otherwise reach the upstream).
    pub insecure_keep_x_meshpass_headers: bool,
    /// Match rules and bypass routes on the normal form of a path that is not normal
    /// (and forward it as sent) instead of refusing it with 400.
    pub allow_unnormalised_paths: bool,
    /// Test aid: a request for exactly this path aborts the VM (a trap), to test what
    /// Envoy does then. Warned about at start.
    pub danger_trap_on_path: Option<String>,
    /// Cache entries expire this long before the participant token.
    pub expiry_margin_ms: u64,
    /// Refresh once this share of an entry's life has passed.
    pub refresh_ahead_percent: u64,
    /// Shared-data slots for entries (and as many for exchange markers).
    pub cache_slots: u32,
    /// `Retry-After` when the service gave none.
    pub retry_after_secs: u64,
    /// Root tick period, ms.
    pub tick_ms: u64,
    /// Whether any rule reads `:authority` / `:path` / `:method`.
    pub needs_authority: bool,
    /// See `needs_authority`.
    pub needs_path: bool,
    /// See `needs_authority`.
    pub needs_method: bool,
}

impl Config {
    /// Parses and checks the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| err("configuration", e.to_string()))?;
        let raw: RawConfig = typed("", value)?;
        if raw.noop_for_benchmarks {
            if raw.validate_only_for_benchmarks {
                return Err(err(
                    "validate_only_for_benchmarks",
                    "cannot be combined with noop_for_benchmarks",
                ));
            }
            // Like validate_only: a benchmark aid that turns the filter off must not sit
            // one flag away from a production configuration.
            if raw.exchange.is_some()
                || !raw.rules.is_empty()
                || raw.default_rule.is_some()
                || !raw.issuers.is_empty()
            {
                return Err(err(
                    "noop_for_benchmarks",
                    "is a benchmark aid that does nothing: it cannot be combined with issuers, exchange, rules or default_rule",
                ));
            }
            return Ok(Config::noop());
        }
        let validate_only = raw.validate_only_for_benchmarks;
        if validate_only
            && (raw.exchange.is_some() || !raw.rules.is_empty() || raw.default_rule.is_some())
        {
            // A benchmark aid must never be one flag away from a production config that
            // silently stops exchanging: refuse everything that configures an exchange.
            return Err(err(
                "validate_only_for_benchmarks",
                "is a benchmark aid that never exchanges: it cannot be combined with exchange, rules or default_rule",
            ));
        }
        let mode = check_mode(&raw)?;
        let own_identity = own_identity(mode, raw.own_identity)?;
        let exchange = exchange(raw.exchange, mode, validate_only)?;
        let (policy, keys) = issuers(raw.issuers, raw.max_token_bytes)?;
        let token_header = raw.token_header.to_ascii_lowercase();
        if !valid_header_name(&token_header) {
            return Err(err("token_header", "is not a valid header name"));
        }
        if token_header.starts_with("x-meshpass-") {
            return Err(err("token_header", "x-meshpass-* headers are reserved"));
        }
        if exchange.actor_token_header.as_deref() == Some(token_header.as_str()) {
            return Err(err(
                "exchange.actor_token_header",
                "must differ from token_header",
            ));
        }
        let policy_digest = policy_digest(mode, &own_identity, &policy, &exchange);
        let bypass = raw
            .bypass
            .into_iter()
            .enumerate()
            .map(|(i, b)| bypass(i, b))
            .collect::<Result<Vec<_>, _>>()?;
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(i, r, &policy_digest))
            .collect::<Result<Vec<_>, _>>()?;
        let default_target = raw
            .default_rule
            .map(|t| target("default_rule", t, &policy_digest))
            .transpose()?;
        if rules.is_empty() && default_target.is_none() && !validate_only {
            return Err(err("rules", "give at least one rule or a default_rule"));
        }
        if !(1..=100).contains(&raw.cache.refresh_ahead_percent) {
            return Err(err("cache.refresh_ahead_percent", "must be 1..=100"));
        }
        if !(16..=1 << 20).contains(&raw.cache.slots) {
            return Err(err("cache.slots", "must be 16..=1048576"));
        }
        if !(10..=60_000).contains(&raw.tick_ms) {
            return Err(err("tick_ms", "must be 10..=60000"));
        }
        Ok(Config {
            noop: false,
            validate_only,
            mode,
            own_identity,
            policy,
            keys,
            bearer: token_header == "authorization",
            token_header,
            bypass,
            needs_authority: rules.iter().any(|r| r.authority.is_some()),
            needs_path: rules.iter().any(|r| r.path_prefix.is_some()),
            needs_method: rules.iter().any(|r| !r.methods.is_empty()),
            rules,
            default_target,
            exchange,
            set_subject_header: raw.set_subject_header,
            insecure_keep_x_meshpass_headers: raw.insecure_keep_x_meshpass_headers,
            allow_unnormalised_paths: raw.allow_unnormalised_paths,
            danger_trap_on_path: raw.danger_trap_on_path,
            expiry_margin_ms: raw.cache.expiry_margin_secs.saturating_mul(1000),
            refresh_ahead_percent: raw.cache.refresh_ahead_percent,
            cache_slots: raw.cache.slots,
            retry_after_secs: raw.retry_after_secs.max(1),
            tick_ms: raw.tick_ms,
        })
    }

    fn noop() -> Config {
        Config {
            noop: true,
            validate_only: false,
            mode: Mode::Server,
            own_identity: None,
            policy: ValidationPolicy {
                issuers: Vec::new(),
                max_token_bytes: 0,
            },
            keys: HashMap::new(),
            token_header: String::new(),
            bearer: false,
            bypass: Vec::new(),
            rules: Vec::new(),
            default_target: None,
            exchange: Exchange {
                cluster: String::new(),
                path: String::new(),
                authority: String::new(),
                timeout_ms: 1,
                actor_token_header: None,
            },
            set_subject_header: false,
            insecure_keep_x_meshpass_headers: false,
            allow_unnormalised_paths: false,
            danger_trap_on_path: None,
            expiry_margin_ms: 0,
            refresh_ahead_percent: 100,
            cache_slots: 1,
            retry_after_secs: 1,
            tick_ms: 60_000,
            needs_authority: false,
            needs_path: false,
            needs_method: false,
        }
    }

    /// Warnings for Envoy's log at start: every insecure or benchmark-only option set.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if self.mode == Mode::NoneInsecure {
            w.push("meshpass: insecure_disable_binding: subject tokens are not bound to the connection (a stolen token works from anywhere)");
        }
        if self.insecure_keep_x_meshpass_headers {
            w.push("meshpass: insecure_keep_x_meshpass_headers: client-sent x-meshpass-* headers other than x-meshpass-subject reach the upstream");
        }
        if self.danger_trap_on_path.is_some() {
            w.push("meshpass: danger_trap_on_path: a request for that path aborts the VM (test aid, never for production)");
        }
        if self.validate_only {
            w.push("meshpass: validate_only_for_benchmarks: every request is validated, none is exchanged (benchmark aid, not for production)");
        }
        w
    }

    /// The target for a request, `None` when no rule matches and there is no default.
    pub fn select(
        &self,
        authority: Option<&str>,
        path: Option<&str>,
        method: Option<&str>,
    ) -> Option<&Target> {
        let host = authority.map(|a| {
            a.rsplit_once(':').map_or(a, |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    a
                }
            })
        });
        for r in &self.rules {
            if let Some(want) = &r.authority {
                let Some(h) = host else { continue };
                let ok = match want.strip_prefix('*') {
                    Some(suffix) => {
                        h.len() > suffix.len() && h.to_ascii_lowercase().ends_with(suffix)
                    }
                    None => h.eq_ignore_ascii_case(want),
                };
                if !ok {
                    continue;
                }
            }
            if let Some(prefix) = &r.path_prefix {
                if !path.is_some_and(|p| p.starts_with(prefix.as_str())) {
                    continue;
                }
            }
            if !r.methods.is_empty() && !method.is_some_and(|m| r.methods.iter().any(|x| x == m)) {
                continue;
            }
            return Some(&r.target);
        }
        self.default_target.as_ref()
    }

    /// Whether `path` (query ignored) is a bypass route.
    pub fn bypassed(&self, path: &str) -> bool {
        let p = path.split_once('?').map_or(path, |(p, _)| p);
        self.bypass.iter().any(|b| match b {
            Bypass::Exact(e) => p == e,
            Bypass::Prefix(pre) => p.starts_with(pre.as_str()),
        })
    }
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_path(field: &str, p: String) -> Result<String, ConfigError> {
    if !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(err(
            field,
            "must start with / and have no spaces or control characters",
        ));
    }
    Ok(p)
}

fn check_mode(raw: &RawConfig) -> Result<Mode, ConfigError> {
    match (raw.mode, raw.insecure_disable_binding) {
        (Mode::NoneInsecure, false) => Err(err(
            "mode",
            "NONE disables SPIFFE binding and also needs insecure_disable_binding: true",
        )),
        (Mode::Server | Mode::Client, true) => Err(err(
            "insecure_disable_binding",
            "only valid together with mode: NONE",
        )),
        (m, _) => Ok(m),
    }
}

fn own_identity(
    mode: Mode,
    raw: Option<RawOwnIdentity>,
) -> Result<Option<OwnIdentity>, ConfigError> {
    match (mode, raw) {
        (Mode::Client, Some(o)) => match (o.spiffe_id, o.trust_domain) {
            (Some(id), None) => Ok(Some(OwnIdentity::Fixed(id))),
            (None, Some(td)) => Ok(Some(OwnIdentity::Discover(td))),
            _ => Err(err(
                "own_identity",
                "give exactly one of spiffe_id or trust_domain",
            )),
        },
        (Mode::Client, None) => TrustDomain::parse("cluster.local")
            .map(|td| Some(OwnIdentity::Discover(td)))
            .map_err(|e| err("own_identity.trust_domain", e.to_string())),
        (_, Some(_)) => Err(err("own_identity", "only valid with mode: CLIENT")),
        (_, None) => Ok(None),
    }
}

fn exchange(
    raw: Option<RawExchange>,
    mode: Mode,
    validate_only: bool,
) -> Result<Exchange, ConfigError> {
    let raw = match raw {
        Some(e) => e,
        None if validate_only => RawExchange {
            cluster: String::new(),
            path: default_exchange_path(),
            authority: None,
            timeout_ms: default_timeout_ms(),
            actor_token_header: None,
        },
        None => return Err(err("exchange", "is required")),
    };
    if raw.cluster.trim().is_empty() && !validate_only {
        return Err(err("exchange.cluster", "must not be empty"));
    }
    if raw.timeout_ms == 0 {
        return Err(err("exchange.timeout_ms", "must be positive"));
    }
    let actor_token_header = match raw.actor_token_header {
        None => None,
        Some(_) if mode != Mode::Client => {
            return Err(err(
                "exchange.actor_token_header",
                "only valid with mode: CLIENT",
            ))
        }
        Some(h) => {
            let h = h.to_ascii_lowercase();
            if !valid_header_name(&h) || h == "authorization" {
                return Err(err(
                    "exchange.actor_token_header",
                    "is not a valid header name",
                ));
            }
            Some(h)
        }
    };
    Ok(Exchange {
        path: check_path("exchange.path", raw.path)?,
        authority: raw.authority.unwrap_or_else(|| raw.cluster.clone()),
        timeout_ms: raw.timeout_ms,
        actor_token_header,
        cluster: raw.cluster,
    })
}

/// Every issuer: core's `IssuerPolicy` (core's deserialisation, then core's
/// `ValidationPolicy::check`), and its keys.
fn issuers(
    raw: Vec<Map<String, Value>>,
    max_token_bytes: usize,
) -> Result<(ValidationPolicy, HashMap<String, IssuerKeys>), ConfigError> {
    if max_token_bytes == 0 || max_token_bytes > 64 * 1024 {
        return Err(err("max_token_bytes", "must be between 1 and 65536"));
    }
    let mut policies = Vec::new();
    let mut keys = HashMap::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let (policy, k) = issuer(i, entry)?;
        keys.insert(policy.issuer.clone(), k);
        policies.push(policy);
    }
    let policy = ValidationPolicy {
        issuers: policies,
        max_token_bytes,
    };
    policy.check().map_err(|e| {
        // Core's message is `field: reason`.
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((field, reason)) => err(field, reason),
            None => err("issuers", msg),
        }
    })?;
    Ok((policy, keys))
}

/// One issuer entry: the key source is the filter's, the rest core's `IssuerPolicy`.
/// Older spellings stay accepted: `spiffe_id_patterns` (core: `id_patterns`) and
/// `subject_format: kubernetes_sa` (core: `kubernetes_service_account`).
fn issuer(
    i: usize,
    mut entry: Map<String, Value>,
) -> Result<(IssuerPolicy, IssuerKeys), ConfigError> {
    let f = |name: &str| format!("issuers[{i}].{name}");
    let mut source = Map::new();
    for name in KEY_SOURCE_FIELDS {
        if let Some(v) = entry.remove(name) {
            source.insert(name.to_string(), v);
        }
    }
    let patterns_name = if entry.contains_key("spiffe_id_patterns") {
        if entry.contains_key("id_patterns") {
            return Err(err(
                f("id_patterns"),
                "give id_patterns or spiffe_id_patterns, not both",
            ));
        }
        if let Some(v) = entry.remove("spiffe_id_patterns") {
            entry.insert("id_patterns".into(), v);
        }
        "spiffe_id_patterns"
    } else {
        "id_patterns"
    };
    if entry.get("subject_format").and_then(Value::as_str) == Some("kubernetes_sa") {
        entry.insert("subject_format".into(), "kubernetes_service_account".into());
    }
    let policy: IssuerPolicy =
        typed(&format!("issuers[{i}]"), Value::Object(entry)).map_err(|mut e| {
            if let Some(rest) = e.field.strip_prefix(&f("id_patterns")) {
                e.field = format!("{}{rest}", f(patterns_name));
            }
            e
        })?;
    let source: RawKeySource = typed(&format!("issuers[{i}]"), Value::Object(source))?;
    let keys = key_source(&f, &policy.issuer, source)?;
    Ok((policy, keys))
}

fn key_source(
    f: &dyn Fn(&str) -> String,
    issuer: &str,
    s: RawKeySource,
) -> Result<IssuerKeys, ConfigError> {
    match (s.jwks, s.jwks_cluster) {
        (Some(doc), None) => {
            if s.jwks_path.is_some() || s.jwks_authority.is_some() {
                return Err(err(f("jwks_path"), "only valid with jwks_cluster"));
            }
            let bytes = match &doc {
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            let (set, _rejected) =
                KeySet::parse(&bytes).map_err(|e| err(f("jwks"), e.to_string()))?;
            if set.is_empty() {
                return Err(err(f("jwks"), "holds no usable signing key"));
            }
            Ok(IssuerKeys::Inline(set))
        }
        (None, Some(cluster)) => {
            if cluster.trim().is_empty() {
                return Err(err(f("jwks_cluster"), "must not be empty"));
            }
            let path = s
                .jwks_path
                .ok_or_else(|| err(f("jwks_path"), "is required with jwks_cluster"))?;
            let path = check_path(&f("jwks_path"), path)?;
            let authority = s.jwks_authority.unwrap_or_else(|| cluster.clone());
            if s.jwks_refresh_secs == 0 {
                return Err(err(f("jwks_refresh_secs"), "must be positive"));
            }
            let id = hex(&Sha256::digest(
                format!("{issuer}\n{cluster}\n{authority}\n{path}").as_bytes(),
            ))[..16]
                .to_string();
            Ok(IssuerKeys::Remote(RemoteJwks {
                shared_key: format!("meshpass/jwks/{id}"),
                lease_key: format!("meshpass/jwks-lease/{id}"),
                cluster,
                path,
                authority,
                refresh_ms: s.jwks_refresh_secs.saturating_mul(1000),
                min_refetch_ms: s.jwks_min_refetch_secs.saturating_mul(1000),
            }))
        }
        (Some(_), Some(_)) => Err(err(f("jwks"), "give either jwks or jwks_cluster, not both")),
        (None, None) => Err(err(
            f("jwks"),
            "keys are required: jwks or jwks_cluster + jwks_path",
        )),
    }
}

fn bypass(i: usize, b: RawBypass) -> Result<Bypass, ConfigError> {
    match (b.path, b.path_prefix) {
        (Some(p), None) => Ok(Bypass::Exact(check_path(&format!("bypass[{i}].path"), p)?)),
        (None, Some(p)) => Ok(Bypass::Prefix(check_path(
            &format!("bypass[{i}].path_prefix"),
            p,
        )?)),
        _ => Err(err(
            format!("bypass[{i}]"),
            "give exactly one of path or path_prefix",
        )),
    }
}

fn rule(i: usize, r: RawRule, policy_digest: &[u8; 32]) -> Result<Rule, ConfigError> {
    let f = format!("rules[{i}]");
    let (t, authority, path_prefix, methods) = r.split();
    let path_prefix = path_prefix
        .map(|p| check_path(&format!("{f}.path_prefix"), p))
        .transpose()?;
    let authority = authority.map(|a| a.to_ascii_lowercase());
    if authority.as_deref() == Some("") {
        return Err(err(format!("{f}.authority"), "must not be empty"));
    }
    Ok(Rule {
        target: target(&f, t, policy_digest)?,
        authority,
        path_prefix,
        methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
    })
}

/// sha256 over everything besides the target that decides whether a cached token may
/// be served: binding mode, own identity, the issuer policy (core's serialisation) and
/// the exchange endpoint. Part of every cache key, so entries cached under an older
/// (looser) policy are never served under a tightened one.
fn policy_digest(
    mode: Mode,
    own: &Option<OwnIdentity>,
    policy: &ValidationPolicy,
    exchange: &Exchange,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let own = match own {
        Some(OwnIdentity::Fixed(id)) => format!("fixed:{}", id.as_str()),
        Some(OwnIdentity::Discover(td)) => format!("discover:{}", td.as_str()),
        None => String::new(),
    };
    let policy = serde_json::to_string(policy).unwrap_or_default();
    for part in [
        mode.binding_mode().as_str(),
        own.as_str(),
        policy.as_str(),
        exchange.cluster.as_str(),
        exchange.authority.as_str(),
        exchange.path.as_str(),
        exchange.actor_token_header.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

fn target(field: &str, t: RawTarget, policy_digest: &[u8; 32]) -> Result<Target, ConfigError> {
    for (j, s) in t.scopes.iter().enumerate() {
        if !is_scope_token(s) {
            return Err(err(
                format!("{field}.scopes[{j}]"),
                "is not a valid scope token (RFC 6749 §3.3)",
            ));
        }
    }
    for (j, a) in t.audience.iter().enumerate() {
        if a.is_empty() {
            return Err(err(format!("{field}.audience[{j}]"), "must not be empty"));
        }
    }
    if t.resource.as_deref() == Some("") {
        return Err(err(format!("{field}.resource"), "must not be empty"));
    }
    if t.resource.is_none() && t.audience.is_empty() {
        // An exchange without a target would mint whatever the service defaults to.
        return Err(err(field, "give a resource or an audience"));
    }
    let mut h = Sha256::new();
    h.update(policy_digest);
    let resource = t.resource.as_deref().unwrap_or("");
    h.update((resource.len() as u64).to_be_bytes());
    h.update(resource.as_bytes());
    for list in [&t.audience, &t.scopes] {
        h.update((list.len() as u64).to_be_bytes());
        for s in list {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
    Ok(Target {
        resource: t.resource,
        audience: t.audience,
        scopes: t.scopes,
        failure_mode: t.failure_mode,
        digest: h.finalize().into(),
    })
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}
