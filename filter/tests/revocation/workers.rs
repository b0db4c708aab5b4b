//! Revocation enforcement across workers (docs/DESIGN.md "Revocation", filter/README.md
//! "Revocation"): two workers over one mock host, the memo, shared-data hits, patterns,
//! `jti`s, actors, lapse, lifts, bounds, staleness and version order.

use super::*;

use super::two::{parse, Two};

fn participant(jti: &str, actor: Option<&str>) -> String {
    let mut claims = json!({"sub": "x", "jti": jti});
    if let Some(a) = actor {
        claims["act"] = json!({"sub": a});
    }
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn assert_revoked(host: &Mock, ctx: u32, reason: &str) {
    let r = host
        .replies
        .get(&ctx)
        .unwrap_or_else(|| panic!("request {ctx} got no reply: not refused"));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"error": "access_denied", "error_description": format!("revoked: {reason}")})
    );
}

/// Worker 0 caches `token` (participant `p`) in shared data; worker 1 reads it from
/// shared data (memoised there) and then serves it from its memo.
fn warm_on_worker_1(t: &mut Two, sub: &str, token: &str, p: &str, base: u32) {
    t.cache(0, base, sub, token, p);
    assert_eq!(t.send(1, base + 1, sub, token), Verdict::Continue);
    assert_eq!(t.served(base + 1), Some(format!("Bearer {p}")));
    t.host.take_calls();
    assert_eq!(t.send(1, base + 2, sub, token), Verdict::Continue);
    assert!(
        !t.host.take_calls().contains(&"shared_get"),
        "the second request on worker 1 is a memo (warm) hit"
    );
    assert!(t.w[1].memo_entries() >= 1);
}

// ------------------------------------------------------------- memo on another worker

#[test]
fn a_subject_revoked_through_one_workers_poll_is_refused_from_the_other_workers_memo_after_its_message(
) {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    warm_on_worker_1(&mut t, ALICE, &ta, "pa", 1);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", ALICE, "compromised")]})),
    );
    assert!(
        t.host
            .enqueued
            .iter()
            .any(|(_, m)| m.as_slice() == b"!revocations"),
        "worker 1 is sent the revocation message"
    );
    t.drain(1);
    assert_eq!(t.w[1].revocation_version(), 1);
    assert_eq!(t.w[1].memo_entries(), 0, "worker 1's memo swept");
    assert_eq!(t.send(1, 10, ALICE, &ta), Verdict::Pause);
    assert_revoked(&t.host, 10, "compromised");
}

#[test]
fn a_worker_that_missed_the_message_stops_serving_its_memo_from_its_next_tick() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    warm_on_worker_1(&mut t, ALICE, &ta, "pa", 1);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", ALICE, "compromised")]})),
    );
    t.host.enqueued.clear(); // the message is lost
    t.tick(1);
    assert_eq!(t.w[1].revocation_version(), 1);
    assert_eq!(t.send(1, 10, ALICE, &ta), Verdict::Pause);
    assert_revoked(&t.host, 10, "compromised");
}

#[test]
fn a_revoked_jti_memoised_on_the_other_worker_is_never_served_again() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    let p = participant("j-1", None);
    warm_on_worker_1(&mut t, ALICE, &ta, &p, 1);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true, "added": [jti("rv-9", "j-1", "leaked")]})),
    );
    t.drain(1);
    let before = t.host.dispatched.len();
    let v = t.send(1, 10, ALICE, &ta);
    assert_ne!(
        t.served(10),
        Some(format!("Bearer {p}")),
        "revoked jti served"
    );
    assert_eq!(v, Verdict::Pause);
    // The subject is not revoked: a new exchange (never the revoked token).
    t.drain(1);
    assert_eq!(t.host.dispatched.len(), before + 1);
    // The shared entry was emptied too: worker 0 does not serve it either.
    let v0 = t.send(0, 11, ALICE, &ta);
    assert_ne!(t.served(11), Some(format!("Bearer {p}")));
    assert_ne!(v0, Verdict::Continue);
}

#[test]
fn a_token_acted_for_by_a_workload_revoked_by_pattern_is_swept_from_the_other_workers_memo() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    let p = participant("j-1", Some("spiffe://cluster.local/ns/batch/sa/run"));
    warm_on_worker_1(&mut t, ALICE, &ta, &p, 1);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", "spiffe://cluster.local/ns/batch/*", "batch")]})),
    );
    t.drain(1);
    assert_eq!(t.w[1].memo_entries(), 0);
    t.send(1, 10, ALICE, &ta);
    assert_ne!(t.served(10), Some(format!("Bearer {p}")));
}

