//! Revocation through the mock host: configuration, the feed poll (one worker at a
//! time, snapshot then deltas, 304), the set shared with every worker, the request path
//! (revoked subject, pattern, `jti`: 403 and the cache entry dropped; lifting restores
//! service) and a feed outage (last set kept, staleness gauge, one warning a minute).
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use meshpass_filter::api::{CallResponse, Counter, Gauge, Verdict};
use meshpass_filter::cache;
use meshpass_filter::config::Config;
use meshpass_filter::exchange::DISPATCH_KICK;
use meshpass_filter::revoke::REVOCATIONS_KICK;
use meshpass_filter::worker::Worker;
use serde_json::{json, Value};

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/shop/sa/bob";
const CAROL: &str = "spiffe://cluster.local/ns/other/sa/carol";
const PEER: [&str; 2] = ["connection", "uri_san_peer_certificate"];

fn config(key: &Key) -> Value {
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

fn parse(cfg: &Value) -> Result<Config, String> {
    Config::parse(cfg.to_string().as_bytes()).map_err(|e| e.to_string())
}

struct Fx {
    key: Key,
    host: Mock,
    w: Worker,
    now: u64,
    minted: u32,
}

impl Fx {
    fn new() -> Fx {
        let key = Key::new("k1");
        let now = now_secs();
        let mut host = Mock::new(now * 1000);
        let mut w = Worker::new(parse(&config(&key)).unwrap());
        w.start(&mut host);
        Fx {
            key,
            host,
            w,
            now,
            minted: 0,
        }
    }

    /// A fresh JWT-SVID of `sub` (a unique `jti`: never the same token twice).
    fn token(&mut self, sub: &str) -> String {
        self.minted += 1;
        self.key
            .sign(&json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": self.now,
            "exp": self.now + 600, "jti": format!("svid-{}", self.minted)}))
    }

    /// A request of `sub` (over a connection whose peer is `sub`) with `token`.
    fn send(&mut self, ctx: u32, sub: &str, token: &str) -> Verdict {
        self.host.set_prop(&PEER, sub);
        let auth = format!("Bearer {token}");
        self.host
            .request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
        self.w.on_request(&mut self.host, ctx)
    }

    /// Runs this worker's queued root-context work (dispatch kicks, revocation kicks).
    fn drain_queue(&mut self) {
        let Some(q) = self.w.queue_name().map(str::to_string) else {
            return;
        };
        let msgs: Vec<Vec<u8>> = self
            .host
            .enqueued
            .iter()
            .filter(|(n, _)| *n == q)
            .map(|(_, m)| m.clone())
            .collect();
        self.host.enqueued.retain(|(n, _)| *n != q);
        for m in msgs {
            self.host.ctx = 0;
            self.w.on_notify(&mut self.host, &m);
        }
    }

    /// Exchanges `token` of `sub` for `participant` and caches it (a miss, then the
    /// answer); returns the miss's verdict.
    fn cache(&mut self, ctx: u32, sub: &str, token: &str, participant: &str) {
        assert_eq!(self.send(ctx, sub, token), Verdict::Pause);
        self.drain_queue();
        let d = self.host.dispatched.last().unwrap().clone();
        assert_eq!(d.header(":path"), Some("/token"));
        self.host.ctx = d.from_ctx;
        self.w
            .on_call_response(&mut self.host, d.token, ok_response(participant, 300));
        assert_eq!(
            self.host.req_header(ctx, "authorization"),
            Some(format!("Bearer {participant}"))
        );
    }

    fn tick(&mut self) {
        self.host.ctx = 0;
        self.w.on_tick(&mut self.host);
    }

    /// The feed polls dispatched so far (GETs).
    fn polls(&self) -> Vec<Dispatched> {
        self.host
            .dispatched
            .iter()
            .filter(|d| d.header(":method") == Some("GET"))
            .cloned()
            .collect()
    }

    /// Ticks until a poll goes out and answers it with `resp`; returns the poll's path.
    fn poll(&mut self, resp: CallResponse) -> String {
        let before = self.polls().len();
        self.tick();
        let polls = self.polls();
        assert_eq!(polls.len(), before + 1, "one poll per due tick");
        let d = polls.last().unwrap().clone();
        self.w.on_call_response(&mut self.host, d.token, resp);
        d.header(":path").unwrap().to_string()
    }

    /// Moves the clock past the poll interval.
    fn later(&mut self, ms: u64) {
        self.host.now_ms += ms;
    }

    fn count(&self, c: Counter) -> u64 {
        self.w.pending_count(c) + self.host.counter(c)
    }
}

