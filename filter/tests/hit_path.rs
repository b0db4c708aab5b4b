//! The cache-hit path's cost, counted deterministically through the mock host: which
//! host calls a warm hit makes (each one is a VM transition and work in Envoy), and the
//! per-worker memory a stream of distinct tokens leaves behind. Timing lives in the
//! benchmarks; these are the regression tests.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use meshpass_filter::api::{Counter, Verdict};
use meshpass_filter::config::Config;
use meshpass_filter::exchange::DISPATCH_KICK;
use meshpass_filter::worker::{Worker, MEMO_CAPACITY};
use serde_json::json;

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const PEER: [&str; 2] = ["connection", "uri_san_peer_certificate"];

struct Fixture {
    key: Key,
    w: Worker,
    host: Mock,
    now: u64,
}

/// The default configuration (header hygiene on), SERVER mode unless `edit` says.
fn fixture(edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
    let key = Key::new("k1");
    let mut cfg = json!({
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "jwks": jwks(&[&key]),
        }],
        "exchange": {"cluster": "exchange"},
        "default_rule": {"resource": "https://orders.test"},
        "revocation": {"enabled": false},
    });
    edit(&mut cfg);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    host.set_prop(&PEER, ALICE);
    let mut w = Worker::new(Config::parse(cfg.to_string().as_bytes()).unwrap());
    w.start(&mut host);
    Fixture { key, w, host, now }
}

impl Fixture {
    fn send(&mut self, ctx: u32, token: &str, extra: &[(&str, &str)]) -> Verdict {
        let auth = format!("Bearer {token}");
        let mut headers = vec![(":path", "/x"), ("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.host.request(ctx, &headers);
        self.w.on_request(&mut self.host, ctx)
    }

    /// A miss for `token`, answered with `participant`.
    fn exchange(&mut self, ctx: u32, token: &str, participant: &str) {
        assert_eq!(self.send(ctx, token, &[]), Verdict::Pause);
        self.host.ctx = 0;
        self.w.on_notify(&mut self.host, DISPATCH_KICK);
        let call = self.host.dispatched.last().unwrap().token;
        self.w
            .on_call_response(&mut self.host, call, ok_response(participant, 300));
        assert_eq!(self.host.resumed.last(), Some(&ctx));
    }

    /// The token exchanged, then served once from shared data (which memoises it).
    fn warm(&mut self, token: &str) {
        self.exchange(1, token, "participant");
        assert_eq!(self.send(2, token, &[]), Verdict::Continue);
        self.host.take_calls();
    }
}

#[test]
fn a_warm_hit_in_server_mode_reads_the_header_map_and_the_peer_once_and_writes_only_authorization()
{
    let mut f = fixture(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.warm(&t);
    assert_eq!(f.send(3, &t, &[]), Verdict::Continue);
    assert_eq!(f.host.take_calls(), ["headers", "property", "set_header"]);
    assert_eq!(
        f.host.req_header(3, "authorization").as_deref(),
        Some("Bearer participant")
    );
    // Counters stay in wasm memory until the tick.
    assert_eq!(f.host.counter(Counter::CacheHit), 0);
    assert_eq!(f.w.pending_count(Counter::CacheHit), 2);
}

#[test]
fn a_warm_hit_in_client_mode_with_a_fixed_identity_makes_two_host_calls() {
    let mut f = fixture(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"spiffe_id": ALICE});
    });
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.warm(&t);
    assert_eq!(f.send(3, &t, &[]), Verdict::Continue);
    assert_eq!(f.host.take_calls(), ["headers", "set_header"]);
}

#[test]
fn a_warm_hit_removes_every_client_sent_meshpass_header_in_any_case_and_nothing_else() {
    let mut f = fixture(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.warm(&t);
    let extra = [
        ("x-meshpass-subject", "spiffe://evil/x"),
        ("X-MeshPass-Role", "admin"),
        ("x-meshpass-", "empty suffix"),
        ("x-meshpas", "not reserved"),
    ];
    assert_eq!(f.send(3, &t, &extra), Verdict::Continue);
    assert_eq!(
        f.host.take_calls(),
        [
            "headers",
            "remove_header",
            "remove_header",
            "remove_header",
            "property",
            "set_header"
        ]
    );
    for (name, _) in &extra[..3] {
        assert_eq!(f.host.req_header(3, name), None, "{name}");
    }
    assert_eq!(
        f.host.req_header(3, "x-meshpas").as_deref(),
        Some("not reserved")
    );
}

#[test]
fn a_shared_data_hit_adds_one_clock_read_and_one_shared_read() {
    let mut f = fixture(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.exchange(1, &t, "participant");
    f.host.take_calls();
    assert_eq!(f.send(2, &t, &[]), Verdict::Continue);
    assert_eq!(
        f.host.take_calls(),
        ["headers", "property", "now_ms", "shared_get", "set_header"]
    );
}

#[test]
fn a_warm_hit_replayed_from_another_peer_is_still_refused() {
    let mut f = fixture(|_| {});
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 600);
    f.warm(&t);
    f.host
        .set_prop(&PEER, "spiffe://cluster.local/ns/shop/sa/mallory");
    assert_eq!(f.send(3, &t, &[]), Verdict::Pause);
    assert_eq!(f.host.replies[&3].status, 401);
}

#[test]
fn distinct_tokens_past_the_memo_and_the_slots_leave_the_worker_state_bounded() {
    let mut f = fixture(|c| c["cache"] = json!({"slots": 16}));
    let n = MEMO_CAPACITY as u64 + 100;
    for i in 0..n {
        let t = f.key.svid(ISS, AUD, ALICE, f.now - i % 300, 600 + i);
        f.exchange(10_000 + i as u32, &t, &format!("p{i}"));
        let ctx = 20_000 + i as u32;
        assert_eq!(f.send(ctx, &t, &[]), Verdict::Continue, "token {i}");
        assert_eq!(
            f.host.req_header(ctx, "authorization"),
            Some(format!("Bearer p{i}"))
        );
    }
    assert!(
        f.w.memo_entries() <= MEMO_CAPACITY,
        "{}",
        f.w.memo_entries()
    );
    assert!(
        f.w.memo_entries() > MEMO_CAPACITY / 2,
        "{}",
        f.w.memo_entries()
    );
    assert!(f.w.tracked_slots() <= 16, "{}", f.w.tracked_slots());
    let entries = f
        .host
        .shared
        .keys()
        .filter(|k| k.starts_with("meshpass/c/"));
    assert!(entries.count() <= 16);
}
