//! Per-worker state: one [`Worker`] per root context (per Envoy worker thread); HTTP
//! contexts call into it. The decisions live in the sibling modules, each an
//! `impl Worker` block by responsibility (see README "Where things are"):
//! [`crate::request`], [`crate::exchange`], [`crate::coalesce`], [`crate::jwks`],
//! [`crate::respond`], [`crate::tick`].

use std::collections::HashMap;
use std::rc::Rc;

use meshpass_core::{KeySet, SpiffeId};

use crate::api::{Counter, Host, Level};
use crate::config::{Config, FailureMode, IssuerKeys, Mode, OwnIdentity, Target};
use crate::feed::RevocationSet;
use crate::memo::Memo;

const PEER_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
const LOCAL_SAN: [&str; 2] = ["connection", "uri_san_local_certificate"];

/// Tokens a worker memoises at most (the warm hit set).
pub const MEMO_CAPACITY: usize = crate::memo::MEMO_SETS * crate::memo::MEMO_WAYS;

/// Slack added to the exchange timeout before an in-flight exchange counts as lost.
pub(crate) const INFLIGHT_SLACK_MS: u64 = 2000;

/// A paused request waiting for an outcome; bound to `identity` when it gets a token.
pub(crate) struct Waiter {
    pub(crate) ctx: u32,
    pub(crate) identity: Option<Rc<str>>,
}

/// An exchange this worker runs, with the requests waiting on it.
pub(crate) struct InFlight {
    pub(crate) waiters: Vec<Waiter>,
    /// The validated subject being exchanged: an outage answer is checked against it
    /// (binding, revocation) before any waiter is failed open.
    pub(crate) subject: String,
    pub(crate) deadline_ms: u64,
    pub(crate) failure_mode: FailureMode,
}

/// Requests of this worker waiting on an exchange another worker runs.
pub(crate) struct RemoteWait {
    pub(crate) waiters: Vec<Waiter>,
    /// Hard cap on the wait, even if the marker keeps being re-claimed.
    pub(crate) give_up_ms: u64,
    pub(crate) failure_mode: FailureMode,
}

/// A call this worker dispatched, by its token.
pub(crate) enum Call {
    Exchange {
        key: String,
        subject: String,
        subject_exp: u64,
        started_ms: u64,
        failure_mode: FailureMode,
        memo: MemoKey,
    },
    Refresh {
        key: String,
        subject: String,
        subject_exp: u64,
        started_ms: u64,
    },
    /// A key-set fetch for `issuer`, sent at `sent_ms`.
    Jwks { issuer: String, sent_ms: u64 },
    /// A revocation feed poll, asked from `since` at `sent_ms`.
    Revocations { since: u64, sent_ms: u64 },
}

/// A request whose token names a `kid` not (yet) in the issuer's keys.
pub(crate) struct Parked {
    pub(crate) ctx: u32,
    pub(crate) token: String,
    pub(crate) target: Target,
    pub(crate) actor: Option<String>,
    pub(crate) key: String,
    pub(crate) identity: Option<Rc<str>>,
    /// The token's issuer, whose keys it waits for.
    pub(crate) issuer: String,
    /// The unknown kid it waits for (none: it waits for the first keys).
    pub(crate) kid: Option<String>,
    /// When it parked: only the answer to a fetch sent after it can be the refetch it
    /// waits for.
    pub(crate) parked_ms: u64,
    /// Waiting for its issuer's first key set, not for an unknown kid.
    pub(crate) awaiting_first_keys: bool,
    pub(crate) deadline_ms: u64,
}

/// A validated miss whose exchange is dispatched from the root context (so it
/// outlives the stream that started it).
pub(crate) struct PendingExchange {
    pub(crate) key: String,
    pub(crate) body: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) subject: String,
    pub(crate) subject_exp: u64,
    pub(crate) failure_mode: FailureMode,
    pub(crate) memo: MemoKey,
}

/// What the worker's memo looks an answer up by, kept with its exchange: when the
/// shared slot keeps another key's longer-lived entry, the answer is memoised here
/// instead, so the token is not exchanged again on every request.
pub(crate) struct MemoKey {
    /// The key epoch the token was validated under: an answer coming after the epoch
    /// moved is not memoised.
    pub(crate) epoch: u64,
    pub(crate) token: String,
    pub(crate) digest: [u8; 32],
    pub(crate) actor: Option<String>,
}

