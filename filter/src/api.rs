//! The small host interface the decision logic runs on. `host.rs` implements it over
//! proxy-wasm; tests implement it with a mock. Every call is infallible from the
//! logic's point of view or returns a `Result`: host errors never panic.

pub use crate::header_map::HeaderMap;

/// Log levels (subset of proxy-wasm's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Another worker wrote first (compare-and-swap lost).
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// The CAS passed to create a shared-data key only when it is absent. Envoy's CAS
/// values count up from 1 over every write, so an existing key holds this one only
/// after 2^32 writes; the worst case then is one uncoordinated exchange.
pub const CREATE_CAS: u32 = u32::MAX;

/// The counters the filter exports (`meshpass_<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Request allowed with a participant token.
    Allowed,
    /// Bypass route.
    Bypassed,
    /// Denied: no subject token.
    DeniedNoToken,
    /// Denied: invalid subject token.
    DeniedInvalidToken,
    /// Denied: subject does not match the bound identity.
    DeniedBinding,
    /// Denied: no rule matches.
    DeniedNoRule,
    /// Denied (400): a path normalisation would change.
    DeniedBadPath,
    /// Denied: the exchange refused (403).
    DeniedForbidden,
    /// Denied: exchange rate limited (429).
    DeniedRateLimited,
    /// Denied: exchange or keys unavailable (503).
    DeniedUnavailable,
    /// Exchange unavailable but `failure_mode: allow` let the request through.
    FailOpen,
    /// Cache hit.
    CacheHit,
    /// Cache miss.
    CacheMiss,
    /// Background refresh started.
    CacheRefresh,
    /// Request waited on an exchange already in flight.
    Coalesced,
    /// Of those, requests that waited on an exchange another worker runs.
    CoalescedRemote,
    /// Exchange calls sent.
    ExchangeCalls,
    /// JWKS fetch succeeded.
    JwksRefreshSuccess,
    /// JWKS fetch failed.
    JwksRefreshFailure,
    /// Unknown `kid` triggered a refetch.
    JwksUnknownKid,
    /// Denied (403): the subject or the cached token's `jti` is revoked.
    DeniedRevoked,
    /// Revocation feed polls answered (200 or 304).
    RevocationPollSuccess,
    /// Revocation feed polls that failed (outage, bad answer, past the bound).
    RevocationPollFailure,
    /// Feed answers that were snapshots (the set replaced).
    RevocationSnapshots,
    /// Feed answers that were deltas (applied onto the set).
    RevocationDeltas,
}

impl Counter {
    /// Every counter, in `repr` order.
    pub const ALL: [Counter; 25] = [
        Counter::Allowed,
        Counter::Bypassed,
        Counter::DeniedNoToken,
        Counter::DeniedInvalidToken,
        Counter::DeniedBinding,
        Counter::DeniedNoRule,
        Counter::DeniedBadPath,
        Counter::DeniedForbidden,
        Counter::DeniedRateLimited,
        Counter::DeniedUnavailable,
        Counter::FailOpen,
        Counter::CacheHit,
        Counter::CacheMiss,
        Counter::CacheRefresh,
        Counter::Coalesced,
        Counter::CoalescedRemote,
        Counter::ExchangeCalls,
        Counter::JwksRefreshSuccess,
        Counter::JwksRefreshFailure,
        Counter::JwksUnknownKid,
        Counter::DeniedRevoked,
        Counter::RevocationPollSuccess,
        Counter::RevocationPollFailure,
        Counter::RevocationSnapshots,
        Counter::RevocationDeltas,
    ];