#[test]
fn a_shared_data_hit_on_the_other_worker_checks_the_jti_and_the_actor_after_its_reload() {
    let mut t = Two::new();
    let (t1, t2) = (t.token(ALICE), t.token(ALICE));
    let (p1, p2) = (participant("j-1", None), participant("j-2", Some(BOB)));
    t.cache(0, 1, ALICE, &t1, &p1);
    t.cache(0, 2, ALICE, &t2, &p2);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [jti("rv-9", "j-1", "leaked"), subject("rv-1", BOB, "bob")]})),
    );
    t.drain(1);
    assert_eq!(t.send(1, 10, ALICE, &t1), Verdict::Pause);
    assert_revoked(&t.host, 10, "leaked");
    assert_eq!(t.send(1, 11, ALICE, &t2), Verdict::Pause);
    assert_revoked(&t.host, 11, "bob");
}

// ------------------------------------------------------------- waiters on another worker

#[test]
fn a_token_delivered_to_the_other_workers_waiters_after_a_revocation_is_refused() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    assert_eq!(t.send(0, 1, ALICE, &ta), Verdict::Pause);
    assert_eq!(t.send(1, 2, ALICE, &ta), Verdict::Pause);
    let target = t.w[0].config.default_target.clone().unwrap();
    let key = cache::key(0, &target.digest, &ta, None);
    assert!(t.w[1].waiting_on_other_worker(&key));
    t.drain(0);
    let d = t.host.dispatched.last().unwrap().clone();
    // Revoked while the exchange is out; both workers have the set.
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", ALICE, "mid-flight")]})),
    );
    t.drain(1);
    assert_eq!(t.w[1].revocation_version(), 1);
    t.host.ctx = d.from_ctx;
    t.w[0].on_call_response(&mut t.host, d.token, ok_response("pa", 300));
    assert_revoked(&t.host, 1, "mid-flight");
    t.drain(1);
    assert_revoked(&t.host, 2, "mid-flight");
    assert!(t.host.resumed.is_empty());
}

#[test]
fn a_token_whose_jti_is_revoked_delivered_to_the_other_workers_waiters_is_refused() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    t.poll(
        0,
        feed(json!({"version": 1, "full": true, "added": [jti("rv-9", "j-1", "leaked")]})),
    );
    t.drain(1);
    assert_eq!(t.send(0, 1, ALICE, &ta), Verdict::Pause);
    assert_eq!(t.send(1, 2, ALICE, &ta), Verdict::Pause);
    t.drain(0);
    let d = t.host.dispatched.last().unwrap().clone();
    t.host.ctx = d.from_ctx;
    t.w[0].on_call_response(
        &mut t.host,
        d.token,
        ok_response(&participant("j-1", None), 300),
    );
    assert_revoked(&t.host, 1, "leaked");
    t.drain(1);
    assert_revoked(&t.host, 2, "leaked");
}

// ------------------------------------------------------------- patterns

#[test]
fn a_pattern_revokes_its_prefix_itself_and_every_deeper_path_but_not_a_longer_sibling_segment() {
    let mut t = Two::new();
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", "spiffe://cluster.local/ns/shop/*", "shop")]})),
    );
    t.drain(1);
    let cases = [
        ("spiffe://cluster.local/ns/shop", true),
        ("spiffe://cluster.local/ns/shop/sa/alice", true),
        ("spiffe://cluster.local/ns/shop/sa/alice/x/y", true),
        ("spiffe://cluster.local/ns/shopping/sa/x", false),
        ("spiffe://cluster.local/ns/Shop/sa/x", false),
        (CAROL, false),
    ];
    let mut ctx = 100;
    for (i, (sub, revoked)) in cases.iter().enumerate() {
        for w in 0..2 {
            ctx += 1;
            let tok = t.token(sub);
            t.send(w, ctx, sub, &tok);
            if *revoked {
                assert_revoked(&t.host, ctx, "shop");
            } else {
                assert!(
                    !t.host.replies.contains_key(&ctx),
                    "case {i} {sub}: {:?}",
                    t.host.replies.get(&ctx)
                );
            }
        }
    }
}

