//! The one validation pass: raw JSON shape → checked [`Config`], naming the field.

use std::collections::HashMap;

use meshpass_core::oauth::is_scope_token;
use meshpass_core::{IssuerPolicy, KeySet, TrustDomain, ValidationPolicy};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::{err, typed, ConfigError};
use super::raw::*;
use super::types::*;

impl Config {
    /// Parses and checks the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        // Strict: a member written twice is refused, not the last one kept.
        let value = super::strict::parse(bytes)?;
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
                || raw.revocation.is_some()
            {
                return Err(err(
                    "noop_for_benchmarks",
                    "does nothing (a benchmark aid): not with issuers, exchange, rules, default_rule or revocation",
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
                "never exchanges (a benchmark aid): not with exchange, rules or default_rule",
            ));
        }
        let mode = check_mode(&raw)?;
        let own_identity = own_identity(mode, raw.own_identity)?;
        let exchange = exchange(raw.exchange, mode, validate_only)?;
        let mut key_warnings = Vec::new();
        let (policy, keys, key_sources) =
            issuers(raw.issuers, raw.max_token_bytes, &mut key_warnings)?;
        own_identity_admitted(own_identity.as_ref(), &policy, &mut key_warnings)?;
        let token_header = raw.token_header.to_ascii_lowercase();
        if !valid_header_name(&token_header) {
            return Err(err("token_header", "is not a valid header name"));
        }
        // The rule header hygiene strips by (any case, `_` for `-`).
        if crate::header_map::is_reserved(token_header.as_bytes()) {
            return Err(err("token_header", "x-meshpass-* headers are reserved"));
        }
        if exchange.actor_token_header.as_deref() == Some(token_header.as_str()) {
            return Err(err(
                "exchange.actor_token_header",
                "must differ from token_header",
            ));
        }
        let policy_digest = policy_digest(mode, &own_identity, &policy, &key_sources, &exchange);
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
        super::shadow::check(&rules, &bypass)?;
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
        // A typo in units (5000 meant as ms) would tell clients to stay away for hours
        // and hold failed refreshes off as long.
        if raw.retry_after_secs > MAX_RETRY_AFTER_SECS {
            return Err(err(
                "retry_after_secs",
                "must be 0..=3600 (0 is raised to 1)",
            ));
        }
        if !(10..=60_000).contains(&raw.tick_ms) {
            return Err(err("tick_ms", "must be 10..=60000"));
        }
        let revocation = revocation(raw.revocation, &exchange, validate_only, raw.tick_ms)?;
        Ok(Config {
            key_warnings,
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
            revocation,
        })
    }

    fn noop() -> Config {
        Config {
            key_warnings: Vec::new(),
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
            revocation: None,
            needs_authority: false,
            needs_path: false,
            needs_method: false,
        }
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

/// An `:authority` the filter sends: a host[:port] (an Envoy cluster name where it
/// defaults to one); a space or control character would make every call fail.
fn check_authority(field: &str, a: String) -> Result<String, ConfigError> {
    if a.is_empty() || a.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(err(field, "must be a host[:port]"));
    }
    Ok(a)
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

/// CLIENT binding makes every subject equal to this proxy's identity: a fixed one no
/// issuer admits could never be served (refused); a discovery trust domain no issuer
/// lists fails whenever the identity comes from node metadata (warned: a local
/// certificate's URI SAN may still be admitted).
fn own_identity_admitted(
    own: Option<&OwnIdentity>,
    policy: &ValidationPolicy,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match own {
        Some(OwnIdentity::Fixed(id)) if !policy.issuers.iter().any(|i| i.admits(id).is_ok()) => {
            Err(err(
                "own_identity.spiffe_id",
                "no issuer admits it as a subject (trust_domains, id_patterns): no request could be served",
            ))
        }
        Some(OwnIdentity::Discover(td))
            if !policy
                .issuers
                .iter()
                .any(|i| i.trust_domains.iter().any(|t| t == td)) =>
        {
            warnings.push(format!(
                "meshpass: own_identity.trust_domain {:?} is in no issuer's trust_domains: never admitted",
                td.as_str()
            ));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The longest `exchange.timeout_ms`.
const MAX_EXCHANGE_TIMEOUT_MS: u64 = 60_000;
/// The longest `issuers[].jwks_refresh_secs` (a day).
const MAX_JWKS_REFRESH_SECS: u64 = 86_400;
/// The longest `retry_after_secs` (an hour).
const MAX_RETRY_AFTER_SECS: u64 = 3_600;

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
    // Bounded: deadlines add it to the clock (and a minute is already far past any
    // request a proxy would hold).
    if !(1..=MAX_EXCHANGE_TIMEOUT_MS).contains(&raw.timeout_ms) {
        return Err(err("exchange.timeout_ms", "must be 1..=60000"));
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
            // The filter writes (or strips) it: an actor token there is never read.
            if h.replace('_', "-") == crate::headers::SUBJECT_HEADER {
                return Err(err(
                    "exchange.actor_token_header",
                    "x-meshpass-subject is the filter's own header",
                ));
            }
            Some(h)
        }
    };
    Ok(Exchange {
        path: check_path("exchange.path", raw.path)?,
        authority: match raw.authority.unwrap_or_else(|| raw.cluster.clone()) {
            // The benchmark aid never calls out.
            a if validate_only && a.is_empty() => a,
            a => check_authority("exchange.authority", a)?,
        },
        timeout_ms: raw.timeout_ms,
        actor_token_header,
        cluster: raw.cluster,
    })
}

/// `revocation`: on by default whenever an exchange is configured (the feed is served
/// by the same service, through the same cluster and authority).
fn revocation(
    raw: Option<RawRevocation>,
    exchange: &Exchange,
    validate_only: bool,
    tick_ms: u64,
) -> Result<Option<Revocation>, ConfigError> {
    let raw = raw.unwrap_or(RawRevocation {
        enabled: None,
        poll_interval_ms: None,
        path: default_revocation_path(),
        cluster: None,
        authority: None,
    });
    if raw.enabled == Some(true) && validate_only {
        return Err(err(
            "revocation.enabled",
            "needs an exchange (validate_only_for_benchmarks has none)",
        ));
    }
    // Off, what is written is still checked: a section is not accepted broken only to
    // fail the day it is switched on.
    let off = raw.enabled == Some(false) || (raw.enabled.is_none() && validate_only);
    // Unwritten, it follows a tick longer than its default (polls start on the tick).
    let poll_interval_ms = raw
        .poll_interval_ms
        .unwrap_or_else(|| default_poll_interval_ms().max(tick_ms));
    if !(100..=3_600_000).contains(&poll_interval_ms) {
        return Err(err("revocation.poll_interval_ms", "must be 100..=3600000"));
    }
    if poll_interval_ms < tick_ms {
        return Err(err(
            "revocation.poll_interval_ms",
            "must be at least tick_ms (the feed is polled on the tick)",
        ));
    }
    let path = check_path("revocation.path", raw.path)?;
    if path.contains('?') || path.contains('#') {
        return Err(err(
            "revocation.path",
            "must not hold a query (?since= is added)",
        ));
    }
    if off {
        if raw.cluster.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(err("revocation.cluster", "must not be empty"));
        }
        if let Some(a) = raw.authority {
            check_authority("revocation.authority", a)?;
        }
        return Ok(None);
    }
    let cluster = raw.cluster.unwrap_or_else(|| exchange.cluster.clone());
    if cluster.trim().is_empty() {
        return Err(err("revocation.cluster", "must not be empty"));
    }
    let authority = check_authority(
        "revocation.authority",
        raw.authority.unwrap_or_else(|| exchange.authority.clone()),
    )?;
    // The feed is named by the service (authority and path), not by the Envoy cluster
    // routing to it: a reload moving the feed to a copy of the cluster keeps the set
    // its workers load at start, instead of starting them with none.
    let id = hex(&Sha256::digest(format!("{authority}\n{path}").as_bytes()))[..16].to_string();
    Ok(Some(Revocation {
        cluster,
        authority,
        poll_interval_ms,
        path,
        set_key: format!("meshpass/rv/{id}"),
        lease_key: format!("meshpass/rv-lease/{id}"),
    }))
}

/// Every issuer: core's `IssuerPolicy` (core's deserialisation, then core's
/// `ValidationPolicy::check`), and its keys.
/// Core's policy, each issuer's keys, and each issuer's key source (for the cache keys).
type Issuers = (ValidationPolicy, HashMap<String, IssuerKeys>, Vec<String>);

fn issuers(
    raw: Vec<Map<String, Value>>,
    max_token_bytes: usize,
    warnings: &mut Vec<String>,
) -> Result<Issuers, ConfigError> {
    if max_token_bytes == 0 || max_token_bytes > 64 * 1024 {
        return Err(err("max_token_bytes", "must be between 1 and 65536"));
    }
    let mut policies = Vec::new();
    let mut keys = HashMap::new();
    let mut sources = Vec::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let (policy, k, source) = issuer(i, entry, warnings)?;
        keys.insert(policy.issuer.clone(), k);
        sources.push(format!("{}\n{source}", policy.issuer));
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
    Ok((policy, keys, sources))
}

/// One issuer entry: the key source is the filter's, the rest core's `IssuerPolicy`.
/// Older spellings stay accepted: `spiffe_id_patterns` (core: `id_patterns`) and
/// `subject_format: kubernetes_sa` (core: `kubernetes_service_account`).
fn issuer(
    i: usize,
    mut entry: Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(IssuerPolicy, IssuerKeys, String), ConfigError> {
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
    let (keys, source_id) = key_source(&f, &policy.issuer, source, warnings)?;
    Ok((policy, keys, source_id))
}

fn key_source(
    f: &dyn Fn(&str) -> String,
    issuer: &str,
    s: RawKeySource,
    warnings: &mut Vec<String>,
) -> Result<(IssuerKeys, String), ConfigError> {
    match (s.jwks, s.jwks_cluster) {
        (Some(doc), None) => {
            if s.jwks_path.is_some() {
                return Err(err(f("jwks_path"), "only valid with jwks_cluster"));
            }
            if s.jwks_authority.is_some() {
                return Err(err(f("jwks_authority"), "only valid with jwks_cluster"));
            }
            // Inline keys are never fetched.
            if s.jwks_refresh_secs.is_some() {
                return Err(err(f("jwks_refresh_secs"), "only valid with jwks_cluster"));
            }
            if s.jwks_min_refetch_secs.is_some() {
                return Err(err(
                    f("jwks_min_refetch_secs"),
                    "only valid with jwks_cluster",
                ));
            }
            let bytes = match &doc {
                Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            let (set, rejected) =
                KeySet::parse(&bytes).map_err(|e| err(f("jwks"), e.to_string()))?;
            // Dropped keys are no error while one usable key is left, but say why (as
            // the fetched-JWKS path and the service do).
            for r in rejected {
                warnings.push(format!(
                    "meshpass: {}: key {} (kid {}) dropped: {}",
                    f("jwks"),
                    r.index,
                    r.kid.as_deref().unwrap_or("none"),
                    r.reason
                ));
            }
            if set.is_empty() {
                return Err(err(f("jwks"), "holds no usable signing key"));
            }
            // The keys themselves (as written): a reload that drops a key must not
            // serve tokens cached while it was trusted (see `policy_digest`).
            Ok((
                IssuerKeys::Inline(set),
                format!("inline:{}", hex(&Sha256::digest(&bytes))),
            ))
        }
        (None, Some(cluster)) => {
            if cluster.trim().is_empty() {
                return Err(err(f("jwks_cluster"), "must not be empty"));
            }
            let path = s
                .jwks_path
                .ok_or_else(|| err(f("jwks_path"), "is required with jwks_cluster"))?;
            let path = check_path(&f("jwks_path"), path)?;
            let authority = check_authority(
                &f("jwks_authority"),
                s.jwks_authority.unwrap_or_else(|| cluster.clone()),
            )?;
            let refresh_secs = s
                .jwks_refresh_secs
                .unwrap_or_else(default_jwks_refresh_secs);
            let min_refetch_secs = s
                .jwks_min_refetch_secs
                .unwrap_or_else(default_min_refetch_secs);
            if !(1..=MAX_JWKS_REFRESH_SECS).contains(&refresh_secs) {
                return Err(err(f("jwks_refresh_secs"), "must be 1..=86400"));
            }
            if min_refetch_secs > MAX_JWKS_REFRESH_SECS {
                return Err(err(
                    f("jwks_min_refetch_secs"),
                    "must be 1..=86400 (longer would leave a rotated key unknown for days)",
                ));
            }
            if min_refetch_secs == 0 {
                return Err(err(
                    f("jwks_min_refetch_secs"),
                    "must be at least 1 (0 would fetch the JWKS for every unknown kid)",
                ));
            }
            let id = hex(&Sha256::digest(
                format!("{issuer}\n{cluster}\n{authority}\n{path}").as_bytes(),
            ))[..16]
                .to_string();
            let source_id = format!("remote:{id}");
            let remote = IssuerKeys::Remote(RemoteJwks {
                shared_key: format!("meshpass/jwks/{id}"),
                lease_key: format!("meshpass/jwks-lease/{id}"),
                cluster,
                path,
                authority,
                refresh_ms: refresh_secs.saturating_mul(1000),
                min_refetch_ms: min_refetch_secs.saturating_mul(1000),
            });
            Ok((remote, source_id))
        }
        (Some(_), Some(_)) => Err(err(f("jwks"), "give either jwks or jwks_cluster, not both")),
        (None, None) => Err(err(
            f("jwks"),
            "keys are required: jwks or jwks_cluster + jwks_path",
        )),
    }
}

/// A path a request is matched against: requests are compared without their query, so
/// a `?` (or a fragment, which never reaches a proxy) could never match.
fn check_match_path(field: &str, p: String) -> Result<String, ConfigError> {
    let p = check_path(field, p)?;
    if p.contains(['?', '#']) {
        return Err(err(
            field,
            "requests are matched on the path without its query: no ? or #",
        ));
    }
    if crate::path::normalise(&p) != p.as_str() {
        return Err(err(
            field,
            "is not in normal form: no request path could match it",
        ));
    }
    Ok(p)
}

fn bypass(i: usize, b: RawBypass) -> Result<Bypass, ConfigError> {
    match (b.path, b.path_prefix) {
        (Some(p), None) => Ok(Bypass::Exact(check_match_path(
            &format!("bypass[{i}].path"),
            p,
        )?)),
        (None, Some(p)) => Ok(Bypass::Prefix(check_match_path(
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
        .map(|p| check_match_path(&format!("{f}.path_prefix"), p))
        .transpose()?;
    // One trailing root dot dropped, as a request's is (`Config::select`): kept, the
    // rule would never match.
    let authority = authority.map(|a| {
        let a = a.to_ascii_lowercase();
        a.strip_suffix('.').map_or(a.clone(), str::to_string)
    });
    if authority.as_deref() == Some("") {
        return Err(err(format!("{f}.authority"), "must not be empty"));
    }
    // A host, or `*.suffix` (what `Config::select` matches): `*example.com` would
    // select the rule for `evilexample.com`, and `api.*.test` would never match.
    if let Some(a) = authority.as_deref().filter(|a| a.contains('*')) {
        let rest = a.strip_prefix("*.").unwrap_or("");
        if rest.is_empty() || rest.contains('*') {
            return Err(err(
                format!("{f}.authority"),
                "a host, or *.suffix (one leading wildcard label)",
            ));
        }
    }
    // Requests are matched on the host, their port dropped (`Config::select`): a rule
    // naming a port would never match.
    if authority
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(
            format!("{f}.authority"),
            "a host without a port: requests are matched on the host, whatever the port",
        ));
    }
    if let Some(a) = authority.as_deref() {
        let host = a.strip_prefix("*.").unwrap_or(a);
        let ipv6 = host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host
                .bytes()
                .all(|b| b"[]:.".contains(&b) || b.is_ascii_hexdigit());
        let name = host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        });
        if !(ipv6 || name) {
            return Err(err(
                format!("{f}.authority"),
                "a host name, *.suffix or a bracketed IPv6 address (no scheme, path or port)",
            ));
        }
    }
    // RFC 9110 tokens: `"GET, POST"` or `"GET "` would never equal a request's method.
    for (j, m) in methods.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(err(
                format!("{f}.methods[{j}]"),
                "an HTTP method token (e.g. GET), one per list item",
            ));
        }
    }
    Ok(Rule {
        target: target(&f, t, policy_digest)?,
        authority,
        path_prefix,
        methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
    })
}

/// sha256 over everything besides the target that decides whether a cached token may
/// be served: binding mode, own identity, the issuer policy (core's serialisation),
/// each issuer's key source (an inline set's bytes, a fetched set's endpoint; in
/// configuration order, so reordering issuers only costs misses) and the exchange
/// endpoint. Part of every cache key, so entries cached under an older
/// (looser) policy, or under a key since removed, are never served under the new one.
fn policy_digest(
    mode: Mode,
    own: &Option<OwnIdentity>,
    policy: &ValidationPolicy,
    key_sources: &[String],
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
    ]
    .into_iter()
    .chain(key_sources.iter().map(String::as_str))
    {
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
    // Requests coalesce on this digest (one exchange, every waiter given its outcome):
    // they must share their outage behaviour, or a `deny` request waiting on an
    // `allow` one's exchange would be forwarded without a credential.
    h.update([u8::from(t.failure_mode == FailureMode::Allow)]);
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
