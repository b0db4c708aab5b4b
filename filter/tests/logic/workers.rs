//! Misses across workers: one exchange, notified waiters, deadlines, lost notifications, queues.

use super::*;

/// A second worker (another Envoy worker thread) over the same host: shared data and
/// shared queues are common, HTTP contexts are not. Both workers are started.
fn second_worker(f: &mut Fixture) -> Worker {
    let mut w2 = worker(&base_config(&f.key));
    f.w.start(&mut f.host);
    w2.start(&mut f.host);
    w2
}

pub(super) fn send_on(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
    w.on_request(host, ctx)
}

/// Delivers what was enqueued on `w`'s queue, as Envoy's `on_queue_ready` would.
pub(super) fn deliver(host: &mut Mock, w: &mut Worker) -> usize {
    let name = w.queue_name().unwrap().to_string();
    let msgs: Vec<Vec<u8>> = host
        .enqueued
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, m)| m.clone())
        .collect();
    host.enqueued.retain(|(n, _)| *n != name);
    host.ctx = 0;
    for m in &msgs {
        w.on_notify(host, m);
    }
    msgs.len()
}

#[test]
fn concurrent_misses_on_two_workers_cost_one_exchange_and_the_other_worker_is_notified() {
    let mut f = fixture();
    let mut w2 = second_worker(&mut f);
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    assert_eq!(send_on(&mut w2, &mut f.host, 11, &t), Verdict::Pause);
    assert_eq!(send_on(&mut w2, &mut f.host, 12, &t), Verdict::Pause);
    f.host.set_prop(&PEER, BOB);
    assert_eq!(send_on(&mut w2, &mut f.host, 13, &t), Verdict::Pause);
    f.host.set_prop(&PEER, ALICE);
    // The owner dispatches from its root context (kicked through its own queue).
    assert!(f.host.dispatched.is_empty());
    assert!(kick(&mut f.host, &mut f.w));
    assert_eq!(f.host.dispatched.len(), 1, "one exchange for both workers");
    assert_eq!(w2.pending_count(Counter::CoalescedRemote), 3);
    let target = f.w.config.default_target.clone().unwrap();
    let key = cache::key(0, &target.digest, &t, None);
    assert!(w2.waiting_on_other_worker(&key));

    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    // The owner notified the other worker's queue only (not its own).
    assert_eq!(f.host.enqueued.len(), 1);
    assert_eq!(f.host.enqueued[0].0, w2.queue_name().unwrap());
    assert_eq!(deliver(&mut f.host, &mut w2), 1);
    assert_eq!(f.host.resumed, vec![1, 11, 12]);
    assert_eq!(
        f.host.req_header(12, "authorization").as_deref(),
        Some("Bearer p")
    );
    // Bound on the result like a cache hit: Bob's connection is refused.
    assert_eq!(f.host.replies[&13].status, 401);
    assert!(!w2.waiting_on_other_worker(&key));
    // Later requests on the second worker are plain cache hits.
    assert_eq!(send_on(&mut w2, &mut f.host, 14, &t), Verdict::Continue);
    assert_eq!(f.host.dispatched.len(), 1);
}

#[test]
fn waiters_on_another_worker_get_the_refusal_with_its_status_and_retry_after() {
    let cases = [
        (error_response(400, "unauthorized_client", None), 403, None),
        (error_response(400, "invalid_grant", None), 401, None),
        (error_response(429, "slow_down", Some("7")), 429, Some("7")),
        (
            error_response(503, "temporarily_unavailable", Some("9")),
            503,
            Some("9"),
        ),
        (CallResponse::default(), 503, Some("5")),
    ];
    for (i, (resp, status, retry_after)) in cases.into_iter().enumerate() {
        let mut f = fixture();
        let mut w2 = second_worker(&mut f);
        let t = f.token(ALICE);
        f.send_token(1, &t);
        send_on(&mut w2, &mut f.host, 11, &t);
        f.answer(resp);
        deliver(&mut f.host, &mut w2);
        let (owner, waiter) = (&f.host.replies[&1], &f.host.replies[&11]);
        assert_eq!((owner.status, waiter.status), (status, status), "case {i}");
        assert_eq!(waiter.header("retry-after"), retry_after, "case {i}");
        assert_eq!(waiter.json()["error"], owner.json()["error"], "case {i}");
        assert!(f.host.resumed.is_empty(), "case {i}");
        assert_eq!(f.host.dispatched.len(), 1, "case {i}");
    }
}

#[test]
fn waiters_on_another_worker_fail_closed_when_the_marker_deadline_passes() {
    let mut f = fixture();
    let mut w2 = second_worker(&mut f);
    let t = f.token(ALICE);
    f.send_token(1, &t); // the owner then never answers nor ticks (crashed)
    kick(&mut f.host, &mut f.w);
    send_on(&mut w2, &mut f.host, 11, &t);
    f.host.now_ms += 3000; // exchange timeout (2 s) + slack (2 s) not yet over
    f.host.ctx = 0;
    w2.on_tick(&mut f.host);
    assert!(!f.host.replies.contains_key(&11));
    f.host.now_ms += 1500;
    f.host.ctx = 0;
    w2.on_tick(&mut f.host);
    let r = &f.host.replies[&11];
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    // The dead marker does not block the key: the next miss exchanges again.
    send_on(&mut w2, &mut f.host, 12, &t);
    kick(&mut f.host, &mut w2);
    assert_eq!(f.host.dispatched.len(), 2);
    assert_eq!(f.host.dispatched[1].from_ctx, 0, "dispatched from the root");
}

