//! The request path: `on_http_request_headers` from header hygiene to a cache hit, a
//! wait on an exchange in flight, or a miss (validate, claim, exchange).

use std::rc::Rc;

use meshpass_core::{SpiffeId, ValidationError};

use crate::api::{Counter, Host, Level, Verdict};
use crate::cache::{self, Entry};
use crate::config::{Config, Mode, Target};
use crate::exchange::exchange_form;
use crate::headers::{credential_headers, Headers, SUBJECT_HEADER};
use crate::jwks::{FIRST_KEYS_WAIT_MS, PARK_MS};
use crate::path::normalise;
use crate::respond::send_error;
use crate::worker::{
    Bound, InFlight, MemoKey, Parked, PendingExchange, PendingRefresh, Waiter, WarnKind, Worker,
};

impl Worker {
    /// `on_http_request_headers` of stream `ctx`.
    pub fn on_request(&mut self, host: &mut dyn Host, ctx: u32) -> Verdict {
        if self.config.noop {
            return Verdict::Continue;
        }
        // A cheap Rc clone, so the selected target can be borrowed (not cloned) while
        // `self` is mutated.
        let cfg = Rc::clone(&self.config);
        let headers = Headers::read(host, !cfg.insecure_keep_x_meshpass_headers);
        if let Some(trap) = &cfg.danger_trap_on_path {
            if headers.get(host, ":path").as_deref() == Some(trap.as_str()) {
                host.log(
                    Level::Error,
                    "meshpass: danger_trap_on_path: aborting the VM",
                );
                std::process::abort();
            }
        }
        let path = match self.admit(host, &cfg, &headers) {
            Ok(path) => path,
            Err(v) => return v,
        };
        // Bytes up to the memo: a warm hit never checks the token's UTF-8.
        let raw = headers.get_bytes(host, &cfg.token_header);
        let token = match subject_token(&cfg, raw.as_deref()) {
            Ok(t) => t,
            Err((counter, desc, invalid)) => return self.deny_token(host, counter, &desc, invalid),
        };
        if cfg.validate_only {
            return match token_text(token) {
                Ok(token) => self.validate_only(host, token),
                Err((c, desc, invalid)) => self.deny_token(host, c, &desc, invalid),
            };
        }
        let Some(target) = route(host, &headers, &cfg, path.as_deref()) else {
            self.bump(Counter::DeniedNoRule);
            send_error(
                host,
                403,
                "access_denied",
                "no exchange rule matches this request",
                None,
            );
            return Verdict::Pause;
        };
        let actor = match self.actor_token(host, &headers) {
            Ok(a) => a,
            Err(v) => return v,
        };
        let identity = self.bound_identity(host);
        if identity.is_none() && self.config.mode == Mode::Client {
            let msg = "meshpass: own workload identity unavailable (no local certificate URI SAN, no node metadata NAMESPACE and SERVICE_ACCOUNT)";
            let what = "the proxy's own workload identity is unavailable";
            return self.proxy_fault(host, WarnKind::OwnIdentity, msg, what);
        }
        let bound = identity.as_ref().map(Bound::as_str);
        if let Some(v) = self.memo_hit(host, token, target, actor.as_deref(), bound) {
            return v;
        }
        let token = match token_text(token) {
            Ok(t) => t,
            Err((c, desc, invalid)) => return self.deny_token(host, c, &desc, invalid),
        };
        let identity = identity.map(Bound::into_rc);
        self.lookup(host, ctx, token, target, actor, identity)
    }