/// A background refresh to dispatch from the root context on the next tick.
pub(crate) struct PendingRefresh {
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) target: Target,
    pub(crate) actor: Option<String>,
    pub(crate) subject: String,
    pub(crate) subject_exp: u64,
}

/// Per-worker state.
pub struct Worker {
    /// The configuration.
    pub config: Rc<Config>,
    pub(crate) keysets: HashMap<String, KeySet>,
    pub(crate) key_cas: HashMap<String, u32>,
    pub(crate) inflight: HashMap<String, InFlight>,
    pub(crate) calls: HashMap<u32, Call>,
    pub(crate) refreshes: Vec<PendingRefresh>,
    /// Background refreshes by cache key: in flight, or failed and not to be sent again
    /// before their backoff (at least the service's `Retry-After`).
    pub(crate) refreshing: Vec<RefreshState>,
    /// Warnings a sustained condition would repeat per request: when each kind was last
    /// logged, and how many were held back since (see [`Worker::warn_limited`]).
    pub(crate) warned: [(u64, u64); WarnKind::COUNT],
    pub(crate) own_identity: Option<Rc<str>>,
    pub(crate) counts: [u64; Counter::ALL.len()],
    /// Entry slots this worker wrote, by slot number: the entry's expiry (the tick
    /// empties them then). At most `cache.slots` records, however many tokens pass.
    pub(crate) written: HashMap<u64, u64>,
    pub(crate) memo: Memo,
    /// The shared key epoch this worker's cache keys and memo belong to (see
    /// [`crate::jwks::KEY_EPOCH_KEY`]).
    pub(crate) key_epoch: u64,
    /// Clock as of the last tick or slow-path read: the memo check uses it instead of a
    /// host call (memo entries end at the refresh time, well before expiry, so being up
    /// to one tick late is harmless).
    pub(crate) coarse_now_ms: u64,
    pub(crate) parked: Vec<Parked>,
    /// This worker's name in markers and its queue name (`meshpass/q/<n>`), once started.
    pub(crate) name: Option<String>,
    /// Whether `name` is a registered (and listed) notification queue.
    pub(crate) queue_listed: bool,
    pub(crate) last_heartbeat_ms: u64,
    /// Requests waiting on another worker's exchange, by cache key.
    pub(crate) remote: HashMap<String, RemoteWait>,
    /// Done markers this worker wrote: (sweep time, marker key).
    pub(crate) markers: Vec<(u64, String)>,
    /// Exchanges waiting for the root context (woken through this worker's own queue).
    pub(crate) to_dispatch: Vec<PendingExchange>,
    /// The revocations this worker enforces (loaded from shared data when the shared
    /// version moves; the memo never holds an entry they revoke).
    pub(crate) revoked: RevocationSet,
}

/// A background refresh of one cache entry (a few at a time: entries past their
/// refresh point with a refresh out or failing).
#[derive(Clone)]
pub(crate) struct RefreshState {
    /// The entry's cache key.
    pub(crate) key: String,
    /// Not sent again before this (`u64::MAX` while one is in flight).
    pub(crate) not_before_ms: u64,
    /// Failures in a row (the backoff doubles with each, 2 s to 64 s).
    pub(crate) failures: u32,
}

impl Worker {
    /// The refresh state of `key`, if any.
    pub(crate) fn refresh_state(&self, key: &str) -> Option<&RefreshState> {
        self.refreshing.iter().find(|r| r.key == key)
    }

    /// Sets the refresh state of `key`.
    pub(crate) fn set_refresh(&mut self, key: &str, not_before_ms: u64, failures: u32) {
        self.refreshing.retain(|r| r.key != key);
        self.refreshing.push(RefreshState {
            key: key.to_string(),
            not_before_ms,
            failures,
        });
    }

    /// Forgets the refresh state of `key` (refreshed, or refused).
    pub(crate) fn refresh_done(&mut self, key: &str) {
        self.refreshing.retain(|r| r.key != key);
    }
}

/// How often one kind of warning is logged while its condition lasts.
pub(crate) const WARN_EVERY_MS: u64 = 60_000;