#[test]
fn an_exchange_outlives_the_request_that_started_it() {
    let mut f = fixture();
    f.w.start(&mut f.host);
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    assert_eq!(f.send_token(2, &t), Verdict::Pause);
    // The first client goes away before the root context dispatches.
    f.host.gone.insert(1);
    assert!(kick(&mut f.host, &mut f.w));
    assert_eq!(f.host.dispatched.len(), 1);
    assert_eq!(f.host.dispatched[0].from_ctx, 0, "dispatched from the root");
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![2]);
    // The answer is cached for the next request.
    assert_eq!(f.send_token(3, &t), Verdict::Continue);
    assert_eq!(f.host.dispatched.len(), 1);
}

#[test]
fn a_lost_notification_is_made_up_for_on_the_next_tick() {
    let mut f = fixture();
    let mut w2 = second_worker(&mut f);
    let t = f.token(ALICE);
    f.send_token(1, &t);
    send_on(&mut w2, &mut f.host, 11, &t);
    f.answer(ok_response("p", 300));
    f.host.enqueued.clear();
    f.host.ctx = 0;
    w2.on_tick(&mut f.host);
    assert_eq!(f.host.resumed, vec![1, 11]);
    assert_eq!(
        f.host.req_header(11, "authorization").as_deref(),
        Some("Bearer p")
    );
}

#[test]
fn a_finished_refusal_does_not_hold_later_misses_and_its_record_is_swept() {
    let mut f = fixture();
    let mut w2 = second_worker(&mut f);
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(error_response(429, "slow_down", Some("7")));
    // A later request on the other worker tries again instead of reusing the refusal.
    assert_eq!(send_on(&mut w2, &mut f.host, 11, &t), Verdict::Pause);
    kick(&mut f.host, &mut w2);
    assert_eq!(f.host.dispatched.len(), 2);
    assert_eq!(f.host.dispatched[1].from_ctx, 0, "dispatched from the root");
    f.host.ctx = 11;
    let token = f.host.dispatched[1].token;
    w2.on_call_response(&mut f.host, token, ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![11]);
    // Outcome records go back to idle after two ticks (tick_ms 1000 + 1 s).
    let target = f.w.config.default_target.clone().unwrap();
    let marker = cache::marker_key(&cache::key(0, &target.digest, &t, None), 4096);
    f.host.now_ms += 3001;
    f.host.ctx = 0;
    w2.on_tick(&mut f.host);
    assert_eq!(f.host.shared[&marker].0, b"-");
}

#[test]
fn workers_list_their_queues_by_number_and_drop_stale_entries() {
    let mut f = fixture();
    let now = f.host.now_ms;
    f.host.shared.insert(
        "meshpass/queues".into(),
        (format!("meshpass/q/gone|{}", now - 600_000).into_bytes(), 1),
    );
    let w2 = second_worker(&mut f);
    let (a, b) = (f.w.queue_name().unwrap(), w2.queue_name().unwrap());
    assert_ne!(a, b);
    assert_eq!(f.host.queues, vec![a.to_string(), b.to_string()]);
    let listing = String::from_utf8(f.host.shared["meshpass/queues"].0.clone()).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit_once('|').unwrap().0)
        .collect();
    assert_eq!(names, vec![a, b]);
}

#[test]
fn validate_only_benchmark_aid_is_refused_next_to_any_exchange_setting() {
    let key = Key::new("k1");
    let base = json!({
        "validate_only_for_benchmarks": true,
        "mode": "CLIENT", "own_identity": {"spiffe_id": ALICE},
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
    });
    assert!(
        Config::parse(base.to_string().as_bytes())
            .unwrap()
            .validate_only
    );
    for (field, value) in [
        ("exchange", json!({"cluster": "exchange"})),
        ("default_rule", json!({"resource": "r"})),
        ("rules", json!([{"path_prefix": "/", "resource": "r"}])),
        ("noop_for_benchmarks", json!(true)),
    ] {
        let mut c = base.clone();
        c[field] = value;
        let e = Config::parse(c.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "validate_only_for_benchmarks", "{field}: {e}");
    }
    // Without the flag, a config with no exchange is refused as before.
    let mut c = base.clone();
    c.as_object_mut()
        .unwrap()
        .remove("validate_only_for_benchmarks");
    assert_eq!(
        Config::parse(c.to_string().as_bytes()).unwrap_err().field,
        "exchange"
    );
}

#[test]
fn validate_only_benchmark_aid_validates_every_request_and_never_exchanges() {
    let key = Key::new("k1");
    let cfg = json!({
        "validate_only_for_benchmarks": true,
        "mode": "CLIENT", "own_identity": {"spiffe_id": ALICE},
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
    });
    let mut w = worker(&cfg);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    w.start(&mut host);
    let t = key.svid(ISS, AUD, ALICE, now, 600);
    for ctx in 1..=3 {
        let auth = format!("Bearer {t}");
        host.request(ctx, &[("authorization", &auth)]);
        assert_eq!(w.on_request(&mut host, ctx), Verdict::Continue);
        // The subject token never reaches the app.
        assert_eq!(host.req_header(ctx, "authorization"), None);
    }
    // A token of another workload, or a forged one, is refused as on a miss.
    for (ctx, bad) in [
        (4, key.svid(ISS, AUD, BOB, now, 600)),
        (5, Key::new("k1").svid(ISS, AUD, ALICE, now, 600)),
    ] {
        let auth = format!("Bearer {bad}");
        host.request(ctx, &[("authorization", &auth)]);
        assert_eq!(w.on_request(&mut host, ctx), Verdict::Pause);
        assert_eq!(host.replies[&ctx].status, 401);
    }
    assert!(host.dispatched.is_empty());
    assert!(
        host.shared.is_empty(),
        "no cache, no marker, no queue listing"
    );
    assert_eq!(w.pending_count(Counter::Allowed), 3);
}