    /// Header hygiene and bypass routes. `Ok(path)` (read only when a bypass or rule
    /// needs it) goes on; `Err` is the verdict for a bypassed request.
    fn admit(
        &mut self,
        host: &mut dyn Host,
        cfg: &Config,
        headers: &Headers,
    ) -> Result<Option<String>, Verdict> {
        headers.strip_reserved(host, cfg);
        if cfg.bypass.is_empty() && !cfg.needs_path {
            return Ok(None);
        }
        let Some(raw) = headers.get(host, ":path") else {
            if headers.get_bytes(host, ":path").is_some() {
                // Not UTF-8: no rule could be matched against it faithfully, and
                // treating it as no path would give it the default rule.
                self.bump(Counter::DeniedBadPath);
                send_error(
                    host,
                    400,
                    "invalid_request",
                    "the request path is not valid UTF-8",
                    None,
                );
                return Err(Verdict::Pause);
            }
            return Ok(None);
        };
        let path = normalise(&raw);
        let as_sent = raw.split_once('?').map_or(raw.as_ref(), |(p, _)| p);
        // Matching on the normal form (`allow_unnormalised_paths`) holds only where
        // Envoy forwards that form: never for escaped slashes or `..;`, which it keeps.
        let unmatched = !cfg.allow_unnormalised_paths || crate::path::kept_by_envoy(as_sent);
        if path != as_sent && unmatched {
            self.bump(Counter::DeniedBadPath);
            send_error(
                host,
                400,
                "invalid_request",
                "the request path is not in normal form (repeated slashes, dot segments or percent-encoded characters)",
                None,
            );
            return Err(Verdict::Pause);
        }
        // Rules see the path as Tomcat and Spring serve it (parameters removed); a bypass
        // needs both forms to be bypassed: `/healthz;x` is no exact `/healthz` to an app
        // that keeps parameters.
        let (path, params) = if path.contains(';') {
            let stripped = crate::path::without_params(&path);
            let kept_bypassed = cfg.bypassed(&path);
            (std::borrow::Cow::Owned(stripped), !kept_bypassed)
        } else {
            (path, false)
        };
        if !cfg.bypass.is_empty() && !params && cfg.bypassed(&path) {
            if cfg.insecure_keep_x_meshpass_headers && cfg.set_subject_header {
                // Per-name mode left it for the overwrite that a bypass never does.
                host.remove_header(SUBJECT_HEADER);
            }
            headers.strip_credentials(host, cfg);
            self.bump(Counter::Bypassed);
            return Err(Verdict::Continue);
        }
        Ok(Some(path.into_owned()))
    }

    /// Warm hit from this worker's memo (checked against the coarse clock).
    fn memo_hit(
        &mut self,
        host: &mut dyn Host,
        token: &[u8],
        target: &Target,
        actor: Option<&str>,
        identity: Option<&str>,
    ) -> Option<Verdict> {
        if self.coarse_now_ms == 0 {
            self.coarse_now_ms = host.now_ms();
        }
        let e = self
            .memo
            .get(token, &target.digest, actor, self.coarse_now_ms)?;
        if self.config.mode != Mode::NoneInsecure && identity != Some(e.subject()) {
            let known = identity.is_some();
            return Some(self.deny_binding(host, known));
        }
        host.set_header("authorization", e.authorization());
        if !self.config.bearer {
            host.remove_header(&self.config.token_header);
        }
        if self.config.set_subject_header {
            host.set_header(SUBJECT_HEADER, e.subject());
        }
        self.bump(Counter::CacheHit);
        self.bump(Counter::Allowed);
        Some(Verdict::Continue)
    }

    /// Shared-data hit (with refresh ahead), else a wait on an exchange in flight here
    /// or in another worker, else a miss.
    fn lookup(
        &mut self,
        host: &mut dyn Host,
        ctx: u32,
        token: &str,
        target: &Target,
        actor: Option<String>,
        identity: Option<Rc<str>>,
    ) -> Verdict {
        let key = cache::key(self.key_epoch, &target.digest, token, actor.as_deref());
        let now = host.now_ms();
        self.coarse_now_ms = now;
        let slot = cache::entry_key(&key, self.config.cache_slots);
        if let Some((bytes, cas)) = host.shared_get(&slot) {
            if let Some(e) = Entry::decode_for(&bytes, &key).filter(|e| e.expires_ms > now) {
                if self.config.mode != Mode::NoneInsecure && identity.as_deref() != Some(e.subject)
                {
                    return self.deny_binding(host, identity.is_some());
                }
                // Checked before the entry is memoised: the memo never holds a revoked one.
                if let Some(reason) = self.revoked_reason(e.subject, e.token) {
                    let _ = host.shared_set(&slot, None, Some(cas));
                    return self.deny_revoked(host, &reason);
                }
                self.bump(Counter::CacheHit);
                // Memo hits read a clock up to one of *this* worker's ticks old: the
                // writer capped the entry with its own `tick_ms`, which a reload may
                // have raised since.
                let memo_until = e
                    .refresh_ms
                    .min(e.expires_ms.saturating_sub(self.config.tick_ms));
                if now < memo_until {
                    let (digest, a) = (&target.digest, actor.as_deref());
                    self.memo
                        .insert(token, digest, a, memo_until, now, e.subject, e.token);
                } else if now >= e.refresh_ms
                    // Ended by the subject token: no refresh could extend it.
                    && e.subject_exp.saturating_mul(1000)
                        > e.expires_ms.saturating_add(self.config.expiry_margin_ms)
                    && self
                        .refresh_state(&key)
                        .is_none_or(|r| now >= r.not_before_ms)
                {
                    let failures = self.refresh_state(&key).map_or(0, |r| r.failures);
                    self.set_refresh(&key, u64::MAX, failures);
                    self.refreshes.push(PendingRefresh {
                        key: key.clone(),
                        token: token.to_string(),
                        target: target.clone(),
                        actor: actor.clone(),
                        subject: e.subject.to_string(),
                        subject_exp: e.subject_exp,
                    });
                }
                self.allow(host, e.token, e.subject);
                return Verdict::Continue;
            }
        }
        self.bump(Counter::CacheMiss);
        if let Some(f) = self.inflight.get_mut(&key) {
            f.waiters.push(Waiter { ctx, identity });
            self.bump(Counter::Coalesced);
            return Verdict::Pause;
        }
        if self.remote.contains_key(&key) || self.other_in_flight(host, &key, now).is_some() {
            self.wait_remote(key, Waiter { ctx, identity }, target.failure_mode, now);
            return Verdict::Pause;
        }
        self.miss(host, ctx, token, target, actor, key, identity, now, true)
    }

