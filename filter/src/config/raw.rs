//! The JSON shape an operator writes: typed `serde` structs, unknown fields refused.

use meshpass_core::{SpiffeId, TrustDomain};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::types::{FailureMode, Mode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) noop_for_benchmarks: bool,
    #[serde(default)]
    pub(super) validate_only_for_benchmarks: bool,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) insecure_disable_binding: bool,
    #[serde(default)]
    pub(super) own_identity: Option<RawOwnIdentity>,
    /// Each entry: core's `IssuerPolicy` fields plus the key source (split apart in
    /// [`issuer`]).
    #[serde(default)]
    pub(super) issuers: Vec<Map<String, Value>>,
    #[serde(default = "default_token_header")]
    pub(super) token_header: String,
    #[serde(default = "default_max_token_bytes")]
    pub(super) max_token_bytes: usize,
    #[serde(default)]
    pub(super) bypass: Vec<RawBypass>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) default_rule: Option<RawTarget>,
    pub(super) exchange: Option<RawExchange>,
    #[serde(default)]
    pub(super) set_subject_header: bool,
    /// Deprecated: stripping every `x-meshpass-*` is the default now; ignored.
    #[serde(default, rename = "strip_all_x_meshpass_headers")]
    pub(super) _strip_all_x_meshpass_headers: Option<bool>,
    #[serde(default)]
    pub(super) insecure_keep_x_meshpass_headers: bool,
    #[serde(default)]
    pub(super) allow_unnormalised_paths: bool,
    #[serde(default)]
    pub(super) danger_trap_on_path: Option<String>,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default = "default_retry_after")]
    pub(super) retry_after_secs: u64,
    #[serde(default = "default_tick_ms")]
    pub(super) tick_ms: u64,
    #[serde(default)]
    pub(super) revocation: Option<RawRevocation>,
}

pub(super) fn default_token_header() -> String {
    "authorization".into()
}
pub(super) fn default_max_token_bytes() -> usize {
    meshpass_core::DEFAULT_MAX_TOKEN_BYTES
}
pub(super) fn default_retry_after() -> u64 {
    5
}
pub(super) fn default_tick_ms() -> u64 {
    1000
}
pub(super) fn default_exchange_path() -> String {
    "/token".into()
}
pub(super) fn default_timeout_ms() -> u64 {
    2000
}
pub(super) fn default_margin_secs() -> u64 {
    10
}
pub(super) fn default_refresh_percent() -> u64 {
    75
}
pub(super) fn default_slots() -> u32 {
    4096
}
pub(super) fn default_jwks_refresh_secs() -> u64 {
    300
}
pub(super) fn default_min_refetch_secs() -> u64 {
    30
}
pub(super) fn default_poll_interval_ms() -> u64 {
    5000
}
pub(super) fn default_revocation_path() -> String {
    "/revocations".into()
}

/// `revocation`: the feed of revoked subjects and tokens (docs/DESIGN.md "Revocation").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    /// Default: on whenever an exchange is configured.
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    /// Default: [`default_poll_interval_ms`], or `tick_ms` when that is longer.
    #[serde(default)]
    pub(super) poll_interval_ms: Option<u64>,
    #[serde(default = "default_revocation_path")]
    pub(super) path: String,
    /// Default: `exchange.cluster`.
    #[serde(default)]
    pub(super) cluster: Option<String>,
    /// Default: `exchange.authority`.
    #[serde(default)]
    pub(super) authority: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOwnIdentity {
    #[serde(default)]
    pub(super) spiffe_id: Option<SpiffeId>,
    #[serde(default)]
    pub(super) trust_domain: Option<TrustDomain>,
}

/// The key source of an issuer entry (the rest is core's `IssuerPolicy`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeySource {
    #[serde(default)]
    pub(super) jwks: Option<Value>,
    #[serde(default)]
    pub(super) jwks_cluster: Option<String>,
    #[serde(default)]
    pub(super) jwks_path: Option<String>,
    #[serde(default)]
    pub(super) jwks_authority: Option<String>,
    #[serde(default)]
    pub(super) jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    pub(super) jwks_min_refetch_secs: Option<u64>,
}

pub(super) const KEY_SOURCE_FIELDS: [&str; 6] = [
    "jwks",
    "jwks_cluster",
    "jwks_path",
    "jwks_authority",
    "jwks_refresh_secs",
    "jwks_min_refetch_secs",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBypass {
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) path_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) authority: Option<String>,
    #[serde(default)]
    pub(super) path_prefix: Option<String>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    #[serde(default)]
    pub(super) resource: Option<String>,
    #[serde(default)]
    pub(super) audience: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) failure_mode: FailureMode,
}

impl RawRule {
    pub(super) fn split(self) -> (RawTarget, Option<String>, Option<String>, Vec<String>) {
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
pub(super) struct RawTarget {
    #[serde(default)]
    pub(super) resource: Option<String>,
    #[serde(default)]
    pub(super) audience: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) failure_mode: FailureMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExchange {
    pub(super) cluster: String,
    #[serde(default = "default_exchange_path")]
    pub(super) path: String,
    #[serde(default)]
    pub(super) authority: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) actor_token_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    #[serde(default = "default_margin_secs")]
    pub(super) expiry_margin_secs: u64,
    #[serde(default = "default_refresh_percent")]
    pub(super) refresh_ahead_percent: u64,
    #[serde(default = "default_slots")]
    pub(super) slots: u32,
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
