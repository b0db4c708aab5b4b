//! Remote JWKS (one fetch shared by the workers, last good keys kept, unknown `kid` refetch), the worker memo, actor tokens, Kubernetes tokens.

use super::*;

fn remote_fixture() -> Fixture {
    fixture_with(|c| {
        let i = c["issuers"][0].as_object_mut().unwrap();
        i.remove("jwks");
        i.insert("jwks_cluster".into(), json!("jwks"));
        i.insert("jwks_path".into(), json!("/keys"));
        i.insert("jwks_refresh_secs".into(), json!(60));
    })
}

#[test]
fn remote_jwks_is_fetched_by_one_worker_and_shared_with_the_others() {
    let mut f = remote_fixture();
    let t = f.token(ALICE);
    assert_eq!(
        f.send_token(1, &t),
        Verdict::Pause,
        "waits for the first keys"
    );
    let mut other = worker(&{
        let mut c = base_config(&f.key);
        let i = c["issuers"][0].as_object_mut().unwrap();
        i.remove("jwks");
        i.insert("jwks_cluster".into(), json!("jwks"));
        i.insert("jwks_path".into(), json!("/keys"));
        c
    });
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    other.on_tick(&mut f.host);
    assert_eq!(
        f.host.dispatched.len(),
        1,
        "the lease lets one worker fetch"
    );
    assert_eq!(f.host.dispatched[0].header(":path"), Some("/keys"));
    let body = jwks(&[&f.key]);
    f.answer(CallResponse {
        status: Some(200),
        retry_after: None,
        body: body.into_bytes(),
    });
    assert_eq!(f.count(Counter::JwksRefreshSuccess), 1);
    // The waiting request went on to its exchange as soon as the keys came.
    assert_eq!(f.host.dispatched.len(), 2);
    assert_eq!(f.host.dispatched[1].cluster, "exchange");
    // The other worker validates with the shared keys.
    f.host.request(
        2,
        &[(":path", "/x"), ("authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(other.on_request(&mut f.host, 2), Verdict::Pause);
    assert_eq!(f.host.dispatched.len(), 3);
    assert_eq!(f.host.dispatched[2].cluster, "exchange");
}

#[test]
fn first_jwks_fetch_goes_out_at_start_and_early_requests_wait_for_it() {
    let mut f = remote_fixture();
    f.w.start(&mut f.host);
    assert_eq!(
        f.host.dispatched.len(),
        1,
        "fetched at configure time, before any tick"
    );
    assert_eq!(f.host.dispatched[0].cluster, "jwks");
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    assert!(
        f.host.replies.is_empty(),
        "no 503 while the first keys are on their way"
    );
    let body = jwks(&[&f.key]);
    f.host.ctx = 0;
    let token = f.host.dispatched[0].token;
    f.w.on_call_response(
        &mut f.host,
        token,
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: body.into_bytes(),
        },
    );
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);

    // Bounded: without keys after 2 s the request gets 503.
    let mut f = remote_fixture();
    f.w.start(&mut f.host);
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.host.now_ms += 1_000;
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert!(f.host.replies.is_empty());
    f.host.now_ms += 1_100;
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.replies[&1].status, 503);
}

#[test]
fn failed_jwks_refresh_keeps_the_last_good_keys_and_backs_off() {
    let mut f = remote_fixture();
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    let body = jwks(&[&f.key]);
    f.answer(CallResponse {
        status: Some(200),
        retry_after: None,
        body: body.into_bytes(),
    });
    f.host.now_ms += 61_000;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 2);
    f.answer(CallResponse {
        status: Some(500),
        ..Default::default()
    });
    assert_eq!(f.count(Counter::JwksRefreshFailure), 1);
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 2, "backing off");
    f.host.now_ms += 2_100;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 3, "retried after the backoff");
    f.answer(CallResponse::default());
    // Keys still work.
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.dispatched.last().unwrap().cluster, "exchange");
}

#[test]
fn unknown_kid_parks_the_request_until_one_rate_limited_refetch_brings_the_key() {
    let mut f = remote_fixture();
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    let body = jwks(&[&f.key]);
    f.answer(CallResponse {
        status: Some(200),
        retry_after: None,
        body: body.into_bytes(),
    });
    let k2 = Key::new("k2");
    let t2 = k2.svid(ISS, AUD, ALICE, f.now, 600);
    assert_eq!(f.send_token(1, &t2), Verdict::Pause);
    assert_eq!(f.send_token(2, &t2), Verdict::Pause);
    assert!(f.host.replies.is_empty(), "parked, not refused");
    assert_eq!(f.count(Counter::JwksUnknownKid), 1, "one refetch");
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 2, "refetch on the next tick");
    let body = jwks(&[&f.key, &k2]);
    f.answer(CallResponse {
        status: Some(200),
        retry_after: None,
        body: body.into_bytes(),
    });
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert_eq!(
        f.host.dispatched.len(),
        3,
        "both parked requests share one exchange"
    );
    assert_eq!(f.host.dispatched[2].cluster, "exchange");
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1, 2]);

    // Another unknown kid right after: rate limited, but the fresh refetch window parks
    // it; when nothing changes it is refused after the park time.
    let k3 = Key::new("k3");
    let t3 = k3.svid(ISS, AUD, ALICE, f.now, 600);
    f.send_token(3, &t3);
    f.host.now_ms += 5_001;
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.replies[&3].status, 401);
    // Later still, within jwks_min_refetch_secs: refused at once, no new refetch.
    f.send_token(4, &t3);
    assert_eq!(f.host.replies[&4].status, 401);
    assert_eq!(f.count(Counter::JwksUnknownKid), 1);
}

