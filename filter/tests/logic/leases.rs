//! The shared-data leases (JWKS fetch, revocation poll) across workers, the stored
//! JWKS document they guard, and calls that are never answered, through the mock host.
//!
//! Several tests need two workers (two Envoy threads) whose steps interleave *inside*
//! one callback: between worker A's read of a lease and A's write of it, worker B runs.
//! [`Racy`] wraps the mock and runs a hook (B's step) just before A's first write to a
//! key with a given prefix, which is exactly the window two threads have in Envoy.

use super::*;
use meshpass_filter::api::{
    CallResponse, Counter, Gauge, HeaderMap, Host, Level, SharedError, Verdict,
};
use meshpass_filter::exchange::DISPATCH_KICK;
use meshpass_filter::worker::Worker;
use serde_json::{json, Value};

// ------------------------------------------------------------------ the racing host

/// Worker B's step, run inside worker A's window.
type Hook<'a> = Box<dyn FnOnce(&mut Mock) + 'a>;

/// The mock, plus one hook run just before the first `shared_set` of a key starting
/// with `prefix` (the other worker's step, landing in this worker's read-write window).
pub(super) struct Racy<'a> {
    pub(super) m: &'a mut Mock,
    prefix: &'static str,
    hook: Option<Hook<'a>>,
    pub(super) fired: bool,
}

impl<'a> Racy<'a> {
    pub(super) fn new(
        m: &'a mut Mock,
        prefix: &'static str,
        hook: impl FnOnce(&mut Mock) + 'a,
    ) -> Racy<'a> {
        Racy {
            m,
            prefix,
            hook: Some(Box::new(hook)),
            fired: false,
        }
    }
}

impl Host for Racy<'_> {
    fn now_ms(&self) -> u64 {
        self.m.now_ms()
    }
    fn log(&self, level: Level, msg: &str) {
        self.m.log(level, msg)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.m.header(name)
    }
    fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.m.header_bytes(name)
    }
    fn headers(&self) -> HeaderMap {
        self.m.headers()
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.m.set_header(name, value)
    }
    fn remove_header(&mut self, name: &str) {
        self.m.remove_header(name)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.m.property(path)
    }
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.m.shared_get(key)
    }
    fn shared_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        if key.starts_with(self.prefix) {
            if let Some(hook) = self.hook.take() {
                // The other thread runs now; this worker's context is its own again after.
                let ctx = self.m.ctx;
                hook(self.m);
                self.m.ctx = ctx;
                self.fired = true;
            }
        }
        self.m.shared_set(key, value, cas)
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        self.m.dispatch(cluster, headers, body, timeout_ms)
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.m.send_response(status, headers, body)
    }
    fn set_effective_context(&mut self, context_id: u32) -> bool {
        self.m.set_effective_context(context_id)
    }
    fn resume(&mut self) {
        self.m.resume()
    }
    fn register_queue(&mut self, name: &str) -> bool {
        self.m.register_queue(name)
    }
    fn enqueue(&mut self, name: &str, msg: &[u8]) -> bool {
        self.m.enqueue(name, msg)
    }
    fn count(&mut self, c: Counter, n: u64) {
        self.m.count(c, n)
    }
    fn record_latency_ms(&mut self, ms: u64) {
        self.m.record_latency_ms(ms)
    }
    fn gauge(&mut self, g: Gauge, value: u64) {
        self.m.gauge(g, value)
    }
}

// ------------------------------------------------------------------ JWKS helpers

pub(super) fn jwks_config() -> Value {
    json!({
        "mode": "SERVER",
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "jwks_cluster": "jwks",
            "jwks_path": "/keys",
            "jwks_refresh_secs": 300,
        }],
        "exchange": {"cluster": "exchange", "authority": "exchange.test"},
        "default_rule": {"resource": "https://default.test", "scopes": ["read"]},
        "revocation": {"enabled": false},
    })
}

pub(super) fn jwks_fetches(host: &Mock) -> Vec<Dispatched> {
    host.dispatched
        .iter()
        .filter(|d| d.cluster == "jwks")
        .cloned()
        .collect()
}

/// Sets up request `ctx` carrying `token` on the mock (peer = ALICE).
pub(super) fn request(host: &mut Mock, ctx: u32, token: &str) {
    host.set_prop(&PEER, ALICE);
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
}

pub(super) fn send_on(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    request(host, ctx, token);
    w.on_request(host, ctx)
}

pub(super) fn answer(w: &mut Worker, host: &mut Mock, d: &Dispatched, resp: CallResponse) {
    host.ctx = d.from_ctx;
    w.on_call_response(host, d.token, resp);
}

