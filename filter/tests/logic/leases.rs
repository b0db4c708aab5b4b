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

fn jwks_config() -> Value {
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

fn jwks_fetches(host: &Mock) -> Vec<Dispatched> {
    host.dispatched
        .iter()
        .filter(|d| d.cluster == "jwks")
        .cloned()
        .collect()
}

/// Sets up request `ctx` carrying `token` on the mock (peer = ALICE).
fn request(host: &mut Mock, ctx: u32, token: &str) {
    host.set_prop(&PEER, ALICE);
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
}

fn send_on(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    request(host, ctx, token);
    w.on_request(host, ctx)
}

fn answer(w: &mut Worker, host: &mut Mock, d: &Dispatched, resp: CallResponse) {
    host.ctx = d.from_ctx;
    w.on_call_response(host, d.token, resp);
}

/// A root tick, then the root-context dispatch its own queue kick asks for.
fn tick(w: &mut Worker, host: &mut Mock) {
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
fn two_workers_with_a_refresh_out(
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

fn shared_doc(host: &Mock) -> String {
    host.shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(_, (v, _))| String::from_utf8_lossy(v).to_string())
        .unwrap_or_default()
}

fn reply_status(host: &Mock, ctx: u32) -> Option<(u32, String)> {
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

// ================================================================== suspicion 3
// Other lost updates and stale answers.

/// README `jwks_min_refetch_secs`: an unknown kid's request "waits (up to 5 s ...) for
/// the refetched keys ... a key rotation costs no 401". Two workers see tokens of the
/// new kid at the same moment (what a rotation looks like): both run
/// `request_refetch`; the one whose CAS write of the lease loses decides again on the
/// fresh lease and parks for the refetch the other worker just forced (it answered
/// 401 at once).
#[test]
fn an_unknown_kid_seen_on_two_workers_at_once_parks_both_requests_and_refuses_neither() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    a.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut a, &mut host, &d, keys(&[&k1]));
    b.start(&mut host);
    host.now_ms += 60_000; // past jwks_min_refetch_secs: a refetch may be forced
    let ta = k2.svid(ISS, AUD, ALICE, now, 600);
    let tb = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    request(&mut host, 1, &ta);
    let verdict_a;
    {
        let b = &mut b;
        let tb = tb.clone();
        let mut racy = Racy::new(&mut host, "meshpass/jwks-lease/", move |m: &mut Mock| {
            // Worker B's request of the same rotation, on another thread, meanwhile.
            assert_eq!(send_on(b, m, 2, &tb), Verdict::Pause);
        });
        racy.m.ctx = 1;
        verdict_a = a.on_request(&mut racy, 1);
        assert!(racy.fired, "A tried to force the refetch");
    }
    assert_eq!(verdict_a, Verdict::Pause);
    assert!(
        !host.replies.contains_key(&1),
        "worker A's request with the new kid was refused {:?} at once: its CAS on the \
         JWKS lease lost to worker B forcing the same refetch, and request_refetch \
         returned false (no park) instead of re-reading the lease",
        reply_status(&host, 1)
    );
}

/// README `jwks_refresh_secs`: "An unknown kid forces one refetch ..., which an older
/// fetch's answer does not cancel, and its request waits for that refetch's answer."
/// `on_jwks` writes the lease back under its CAS, deciding again on a lease another
/// worker wrote meanwhile: a refetch forced in that window (its `last_forced_ms` and
/// `next_due_ms = now`) was overwritten with the next regular refresh 300 s away, and
/// the parked request refused 401 after its 5 s.
#[test]
fn a_refetch_forced_while_another_workers_answer_is_being_stored_is_not_lost() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    host.now_ms += 50;
    {
        let b = &mut b;
        let t2 = t2.clone();
        // The hook fires on A's lease write in on_jwks (after it read the lease).
        let mut racy = Racy::new(&mut host, "meshpass/jwks-lease/", move |m: &mut Mock| {
            assert_eq!(
                send_on(b, m, 7, &t2),
                Verdict::Pause,
                "B parks on the new kid"
            );
        });
        racy.m.ctx = refresh.from_ctx;
        // A's regular refresh (served before the rotation) answers without k2.
        a.on_call_response(&mut racy, refresh.token, keys(&[&k1]));
        assert!(racy.fired);
    }
    assert_eq!(
        b.pending_count(Counter::JwksUnknownKid) + host.counter(Counter::JwksUnknownKid),
        1,
        "B forced a refetch"
    );
    // Six seconds of ticks on both workers: the forced refetch is due at once.
    for _ in 0..6 {
        host.now_ms += 1000;
        tick(&mut a, &mut host);
        tick(&mut b, &mut host);
    }
    assert!(
        jwks_fetches(&host).len() >= 3,
        "the refetch B forced was never sent: A's on_jwks overwrote the lease (no CAS) \
         with the state it read before B forced it; B's request got {:?}",
        reply_status(&host, 7)
    );
}