#[test]
fn classify_treats_non_bearer_answers_as_unavailable() {
    let f = fixture();
    let mut r = ok_response("p", 10);
    r.body = String::from_utf8(r.body)
        .unwrap()
        .replace("Bearer", "DPoP")
        .into_bytes();
    assert_eq!(f.w.classify(&r), Outcome::Faulty(5));
}

#[test]
fn classify_refuses_an_answer_past_the_largest_exchange_answer_read() {
    let f = fixture();
    let at_bound = |n: usize| {
        let mut r = ok_response("p", 10);
        let pad = n - r.body.len();
        let body = String::from_utf8(r.body).unwrap();
        r.body = body
            .replacen('{', &format!("{{\"pad\":\"{}\",", "x".repeat(pad - 9)), 1)
            .into_bytes();
        assert_eq!(r.body.len(), n);
        r
    };
    let max = meshpass_filter::exchange::MAX_EXCHANGE_BODY;
    assert!(matches!(f.w.classify(&at_bound(max)), Outcome::Token(_)));
    assert_eq!(f.w.classify(&at_bound(max + 1)), Outcome::Faulty(5));
}

#[test]
fn noop_config_does_nothing() {
    let mut w = Worker::new(Config::parse(br#"{"noop_for_benchmarks": true}"#).unwrap());
    let mut host = Mock::new(0);
    host.request(1, &[(":path", "/")]);
    assert_eq!(w.on_request(&mut host, 1), Verdict::Continue);
    assert!(host.header_reads.borrow().is_empty());
}

#[test]
fn warm_hits_come_from_the_worker_memo_and_still_check_binding() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    f.send_token(2, &t); // shared-data hit, memoised
    f.host.shared.clear(); // the memo alone must serve now
    assert_eq!(f.send_token(3, &t), Verdict::Continue);
    assert_eq!(
        f.host.req_header(3, "authorization").as_deref(),
        Some("Bearer p")
    );
    f.host.set_prop(&PEER, BOB);
    assert_eq!(f.send_token(4, &t), Verdict::Pause);
    assert_eq!(f.host.replies[&4].status, 401);
    assert_eq!(f.count(Counter::CacheHit), 2);
}

#[test]
fn memo_defers_to_shared_data_after_the_refresh_time() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 100));
    f.send_token(2, &t);
    // Another worker refreshed the shared entry meanwhile.
    let target = f.w.config.default_target.clone().unwrap();
    let key = cache::key(0, &target.digest, &t, None);
    let fresh = Entry {
        id: cache::id(&key),
        expires_ms: f.host.now_ms + 290_000,
        refresh_ms: f.host.now_ms + 200_000,
        subject_exp: f.now + 600,
        subject: ALICE,
        token: "p2",
    };
    let slot = cache::entry_key(&key, 4096);
    f.host.shared.insert(slot, (fresh.encode(), 99));
    f.host.now_ms += 80_000; // past p1's refresh time
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    f.send_token(3, &t);
    assert_eq!(
        f.host.req_header(3, "authorization").as_deref(),
        Some("Bearer p2")
    );
    assert_eq!(
        f.host.dispatched.len(),
        1,
        "no refresh needed: the shared entry is fresh"
    );
}

#[test]
fn client_mode_sends_the_configured_actor_token_and_never_forwards_it() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"spiffe_id": ALICE});
        c["exchange"]["actor_token_header"] = json!("X-Meshpass-Actor");
        c["strip_all_x_meshpass_headers"] = json!(true);
    });
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    f.send(
        1,
        &[
            (":path", "/x"),
            ("authorization", &auth),
            ("x-meshpass-actor", "actor.jwt.one"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-actor"), None);
    let form = form_urlencoded_pairs(&f.host.dispatched[0].body);
    assert!(
        form.contains(&("actor_token".into(), "actor.jwt.one".into())),
        "{form:?}"
    );
    assert!(form.contains(&(
        "actor_token_type".into(),
        "urn:ietf:params:oauth:token-type:jwt".into()
    )));
    f.answer(ok_response("p1", 300));
    // Same subject + actor: cached (twice, to reach the memo too).
    for ctx in [2, 3] {
        f.send(
            ctx,
            &[
                (":path", "/x"),
                ("authorization", &auth),
                ("x-meshpass-actor", "actor.jwt.one"),
            ],
        );
        assert_eq!(
            f.host.req_header(ctx, "authorization").as_deref(),
            Some("Bearer p1")
        );
    }
    assert_eq!(f.host.dispatched.len(), 1);
    // Another actor token is another exchange.
    f.send(
        4,
        &[
            (":path", "/x"),
            ("authorization", &auth),
            ("x-meshpass-actor", "actor.jwt.two"),
        ],
    );
    assert_eq!(f.host.dispatched.len(), 2);
    // No actor token: the proxy is misconfigured, fail closed with 503.
    f.send(5, &[(":path", "/x"), ("authorization", &auth)]);
    assert_eq!(f.host.replies[&5].status, 503);
}

#[test]
fn kubernetes_service_account_tokens_bind_as_their_spiffe_id() {
    let mut f =
        fixture_with(|c| c["issuers"][0]["subject_format"] = json!("kubernetes_service_account"));
    let t = f
        .key
        .svid(ISS, AUD, "system:serviceaccount:shop:alice", f.now, 600);
    f.send_token(1, &t);
    assert_eq!(f.host.dispatched.len(), 1, "{:?}", f.host.replies.get(&1));
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    let t = f
        .key
        .svid(ISS, AUD, "system:serviceaccount:shop:bob", f.now, 600);
    f.send_token(2, &t);
    assert_eq!(f.host.replies[&2].status, 401);
}
