//! Every decision of the filter, as plain Rust over [`Host`]. One [`Worker`] per root
//! context (per Envoy worker thread); HTTP contexts call into it.
//!
//! Hit path (DESIGN.md performance budget): read `authorization` (plus `:path` /
//! `:authority` / `:method` only when a bypass or rule needs them), one property read
//! for the peer identity in SERVER mode, the clock, one sha256, one shared-data get,
//! one header write (plus one for `x-meshpass-subject` when enabled). Client-sent
//! `x-meshpass-subject` is removed with a single read (or overwritten when the filter
//! sets it); counters are kept locally and flushed on the tick.

use std::collections::HashMap;
use std::rc::Rc;

use meshpass_core::oauth::{ErrorCode, ErrorResponse, TokenExchangeRequest, TokenExchangeResponse};
use meshpass_core::{Binding, KeySet, SpiffeId, ValidationError};

use crate::api::{CallResponse, Counter, Host, Level, SharedError, CREATE_CAS};
use crate::cache::{self, Entry, Marker, MARKER_IDLE};
use crate::config::{Config, FailureMode, IssuerKeys, Mode, OwnIdentity, Target};

/// The only header name the filter writes besides `authorization`.
pub const SUBJECT_HEADER: &str = "x-meshpass-subject";
const PEER_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
const LOCAL_SAN: [&str; 2] = ["connection", "uri_san_local_certificate"];
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest exchange answer read.
pub const MAX_EXCHANGE_BODY: usize = 64 * 1024;

/// What the HTTP context returns to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the (possibly rewritten) request.
    Continue,
    /// Paused: waiting for an exchange, or answered locally.
    Pause,
}

struct Waiter {
    ctx: u32,
    identity: Option<Rc<str>>,
}

struct InFlight {
    waiters: Vec<Waiter>,
    deadline_ms: u64,
    failure_mode: FailureMode,
}

/// Requests of this worker waiting on an exchange another worker runs.
struct RemoteWait {
    waiters: Vec<Waiter>,
    /// Hard cap on the wait, even if the marker keeps being re-claimed.
    give_up_ms: u64,
    failure_mode: FailureMode,
}

/// Shared-data counter handing out worker numbers (queue names).
const WORKERS_KEY: &str = "meshpass/workers";
/// Shared-data listing of the workers' notification queues: `name|heartbeat_ms` lines.
const QUEUES_KEY: &str = "meshpass/queues";
/// How often a worker refreshes its heartbeat in the listing.
const HEARTBEAT_MS: u64 = 10_000;
/// Slack added to the exchange timeout before an in-flight exchange counts as lost.
const INFLIGHT_SLACK_MS: u64 = 2000;

enum Call {
    Exchange {
        key: String,
        subject: String,
        subject_exp: u64,
        started_ms: u64,
        failure_mode: FailureMode,
    },
    Refresh {
        key: String,
        subject: String,
        subject_exp: u64,
        started_ms: u64,
    },
    Jwks {
        issuer: String,
    },
}

/// A request whose token names a `kid` not (yet) in the issuer's keys.
struct Parked {
    ctx: u32,
    token: String,
    target: Target,
    actor: Option<String>,
    key: String,
    identity: Option<Rc<str>>,
    issuer: String,
    cas_at_park: Option<u32>,
    deadline_ms: u64,
}

/// How long a request with an unknown kid waits for refetched keys.
const PARK_MS: u64 = 5000;

struct PendingRefresh {
    key: String,
    token: String,
    target: Target,
    actor: Option<String>,
    subject: String,
    subject_exp: u64,
}

/// The outcome of an exchange, for every request waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A participant token.
    Token(String),
    /// 401: the service rejected the subject token.
    InvalidGrant(String),
    /// 403: policy refused (unauthorized_client / invalid_target / invalid_scope).
    Forbidden(String),
    /// 429 with Retry-After seconds.
    RateLimited(u64),
    /// 503 with Retry-After seconds (or fail open).
    Unavailable(u64),
}

/// Per-worker state.
pub struct Worker {
    /// The configuration.
    pub config: Rc<Config>,
    keysets: HashMap<String, KeySet>,
    key_cas: HashMap<String, u32>,
    inflight: HashMap<String, InFlight>,
    calls: HashMap<u32, Call>,
    refreshes: Vec<PendingRefresh>,
    refreshing: HashMap<String, ()>,
    own_identity: Option<Rc<str>>,
    counts: [u64; Counter::ALL.len()],
    written: Vec<(u64, String)>,
    l1: HashMap<String, Vec<L1Entry>, FxBuild>,
    /// Clock as of the last tick or slow-path read: the memo check uses it instead of a
    /// host call (memo entries end at the refresh time, well before expiry, so being up
    /// to one tick late is harmless).
    coarse_now_ms: u64,
    parked: Vec<Parked>,
    /// This worker's name in markers and its queue name (`meshpass/q/<n>`), once started.
    name: Option<String>,
    /// Whether `name` is a registered (and listed) notification queue.
    queue_listed: bool,
    last_heartbeat_ms: u64,
    /// Requests waiting on another worker's exchange, by cache key.
    remote: HashMap<String, RemoteWait>,
    /// Done markers this worker wrote: (sweep time, marker key).
    markers: Vec<(u64, String)>,
}

/// Per-worker memo in front of shared data, looked up by an exact compare of the
/// token bytes (so no sha256 and no shared-data copy on a warm hit). Valid only until
/// the entry's refresh time; after that the shared entry (maybe refreshed by another
/// worker) is consulted again.
struct L1Entry {
    digest: [u8; 32],
    actor: Option<String>,
    valid_until_ms: u64,
    subject: String,
    authorization: String,
}

/// Maximum tokens memoised per worker; the memo is cleared when full.
const L1_MAX: usize = 4096;

/// FxHash-style hasher: the memo key is attacker-supplied but every hit is confirmed by
/// an exact compare, and the map is size-capped, so a fast non-keyed hash is fine.
#[derive(Default, Clone, Copy)]
struct FxBuild;