/// DESIGN "Subject tokens": the last good key set is kept; README: a rotation costs no
/// 401. Worker A's regular refresh was sent before the rotation; worker B's forced
/// refetch, sent after, brings the new key. When A's (older) answer arrives after B's,
/// `on_jwks` keeps B's newer document (its `answered_sent_ms` is later than A's
/// `sent_ms`): stored over it, every worker reloaded the old set, and the new kid's
/// tokens were refused 401 until the next forced refetch was allowed.
#[test]
fn an_older_jwks_answer_arriving_after_a_newer_one_does_not_replace_the_newer_keys() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    // The issuer rotates to k2; B sees a token of it and forces a refetch.
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    // B's refetch answers first, with k2: B's request goes on to its exchange.
    host.now_ms += 50;
    answer(&mut b, &mut host, &refetch, keys(&[&k1, &k2]));
    tick(&mut b, &mut host);
    assert_eq!(exchanges(&host), 1, "B's parked request went on");
    // A's refresh, sent before the rotation, answers last, without k2.
    host.now_ms += 50;
    answer(&mut a, &mut host, &refresh, keys(&[&k1]));
    let doc = shared_doc(&host);
    // Another request of the new key, on worker A, a moment later.
    let t2b = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    host.now_ms += 100;
    send_on(&mut a, &mut host, 2, &t2b);
    // Up to 6 s (the 5 s park, and a tick): the request must go on to its exchange.
    for _ in 0..6 {
        if exchanges(&host) == 2 {
            break;
        }
        host.now_ms += 1000;
        tick(&mut a, &mut host);
    }
    assert!(
        exchanges(&host) == 2 && reply_status(&host, 2).is_none(),
        "a token of the new key was refused {:?} after an older JWKS answer (sent before \
         the rotation) replaced the newer stored key set; stored document has k2: {}",
        reply_status(&host, 2),
        doc.contains("\"kid\":\"k2\"")
    );
}

// ================================================================== the stored document
// An older answer stored with no CAS over a newer one; an older fetch's failure read as
// the refetch's; an unreadable stored document re-parsed and warned about per miss.

/// README "jwks_refresh_secs": an unknown kid forces one refetch "which an older
/// fetch's answer does not cancel"; a key rotation costs no 401.
///
/// Worker A's regular refresh (sent before the issuer rotated to k2) and worker B's
/// forced refetch (sent after, holding k2) are answered at the same moment on two
/// Envoy threads. `on_jwks` checked the lease's `answered_sent_ms` before it stored,
/// then stored the body with no CAS: B's newer document, stored inside A's window, was
/// overwritten by A's older one (and the lease still said B's fetch was the stored
/// one), so every worker reloaded the set without k2 and new k2 tokens were refused 401
/// for `jwks_min_refetch_secs`. The document now carries its fetch's send time and is
/// stored under CAS only over an older one.
#[test]
fn an_older_jwks_answer_stored_concurrently_with_a_newer_refetch_never_replaces_the_newer_keys() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    // The issuer rotates to k2; B sees a token of it, parks, and sends the refetch.
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    host.now_ms += 50;
    {
        let b = &mut b;
        let (k1, k2) = (&k1, &k2);
        // B's refetch (with k2) is answered on B's thread while A is storing its own
        // (older) answer: A has already read the lease and the stored document.
        let mut racy = Racy::new(&mut host, "meshpass/jwks/", move |m: &mut Mock| {
            answer(b, m, &refetch, keys(&[k1, k2]));
        });
        racy.m.ctx = refresh.from_ctx;
        a.on_call_response(&mut racy, refresh.token, keys(&[k1]));
        assert!(racy.fired, "A stored its answer");
    }
    let doc = shared_doc(&host);
    // Another request of the new key on worker B, a moment later: it goes on to its
    // exchange (up to the 5 s park and a tick), never refused.
    let t2b = k2.svid(ISS, AUD, ALICE, now + 1, 600);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let before = exchanges(&host);
    send_on(&mut b, &mut host, 2, &t2b);
    for _ in 0..7 {
        if exchanges(&host) > before || host.replies.contains_key(&2) {
            break;
        }
        host.now_ms += 1000;
        tick(&mut b, &mut host);
    }
    assert!(
        exchanges(&host) > before && reply_status(&host, 2).is_none(),
        "a token of the rotated-in key k2 was refused {:?}: A's older answer replaced B's \
         newer refetch answer; stored document holds k2: {}",
        reply_status(&host, 2),
        doc.contains("\"kid\":\"k2\"")
    );
}