fn feed(v: Value) -> CallResponse {
    CallResponse {
        status: Some(200),
        retry_after: None,
        body: v.to_string().into_bytes(),
    }
}

fn status(s: u16) -> CallResponse {
    CallResponse {
        status: Some(s),
        retry_after: None,
        body: Vec::new(),
    }
}

fn subject(id: &str, m: &str, reason: &str) -> Value {
    json!({"id": id, "target": "subject", "match": m, "reason": reason, "until": null,
           "created_at": 1, "created_by": "spiffe://cluster.local/ns/ops/sa/admin"})
}

/// A participant token (unsigned: the filter only reads its `jti`).
fn jti(id: &str, j: &str, reason: &str) -> Value {
    json!({"id": id, "target": "jti", "match": j, "reason": reason, "until": null})
}

fn participant(jti: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(json!({"sub": "x", "jti": jti}).to_string())
    )
}

/// A participant token acted for by `actor` (`act.sub`).
fn participant_acted(jti: &str, actor: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(json!({"sub": "x", "jti": jti, "act": {"sub": actor}}).to_string())
    )
}

fn assert_revoked(host: &Mock, ctx: u32, reason: &str) {
    let r = host
        .replies
        .get(&ctx)
        .unwrap_or_else(|| panic!("request {ctx} got no reply: not refused"));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"error": "access_denied", "error_description": format!("revoked: {reason}")})
    );
}

// ---------------------------------------------------------------- configuration

#[test]
fn revocation_is_on_by_default_with_an_exchange_and_polls_every_five_seconds() {
    let key = Key::new("k1");
    let mut cfg = config(&key);
    cfg.as_object_mut().unwrap().remove("revocation");
    let rc = parse(&cfg).unwrap().revocation.unwrap();
    assert_eq!(rc.poll_interval_ms, 5000);
    assert_eq!(rc.path, "/revocations");
    assert_eq!(
        (rc.cluster.as_str(), rc.authority.as_str()),
        ("exchange", "exchange.test")
    );
    cfg["revocation"] = json!({"cluster": "feed", "authority": "feed.test"});
    let rc = parse(&cfg).unwrap().revocation.unwrap();
    assert_eq!(
        (rc.cluster.as_str(), rc.authority.as_str()),
        ("feed", "feed.test")
    );
    cfg["revocation"] = json!({"enabled": false});
    assert!(parse(&cfg).unwrap().revocation.is_none());
}

#[test]
fn invalid_revocation_settings_are_refused_naming_the_field() {
    let key = Key::new("k1");
    for (edit, field) in [
        (
            json!({"poll_interval_ms": 0}),
            "revocation.poll_interval_ms",
        ),
        (
            json!({"poll_interval_ms": 3_600_001}),
            "revocation.poll_interval_ms",
        ),
        (
            json!({"poll_interval_ms": 500}),
            "revocation.poll_interval_ms",
        ),
        (json!({"path": "revocations"}), "revocation.path"),
        (json!({"path": "/r?since=1"}), "revocation.path"),
        (json!({"enabled": "yes"}), "revocation.enabled"),
        (json!({"interval": 5}), "revocation"),
        (json!({"cluster": " "}), "revocation.cluster"),
        (json!({"authority": "a b"}), "revocation.authority"),
    ] {
        let mut cfg = config(&key);
        cfg["revocation"] = edit.clone();
        let e = parse(&cfg).unwrap_err();
        assert!(
            e.starts_with(&format!("invalid configuration: {field}")),
            "{edit}: {e}"
        );
    }
    // 500 ms is fine once the tick is faster.
    let mut cfg = config(&key);
    cfg["tick_ms"] = json!(250);
    cfg["revocation"] = json!({"poll_interval_ms": 500});
    assert!(parse(&cfg).is_ok());
    // The benchmark aid without an exchange cannot poll.
    let cfg = json!({
        "validate_only_for_benchmarks": true, "mode": "CLIENT",
        "own_identity": {"spiffe_id": ALICE},
        "issuers": config(&key)["issuers"].clone(),
        "revocation": {"enabled": true},
    });
    assert!(parse(&cfg)
        .unwrap_err()
        .starts_with("invalid configuration: revocation.enabled"));
}

// ---------------------------------------------------------------- the poll