/// A root tick, then the root-context dispatch its own queue kick asks for.
pub(super) fn tick(w: &mut Worker, host: &mut Mock) {
    host.ctx = 0;
    w.on_tick(host);
    if let Some(q) = w.queue_name().map(str::to_string) {
        let before = host.enqueued.len();
        host.enqueued
            .retain(|(n, m)| !(*n == q && m.as_slice() == DISPATCH_KICK));
        if host.enqueued.len() != before {
            w.on_notify(host, DISPATCH_KICK);
        }
    }
}

/// Worker A with its first keys (`k1`), then its regular refresh out (unanswered);
/// worker B started after, with the shared keys. Returns the refresh.
pub(super) fn two_workers_with_a_refresh_out(
    a: &mut Worker,
    b: &mut Worker,
    host: &mut Mock,
    k1: &Key,
) -> Dispatched {
    a.start(host);
    let d = jwks_fetches(host)[0].clone();
    answer(a, host, &d, keys(&[k1]));
    b.start(host); // loads the shared keys: no fetch
    assert_eq!(jwks_fetches(host).len(), 1);
    host.now_ms += 301_000;
    tick(a, host);
    let f = jwks_fetches(host);
    assert_eq!(f.len(), 2, "A's regular refresh is out");
    f[1].clone()
}

pub(super) fn shared_doc(host: &Mock) -> String {
    host.shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(_, (v, _))| String::from_utf8_lossy(v).to_string())
        .unwrap_or_default()
}

pub(super) fn reply_status(host: &Mock, ctx: u32) -> Option<(u32, String)> {
    host.replies.get(&ctx).map(|r| (r.status, r.body.clone()))
}

// ================================================================== suspicion 1
// The JWKS lease is created without CAS when absent.

/// README "Shared data and workers": "On the tick, the worker that wins the lease by
/// CAS fetches". An absent lease is created with `CREATE_CAS` ("create if still
/// absent"): of two workers whose ticks interleave, one wins and fetches (an
/// unconditional write let both "win": one fetch more). (The absent lease is reached
/// here by removing it: in a running Envoy it is absent only until the first answer,
/// while every worker still skips the lease for its own start-time fetch.)
#[test]
fn two_workers_that_both_find_the_jwks_lease_absent_fetch_the_key_set_only_once() {
    let mut host = Mock::new(now_secs() * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let k1 = Key::new("k1");
    a.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut a, &mut host, &d, keys(&[&k1]));
    b.start(&mut host);
    // The lease is absent (as before any answer was recorded).
    host.shared
        .retain(|k, _| !k.starts_with("meshpass/jwks-lease/"));
    host.now_ms += 1000;
    {
        let b = &mut b;
        let mut racy = Racy::new(&mut host, "meshpass/jwks-lease/", move |m: &mut Mock| {
            m.ctx = 0;
            b.on_tick(m);
        });
        racy.m.ctx = 0;
        a.on_tick(&mut racy);
        assert!(racy.fired, "A wrote the lease");
    }
    assert_eq!(
        jwks_fetches(&host).len(),
        2,
        "two workers both took the absent JWKS lease and both fetched: the lease is \
         created without CAS (read_lease gives None, fetch_due_keys writes with None)"
    );
}

/// The revocation lease alike: the same interleaving gives one poll.
#[test]
fn two_workers_that_both_find_the_revocation_lease_absent_poll_the_feed_only_once() {
    let key = Key::new("k1");
    let cfg = rv_config(&key);
    let mut host = Mock::new(now_secs() * 1000);
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    a.start(&mut host);
    b.start(&mut host);
    {
        let b = &mut b;
        let mut racy = Racy::new(&mut host, "meshpass/rv-lease/", move |m: &mut Mock| {
            m.ctx = 0;
            b.on_tick(m);
        });
        racy.m.ctx = 0;
        a.on_tick(&mut racy);
        assert!(racy.fired);
    }
    assert_eq!(polls(&host).len(), 1, "the lease lets one worker poll");
}

// ================================================================== suspicion 2
// Leases left by a worker that is gone; calls never answered.