/// README "jwks_min_refetch_secs": the request "waits ... for the refetched keys"; "a
/// refetch that failed (the endpoint down) is 503".
///
/// Worker A's regular refresh was out (sent before the rotation); worker B parked a k2
/// token and sent the forced refetch; A's older refresh then failed. `failed_since`
/// compared only the failure's time with the park time, so `retry_parked` read it as
/// the refetch's failure and answered B's request 503 while B's refetch (which brings
/// k2) was still out. The lease now records the failed fetch's send time.
#[test]
fn a_request_parked_on_an_unknown_kid_is_not_refused_when_an_older_fetch_fails_while_its_refetch_is_out(
) {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = two_workers_with_a_refresh_out(&mut a, &mut b, &mut host, &k1);
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send_on(&mut b, &mut host, 1, &t2), Verdict::Pause);
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    // A's refresh, sent before the rotation, fails (the endpoint hiccuped then).
    host.now_ms += 50;
    let unavailable = CallResponse {
        status: Some(503),
        ..Default::default()
    };
    answer(&mut a, &mut host, &refresh, unavailable);
    host.now_ms += 900;
    tick(&mut b, &mut host);
    assert!(
        !host.replies.contains_key(&1),
        "the request parked on k2 was answered {:?} because a fetch sent before it \
         parked failed, while its own refetch was still out",
        reply_status(&host, 1)
    );
    // The refetch brings k2: the request goes on to its exchange.
    answer(&mut b, &mut host, &refetch, keys(&[&k1, &k2]));
    tick(&mut b, &mut host);
    assert_eq!(
        exchanges(&host),
        1,
        "the parked request did not go on once its refetch brought k2: {:?}",
        reply_status(&host, 1)
    );
}

/// README "Configuration": warnings a sustained condition would repeat per request are
/// logged at most once a minute per worker. A stored JWKS document that does not parse
/// is such a condition: `load_remote_keys` runs on every miss, did not record the
/// unreadable document's CAS, and so re-read, re-parsed (up to 256 KiB) and warned on
/// every miss until the next good fetch replaced it. Its CAS is now recorded and the
/// warning rate-limited.
#[test]
fn an_unreadable_stored_jwks_is_warned_about_at_most_once_a_minute_not_on_every_miss() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&jwks_config());
    let k1 = Key::new("k1");
    w.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    // The stored document is cut short.
    let (key, (doc, cas)) = host
        .shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    host.shared
        .insert(key, (doc[..doc.len() / 2].to_vec(), cas + 1000));
    // Ten distinct tokens (ten misses) within a second.
    for i in 0..10u32 {
        let t = k1.svid(ISS, AUD, ALICE, now + u64::from(i), 600);
        send_on(&mut w, &mut host, 10 + i, &t);
        kick(&mut host, &mut w);
        host.now_ms += 100;
    }
    // Fail closed but not broken: the last good keys still validate (exchanges went).
    assert_eq!(exchanges(&host), 10, "the last good keys were kept");
    let warned = host.warnings("stored JWKS does not parse");
    assert!(
        warned <= 1,
        "an unreadable stored JWKS was warned about {warned} times in one second"
    );
}

/// A rollout: a stored document without the send-time prefix (written by an older
/// build in the same Envoy) is still read.
#[test]
fn a_stored_jwks_without_the_send_time_prefix_is_still_read() {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let cfg = jwks_config();
    let (mut a, mut b) = (worker(&cfg), worker(&cfg));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    a.start(&mut host);
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut a, &mut host, &d, keys(&[&k1]));
    let (key, cas) = host
        .shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks/"))
        .map(|(k, v)| (k.clone(), v.1))
        .unwrap();
    host.shared
        .insert(key, (jwks(&[&k2]).into_bytes(), cas + 1));
    b.start(&mut host);
    assert_eq!(jwks_fetches(&host).len(), 1, "B loaded the stored keys");
    send_on(&mut b, &mut host, 1, &k2.svid(ISS, AUD, ALICE, now, 600));
    kick(&mut host, &mut b);
    assert_eq!(exchanges(&host), 1, "{:?}", reply_status(&host, 1));
}
