//! Plugin configuration: the JSON an operator writes, and the checked form the filter
//! runs on. [`Config::parse`] refuses anything doubtful and names the field.

use std::collections::HashMap;

use meshpass_core::{
    Audience, IssuerPolicy, KeySet, SpiffeId, SpiffeIdPattern, SubjectFormat, TrustDomain,
    ValidationPolicy,
};
use serde::Deserialize;
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

// ---------------------------------------------------------------- raw JSON shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    noop_for_benchmarks: bool,
    #[serde(default)]
    validate_only_for_benchmarks: bool,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    insecure_disable_binding: bool,
    #[serde(default)]
    own_identity: Option<RawOwnIdentity>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    token_header: Option<String>,
    #[serde(default)]
    max_token_bytes: Option<usize>,
    #[serde(default)]
    bypass: Vec<RawBypass>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default_rule: Option<RawTarget>,
    exchange: Option<RawExchange>,
    #[serde(default)]
    set_subject_header: bool,
    #[serde(default)]
    strip_all_x_meshpass_headers: bool,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    retry_after_secs: Option<u64>,
    #[serde(default)]
    tick_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwnIdentity {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    trust_domain: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    trust_domains: Vec<String>,
    #[serde(default)]
    spiffe_id_patterns: Vec<String>,
    #[serde(default)]
    subject_format: Option<String>,
    #[serde(default)]
    leeway_secs: Option<u64>,
    #[serde(default)]
    max_lifetime_secs: Option<u64>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_cluster: Option<String>,
    #[serde(default)]
    jwks_path: Option<String>,
    #[serde(default)]
    jwks_authority: Option<String>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    jwks_min_refetch_secs: Option<u64>,
}

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
    failure_mode: Option<String>,
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
    failure_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    cluster: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    actor_token_header: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    expiry_margin_secs: Option<u64>,
    #[serde(default)]
    refresh_ahead_percent: Option<u64>,
}

// ---------------------------------------------------------------- checked form

/// Binding mode (DESIGN.md "Subject tokens", rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Subject must equal the mTLS peer's URI SAN (inbound sidecar).
    Server,
    /// Subject must equal the proxy's own identity (outbound sidecar).
    Client,
    /// No binding: only with `insecure_disable_binding: true`.
    NoneInsecure,
}