/// The warnings logged at most once a [`WARN_EVERY_MS`].
#[derive(Clone, Copy)]
pub(crate) enum WarnKind {
    /// The exchange call could not be dispatched (no such cluster).
    ExchangeDispatch,
    /// The actor token header is missing or oversize.
    ActorToken,
    /// A background refresh failed.
    RefreshFailed,
    /// An exchange failed: the service answered 5xx or nothing, or not usably.
    ExchangeFailed,
    /// The shared revocation set does not parse.
    RevocationSetUnreadable,
    /// CLIENT mode: this proxy's own workload identity cannot be discovered.
    OwnIdentity,
    /// A stored key set does not parse.
    JwksUnreadable,
}

impl WarnKind {
    const COUNT: usize = 7;
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
            refreshing: Vec::new(),
            warned: [(0, 0); WarnKind::COUNT],
            own_identity,
            counts: [0; Counter::ALL.len()],
            written: HashMap::new(),
            memo: Memo::default(),
            key_epoch: 0,
            coarse_now_ms: 0,
            parked: Vec::new(),
            name: None,
            queue_listed: false,
            last_heartbeat_ms: 0,
            remote: HashMap::new(),
            markers: Vec::new(),
            to_dispatch: Vec::new(),
            revoked: RevocationSet::default(),
        }
    }

    /// Logs `msg` at warn at most once a [`WARN_EVERY_MS`] per `kind`, saying how many
    /// were held back: an outage seen by every request is one line a minute, not one
    /// per request.
    pub(crate) fn warn_limited(
        &mut self,
        host: &mut dyn Host,
        kind: WarnKind,
        now: u64,
        msg: &str,
    ) {
        let (last, held) = &mut self.warned[kind as usize];
        if *last != 0 && now.saturating_sub(*last) < WARN_EVERY_MS {
            *held += 1;
            return;
        }
        let line = match *held {
            0 => msg.to_string(),
            n => format!("{msg} (and {n} more)"),
        };
        (*last, *held) = (now.max(1), 0);
        host.log(Level::Warn, &line);
    }

    pub(crate) fn bump(&mut self, c: Counter) {
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

    /// Tokens memoised by this worker (at most [`MEMO_CAPACITY`]).
    pub fn memo_entries(&self) -> usize {
        self.memo.len()
    }

    /// Entry slots this worker tracks for deletion (at most `cache.slots`).
    pub fn tracked_slots(&self) -> usize {
        self.written.len()
    }

    /// The revocation feed version this worker enforces (0: none yet).
    pub fn revocation_version(&self) -> u64 {
        self.revoked.version()
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

    /// Exchange timeout plus slack: after this an in-flight exchange counts as lost.
    pub(crate) fn inflight_span_ms(&self) -> u64 {
        self.config.exchange.timeout_ms + INFLIGHT_SLACK_MS
    }

    /// The identity the subject must equal, as a string.
    pub(crate) fn identity(&mut self, host: &mut dyn Host) -> Option<Rc<str>> {
        self.bound_identity(host).map(Bound::into_rc)
    }

    /// The identity the subject must equal, without copying it (a warm hit only
    /// compares it): the peer's as read (SERVER), ours shared (CLIENT).
    pub(crate) fn bound_identity(&mut self, host: &mut dyn Host) -> Option<Bound> {
        match self.config.mode {
            Mode::Server => host
                .property(&PEER_SAN)
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .map(Bound::Peer),
            Mode::Client => {
                if self.own_identity.is_none() {
                    self.own_identity =
                        discover_own_identity(host, &self.config).map(|s| Rc::from(s.as_str()));
                }
                self.own_identity.clone().map(Bound::Own)
            }
            Mode::NoneInsecure => None,
        }
    }
}

/// The identity a request is bound to.
pub(crate) enum Bound {
    /// The mTLS peer's URI SAN, read for this request.
    Peer(String),
    /// The proxy's own identity.
    Own(Rc<str>),
}

impl Bound {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Bound::Peer(s) => s,
            Bound::Own(s) => s,
        }
    }

    /// Shareable (waiters keep it past the request's own call).
    pub(crate) fn into_rc(self) -> Rc<str> {
        match self {
            Bound::Peer(s) => Rc::from(s),
            Bound::Own(s) => s,
        }
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
    // The names Kubernetes allows, checked as for a service-account token's subject: a
    // `/` or capital in the metadata must not make up a path no workload can have.
    let sub = format!(
        "system:serviceaccount:{}:{}",
        String::from_utf8(ns).ok()?,
        String::from_utf8(sa).ok()?
    );
    SpiffeId::from_kubernetes_subject(&sub, &td)
        .ok()
        .map(|i| i.as_str().to_string())
}