    /// `validate_only_for_benchmarks`: the miss path's validation (keys, signature,
    /// claims, binding) on every request; no cache, no exchange, the token is removed.
    pub(crate) fn validate_only(&mut self, host: &mut dyn Host, token: &str) -> Verdict {
        let identity = self.identity(host);
        self.load_remote_keys(host);
        let bound = identity.as_deref().and_then(|s| SpiffeId::parse(s).ok());
        // The one identity this mode binds to: the peer (SERVER) or our own (CLIENT).
        let binding = self
            .config
            .mode
            .binding_mode()
            .binding(bound.as_ref(), bound.as_ref());
        let now = host.now_ms();
        match self
            .config
            .policy
            .validate(token, now / 1000, &self.keysets, &binding)
        {
            Ok(_) => {
                // No client credential reaches the app (a custom token header leaves
                // `authorization` beside it), nor a client's own subject header, which
                // per-name hygiene leaves for the filter to overwrite.
                for name in credential_headers(&self.config) {
                    host.remove_header(name);
                }
                if self.config.set_subject_header {
                    host.remove_header(SUBJECT_HEADER);
                }
                self.bump(Counter::Allowed);
                Verdict::Continue
            }
            Err(e) => self.deny_validation(host, e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn miss(
        &mut self,
        host: &mut dyn Host,
        ctx: u32,
        token: &str,
        target: &Target,
        actor: Option<String>,
        key: String,
        identity: Option<Rc<str>>,
        now: u64,
        may_park: bool,
    ) -> Verdict {
        self.load_remote_keys(host);
        let bound = identity.as_deref().and_then(|s| SpiffeId::parse(s).ok());
        // The one identity this mode binds to: the peer (SERVER) or our own (CLIENT).
        let binding = self
            .config
            .mode
            .binding_mode()
            .binding(bound.as_ref(), bound.as_ref());
        let verified = match self
            .config
            .policy
            .validate(token, now / 1000, &self.keysets, &binding)
        {
            Ok(v) => v,
            Err(ValidationError::UnknownKeyId { issuer, kid })
                if may_park && self.request_refetch(host, &issuer, now, true) =>
            {
                // Park until the refetched keys arrive (or PARK_MS passes).
                self.parked.push(Parked {
                    ctx,
                    token: token.to_string(),
                    target: target.clone(),
                    actor,
                    key,
                    identity,
                    issuer,
                    kid: Some(kid),
                    parked_ms: now,
                    deadline_ms: now + PARK_MS,
                    awaiting_first_keys: false,
                });
                return Verdict::Pause;
            }
            Err(ValidationError::NoKeys { issuer }) if may_park && self.has_remote_keys() => {
                // Started before its issuer's first key set arrived: wait for it (bounded),
                // and have it fetched now, not when a start-time outage's backoff (up to
                // `jwks_refresh_secs`) comes round: the endpoint may be back.
                self.request_refetch(host, &issuer, now, false);
                self.parked.push(Parked {
                    ctx,
                    token: token.to_string(),
                    target: target.clone(),
                    actor,
                    key,
                    identity,
                    issuer,
                    kid: None,
                    parked_ms: now,
                    deadline_ms: now + FIRST_KEYS_WAIT_MS,
                    awaiting_first_keys: true,
                });
                return Verdict::Pause;
            }
            Err(e) => return self.deny_validation(host, e),
        };
        // A revoked subject gets no exchange (the service would refuse it anyway).
        if let Some(reason) = self.revoked_subject(verified.spiffe_id.as_str()) {
            return self.deny_revoked(host, &reason);
        }
        if !self.claim(host, &key, now) {
            self.wait_remote(key, Waiter { ctx, identity }, target.failure_mode, now);
            return Verdict::Pause;
        }
        let traceparent = host.header("traceparent").filter(|t| is_traceparent(t));
        let memo = MemoKey {
            epoch: self.key_epoch,
            token: token.to_string(),
            digest: target.digest,
            actor: actor.clone(),
        };
        let subject = verified.spiffe_id.as_str().to_string();
        self.inflight.insert(
            key.clone(),
            InFlight {
                waiters: vec![Waiter { ctx, identity }],
                subject: subject.clone(),
                deadline_ms: now + self.inflight_span_ms(),
                failure_mode: target.failure_mode,
            },
        );
        self.start_exchange(
            host,
            PendingExchange {
                key,
                body: exchange_form(token, target, actor),
                traceparent,
                subject,
                subject_exp: verified.expires_at,
                failure_mode: target.failure_mode,
                memo,
            },
            now,
        );
        Verdict::Pause
    }

    /// CLIENT mode with `exchange.actor_token_header`: the proxy's actor token, taken
    /// from (and removed from) the request; its absence is a proxy-side fault (503).
    pub(crate) fn actor_token(
        &mut self,
        host: &mut dyn Host,
        headers: &Headers,
    ) -> Result<Option<String>, Verdict> {
        let Some(name) = self.config.exchange.actor_token_header.clone() else {
            return Ok(None);
        };
        let value = headers.get(host, &name).map(|v| v.into_owned());
        if value.is_some() {
            host.remove_header(&name);
        }
        match value.map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() && v.len() <= self.config.policy.max_token_bytes => {
                Ok(Some(v))
            }
            _ => {
                let msg = format!("meshpass: actor token header {name:?} missing or oversize");
                let what = "the proxy's actor token is unavailable";
                Err(self.proxy_fault(host, WarnKind::ActorToken, &msg, what))
            }
        }
    }

    /// A fault of this proxy, not of the request (its own identity or actor token
    /// missing): `503` with `Retry-After`, and a warning at most once a minute.
    fn proxy_fault(
        &mut self,
        host: &mut dyn Host,
        kind: WarnKind,
        msg: &str,
        what: &str,
    ) -> Verdict {
        let now = host.now_ms();
        self.warn_limited(host, kind, now, msg);
        self.bump(Counter::DeniedUnavailable);
        let ra = self.config.retry_after_secs.to_string();
        send_error(host, 503, "temporarily_unavailable", what, Some(&ra));
        Verdict::Pause
    }
}

/// W3C trace context `traceparent` (version 00 layout: `vv-<32 hex>-<16 hex>-<2 hex>`,
/// lower-case hex, trace and parent ids not all zero, version not `ff`): anything else
/// a client sends is not forwarded to the exchange service.
pub fn is_traceparent(v: &str) -> bool {
    let b = v.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[..2])
        && &b[..2] != b"ff"
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && hex(&b[53..])
}

/// The subject token of the request, or why it is refused (counter, description,
/// whether it is an `invalid_token` rather than a missing one).
fn subject_token<'a>(
    cfg: &Config,
    raw: Option<&'a [u8]>,
) -> Result<&'a [u8], (Counter, String, bool)> {
    let no_token = || {
        (
            Counter::DeniedNoToken,
            "no subject token".to_string(),
            false,
        )
    };
    let raw = raw.ok_or_else(no_token)?;
    let token = if cfg.bearer {
        // `Bearer` alone (Envoy trims trailing spaces) holds no token; another scheme
        // (Basic, DPoP) is no bearer token at all: both get the bare challenge, without
        // an error code (RFC 6750 §3.1), not "invalid token".
        let (scheme, rest) = raw.split_at(raw.iter().position(|&b| b == b' ').unwrap_or(raw.len()));
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(no_token());
        }
        rest.trim_ascii()
    } else {
        raw.trim_ascii()
    };
    if token.is_empty() {
        return Err(no_token());
    }
    if token.len() > cfg.policy.max_token_bytes {
        let msg = ValidationError::TooLarge {
            len: token.len(),
            max: cfg.policy.max_token_bytes,
        }
        .to_string();
        return Err((Counter::DeniedInvalidToken, msg, true));
    }
    Ok(token)
}

/// The token as text, for everything past the memo (validation, keys, the exchange).
/// The memo compares bytes, and holds only tokens that were text when validated.
fn token_text(token: &[u8]) -> Result<&str, (Counter, String, bool)> {
    std::str::from_utf8(token).map_err(|_| {
        let desc = "the subject token is not valid UTF-8".to_string();
        (Counter::DeniedInvalidToken, desc, true)
    })
}

/// The rule's target for this request (reads `:authority` / `:method` only when a rule
/// needs them).
fn route<'c>(
    host: &dyn Host,
    headers: &Headers,
    cfg: &'c Config,
    path: Option<&str>,
) -> Option<&'c Target> {
    let authority = cfg
        .needs_authority
        .then(|| headers.get(host, ":authority"))
        .flatten();
    let method = cfg
        .needs_method
        .then(|| headers.get(host, ":method"))
        .flatten();
    cfg.select(authority.as_deref(), path, method.as_deref())
}