/// What to do when the exchange service cannot answer (5xx, timeout, unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Answer 503 with `Retry-After` (default).
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
    /// sha256 over everything that makes two exchanges differ (target, exchange
    /// endpoint): the cache key prefix.
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
    /// Read the whole header map to drop every `x-meshpass-*` (slower).
    pub strip_all_x_meshpass_headers: bool,
    /// Cache entries expire this long before the participant token.
    pub expiry_margin_ms: u64,
    /// Refresh once this share of an entry's life has passed.
    pub refresh_ahead_percent: u64,
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
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            // serde's message names the unknown or mistyped field.
            err("configuration", e.to_string())
        })?;
        let exchange_raw = raw.exchange;
        let validate_only = raw.validate_only_for_benchmarks;
        if raw.noop_for_benchmarks {
            if validate_only {
                return Err(err(
                    "validate_only_for_benchmarks",
                    "cannot be combined with noop_for_benchmarks",
                ));
            }
            return Ok(Config::noop());
        }
        if validate_only {
            // A benchmark aid must never be one flag away from a production config that
            // silently stops exchanging: refuse everything that configures an exchange.
            let reason = "is a benchmark aid that never exchanges: it cannot be combined with exchange, rules or default_rule";
            if exchange_raw.is_some() || !raw.rules.is_empty() || raw.default_rule.is_some() {
                return Err(err("validate_only_for_benchmarks", reason));
            }
        }
        let mode = match raw.mode.as_deref().unwrap_or("SERVER") {
            "SERVER" => Mode::Server,
            "CLIENT" => Mode::Client,
            "NONE" => {
                if !raw.insecure_disable_binding {
                    return Err(err(
                        "mode",
                        "NONE disables SPIFFE binding and also needs insecure_disable_binding: true",
                    ));
                }
                Mode::NoneInsecure
            }
            other => {
                return Err(err(
                    "mode",
                    format!("{other:?} is not SERVER, CLIENT or NONE"),
                ))
            }
        };
        if raw.insecure_disable_binding && mode != Mode::NoneInsecure {
            return Err(err(
                "insecure_disable_binding",
                "only valid together with mode: NONE",
            ));
        }
        let own_identity = match (mode, raw.own_identity) {
            (Mode::Client, Some(o)) => Some(match (o.spiffe_id, o.trust_domain) {
                (Some(id), None) => OwnIdentity::Fixed(
                    SpiffeId::parse(&id)
                        .map_err(|e| err("own_identity.spiffe_id", e.to_string()))?,
                ),
                (None, Some(td)) => OwnIdentity::Discover(
                    TrustDomain::parse(&td)
                        .map_err(|e| err("own_identity.trust_domain", e.to_string()))?,
                ),
                _ => {
                    return Err(err(
                        "own_identity",
                        "give exactly one of spiffe_id or trust_domain",
                    ))
                }
            }),
            (Mode::Client, None) => Some(OwnIdentity::Discover(
                TrustDomain::parse("cluster.local")
                    .map_err(|e| err("own_identity.trust_domain", e.to_string()))?,
            )),
            (_, Some(_)) => return Err(err("own_identity", "only valid with mode: CLIENT")),
            (_, None) => None,
        };

        let exchange_raw = match exchange_raw {
            Some(e) => e,
            None if validate_only => RawExchange {
                cluster: String::new(),
                path: None,
                authority: None,
                timeout_ms: None,
                actor_token_header: None,
            },
            None => return Err(err("exchange", "is required")),
        };
        if exchange_raw.cluster.trim().is_empty() && !validate_only {
            return Err(err("exchange.cluster", "must not be empty"));
        }
        let exchange = Exchange {
            path: check_path(
                "exchange.path",
                exchange_raw.path.unwrap_or_else(|| "/token".into()),
            )?,
            authority: exchange_raw
                .authority
                .unwrap_or_else(|| exchange_raw.cluster.clone()),
            timeout_ms: match exchange_raw.timeout_ms.unwrap_or(2000) {
                0 => return Err(err("exchange.timeout_ms", "must be positive")),
                t => t,
            },
            actor_token_header: match exchange_raw.actor_token_header {
                None => None,
                Some(h) => {
                    let h = h.to_ascii_lowercase();
                    if mode != Mode::Client {
                        return Err(err(
                            "exchange.actor_token_header",
                            "only valid with mode: CLIENT",
                        ));
                    }
                    if !valid_header_name(&h) || h == "authorization" {
                        return Err(err(
                            "exchange.actor_token_header",
                            "is not a valid header name",
                        ));
                    }
                    Some(h)
                }
            },
            cluster: exchange_raw.cluster,
        };

        if raw.issuers.is_empty() {
            return Err(err("issuers", "at least one issuer is required"));
        }
        let mut issuers = Vec::new();
        let mut keys = HashMap::new();
        for (i, ri) in raw.issuers.into_iter().enumerate() {
            let f = |name: &str| format!("issuers[{i}].{name}");
            if ri.issuer.is_empty() {
                return Err(err(f("issuer"), "must not be empty"));
            }
            if keys.contains_key(&ri.issuer) {
                return Err(err(f("issuer"), "listed twice"));
            }
            if ri.audiences.is_empty() {
                return Err(err(f("audiences"), "at least one audience is required"));
            }
            let audiences = ri
                .audiences
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    Audience::parse(a)
                        .map_err(|e| err(f(&format!("audiences[{j}]")), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ri.trust_domains.is_empty() {
                return Err(err(
                    f("trust_domains"),
                    "at least one trust domain is required",
                ));
            }
            let trust_domains = ri
                .trust_domains
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    TrustDomain::parse(t)
                        .map_err(|e| err(f(&format!("trust_domains[{j}]")), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let id_patterns = ri
                .spiffe_id_patterns
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    SpiffeIdPattern::parse(p)
                        .map_err(|e| err(f(&format!("spiffe_id_patterns[{j}]")), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let subject_format = match ri.subject_format.as_deref().unwrap_or("jwt_svid") {
                "jwt_svid" => SubjectFormat::JwtSvid,
                // The exchange service and meshpass-core spell it out; `kubernetes_sa`
                // stays accepted as the short form.
                "kubernetes_service_account" | "kubernetes_sa" => {
                    SubjectFormat::KubernetesServiceAccount
                }
                other => {
                    return Err(err(
                        f("subject_format"),
                        format!("{other:?} is not jwt_svid or kubernetes_service_account"),
                    ))
                }
            };
            let issuer_keys = match (ri.jwks, ri.jwks_cluster) {
                (Some(doc), None) => {
                    if ri.jwks_path.is_some() || ri.jwks_authority.is_some() {
                        return Err(err(f("jwks_path"), "only valid with jwks_cluster"));
                    }
                    let bytes = match &doc {
                        serde_json::Value::String(s) => s.clone().into_bytes(),
                        other => other.to_string().into_bytes(),
                    };
                    let (set, _rejected) =
                        KeySet::parse(&bytes).map_err(|e| err(f("jwks"), e.to_string()))?;
                    if set.is_empty() {
                        return Err(err(f("jwks"), "holds no usable signing key"));
                    }
                    IssuerKeys::Inline(set)
                }
                (None, Some(cluster)) => {
                    if cluster.trim().is_empty() {
                        return Err(err(f("jwks_cluster"), "must not be empty"));
                    }
                    let path = check_path(
                        &f("jwks_path"),
                        ri.jwks_path
                            .ok_or_else(|| err(f("jwks_path"), "is required with jwks_cluster"))?,
                    )?;
                    let authority = ri.jwks_authority.unwrap_or_else(|| cluster.clone());
                    let refresh_secs = ri.jwks_refresh_secs.unwrap_or(300);
                    if refresh_secs == 0 {
                        return Err(err(f("jwks_refresh_secs"), "must be positive"));
                    }
                    let id = hex(&Sha256::digest(
                        format!("{}\n{cluster}\n{authority}\n{path}", ri.issuer).as_bytes(),
                    ))[..16]
                        .to_string();
                    IssuerKeys::Remote(RemoteJwks {
                        shared_key: format!("meshpass/jwks/{id}"),
                        lease_key: format!("meshpass/jwks-lease/{id}"),
                        cluster,
                        path,
                        authority,
                        refresh_ms: refresh_secs.saturating_mul(1000),
                        min_refetch_ms: ri.jwks_min_refetch_secs.unwrap_or(30).saturating_mul(1000),
                    })
                }
                (Some(_), Some(_)) => {
                    return Err(err(f("jwks"), "give either jwks or jwks_cluster, not both"))
                }
                (None, None) => {
                    return Err(err(
                        f("jwks"),
                        "keys are required: jwks or jwks_cluster + jwks_path",
                    ))
                }
            };
            keys.insert(ri.issuer.clone(), issuer_keys);
            issuers.push(IssuerPolicy {
                issuer: ri.issuer,
                audiences,
                trust_domains,
                id_patterns,
                subject_format,
                leeway_secs: ri.leeway_secs.unwrap_or(meshpass_core::DEFAULT_LEEWAY_SECS),
                max_lifetime_secs: ri.max_lifetime_secs,
            });
        }
        let max_token_bytes = raw
            .max_token_bytes
            .unwrap_or(meshpass_core::DEFAULT_MAX_TOKEN_BYTES);
        if max_token_bytes == 0 || max_token_bytes > 64 * 1024 {
            return Err(err("max_token_bytes", "must be between 1 and 65536"));
        }

        let token_header = raw
            .token_header
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase();
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
        let bearer = token_header == "authorization";

        let bypass = raw
            .bypass
            .into_iter()
            .enumerate()
            .map(|(i, b)| match (b.path, b.path_prefix) {
                (Some(p), None) => Ok(Bypass::Exact(check_path(&format!("bypass[{i}].path"), p)?)),
                (None, Some(p)) => Ok(Bypass::Prefix(check_path(
                    &format!("bypass[{i}].path_prefix"),
                    p,
                )?)),
                _ => Err(err(
                    format!("bypass[{i}]"),
                    "give exactly one of path or path_prefix",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let f = format!("rules[{i}]");
            let path_prefix = r
                .path_prefix
                .map(|p| check_path(&format!("{f}.path_prefix"), p))
                .transpose()?;
            let authority = r.authority.map(|a| a.to_ascii_lowercase());
            if authority.as_deref() == Some("") {
                return Err(err(format!("{f}.authority"), "must not be empty"));
            }
            let methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            rules.push(Rule {
                target: target(
                    &f,
                    RawTarget {
                        resource: r.resource,
                        audience: r.audience,
                        scopes: r.scopes,
                        failure_mode: r.failure_mode,
                    },
                    &exchange,
                )?,
                authority,
                path_prefix,
                methods,
            });
        }
        let default_target = raw
            .default_rule
            .map(|t| target("default_rule", t, &exchange))
            .transpose()?;
        if rules.is_empty() && default_target.is_none() && !validate_only {
            return Err(err("rules", "give at least one rule or a default_rule"));
        }
        let cache = raw.cache;
        let refresh_ahead_percent = cache.refresh_ahead_percent.unwrap_or(75);
        if !(1..=100).contains(&refresh_ahead_percent) {
            return Err(err("cache.refresh_ahead_percent", "must be 1..=100"));
        }
        let tick_ms = raw.tick_ms.unwrap_or(1000);
        if !(10..=60_000).contains(&tick_ms) {
            return Err(err("tick_ms", "must be 10..=60000"));
        }
        Ok(Config {
            noop: false,
            validate_only,
            mode,
            own_identity,
            policy: ValidationPolicy {
                issuers,
                max_token_bytes,
            },
            keys,
            token_header,
            bearer,
            bypass,
            needs_authority: rules.iter().any(|r| r.authority.is_some()),
            needs_path: rules.iter().any(|r| r.path_prefix.is_some()),
            needs_method: rules.iter().any(|r| !r.methods.is_empty()),
            rules,
            default_target,
            exchange,
            set_subject_header: raw.set_subject_header,
            strip_all_x_meshpass_headers: raw.strip_all_x_meshpass_headers,
            expiry_margin_ms: cache.expiry_margin_secs.unwrap_or(10).saturating_mul(1000),
            refresh_ahead_percent,
            retry_after_secs: raw.retry_after_secs.unwrap_or(5).max(1),
            tick_ms,
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
            strip_all_x_meshpass_headers: false,
            expiry_margin_ms: 0,
            refresh_ahead_percent: 100,
            retry_after_secs: 1,
            tick_ms: 60_000,
            needs_authority: false,
            needs_path: false,
            needs_method: false,
        }
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

fn target(field: &str, t: RawTarget, exchange: &Exchange) -> Result<Target, ConfigError> {
    let failure_mode = match t.failure_mode.as_deref().unwrap_or("deny") {
        "deny" => FailureMode::Deny,
        "allow" => FailureMode::Allow,
        other => {
            return Err(err(
                format!("{field}.failure_mode"),
                format!("{other:?} is not deny or allow"),
            ))
        }
    };
    for (j, s) in t.scopes.iter().enumerate() {
        if s.is_empty()
            || s.bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b > 0x7e)
        {
            return Err(err(
                format!("{field}.scopes[{j}]"),
                "is not a valid scope token",
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
    let mut h = Sha256::new();
    for part in [
        exchange.cluster.as_str(),
        exchange.authority.as_str(),
        exchange.path.as_str(),
        t.resource.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
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
        failure_mode,
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
