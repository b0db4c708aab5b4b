//! The checked configuration the filter runs on.

use std::collections::HashMap;

use meshpass_core::{BindingMode, KeySet, SpiffeId, TrustDomain, ValidationPolicy};
use serde::Deserialize;

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

/// The revocation feed (polled through the exchange cluster, with its authority,
/// unless configured otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Envoy cluster of the feed (default: the exchange cluster).
    pub cluster: String,
    /// `:authority` of the poll (default: the exchange authority).
    pub authority: String,
    /// How often one worker polls the feed, ms.
    pub poll_interval_ms: u64,
    /// The feed's path (`?since=V` is appended).
    pub path: String,
    /// Shared-data key of the set (`{"version", "entries"}`).
    pub set_key: String,
    /// Shared-data key of the poll lease, version and last success.
    pub lease_key: String,
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
    /// Keys dropped from inline JWKS documents, and why (logged at start).
    pub key_warnings: Vec<String>,
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
    /// The revocation feed, when enabled.
    pub revocation: Option<Revocation>,
    /// Whether any rule reads `:authority` / `:path` / `:method`.
    pub needs_authority: bool,
    /// See `needs_authority`.
    pub needs_path: bool,
    /// See `needs_authority`.
    pub needs_method: bool,
}

impl Config {
    /// Warnings for Envoy's log at start: every insecure or benchmark-only option set,
    /// and every key dropped from an inline JWKS.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self.key_warnings.clone();
        if self.mode == Mode::NoneInsecure {
            w.push("meshpass: insecure_disable_binding: tokens are not bound to the connection (a stolen one works anywhere)".into());
        }
        if self.insecure_keep_x_meshpass_headers {
            w.push("meshpass: insecure_keep_x_meshpass_headers: client x-meshpass-* headers (but x-meshpass-subject) reach the app".into());
        }
        if self.danger_trap_on_path.is_some() {
            w.push("meshpass: danger_trap_on_path: that path aborts the VM (test aid only)".into());
        }
        if self.noop {
            w.push("meshpass: noop_for_benchmarks: every request passes unauthenticated (benchmark aid only)".into());
        }
        if self.validate_only {
            w.push("meshpass: validate_only_for_benchmarks: requests are validated, never exchanged (benchmark aid only)".into());
        }
        if self.revocation.is_none() && !self.validate_only && !self.noop {
            w.push("meshpass: revocation.enabled: false: revocations are not enforced".into());
        }
        let open = " requests go on without a credential while the exchange is out (fail open)";
        for (i, r) in self.rules.iter().enumerate() {
            if r.target.failure_mode == FailureMode::Allow {
                w.push(format!("meshpass: rules[{i}].failure_mode: allow:{open}"));
            }
        }
        if self
            .default_target
            .as_ref()
            .is_some_and(|t| t.failure_mode == FailureMode::Allow)
        {
            w.push(format!("meshpass: default_rule.failure_mode: allow:{open}"));
        }
        if self.allow_unnormalised_paths {
            w.push("meshpass: allow_unnormalised_paths: forwarded paths are not normalised (pair with Envoy normalize_path, merge_slashes)".into());
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
            let h = a.rsplit_once(':').map_or(a, |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    a
                }
            });
            // `api.test.` names `api.test` (the DNS root label): one trailing dot goes.
            match h.strip_suffix('.') {
                Some(bare) if !bare.is_empty() && !bare.ends_with('.') => bare,
                _ => h,
            }
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
            // Case-insensitive: an HTTP/2 `post` is POST to apps that upper-case it.
            let listed = |m: &str| r.methods.iter().any(|x| x.eq_ignore_ascii_case(m));
            if !r.methods.is_empty() && !method.is_some_and(listed) {
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