impl std::hash::BuildHasher for FxBuild {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

impl Worker {
    /// A worker for a checked configuration.
    pub fn new(config: Config) -> Worker {
        let mut keysets = HashMap::new();
        for (iss, k) in &config.keys {
            if let IssuerKeys::Inline(set) = k {
                keysets.insert(iss.clone(), set.clone());
            }
        }
        let own_identity = match &config.own_identity {
            Some(OwnIdentity::Fixed(id)) => Some(Rc::from(id.as_str())),
            _ => None,
        };
        Worker {
            config: Rc::new(config),
            keysets,
            key_cas: HashMap::new(),
            inflight: HashMap::new(),
            calls: HashMap::new(),
            refreshes: Vec::new(),
            refreshing: HashMap::new(),
            own_identity,
            counts: [0; Counter::ALL.len()],
            written: Vec::new(),
            l1: HashMap::with_hasher(FxBuild),
            coarse_now_ms: 0,
            parked: Vec::new(),
            name: None,
            queue_listed: false,
            last_heartbeat_ms: 0,
            remote: HashMap::new(),
            markers: Vec::new(),
        }
    }

    fn bump(&mut self, c: Counter) {
        self.counts[c as usize] += 1;
    }

    /// Counts not yet flushed to the host (tests read them).
    pub fn pending_count(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    /// Pushes the local counters to the host.
    pub fn flush_metrics(&mut self, host: &mut dyn Host) {
        for c in Counter::ALL {
            let n = std::mem::take(&mut self.counts[c as usize]);
            if n > 0 {
                host.count(c, n);
            }
        }
    }

    /// Whether an exchange for `key` is in flight in this worker.
    pub fn in_flight(&self, key: &str) -> bool {
        self.inflight.contains_key(key)
    }

    /// Whether requests of this worker wait on another worker's exchange of `key`.
    pub fn waiting_on_other_worker(&self, key: &str) -> bool {
        self.remote.contains_key(key)
    }

    /// This worker's notification queue name, once [`Worker::start`] registered it.
    pub fn queue_name(&self) -> Option<&str> {
        self.name.as_deref().filter(|_| self.queue_listed)
    }

    // ------------------------------------------------------------ cross-worker coalescing
    //
    // A worker that starts an exchange claims `meshpass/f/<hex>` by CAS with an
    // in-flight marker (owner + deadline). Other workers' requests for that key pause
    // (no validation: like a cache hit, they are bound on the result) and are resumed
    // when the owner publishes the outcome in the marker and enqueues the cache key on
    // every other worker's shared queue (listed in `meshpass/queues`). The tick is the
    // safety net: it re-reads the marker of every remote wait, so a lost notification
    // costs at most one tick, and a marker whose deadline passed without an outcome
    // answers 503 (fail closed; `failure_mode: allow` rules fail open as for any outage).

    /// Root-context start, after configuration: takes a worker number, registers this
    /// worker's notification queue and lists it in shared data.
    pub fn start(&mut self, host: &mut dyn Host) {
        if self.config.noop || self.config.validate_only {
            return;
        }
        let mut n = None;
        for _ in 0..16 {
            let (cur, cas) = match host.shared_get(WORKERS_KEY) {
                Some((v, cas)) => (
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                    cas,
                ),
                None => (0, CREATE_CAS),
            };
            let next = cur.saturating_add(1).to_string();
            match host.shared_set(WORKERS_KEY, Some(next.as_bytes()), Some(cas)) {
                Ok(()) => {
                    n = Some(next);
                    break;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => break,
            }
        }
        let Some(n) = n else {
            host.log(
                Level::Warn,
                "meshpass: no worker number; concurrent misses are coalesced per worker only",
            );
            return;
        };
        let name = format!("meshpass/q/{n}");
        self.queue_listed = host.register_queue(&name);
        if !self.queue_listed {
            host.log(
                Level::Warn,
                "meshpass: cannot register a shared queue; waits on other workers end on the tick",
            );
        }
        self.name = Some(name);
        let now = host.now_ms();
        self.heartbeat(host, now);
    }

    fn owner(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn inflight_span_ms(&self) -> u64 {
        self.config.exchange.timeout_ms + INFLIGHT_SLACK_MS
    }

    /// Listing entries older than this belong to workers that are gone (config reload).
    fn queue_stale_ms(&self) -> u64 {
        (3 * self.config.tick_ms).max(6 * HEARTBEAT_MS)
    }

    /// Puts (or refreshes) this worker's queue in the listing, dropping stale ones.
    fn heartbeat(&mut self, host: &mut dyn Host, now: u64) {
        let Some(name) = self.name.clone().filter(|_| self.queue_listed) else {
            return;
        };
        let stale = self.queue_stale_ms();
        for _ in 0..8 {
            let (listing, cas) = match host.shared_get(QUEUES_KEY) {
                Some((v, cas)) => (v, cas),
                None => (Vec::new(), CREATE_CAS),
            };
            let mut out = String::new();
            for (n, hb) in parse_listing(&listing) {
                if n != name && hb.saturating_add(stale) > now {
                    out.push_str(&format!("{n}|{hb}\n"));
                }
            }
            out.push_str(&format!("{name}|{now}"));
            match host.shared_set(QUEUES_KEY, Some(out.as_bytes()), Some(cas)) {
                Ok(()) => {
                    self.last_heartbeat_ms = now;
                    return;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return,
            }
        }
    }

    /// The deadline of another worker's exchange of `key`, if one is in flight.
    fn other_in_flight(&self, host: &dyn Host, key: &str, now: u64) -> Option<u64> {
        let (v, _) = host.shared_get(&cache::marker_key(key))?;
        match Marker::decode(&v) {
            Marker::InFlight { deadline_ms, owner }
                if deadline_ms > now && owner != self.owner() =>
            {
                Some(deadline_ms)
            }
            _ => None,
        }
    }

    /// Claims the exchange of `key` for this worker (CAS on its marker). False when
    /// another worker's exchange is in flight; true also when the marker cannot be
    /// written (coalescing across workers saves exchanges, it never gates one).
    fn claim(&mut self, host: &mut dyn Host, key: &str, now: u64) -> bool {
        let mk = cache::marker_key(key);
        let mine = Marker::InFlight {
            deadline_ms: now + self.inflight_span_ms(),
            owner: self.owner().to_string(),
        }
        .encode();
        for _ in 0..4 {
            let cas = match host.shared_get(&mk) {
                Some((v, cas)) => {
                    if let Marker::InFlight { deadline_ms, owner } = Marker::decode(&v) {
                        if deadline_ms > now && owner != self.owner() {
                            return false;
                        }
                    }
                    cas
                }
                None => CREATE_CAS,
            };
            match host.shared_set(&mk, Some(&mine), Some(cas)) {
                Ok(()) => return true,
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return true,
            }
        }
        true
    }

    fn wait_remote(&mut self, key: String, w: Waiter, failure_mode: FailureMode, now: u64) {
        let give_up_ms = now + 2 * self.inflight_span_ms();
        self.remote
            .entry(key)
            .or_insert_with(|| RemoteWait {
                waiters: Vec::new(),
                give_up_ms,
                failure_mode,
            })
            .waiters
            .push(w);
        self.bump(Counter::Coalesced);
        self.bump(Counter::CoalescedRemote);
    }

    /// Publishes the outcome of this worker's exchange of `key` in its marker and tells
    /// every other listed worker (message: the cache key).
    fn publish(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        outcome: &Outcome,
        subject: &str,
        now: u64,
    ) {
        let mk = cache::marker_key(key);
        // Readable for two ticks, so a worker that missed the notification still reads it.
        let until_ms = now + 2 * self.config.tick_ms + 1000;
        let m = Marker::Done {
            until_ms,
            subject: subject.to_string(),
            outcome: outcome.clone(),
        };
        if host.shared_set(&mk, Some(&m.encode()), None).is_ok() {
            self.markers.push((until_ms, mk));
        }
        let Some((listing, _)) = host.shared_get(QUEUES_KEY) else {
            return;
        };
        let stale = self.queue_stale_ms();
        let me = self.queue_name().unwrap_or("");
        for (name, hb) in parse_listing(&listing) {
            if name != me && hb.saturating_add(stale) > now {
                host.enqueue(name, key.as_bytes());
            }
        }
    }

    /// A message on this worker's queue: another worker finished the exchange of the
    /// cache key it names.
    pub fn on_notify(&mut self, host: &mut dyn Host, msg: &[u8]) {
        let Ok(key) = std::str::from_utf8(msg) else {
            return;
        };
        if self.remote.contains_key(key) {
            let now = host.now_ms();
            self.resolve_remote(host, key, now);
        }
    }

    /// Answers the requests waiting on another worker's exchange of `key` once its
    /// marker holds an outcome (or its deadline passed); otherwise keeps them waiting.
    fn resolve_remote(&mut self, host: &mut dyn Host, key: &str, now: u64) {
        let Some(give_up_ms) = self.remote.get(key).map(|r| r.give_up_ms) else {
            return;
        };
        let marker = host
            .shared_get(&cache::marker_key(key))
            .map(|(v, _)| Marker::decode(&v));
        let (outcome, subject) = match marker {
            Some(Marker::Done {
                subject, outcome, ..
            }) => (outcome, subject),
            Some(Marker::InFlight { deadline_ms, .. }) if deadline_ms > now && now < give_up_ms => {
                return
            }
            _ => {
                // No outcome (the owner died or timed out, or the record was swept):
                // serve the entry if one is there, else fail closed.
                let entry = host.shared_get(key);
                match entry.as_ref().and_then(|(b, _)| Entry::decode(b)) {
                    Some(e) if e.expires_ms > now => {
                        (Outcome::Token(e.token.to_string()), e.subject.to_string())
                    }
                    _ => (
                        Outcome::Unavailable(self.config.retry_after_secs),
                        String::new(),
                    ),
                }
            }
        };
        let Some(r) = self.remote.remove(key) else {
            return;
        };
        for w in &r.waiters {
            if host.set_effective_context(w.ctx) {
                self.apply(host, w, &outcome, &subject, r.failure_mode);
            }
        }
    }

    // ------------------------------------------------------------ request path

    /// `on_http_request_headers` of stream `ctx`.
    pub fn on_request(&mut self, host: &mut dyn Host, ctx: u32) -> Verdict {
        if self.config.noop {
            return Verdict::Continue;
        }
        // A cheap Rc clone, so the selected target can be borrowed (not cloned) while
        // `self` is mutated.
        let cfg = Rc::clone(&self.config);
        // Header hygiene: when the filter sets x-meshpass-subject on every allowed
        // request the client's value is overwritten; otherwise one read (+ remove).
        if cfg.strip_all_x_meshpass_headers || !cfg.set_subject_header {
            let keep = cfg.exchange.actor_token_header.as_deref();
            strip_reserved(host, cfg.strip_all_x_meshpass_headers, keep);
        }
        let path = if !cfg.bypass.is_empty() || cfg.needs_path {
            header(host, ":path")
        } else {
            None
        };
        if let Some(p) = &path {
            if !cfg.bypass.is_empty() && cfg.bypassed(p) {
                if cfg.set_subject_header && !cfg.strip_all_x_meshpass_headers {
                    strip_reserved(host, false, None);
                }
                self.bump(Counter::Bypassed);
                return Verdict::Continue;
            }
        }
        let Some(raw) = header(host, &cfg.token_header) else {
            return self.deny_token(host, Counter::DeniedNoToken, "no subject token", false);
        };
        let token = if cfg.bearer {
            match raw.get(..7) {
                Some(s) if s.eq_ignore_ascii_case("bearer ") => raw[7..].trim(),
                _ => {
                    return self.deny_token(
                        host,
                        Counter::DeniedInvalidToken,
                        "authorization is not a Bearer token",
                        true,
                    )
                }
            }
        } else {
            raw.trim()
        };
        if token.is_empty() {
            return self.deny_token(host, Counter::DeniedNoToken, "no subject token", false);
        }
        if token.len() > cfg.policy.max_token_bytes {
            let msg = ValidationError::TooLarge {
                len: token.len(),
                max: cfg.policy.max_token_bytes,
            }
            .to_string();
            return self.deny_token(host, Counter::DeniedInvalidToken, &msg, true);
        }
        if cfg.validate_only {
            return self.validate_only(host, token);
        }
        let authority = if cfg.needs_authority {
            header(host, ":authority")
        } else {
            None
        };
        let method = if cfg.needs_method {
            header(host, ":method")
        } else {
            None
        };
        let Some(target) = cfg.select(authority.as_deref(), path.as_deref(), method.as_deref())
        else {
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
        let actor = match self.actor_token(host) {
            Ok(a) => a,
            Err(v) => return v,
        };
        let identity = self.identity(host);
        if self.coarse_now_ms == 0 {
            self.coarse_now_ms = host.now_ms();
        }
        let coarse_now = self.coarse_now_ms;
        if let Some(e) = self.l1.get(token).and_then(|v| {
            v.iter()
                .find(|e| e.digest == target.digest && e.actor == actor)
        }) {
            if e.valid_until_ms > coarse_now {
                if self.config.mode != Mode::NoneInsecure
                    && identity.as_deref() != Some(e.subject.as_str())
                {
                    return self.deny_binding(host, identity.is_some());
                }
                host.set_header("authorization", &e.authorization);
                if !self.config.bearer {
                    host.remove_header(&self.config.token_header);
                }
                if self.config.set_subject_header {
                    host.set_header(SUBJECT_HEADER, &e.subject);
                }
                self.bump(Counter::CacheHit);
                self.bump(Counter::Allowed);
                return Verdict::Continue;
            }
        }
        let key = cache::key(&target.digest, token, actor.as_deref());
        let now = host.now_ms();
        self.coarse_now_ms = now;

        if let Some((bytes, _cas)) = host.shared_get(&key) {
            if let Some(e) = Entry::decode(&bytes) {
                if e.expires_ms > now {
                    if self.config.mode != Mode::NoneInsecure
                        && identity.as_deref() != Some(e.subject)
                    {
                        return self.deny_binding(host, identity.is_some());
                    }
                    self.bump(Counter::CacheHit);
                    if now < e.refresh_ms {
                        let m = (e.refresh_ms, e.subject.to_string(), e.token.to_string());
                        self.memo(token, &target.digest, actor.clone(), m.0, &m.1, &m.2);
                    } else if !self.refreshing.contains_key(&key) {
                        self.refreshing.insert(key.clone(), ());
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
    fn validate_only(&mut self, host: &mut dyn Host, token: &str) -> Verdict {
        let identity = self.identity(host);
        self.load_remote_keys(host);
        let bound = identity.as_deref().and_then(|s| SpiffeId::parse(s).ok());
        let binding = match self.config.mode {
            Mode::Server => Binding::Server(bound.as_ref()),
            Mode::Client => Binding::Client(bound.as_ref()),
            Mode::NoneInsecure => Binding::None,
        };
        let now = host.now_ms();
        match self
            .config
            .policy
            .validate(token, now / 1000, &self.keysets, &binding)
        {
            Ok(_) => {
                host.remove_header(&self.config.token_header);
                self.bump(Counter::Allowed);
                Verdict::Continue
            }
            Err(e) => self.deny_validation(host, e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn miss(
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
        let binding = match self.config.mode {
            Mode::Server => Binding::Server(bound.as_ref()),
            Mode::Client => Binding::Client(bound.as_ref()),
            Mode::NoneInsecure => Binding::None,
        };
        let verified = match self
            .config
            .policy
            .validate(token, now / 1000, &self.keysets, &binding)
        {
            Ok(v) => v,
            Err(ValidationError::UnknownKeyId { issuer, .. })
                if may_park && self.request_refetch(host, &issuer, now) =>
            {
                // Park until the refetched keys arrive (or PARK_MS passes).
                self.parked.push(Parked {
                    ctx,
                    token: token.to_string(),
                    target: target.clone(),
                    actor,
                    key,
                    identity,
                    cas_at_park: self.key_cas.get(&issuer).copied(),
                    issuer,
                    deadline_ms: now + PARK_MS,
                });
                return Verdict::Pause;
            }
            Err(e) => return self.deny_validation(host, e),
        };
        if !self.claim(host, &key, now) {
            self.wait_remote(key, Waiter { ctx, identity }, target.failure_mode, now);
            return Verdict::Pause;
        }
        let body = exchange_form(token, target, actor);
        let traceparent = header(host, "traceparent");
        match self.send_exchange(host, &body, traceparent.as_deref()) {
            Ok(call) => {
                self.bump(Counter::ExchangeCalls);
                self.calls.insert(
                    call,
                    Call::Exchange {
                        key: key.clone(),
                        subject: verified.spiffe_id.as_str().to_string(),
                        subject_exp: verified.expires_at,
                        started_ms: now,
                        failure_mode: target.failure_mode,
                    },
                );
                self.inflight.insert(
                    key,
                    InFlight {
                        waiters: vec![Waiter { ctx, identity }],
                        deadline_ms: now + self.inflight_span_ms(),
                        failure_mode: target.failure_mode,
                    },
                );
                Verdict::Pause
            }
            Err(e) => {
                host.log(
                    Level::Warn,
                    &format!("meshpass: exchange dispatch failed: {e}"),
                );
                let ra = self.config.retry_after_secs;
                self.publish(host, &key, &Outcome::Unavailable(ra), "", now);
                let w = Waiter { ctx, identity };
                self.apply(host, &w, &Outcome::Unavailable(ra), "", target.failure_mode);
                Verdict::Pause
            }
        }
    }

    fn send_exchange(
        &self,
        host: &mut dyn Host,
        body: &str,
        traceparent: Option<&str>,
    ) -> Result<u32, String> {
        let ex = &self.config.exchange;
        let len = body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &ex.path),
            (":authority", &ex.authority),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", &len),
            ("accept", "application/json"),
        ];
        if let Some(tp) = traceparent {
            headers.push(("traceparent", tp));
        }
        host.dispatch(&ex.cluster, &headers, body.as_bytes(), ex.timeout_ms)
    }

    /// CLIENT mode with `exchange.actor_token_header`: the proxy's actor token, taken
    /// from (and removed from) the request; its absence is a proxy-side fault (503).
    fn actor_token(&mut self, host: &mut dyn Host) -> Result<Option<String>, Verdict> {
        let Some(name) = self.config.exchange.actor_token_header.clone() else {
            return Ok(None);
        };
        let value = header(host, &name);
        if value.is_some() {
            host.remove_header(&name);
        }
        match value.map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() && v.len() <= self.config.policy.max_token_bytes => {
                Ok(Some(v))
            }
            _ => {
                host.log(
                    Level::Warn,
                    &format!("meshpass: actor token header {name:?} missing or oversize"),
                );
                self.bump(Counter::DeniedUnavailable);
                let ra = self.config.retry_after_secs.to_string();
                send_error(
                    host,
                    503,
                    "temporarily_unavailable",
                    "the proxy's actor token is unavailable",
                    Some(&ra),
                );
                Err(Verdict::Pause)
            }
        }
    }

    /// The identity the subject must equal, as a string.
    fn identity(&mut self, host: &mut dyn Host) -> Option<Rc<str>> {
        match self.config.mode {
            Mode::Server => host
                .property(&PEER_SAN)
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .map(Rc::from),
            Mode::Client => {
                if self.own_identity.is_none() {
                    self.own_identity =
                        discover_own_identity(host, &self.config).map(|s| Rc::from(s.as_str()));
                }
                self.own_identity.clone()
            }
            Mode::NoneInsecure => None,
        }
    }

    fn memo(
        &mut self,
        token: &str,
        digest: &[u8; 32],
        actor: Option<String>,
        until: u64,
        subject: &str,
        participant: &str,
    ) {
        if self.l1.len() >= L1_MAX {
            self.l1.clear();
        }
        let e = L1Entry {
            digest: *digest,
            actor,
            valid_until_ms: until,
            subject: subject.to_string(),
            authorization: format!("Bearer {participant}"),
        };
        let v = self.l1.entry(token.to_string()).or_default();
        v.retain(|x| x.digest != e.digest || x.actor != e.actor);
        v.push(e);
    }

    fn allow(&mut self, host: &mut dyn Host, participant: &str, subject: &str) {
        let mut v = String::with_capacity(7 + participant.len());
        v.push_str("Bearer ");
        v.push_str(participant);
        host.set_header("authorization", &v);
        if !self.config.bearer {
            host.remove_header(&self.config.token_header);
        }
        if self.config.set_subject_header {
            host.set_header(SUBJECT_HEADER, subject);
        }
        self.bump(Counter::Allowed);
    }

    fn deny_token(
        &mut self,
        host: &mut dyn Host,
        c: Counter,
        desc: &str,
        invalid: bool,
    ) -> Verdict {
        self.bump(c);
        let www = if invalid {
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quote_escape(desc)
            )
        } else {
            "Bearer".to_string()
        };
        let code = if invalid {
            "invalid_token"
        } else {
            "invalid_request"
        };
        send_error(host, 401, code, desc, Some(&www));
        Verdict::Pause
    }

    fn deny_binding(&mut self, host: &mut dyn Host, known: bool) -> Verdict {
        let e = if known {
            ValidationError::BindingMismatch(self.binding_name())
        } else {
            ValidationError::BindingUnavailable(self.binding_name())
        };
        self.deny_token(host, Counter::DeniedBinding, &e.to_string(), true)
    }

    fn binding_name(&self) -> &'static str {
        match self.config.mode {
            Mode::Server => "peer",
            _ => "own",
        }
    }

    fn deny_validation(&mut self, host: &mut dyn Host, e: ValidationError) -> Verdict {
        match &e {
            ValidationError::BindingMismatch(_) | ValidationError::BindingUnavailable(_) => {
                self.deny_token(host, Counter::DeniedBinding, &e.to_string(), true)
            }
            ValidationError::NoKeys => {
                self.bump(Counter::DeniedUnavailable);
                let ra = self.config.retry_after_secs.to_string();
                send_error(
                    host,
                    503,
                    "temporarily_unavailable",
                    "signing keys are not available yet",
                    Some(&ra),
                );
                Verdict::Pause
            }
            _ => self.deny_token(host, Counter::DeniedInvalidToken, &e.to_string(), true),
        }
    }

    fn apply(
        &mut self,
        host: &mut dyn Host,
        w: &Waiter,
        outcome: &Outcome,
        subject: &str,
        failure_mode: FailureMode,
    ) {
        match outcome {
            Outcome::Token(t) => {
                if self.config.mode != Mode::NoneInsecure && w.identity.as_deref() != Some(subject)
                {
                    self.deny_binding(host, w.identity.is_some());
                    return;
                }
                self.allow(host, t, subject);
                host.resume();
            }
            Outcome::InvalidGrant(d) => {
                self.deny_token(host, Counter::DeniedInvalidToken, d, true);
            }
            Outcome::Forbidden(d) => {
                self.bump(Counter::DeniedForbidden);
                send_error(host, 403, "access_denied", d, None);
            }
            Outcome::RateLimited(ra) => {
                self.bump(Counter::DeniedRateLimited);
                send_error(
                    host,
                    429,
                    "slow_down",
                    "token exchange is rate limited",
                    Some(&ra.to_string()),
                );
            }
            Outcome::Unavailable(ra) => {
                if failure_mode == FailureMode::Allow {
                    // Fail open: forward without any token, never the subject token.
                    self.bump(Counter::FailOpen);
                    host.remove_header(&self.config.token_header);
                    strip_reserved(host, self.config.strip_all_x_meshpass_headers, None);
                    host.resume();
                } else {
                    self.bump(Counter::DeniedUnavailable);
                    send_error(
                        host,
                        503,
                        "temporarily_unavailable",
                        "token exchange is unavailable",
                        Some(&ra.to_string()),
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------ call responses

    /// An answer to a dispatched call (exchange, refresh or JWKS).
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, resp: CallResponse) {
        let Some(call) = self.calls.remove(&token) else {
            return;
        };
        let now = host.now_ms();
        match call {
            Call::Exchange {
                key,
                subject,
                subject_exp,
                started_ms,
                failure_mode,
            } => {
                host.record_latency_ms(now.saturating_sub(started_ms));
                let outcome = self.classify(&resp);
                if let Outcome::Token(t) = &outcome {
                    self.store(host, &key, t, &resp, &subject, subject_exp, now);
                }
                self.publish(host, &key, &outcome, &subject, now);
                let Some(f) = self.inflight.remove(&key) else {
                    return;
                };
                for w in &f.waiters {
                    if host.set_effective_context(w.ctx) {
                        self.apply(host, w, &outcome, &subject, failure_mode);
                    }
                }
            }
            Call::Refresh {
                key,
                subject,
                subject_exp,
                started_ms,
            } => {
                host.record_latency_ms(now.saturating_sub(started_ms));
                self.refreshing.remove(&key);
                match self.classify(&resp) {
                    Outcome::Token(t) => self.store(host, &key, &t, &resp, &subject, subject_exp, now),
                    other => host.log(
                        Level::Warn,
                        &format!("meshpass: background refresh failed ({other:?}); cached token served until it expires"),
                    ),
                }
            }
            Call::Jwks { issuer } => self.on_jwks(host, &issuer, resp, now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        host: &mut dyn Host,
        key: &str,
        token: &str,
        resp: &CallResponse,
        subject: &str,
        subject_exp: u64,
        now: u64,
    ) {
        let expires_in = serde_json::from_slice::<TokenExchangeResponse>(&resp.body)
            .map(|r| r.expires_in)
            .unwrap_or(0);
        let Some((expires_ms, refresh_ms)) = cache::lifetimes(
            now,
            expires_in,
            subject_exp,
            self.config.expiry_margin_ms,
            self.config.refresh_ahead_percent,
        ) else {
            return;
        };
        let e = Entry {
            expires_ms,
            refresh_ms,
            subject_exp,
            subject,
            token,
        };
        if host.shared_set(key, Some(&e.encode()), None).is_ok() {
            self.written.push((expires_ms, key.to_string()));
        }
    }

    /// Maps an exchange answer to what the waiting requests get.
    pub fn classify(&self, resp: &CallResponse) -> Outcome {
        let ra_default = self.config.retry_after_secs;
        let retry_after = resp
            .retry_after
            .as_deref()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|v| v.clamp(1, 3600))
            .unwrap_or(ra_default);
        match resp.status {
            Some(200) => match serde_json::from_slice::<TokenExchangeResponse>(&resp.body) {
                Ok(r)
                    if r.token_type.eq_ignore_ascii_case("bearer")
                        && !r.access_token.is_empty()
                        && r.access_token.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Outcome::Token(r.access_token)
                }
                _ => Outcome::Unavailable(ra_default),
            },
            Some(429) => Outcome::RateLimited(retry_after),
            Some(s) if (400..500).contains(&s) => {
                match serde_json::from_slice::<ErrorResponse>(&resp.body) {
                    Ok(e) => {
                        let d = e
                            .error_description
                            .filter(|d| d.len() < 512)
                            .unwrap_or_else(|| "token exchange refused".into());
                        match e.error {
                            ErrorCode::UnauthorizedClient
                            | ErrorCode::InvalidTarget
                            | ErrorCode::InvalidScope => Outcome::Forbidden(d),
                            ErrorCode::InvalidGrant => Outcome::InvalidGrant(d),
                            ErrorCode::SlowDown => Outcome::RateLimited(retry_after),
                            _ => Outcome::Unavailable(ra_default),
                        }
                    }
                    Err(_) => Outcome::Unavailable(ra_default),
                }
            }
            Some(503) => Outcome::Unavailable(retry_after),
            _ => Outcome::Unavailable(ra_default),
        }
    }

    // ------------------------------------------------------------ keys

    fn load_remote_keys(&mut self, host: &mut dyn Host) {
        for (iss, k) in &self.config.keys {
            let IssuerKeys::Remote(r) = k else { continue };
            let Some((bytes, cas)) = host.shared_get(&r.shared_key) else {
                continue;
            };
            if self.key_cas.get(iss) == Some(&cas) {
                continue;
            }
            match KeySet::parse(&bytes) {
                Ok((set, _)) if !set.is_empty() => {
                    self.keysets.insert(iss.clone(), set);
                    self.key_cas.insert(iss.clone(), cas);
                }
                _ => host.log(
                    Level::Warn,
                    "meshpass: stored JWKS does not parse; keeping previous keys",
                ),
            }
        }
    }

    /// Unknown kid: schedule a fetch on the next tick, at most once per
    /// `jwks_min_refetch_secs` across all workers.
    /// Returns whether a fetch is due, running or just done, i.e. whether a request
    /// with this unknown kid is worth parking until the keys change.
    fn request_refetch(&mut self, host: &mut dyn Host, issuer: &str, now: u64) -> bool {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return false;
        };
        let (lease, cas) = read_lease(host, &r.lease_key);
        if lease.next_due_ms <= now || now.saturating_sub(lease.last_forced_ms) < PARK_MS {
            return true;
        }
        if now.saturating_sub(lease.last_forced_ms) < r.min_refetch_ms {
            return false;
        }
        let new = Lease {
            next_due_ms: now,
            failures: lease.failures,
            last_forced_ms: now,
        };
        let ok = host
            .shared_set(&r.lease_key, Some(new.encode().as_bytes()), cas)
            .is_ok();
        if ok {
            self.bump(Counter::JwksUnknownKid);
        }
        ok
    }

    fn on_jwks(&mut self, host: &mut dyn Host, issuer: &str, resp: CallResponse, now: u64) {
        let Some(IssuerKeys::Remote(r)) = self.config.keys.get(issuer) else {
            return;
        };
        let r = r.clone();
        let (lease, _) = read_lease(host, &r.lease_key);
        let parsed = match resp.status {
            Some(200) if resp.body.len() <= MAX_JWKS_BYTES => KeySet::parse(&resp.body)
                .map_err(|e| e.to_string())
                .and_then(|(s, rej)| {
                    for k in rej {
                        host.log(
                            Level::Warn,
                            &format!(
                                "meshpass: JWKS of {issuer:?}: key {} ({:?}) dropped: {}",
                                k.index, k.kid, k.reason
                            ),
                        );
                    }
                    if s.is_empty() {
                        Err("no usable key".to_string())
                    } else {
                        Ok(s)
                    }
                }),
            Some(s) => Err(format!("status {s}")),
            None => Err("timeout or connection failure".into()),
        };
        match parsed {
            Ok(set) => {
                let _ = host.shared_set(&r.shared_key, Some(&resp.body), None);
                self.keysets.insert(issuer.to_string(), set);
                self.key_cas.remove(issuer);
                let l = Lease {
                    next_due_ms: now + r.refresh_ms,
                    failures: 0,
                    last_forced_ms: lease.last_forced_ms,
                };
                let _ = host.shared_set(&r.lease_key, Some(l.encode().as_bytes()), None);
                self.bump(Counter::JwksRefreshSuccess);
            }
            Err(e) => {
                let failures = lease.failures.saturating_add(1);
                let backoff = 1000u64
                    .saturating_mul(1 << failures.min(16))
                    .min(r.refresh_ms);
                let l = Lease {
                    next_due_ms: now + backoff,
                    failures,
                    last_forced_ms: lease.last_forced_ms,
                };
                let _ = host.shared_set(&r.lease_key, Some(l.encode().as_bytes()), None);
                self.bump(Counter::JwksRefreshFailure);
                host.log(
                    Level::Warn,
                    &format!("meshpass: JWKS fetch for {issuer:?} failed ({e}); keeping last good keys, retry in {backoff} ms"),
                );
            }
        }
    }

    // ------------------------------------------------------------ tick

    /// Root tick: JWKS refresh (one worker wins the lease by CAS), background token
    /// refreshes, stuck in-flight cleanup, expired-entry sweep, metrics flush.
    pub fn on_tick(&mut self, host: &mut dyn Host) {
        let now = host.now_ms();
        self.coarse_now_ms = now;
        // JWKS.
        let remotes: Vec<(String, crate::config::RemoteJwks)> = self
            .config
            .keys
            .iter()
            .filter_map(|(i, k)| match k {
                IssuerKeys::Remote(r) => Some((i.clone(), r.clone())),
                IssuerKeys::Inline(_) => None,
            })
            .collect();
        for (issuer, r) in remotes {
            if self
                .calls
                .values()
                .any(|c| matches!(c, Call::Jwks { issuer: i } if *i == issuer))
            {
                continue;
            }
            let (lease, cas) = read_lease(host, &r.lease_key);
            if lease.next_due_ms > now {
                continue;
            }
            // Take the lease: nobody else fetches until it runs out.
            let taken = Lease {
                next_due_ms: now + 10_000,
                ..lease
            };
            match host.shared_set(&r.lease_key, Some(taken.encode().as_bytes()), cas) {
                Ok(()) => {}
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => continue,
            }
            let headers = [
                (":method", "GET"),
                (":path", r.path.as_str()),
                (":authority", r.authority.as_str()),
                ("accept", "application/json"),
            ];
            match host.dispatch(&r.cluster, &headers, &[], 5000) {
                Ok(t) => {
                    self.calls.insert(t, Call::Jwks { issuer });
                }
                Err(e) => {
                    let resp = CallResponse::default();
                    host.log(Level::Warn, &format!("meshpass: JWKS dispatch failed: {e}"));
                    self.on_jwks(host, &issuer, resp, now);
                }
            }
        }
        // Requests parked on an unknown kid: retry once the keys changed (or time is up).
        if !self.parked.is_empty() {
            self.load_remote_keys(host);
            for p in std::mem::take(&mut self.parked) {
                let changed = self.key_cas.get(&p.issuer).copied() != p.cas_at_park;
                if !changed && p.deadline_ms > now {
                    self.parked.push(p);
                    continue;
                }
                if !host.set_effective_context(p.ctx) {
                    continue;
                }
                if let Some(f) = self.inflight.get_mut(&p.key) {
                    f.waiters.push(Waiter {
                        ctx: p.ctx,
                        identity: p.identity,
                    });
                    continue;
                }
                let _ = self.miss(
                    host, p.ctx, &p.token, &p.target, p.actor, p.key, p.identity, now, false,
                );
            }
        }
        // Background refreshes (dispatched from the root so they outlive the stream).
        for p in std::mem::take(&mut self.refreshes) {
            let body = exchange_form(&p.token, &p.target, p.actor);
            match self.send_exchange(host, &body, None) {
                Ok(t) => {
                    self.bump(Counter::CacheRefresh);
                    self.bump(Counter::ExchangeCalls);
                    self.calls.insert(
                        t,
                        Call::Refresh {
                            key: p.key,
                            subject: p.subject,
                            subject_exp: p.subject_exp,
                            started_ms: now,
                        },
                    );
                }
                Err(_) => {
                    self.refreshing.remove(&p.key);
                }
            }
        }
        // Exchanges whose stream went away before the answer (Envoy cancels the call).
        let stuck: Vec<String> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stuck {
            if let Some(f) = self.inflight.remove(&k) {
                let ra = self.config.retry_after_secs;
                self.publish(host, &k, &Outcome::Unavailable(ra), "", now);
                for w in &f.waiters {
                    if host.set_effective_context(w.ctx) {
                        self.apply(host, w, &Outcome::Unavailable(ra), "", f.failure_mode);
                    }
                }
            }
        }
        // Waits on other workers' exchanges whose notification has not (yet) come.
        let waiting: Vec<String> = self.remote.keys().cloned().collect();
        for k in waiting {
            self.resolve_remote(host, &k, now);
        }
        // Outcome records this worker published: back to idle once read by everyone.
        for (until, mk) in std::mem::take(&mut self.markers) {
            if until > now {
                self.markers.push((until, mk));
                continue;
            }
            if let Some((v, cas)) = host.shared_get(&mk) {
                // Only our own record: a newer claim or outcome stays.
                if matches!(Marker::decode(&v), Marker::Done { until_ms, .. } if until_ms == until)
                {
                    let _ = host.shared_set(&mk, Some(MARKER_IDLE), Some(cas));
                }
            }
        }
        if self.queue_listed && now.saturating_sub(self.last_heartbeat_ms) >= HEARTBEAT_MS {
            self.heartbeat(host, now);
        }
        // Expired entries this worker wrote: delete them (shared data has no TTL).
        let mut keep = Vec::new();
        for (exp, key) in std::mem::take(&mut self.written) {
            if exp > now {
                keep.push((exp, key));
                continue;
            }
            if let Some((bytes, cas)) = host.shared_get(&key) {
                match Entry::decode(&bytes) {
                    Some(e) if e.expires_ms > now => keep.push((e.expires_ms, key)),
                    _ => {
                        let _ = host.shared_set(&key, None, Some(cas));
                    }
                }
            }
        }
        self.written = keep;
        self.l1.retain(|_, v| {
            v.retain(|e| e.valid_until_ms > now);
            !v.is_empty()
        });
        self.flush_metrics(host);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    next_due_ms: u64,
    failures: u32,
    last_forced_ms: u64,
}

impl Lease {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}",
            self.next_due_ms, self.failures, self.last_forced_ms
        )
    }
}

/// `name|heartbeat_ms` lines of the queue listing.
fn parse_listing(bytes: &[u8]) -> Vec<(&str, u64)> {
    std::str::from_utf8(bytes)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (n, hb) = l.rsplit_once('|')?;
            Some((n, hb.parse().ok()?))
        })
        .collect()
}

fn read_lease(host: &mut dyn Host, key: &str) -> (Lease, Option<u32>) {
    match host.shared_get(key) {
        Some((bytes, cas)) => {
            let s = String::from_utf8_lossy(&bytes);
            let mut it = s.split('|');
            let l = Lease {
                next_due_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                failures: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
                last_forced_ms: it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            };
            (l, Some(cas))
        }
        None => (Lease::default(), None),
    }
}

/// The RFC 8693 form for `token` and `target` (with the actor token, if any).
fn exchange_form(token: &str, target: &Target, actor: Option<String>) -> String {
    let has_actor = actor.is_some();
    TokenExchangeRequest {
        subject_token: token.to_string(),
        subject_token_type: meshpass_core::oauth::TOKEN_TYPE_JWT.to_string(),
        resource: target.resource.iter().cloned().collect(),
        audience: target.audience.clone(),
        scope: target.scopes.clone(),
        requested_token_type: None,
        actor_token: actor,
        actor_token_type: has_actor.then(|| meshpass_core::oauth::TOKEN_TYPE_JWT.to_string()),
    }
    .to_form()
}

fn header(host: &dyn Host, name: &str) -> Option<String> {
    host.header(name)
}

/// Drops client-sent `x-meshpass-*` headers (all of them with `all`, else the one the
/// filter writes); `keep` is the actor-token header, read and removed later.
fn strip_reserved(host: &mut dyn Host, all: bool, keep: Option<&str>) {
    if all {
        for n in host.header_names() {
            let lower = n.to_ascii_lowercase();
            if lower.starts_with("x-meshpass-") && Some(lower.as_str()) != keep {
                host.remove_header(&n);
            }
        }
    } else if host.header(SUBJECT_HEADER).is_some() {
        host.remove_header(SUBJECT_HEADER);
    }
}

/// CLIENT mode: local certificate URI SAN, else Istio node metadata in the configured
/// trust domain (`xds.node.metadata.NAMESPACE` / `SERVICE_ACCOUNT`).
fn discover_own_identity(host: &mut dyn Host, cfg: &Config) -> Option<String> {
    let td = match &cfg.own_identity {
        Some(OwnIdentity::Fixed(id)) => return Some(id.as_str().to_string()),
        Some(OwnIdentity::Discover(td)) => td.clone(),
        None => return None,
    };
    if let Some(s) = host
        .property(&LOCAL_SAN)
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| SpiffeId::parse(s).is_ok())
    {
        return Some(s);
    }
    // Envoy exposes the bootstrap node as `xds.node` (older builds: `node`).
    let meta = |host: &mut dyn Host, name: &str| {
        host.property(&["xds", "node", "metadata", name])
            .or_else(|| host.property(&["node", "metadata", name]))
    };
    let ns = meta(host, "NAMESPACE")?;
    let sa = meta(host, "SERVICE_ACCOUNT")?;
    let id = format!(
        "spiffe://{}/ns/{}/sa/{}",
        td.as_str(),
        String::from_utf8(ns).ok()?,
        String::from_utf8(sa).ok()?
    );
    SpiffeId::parse(&id).ok().map(|i| i.as_str().to_string())
}

fn quote_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Sends a JSON error (`{error, error_description}`) with optional
/// `WWW-Authenticate` (401) or `Retry-After` (429/503).
fn send_error(host: &mut dyn Host, status: u32, code: &str, desc: &str, extra: Option<&str>) {
    let body = serde_json::json!({"error": code, "error_description": desc}).to_string();
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    match (status, extra) {
        (401, Some(v)) => headers.push(("www-authenticate", v)),
        (429 | 503, Some(v)) => headers.push(("retry-after", v)),
        _ => {}
    }
    host.send_response(status, &headers, body.as_bytes());
}