/// A worker that took the JWKS lease and sent the regular refresh is destroyed (config
/// reload): its call is never answered. The lease is time-bound (`next_due` = taken +
/// 10 s), so another worker fetches once it runs out.
#[test]
fn a_jwks_lease_left_by_a_destroyed_worker_runs_out_and_another_worker_fetches() {
    let mut host = Mock::new(now_secs() * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let k1 = Key::new("k1");
    let _lost = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    drop(a); // the VM that held the lease is gone, its call with it
    for _ in 0..15 {
        host.now_ms += 1000;
        tick(&mut b, &mut host);
    }
    assert_eq!(
        jwks_fetches(&host).len(),
        3,
        "nobody fetched the key set after the lease holder was destroyed"
    );
}

fn rv_config(key: &Key) -> Value {
    json!({
        "mode": "SERVER",
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "jwks": jwks(&[key]),
        }],
        "exchange": {"cluster": "exchange", "authority": "exchange.test"},
        "default_rule": {"resource": "https://default.test", "scopes": ["read"]},
        "revocation": {"poll_interval_ms": 1000},
    })
}

fn polls(host: &Mock) -> Vec<Dispatched> {
    host.dispatched
        .iter()
        .filter(|d| d.header(":method") == Some("GET"))
        .cloned()
        .collect()
}

/// The poller is destroyed with its poll out. The revocation lease is time-bound
/// (`next_due` = taken + `exchange.timeout_ms` + 1 s), so another worker polls once it
/// runs out.
#[test]
fn a_revocation_lease_left_by_a_destroyed_worker_runs_out_and_another_worker_polls() {
    let key = Key::new("k1");
    let cfg = rv_config(&key);
    let mut host = Mock::new(now_secs() * 1000);
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    a.start(&mut host);
    b.start(&mut host);
    host.ctx = 0;
    a.on_tick(&mut host);
    assert_eq!(polls(&host).len(), 1, "A polls");
    drop(a);
    for _ in 0..5 {
        host.now_ms += 1000;
        host.ctx = 0;
        b.on_tick(&mut host);
    }
    assert_eq!(
        polls(&host).len(),
        2,
        "nobody polled after the lease holder was destroyed"
    );
}

/// README `tick_ms`: the tick does "stuck-call cleanup". A JWKS fetch whose answer never
/// comes (Envoy answers every root call at its 5 s timeout, so this is the defence in
/// depth case: an answer dropped on the way, as `host.rs` does when the worker is
/// borrowed) is answered as a timeout by the tick past its timeout and some slack:
/// `fetch_due_keys` skips an issuer while this worker has a `Call::Jwks` for it, so
/// with one worker (`--concurrency 1`) the key set was never refreshed again.
#[test]
fn a_jwks_fetch_that_is_never_answered_does_not_stop_that_worker_fetching_for_good() {
    let mut host = Mock::new(now_secs() * 1000);
    let mut w = worker(&jwks_config());
    let k1 = Key::new("k1");
    w.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    host.now_ms += 301_000;
    tick(&mut w, &mut host);
    assert_eq!(jwks_fetches(&host).len(), 2, "the regular refresh is out");
    // Its answer never comes. A minute later (12 × the 5 s fetch timeout):
    for _ in 0..60 {
        host.now_ms += 1000;
        tick(&mut w, &mut host);
    }
    assert!(
        jwks_fetches(&host).len() > 2,
        "a JWKS fetch never answered stops this worker fetching the key set for good: \
         the lease ran out 10 s after it was taken, but fetch_due_keys skips an issuer \
         with a Call::Jwks in Worker::calls, and no tick step ever drops it"
    );
}

/// Same for the revocation feed: `revocation_tick` returns early while a
/// `Call::Revocations` is out, so a poll never answered stopped polling, silently (no
/// "feed unavailable" warning: only `feed_failed` writes it). It now fails as a
/// timeout, warned and backed off.
#[test]
fn a_revocation_poll_that_is_never_answered_does_not_stop_that_worker_polling_for_good() {
    let key = Key::new("k1");
    let mut host = Mock::new(now_secs() * 1000);
    let mut w = worker(&rv_config(&key));
    w.start(&mut host);
    host.ctx = 0;
    w.on_tick(&mut host);
    assert_eq!(polls(&host).len(), 1, "the first poll is out");
    // Its answer never comes. 30 s later (poll 1 s, exchange timeout 2 s):
    for _ in 0..30 {
        host.now_ms += 1000;
        host.ctx = 0;
        w.on_tick(&mut host);
    }
    let warned = host
        .logs
        .borrow()
        .iter()
        .any(|l| l.contains("revocation feed unavailable"));
    assert!(
        polls(&host).len() > 1,
        "a revocation poll never answered stops this worker polling for good \
         (revocation_tick returns while a Call::Revocations is in Worker::calls); \
         warning logged: {warned}; staleness gauge: {:?}",
        host.gauges.get(Gauge::RevocationStaleness.name())
    );
}