#[test]
fn one_worker_polls_the_feed_through_the_exchange_cluster_and_every_worker_loads_the_set() {
    let mut f = Fx::new();
    let mut w2 = Worker::new(parse(&config(&f.key)).unwrap());
    w2.start(&mut f.host);
    f.tick();
    w2.on_tick(&mut f.host);
    let polls = f.polls();
    assert_eq!(polls.len(), 1, "the lease lets one worker poll");
    let p = &polls[0];
    assert_eq!(p.cluster, "exchange");
    assert_eq!(p.header(":path"), Some("/revocations?since=0"));
    assert_eq!(p.header(":authority"), Some("exchange.test"));
    assert_eq!(p.header("accept"), Some("application/json"));
    f.w.on_call_response(
        &mut f.host,
        p.token,
        feed(json!({"version": 3, "full": true,
            "added": [subject("rv-1", ALICE, "compromised node")], "removed": []})),
    );
    assert_eq!(f.w.revocation_version(), 3);
    // The other worker is told through its queue and loads the set at once.
    let q2 = w2.queue_name().unwrap().to_string();
    assert!(f
        .host
        .enqueued
        .iter()
        .any(|(n, m)| *n == q2 && m.as_slice() == REVOCATIONS_KICK));
    w2.on_notify(&mut f.host, REVOCATIONS_KICK);
    assert_eq!(w2.revocation_version(), 3);
    // Nobody polls again before the interval.
    f.tick();
    w2.on_tick(&mut f.host);
    assert_eq!(f.polls().len(), 1);
    // A worker that missed the message loads the set on its tick.
    let mut w3 = Worker::new(parse(&config(&f.key)).unwrap());
    f.host.ctx = 0;
    w3.on_tick(&mut f.host);
    assert_eq!(w3.revocation_version(), 3);
    assert_eq!(f.count(Counter::RevocationSnapshots), 1);
}

#[test]
fn after_a_snapshot_the_next_poll_asks_from_its_version_and_applies_a_delta() {
    let mut f = Fx::new();
    let path = f.poll(feed(json!({"version": 3, "full": true,
        "added": [subject("rv-1", ALICE, "a")]})));
    assert_eq!(path, "/revocations?since=0");
    f.later(1000);
    let path = f.poll(feed(json!({"version": 5, "full": false,
        "added": [subject("rv-2", BOB, "b")], "removed": ["rv-1"]})));
    assert_eq!(path, "/revocations?since=3");
    assert_eq!(f.w.revocation_version(), 5);
    assert_eq!(f.count(Counter::RevocationDeltas), 1);
    assert_eq!(f.count(Counter::RevocationSnapshots), 1);
    // 304: nothing changes, the poll still counts as an answer.
    f.later(1000);
    assert_eq!(f.poll(status(304)), "/revocations?since=5");
    assert_eq!(f.w.revocation_version(), 5);
    assert_eq!(f.count(Counter::RevocationPollSuccess), 3);
    f.tick();
    assert_eq!(f.host.gauges[Gauge::RevocationStaleness.name()], 0);
    assert_eq!(f.host.gauges[Gauge::RevocationVersion.name()], 5);
}

#[test]
fn a_delta_that_does_not_follow_the_set_is_refused_and_the_set_kept() {
    let mut f = Fx::new();
    f.poll(feed(
        json!({"version": 3, "full": true, "added": [subject("rv-1", ALICE, "a")]}),
    ));
    f.later(1000);
    f.poll(feed(
        json!({"version": 2, "full": false, "added": [], "removed": ["rv-1"]}),
    ));
    assert_eq!(f.w.revocation_version(), 3);
    assert_eq!(f.count(Counter::RevocationPollFailure), 1);
    assert!(f
        .host
        .logs
        .borrow()
        .iter()
        .any(|l| l.contains("does not follow")));
}

// ---------------------------------------------------------------- the request path