    /// The exported metric name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "meshpass_requests_allowed",
            Counter::Bypassed => "meshpass_requests_bypassed",
            Counter::DeniedNoToken => "meshpass_denied_no_token",
            Counter::DeniedInvalidToken => "meshpass_denied_invalid_token",
            Counter::DeniedBinding => "meshpass_denied_binding_mismatch",
            Counter::DeniedNoRule => "meshpass_denied_no_rule",
            Counter::DeniedBadPath => "meshpass_denied_unnormalised_path",
            Counter::DeniedForbidden => "meshpass_denied_exchange_forbidden",
            Counter::DeniedRateLimited => "meshpass_denied_rate_limited",
            Counter::DeniedUnavailable => "meshpass_denied_unavailable",
            Counter::FailOpen => "meshpass_failure_mode_allowed",
            Counter::CacheHit => "meshpass_cache_hits",
            Counter::CacheMiss => "meshpass_cache_misses",
            Counter::CacheRefresh => "meshpass_cache_refreshes",
            Counter::Coalesced => "meshpass_exchange_coalesced",
            Counter::CoalescedRemote => "meshpass_exchange_coalesced_other_worker",
            Counter::ExchangeCalls => "meshpass_exchange_calls",
            Counter::JwksRefreshSuccess => "meshpass_jwks_refresh_success",
            Counter::JwksRefreshFailure => "meshpass_jwks_refresh_failure",
            Counter::JwksUnknownKid => "meshpass_jwks_unknown_kid_refetch",
            Counter::DeniedRevoked => "meshpass_denied_revoked",
            Counter::RevocationPollSuccess => "meshpass_revocation_poll_success",
            Counter::RevocationPollFailure => "meshpass_revocation_poll_failure",
            Counter::RevocationSnapshots => "meshpass_revocation_snapshots",
            Counter::RevocationDeltas => "meshpass_revocation_deltas",
        }
    }
}

/// The gauges the filter exports (set, not added to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    /// Seconds since the revocation feed last answered (since start before that).
    RevocationStaleness,
    /// The revocation feed version the set is at.
    RevocationVersion,
}

impl Gauge {
    /// Every gauge, in `repr` order.
    pub const ALL: [Gauge; 2] = [Gauge::RevocationStaleness, Gauge::RevocationVersion];

    /// The exported metric name.
    pub fn name(self) -> &'static str {
        match self {
            Gauge::RevocationStaleness => "meshpass_revocation_staleness_seconds",
            Gauge::RevocationVersion => "meshpass_revocation_version",
        }
    }
}

/// Histogram: exchange round-trip latency in milliseconds.
pub const EXCHANGE_LATENCY_MS: &str = "meshpass_exchange_latency_ms";

/// What an answer to a dispatched call looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// `:status`, `None` on timeout / reset (Envoy passes no headers then).
    pub status: Option<u16>,
    /// `retry-after`, when given.
    pub retry_after: Option<String>,
    /// The body (capped).
    pub body: Vec<u8>,
}

/// The host API the decision logic uses. "Current context" means the HTTP stream the
/// call is made for; [`Host::set_effective_context`] switches it (to resume waiters).
pub trait Host {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Logs a message (never a token).
    fn log(&self, level: Level, msg: &str);
    /// One request header of the current stream (`None` also when it is not UTF-8).
    fn header(&self, name: &str) -> Option<String>;
    /// One request header of the current stream as the host holds it (UTF-8 or not).
    fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.header(name).map(String::into_bytes)
    }
    /// The whole request header map (one host call; names lower case), read in place.
    fn headers(&self) -> HeaderMap;
    /// Sets (replaces) a request header.
    fn set_header(&mut self, name: &str, value: &str);
    /// Removes a request header.
    fn remove_header(&mut self, name: &str);
    /// A property (`connection.uri_san_peer_certificate`...).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Shared data value and its CAS token.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes shared data (`None` deletes), with compare-and-swap when `cas` is given.
    /// As in Envoy, a `cas` given for a key that does not exist yet creates it: with a
    /// CAS no existing entry has ([`CREATE_CAS`]) this is "create if absent".
    fn shared_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), SharedError>;
    /// Sends an HTTP call from the root context (so it outlives any one stream);
    /// returns its token.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String>;
    /// Answers the current stream locally.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Makes `context_id` current; false when it is gone.
    fn set_effective_context(&mut self, context_id: u32) -> bool;
    /// Resumes the current (paused) stream.
    fn resume(&mut self);
    /// Registers this worker's notification queue (a proxy-wasm shared queue of this
    /// VM) under `name`; its messages arrive at [`crate::worker::Worker::on_notify`].
    fn register_queue(&mut self, name: &str) -> bool;
    /// Enqueues `msg` on queue `name` of this VM; false when there is no such queue.
    fn enqueue(&mut self, name: &str, msg: &[u8]) -> bool;
    /// Adds to a counter.
    fn count(&mut self, c: Counter, n: u64);
    /// Records a latency sample.
    fn record_latency_ms(&mut self, ms: u64);
    /// Sets a gauge.
    fn gauge(&mut self, g: Gauge, value: u64);
}

/// What the HTTP context returns to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the (possibly rewritten) request.
    Continue,
    /// Paused: waiting for an exchange, or answered locally.
    Pause,
}