#[test]
fn a_whole_trust_domain_pattern_revokes_every_subject_of_it() {
    let mut t = Two::new();
    let (ta, tc) = (t.token(ALICE), t.token(CAROL));
    t.cache(0, 1, ALICE, &ta, "pa");
    t.cache(0, 2, CAROL, &tc, "pc");
    t.poll(
        0,
        feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", "spiffe://cluster.local/*", "all")]})),
    );
    t.drain(1);
    t.send(1, 10, ALICE, &ta);
    assert_revoked(&t.host, 10, "all");
    t.send(1, 11, CAROL, &tc);
    assert_revoked(&t.host, 11, "all");
}

// ------------------------------------------------------------- lapse (seconds)

#[test]
fn an_until_in_unix_seconds_keeps_refusing_until_it_passes_on_both_workers_then_lapses() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    warm_on_worker_1(&mut t, ALICE, &ta, "pa", 1);
    let mut e = subject("rv-1", ALICE, "for two minutes");
    e["until"] = json!(t.now + 120);
    t.poll(0, feed(json!({"version": 1, "full": true, "added": [e]})));
    t.drain(1);
    t.later(30_000);
    t.tick(0);
    t.tick(1);
    for (w, ctx) in [(0, 10), (1, 11)] {
        assert_eq!(t.send(w, ctx, ALICE, &ta), Verdict::Pause);
        assert_revoked(&t.host, ctx, "for two minutes");
    }
    t.later(91_000);
    t.tick(0);
    t.tick(1);
    for (w, ctx) in [(0, 20), (1, 21)] {
        t.send(w, ctx, ALICE, &ta);
        assert!(!t.host.replies.contains_key(&ctx), "lapsed: not refused");
    }
}

// ------------------------------------------------------------- lift

#[test]
fn a_lift_by_delta_restores_service_on_both_workers() {
    let mut t = Two::new();
    let ta = t.token(ALICE);
    t.poll(0, feed(json!({"version": 1, "full": true,
        "added": [subject("rv-1", ALICE, "r"), subject("rv-2", "spiffe://cluster.local/ns/shop/*", "p")]})));
    t.drain(1);
    t.send(1, 1, ALICE, &ta);
    assert!(t.host.replies.contains_key(&1));
    t.later(1000);
    assert_eq!(
        t.poll(
            0,
            feed(json!({"version": 3, "full": false, "added": [], "removed": ["rv-1", "rv-2"]}))
        ),
        "/revocations?since=1"
    );
    t.drain(1);
    assert_eq!(t.w[1].revocation_version(), 3);
    for (w, ctx) in [(0, 10), (1, 11)] {
        t.send(w, ctx, ALICE, &ta);
        assert!(
            !t.host.replies.contains_key(&ctx),
            "worker {w} still refuses"
        );
    }
}

// ------------------------------------------------------------- bounds

#[test]
fn an_answer_over_the_byte_bound_with_valid_entries_first_is_refused_whole() {
    let mut t = Two::new();
    let (ta, tb) = (t.token(ALICE), t.token(BOB));
    t.poll(
        0,
        feed(json!({"version": 1, "full": true, "added": [subject("rv-b", BOB, "bob")]})),
    );
    t.drain(1);
    let mut added = vec![subject("rv-a", ALICE, "alice")];
    let long = "j".repeat(2000);
    for i in 0..2200 {
        added.push(jti(&format!("rv-{i}"), &format!("{long}{i}"), "r"));
    }
    let resp = feed(json!({"version": 2, "full": false, "added": added, "removed": ["rv-b"]}));
    assert!(resp.body.len() > meshpass_filter::feed::MAX_FEED_BYTES);
    t.later(1000);
    t.poll(0, resp);
    t.drain(1);
    for w in 0..2 {
        assert_eq!(t.w[w].revocation_version(), 1);
    }
    t.send(1, 10, BOB, &tb);
    assert_revoked(&t.host, 10, "bob");
    t.send(1, 11, ALICE, &ta);
    assert!(!t.host.replies.contains_key(&11));
}

#[test]
fn a_delta_that_would_pass_the_entry_bound_is_refused_whole_and_the_set_kept() {
    let mut t = Two::new();
    let n = meshpass_filter::feed::MAX_ENTRIES;
    let added: Vec<Value> = (0..n)
        .map(|i| jti(&format!("rv-{i}"), &format!("j{i}"), "r"))
        .collect();
    t.poll(0, feed(json!({"version": 1, "full": true, "added": added})));
    t.later(1000);
    t.poll(
        0,
        feed(json!({"version": 2, "full": false,
        "added": [subject("rv-a", ALICE, "alice")], "removed": []})),
    );
    assert_eq!(t.w[0].revocation_version(), 1);
    assert!(t.host.logs.borrow().iter().any(|l| l.contains("exceed")));
}