#[test]
fn a_revoked_subjects_cached_token_is_refused_403_and_dropped_while_others_are_served() {
    let mut f = Fx::new();
    let (ta, tb) = (f.token(ALICE), f.token(BOB));
    f.cache(1, ALICE, &ta, "pa");
    f.cache(2, BOB, &tb, "pb");
    // Warm both the shared entry and the memo.
    assert_eq!(f.send(3, ALICE, &ta), Verdict::Continue);
    assert_eq!(f.send(4, ALICE, &ta), Verdict::Continue);
    f.poll(feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", ALICE, "compromised node")]})));
    assert_eq!(f.send(5, ALICE, &ta), Verdict::Pause);
    assert_revoked(&f.host, 5, "compromised node");
    // The shared entry is gone, not merely skipped.
    let target = f.w.config.default_target.clone().unwrap();
    let slot = cache::entry_key(&cache::key(0, &target.digest, &ta, None), 4096);
    assert!(f.host.shared[&slot].0.is_empty());
    // Bob is served from the cache as before.
    let dispatched = f.host.dispatched.len();
    assert_eq!(f.send(6, BOB, &tb), Verdict::Continue);
    assert_eq!(
        f.host.req_header(6, "authorization").as_deref(),
        Some("Bearer pb")
    );
    assert_eq!(f.host.dispatched.len(), dispatched);
    // A new token of Alice is refused without an exchange.
    let fresh = f.token(ALICE);
    assert_eq!(f.send(7, ALICE, &fresh), Verdict::Pause);
    assert_revoked(&f.host, 7, "compromised node");
    f.drain_queue();
    assert_eq!(f.host.dispatched.len(), dispatched);
    assert_eq!(f.count(Counter::DeniedRevoked), 2);
}

#[test]
fn lifting_the_revocation_restores_service_with_a_new_exchange() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    f.cache(1, ALICE, &ta, "pa");
    f.poll(feed(
        json!({"version": 1, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    assert_eq!(f.send(2, ALICE, &ta), Verdict::Pause);
    f.later(1000);
    f.poll(feed(
        json!({"version": 2, "full": false, "added": [], "removed": ["rv-1"]}),
    ));
    f.cache(3, ALICE, &ta, "pa2");
    assert_eq!(f.send(4, ALICE, &ta), Verdict::Continue);
}

#[test]
fn a_subject_pattern_revokes_every_matching_subject_and_no_other() {
    let mut f = Fx::new();
    let (ta, tc) = (f.token(ALICE), f.token(CAROL));
    f.cache(1, ALICE, &ta, "pa");
    f.cache(2, CAROL, &tc, "pc");
    f.poll(feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", "spiffe://cluster.local/ns/shop/*", "namespace shop")]})));
    assert_eq!(f.send(3, ALICE, &ta), Verdict::Pause);
    assert_revoked(&f.host, 3, "namespace shop");
    assert_eq!(f.send(4, CAROL, &tc), Verdict::Continue);
}

#[test]
fn a_revoked_jti_refuses_that_cached_token_only() {
    let mut f = Fx::new();
    let (t1, t2, t3) = (f.token(ALICE), f.token(ALICE), f.token(ALICE));
    f.cache(1, ALICE, &t1, &participant("j-1")); // in shared data only
    f.cache(2, ALICE, &t2, &participant("j-2"));
    f.cache(3, ALICE, &t3, &participant("j-3"));
    assert_eq!(f.send(4, ALICE, &t2), Verdict::Continue); // memoised too
    assert_eq!(f.send(5, ALICE, &t3), Verdict::Continue); // memoised too
    f.poll(feed(json!({"version": 1, "full": true, "added": [
        {"id": "rv-8", "target": "jti", "match": "j-1", "reason": "token leaked"},
        {"id": "rv-9", "target": "jti", "match": "j-3", "reason": "token leaked"}]})));
    // Found in shared data: refused, and the entry dropped.
    assert_eq!(f.send(6, ALICE, &t1), Verdict::Pause);
    assert_revoked(&f.host, 6, "token leaked");
    // Unrevoked jti: served as before.
    assert_eq!(f.send(7, ALICE, &t2), Verdict::Continue);
    assert_eq!(
        f.host.req_header(7, "authorization"),
        Some(format!("Bearer {}", participant("j-2")))
    );
    // Memoised with a revoked jti: the new set swept it (memo and shared data), so the
    // subject (not revoked) gets a new participant token, never the revoked one.
    let calls = f.host.dispatched.len();
    assert_eq!(f.send(8, ALICE, &t3), Verdict::Pause);
    assert!(!f.host.replies.contains_key(&8));
    f.drain_queue();
    assert_eq!(f.host.dispatched.len(), calls + 1);
    assert_eq!(
        f.host.dispatched.last().unwrap().header(":path"),
        Some("/token")
    );
}

#[test]
fn the_memo_sweep_drops_the_shared_entry_of_a_revoked_token_at_once() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    f.cache(1, ALICE, &ta, "pa");
    assert_eq!(f.send(2, ALICE, &ta), Verdict::Continue); // memoised
    f.poll(feed(
        json!({"version": 1, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    let target = f.w.config.default_target.clone().unwrap();
    let slot = cache::entry_key(&cache::key(0, &target.digest, &ta, None), 4096);
    assert!(
        f.host.shared[&slot].0.is_empty(),
        "dropped before any request"
    );
}

#[test]
fn a_lapsed_revocation_no_longer_refuses() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    let mut e = subject("rv-1", ALICE, "until noon");
    e["until"] = json!(f.now + 60);
    f.poll(feed(json!({"version": 1, "full": true, "added": [e]})));
    assert_eq!(f.send(1, ALICE, &ta), Verdict::Pause);
    assert_revoked(&f.host, 1, "until noon");
    f.later(61_000);
    // The feed is down, but the entry lapsed by itself.
    f.tick();
    assert_eq!(f.send(2, ALICE, &ta), Verdict::Pause);
    assert!(!f.host.replies.contains_key(&2), "exchanged, not refused");
}

/// ALICE's request (context 1) goes to the exchange; ALICE is revoked while it is out;
/// the answer ("pa") comes after the set's sweep and her waiting request is refused.
fn revoke_alice_while_her_exchange_is_out(f: &mut Fx, ta: &str) {
    assert_eq!(f.send(1, ALICE, ta), Verdict::Pause);
    f.drain_queue();
    let d = f.host.dispatched.last().unwrap().clone();
    f.poll(feed(
        json!({"version": 1, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    f.host.ctx = d.from_ctx;
    f.w.on_call_response(&mut f.host, d.token, ok_response("pa", 300));
    assert_revoked(&f.host, 1, "r");
}

#[test]
fn a_token_minted_while_the_subject_was_revoked_is_refused_to_its_waiters() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    revoke_alice_while_her_exchange_is_out(&mut f, &ta);
    assert!(f.host.resumed.is_empty());
}

#[test]
fn a_token_minted_while_the_subject_was_revoked_is_not_memoised_when_its_slot_is_taken() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    // Every entry slot holds another token's entry that outlives ALICE's answer, so the
    // answer cannot be shared: it would be served from the worker's memo.
    let until = f.host.now_ms + 3_600_000;
    let other = "f".repeat(cache::ID_HEX);
    for n in 0..4096 {
        let e = cache::Entry {
            id: &other,
            expires_ms: until,
            refresh_ms: until,
            subject_exp: until / 1000,
            subject: BOB,
            token: "other",
        };
        f.host.shared.insert(cache::slot_key(n), (e.encode(), 1));
    }
    revoke_alice_while_her_exchange_is_out(&mut f, &ta);
    // The same token again: refused, never served the participant token from the memo.
    assert_ne!(f.send(2, ALICE, &ta), Verdict::Continue);
    assert_revoked(&f.host, 2, "r");
}

#[test]
fn a_cached_token_acted_for_by_a_revoked_workload_is_not_served() {
    let mut f = Fx::new();
    let (t1, t2) = (f.token(ALICE), f.token(ALICE));
    f.cache(1, ALICE, &t1, &participant_acted("j-1", BOB)); // in shared data only
    f.cache(2, ALICE, &t2, &participant_acted("j-2", BOB));
    assert_eq!(f.send(3, ALICE, &t2), Verdict::Continue); // memoised too
                                                          // BOB, the workload acting for ALICE, is revoked.
    f.poll(feed(
        json!({"version": 1, "full": true, "added": [subject("rv-1", BOB, "bob compromised")]}),
    ));
    // Found in shared data: refused.
    assert_eq!(f.send(4, ALICE, &t1), Verdict::Pause);
    assert_revoked(&f.host, 4, "bob compromised");
    // Memoised: swept by the new set, so ALICE (not revoked) goes to the exchange
    // service again, which decides (it refuses a revoked actor), never the old token.
    let calls = f.host.dispatched.len();
    assert_eq!(f.send(5, ALICE, &t2), Verdict::Pause);
    assert!(!f.host.replies.contains_key(&5));
    f.drain_queue();
    assert_eq!(f.host.dispatched.len(), calls + 1);
    assert_eq!(
        f.host.dispatched.last().unwrap().header(":path"),
        Some("/token")
    );
}

// ---------------------------------------------------------------- feed down

#[test]
fn feed_down_keeps_the_last_set_raises_staleness_and_warns_once_a_minute() {
    let mut f = Fx::new();
    let ta = f.token(ALICE);
    f.poll(feed(
        json!({"version": 4, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    let mut warnings = 0;
    for _ in 0..70 {
        f.later(1000);
        f.poll(status(503));
        warnings = f
            .host
            .logs
            .borrow()
            .iter()
            .filter(|l| l.contains("revocation feed unavailable"))
            .count();
    }
    assert_eq!(
        warnings, 2,
        "one warning on the first failure, one a minute later"
    );
    assert!(f.host.logs.borrow().iter().any(|l| l.contains("version 4")));
    f.tick();
    let stale = f.host.gauges[Gauge::RevocationStaleness.name()];
    assert!((70..=71).contains(&stale), "staleness {stale}");
    assert_eq!(f.w.revocation_version(), 4);
    assert_eq!(f.send(1, ALICE, &ta), Verdict::Pause);
    assert_revoked(&f.host, 1, "r");
    // Back: the next poll asks from the kept version and staleness drops.
    f.later(1000);
    assert_eq!(
        f.poll(feed(
            json!({"version": 6, "full": false, "added": [], "removed": ["rv-1"]})
        )),
        "/revocations?since=4"
    );
    f.tick();
    assert_eq!(f.host.gauges[Gauge::RevocationStaleness.name()], 0);
    assert_eq!(f.count(Counter::RevocationPollFailure), 70);
}

#[test]
fn staleness_drops_the_moment_a_poll_succeeds_not_at_the_next_tick() {
    let mut f = Fx::new();
    f.poll(feed(json!({"version": 4, "full": true, "added": []})));
    for _ in 0..5 {
        f.later(1000);
        f.poll(status(503));
    }
    f.tick();
    assert!(f.host.gauges[Gauge::RevocationStaleness.name()] >= 5);
    f.later(1000);
    f.poll(feed(
        json!({"version": 5, "full": false, "added": [], "removed": []}),
    ));
    // A scrape right after the catch-up sees it, whenever the next tick comes.
    assert_eq!(f.host.gauges[Gauge::RevocationStaleness.name()], 0);
    assert_eq!(f.host.gauges[Gauge::RevocationVersion.name()], 5);
}

#[test]
fn timeouts_broken_and_oversize_answers_keep_the_set() {
    let mut f = Fx::new();
    f.poll(feed(
        json!({"version": 2, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    let huge = CallResponse {
        status: Some(200),
        retry_after: None,
        body: vec![b' '; meshpass_filter::feed::MAX_FEED_BYTES + 1],
    };
    for resp in [
        CallResponse::default(),
        status(404),
        feed(json!({"version": 3})),
        feed(json!({"version": 3, "full": true, "added": [subject("rv-2", "nope", "r")]})),
        huge,
    ] {
        f.later(1000);
        f.poll(resp);
        assert_eq!(f.w.revocation_version(), 2);
    }
    assert_eq!(f.count(Counter::RevocationPollFailure), 5);
}

#[test]
fn a_worker_started_after_a_reload_enforces_the_stored_set_at_once() {
    let mut f = Fx::new();
    f.poll(feed(
        json!({"version": 7, "full": true, "added": [subject("rv-1", ALICE, "r")]}),
    ));
    let mut fresh = Worker::new(parse(&config(&f.key)).unwrap());
    fresh.start(&mut f.host);
    assert_eq!(fresh.revocation_version(), 7);
    // Before any tick or message: a token of Alice's is refused as revoked.
    let ta = f.token(ALICE);
    let dispatched = f.host.dispatched.len();
    f.host.set_prop(&PEER, ALICE);
    f.host.request(
        1,
        &[(":path", "/x"), ("authorization", &format!("Bearer {ta}"))],
    );
    assert_eq!(fresh.on_request(&mut f.host, 1), Verdict::Pause);
    assert_revoked(&f.host, 1, "r");
    // DISPATCH_KICK is unrelated to revocation; a stray one is harmless and starts no
    // exchange for the refused request.
    f.host.ctx = 0;
    fresh.on_notify(&mut f.host, DISPATCH_KICK);
    assert_eq!(f.host.dispatched.len(), dispatched);
}

#[test]
fn snapshots_of_the_set_already_held_change_nothing_and_log_nothing() {
    let mut f = Fx::new();
    for _ in 0..3 {
        assert_eq!(
            f.poll(feed(
                json!({"version": 0, "full": true, "added": [], "removed": []})
            )),
            "/revocations?since=0"
        );
        f.later(1000);
    }
    assert_eq!(f.count(Counter::RevocationPollSuccess), 3);
    assert_eq!(f.count(Counter::RevocationSnapshots), 0);
    assert!(
        f.host.logs.borrow().is_empty(),
        "{:?}",
        f.host.logs.borrow()
    );
}

mod sharing;
mod two;
mod workers;