// ------------------------------------------------------------- staleness

#[test]
fn the_staleness_gauge_on_a_worker_that_does_not_poll_is_the_seconds_since_the_last_answer() {
    let mut t = Two::new();
    t.poll(0, feed(json!({"version": 1, "full": true, "added": []})));
    let answered = t.host.now_ms;
    for _ in 0..10 {
        t.later(1000);
        t.poll(0, status(503));
    }
    t.later(500);
    t.tick(1);
    let want = (t.host.now_ms - answered) / 1000;
    assert_eq!(t.host.gauges[Gauge::RevocationStaleness.name()], want);
    assert_eq!(t.host.gauges[Gauge::RevocationVersion.name()], 1);
    // A refused (malformed) answer is no answer: it keeps rising.
    t.later(1000);
    t.poll(0, feed(json!({"version": 9})));
    t.tick(1);
    assert_eq!(
        t.host.gauges[Gauge::RevocationStaleness.name()],
        (t.host.now_ms - answered) / 1000
    );
}

#[test]
fn the_staleness_gauge_rises_from_the_first_poll_when_the_feed_never_answered() {
    let mut t = Two::new();
    t.tick(0); // first poll goes out
    let first = t.host.now_ms;
    let d = t.polls().last().unwrap().clone();
    t.later(3000);
    t.host.ctx = 0;
    t.w[0].on_call_response(&mut t.host, d.token, CallResponse::default());
    t.later(2000);
    t.tick(1);
    assert_eq!(
        t.host.gauges[Gauge::RevocationStaleness.name()],
        (t.host.now_ms - first) / 1000
    );
}

// ------------------------------------------------------------- version order

#[test]
fn an_older_snapshot_answering_an_overdue_poll_never_replaces_a_newer_set_across_workers() {
    let mut t = Two::new();
    // Worker 0 polls from 0; its answer is slow.
    t.tick(0);
    let slow = t.polls().last().unwrap().clone();
    // The lease runs out (timeout 2000 + the lost-call slack 2000 + 1000; worker 0 has
    // not ticked, so its call is still out): worker 1 polls and gets version 7.
    t.later(5001);
    t.poll(
        1,
        feed(json!({"version": 7, "full": true,
        "added": [subject("rv-1", ALICE, "a"), subject("rv-2", BOB, "b")]})),
    );
    t.drain(0);
    assert_eq!(t.w[0].revocation_version(), 7);
    // Worker 0's answer comes now: the service's snapshot at version 6 (before BOB).
    t.host.ctx = 0;
    t.w[0].on_call_response(
        &mut t.host,
        slow.token,
        feed(json!({"version": 6, "full": true, "added": [subject("rv-1", ALICE, "a")]})),
    );
    t.drain(1);
    t.tick(1);
    let tb = t.token(BOB);
    let mut wrong = Vec::new();
    for (w, ctx) in [(0, 10), (1, 11)] {
        t.send(w, ctx, BOB, &tb);
        let refused = t.host.replies.get(&ctx).is_some_and(|r| r.status == 403);
        if t.w[w].revocation_version() < 7 || !refused {
            wrong.push(format!(
                "worker {w}: version {}, BOB {}",
                t.w[w].revocation_version(),
                if refused {
                    "refused"
                } else {
                    "NOT refused (exchanged)"
                }
            ));
        }
    }
    assert!(wrong.is_empty(), "set went back from version 7: {wrong:?}");
}

#[test]
fn the_memo_is_swept_when_a_worker_started_later_loads_the_stored_set() {
    let mut t = Two::new();
    t.poll(
        0,
        feed(json!({"version": 4, "full": true, "added": [subject("rv-1", ALICE, "a")]})),
    );
    let mut w3 = Worker::new(parse(&config(&t.key)));
    w3.start(&mut t.host);
    assert_eq!(w3.revocation_version(), 4);
    let ta = t.token(ALICE);
    t.host.set_prop(&PEER, ALICE);
    t.host.request(
        5,
        &[(":path", "/x"), ("authorization", &format!("Bearer {ta}"))],
    );
    assert_eq!(w3.on_request(&mut t.host, 5), Verdict::Pause);
    assert_revoked(&t.host, 5, "a");
    let _ = Counter::DeniedRevoked;
}
