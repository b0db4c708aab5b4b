//! Edges of the request path against docs/DESIGN.md ("Subject tokens" rule 4, "What
//! reaches the application") and this README (request steps 1-6, header hygiene,
//! `failure_mode`, the memo): requests joining another's exchange are bound before any
//! fail-open, a memo never outlives an entry whatever tick wrote it, malformed and
//! repeated credentials.

use super::*;
use meshpass_filter::api::CallResponse;

fn send_on(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
    w.on_request(host, ctx)
}

/// Delivers what was enqueued on `w`'s queue, as Envoy's `on_queue_ready` would.
fn deliver(host: &mut Mock, w: &mut Worker) {
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
}

// ------------------------------------------------------------------ binding + fail open

/// DESIGN "Subject tokens" rule 4 + "What reaches the application": `failure_mode:
/// allow` covers outages only. A request presenting Alice's token over Bob's mTLS
/// connection is a binding mismatch (401) whether or not the service is up; it must not
/// be forwarded just because it arrived while Alice's exchange was in flight and that
/// exchange met an outage.
#[test]
fn a_request_over_another_peers_connection_joining_an_in_flight_exchange_is_refused_not_failed_open_on_an_outage(
) {
    let mut f = fixture_with(|c| c["default_rule"]["failure_mode"] = json!("allow"));
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    // The same token, replayed over Bob's connection, while the exchange is out.
    f.host.set_prop(&PEER, BOB);
    assert_eq!(f.send_token(2, &t), Verdict::Pause);
    // (Without an exchange in flight the same request is refused 401 at once, see
    // tests/logic/denials.rs token_whose_subject_is_not_the_mtls_peer_is_refused.)
    f.host.set_prop(&PEER, ALICE);
    f.answer(outage());
    assert!(f.host.resumed.contains(&1), "the owner fails open (outage)");
    assert!(
        !f.host.resumed.contains(&2),
        "a request bound to another peer was forwarded under failure_mode allow (binding skipped): reply {:?}",
        f.host.replies.get(&2)
    );
    assert_eq!(f.host.replies.get(&2).map(|r| r.status), Some(401));
}

/// The same across workers: a waiter of another worker never validated its token (it
/// "is bound to its connection on the result"); an outage result must not forward it.
#[test]
fn a_waiter_on_another_worker_bound_to_another_peer_is_refused_not_failed_open_on_an_outage() {
    let mut f = fixture_with(|c| c["default_rule"]["failure_mode"] = json!("allow"));
    let mut cfg = base_config(&f.key);
    cfg["default_rule"]["failure_mode"] = json!("allow");
    let mut w2 = worker(&cfg);
    f.w.start(&mut f.host);
    w2.start(&mut f.host);
    let t = f.token(ALICE);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    f.host.set_prop(&PEER, BOB);
    assert_eq!(send_on(&mut w2, &mut f.host, 11, &t), Verdict::Pause);
    f.host.set_prop(&PEER, ALICE);
    f.answer(outage());
    deliver(&mut f.host, &mut w2);
    assert!(f.host.resumed.contains(&1), "the owner fails open (outage)");
    assert!(
        !f.host.resumed.contains(&11),
        "another worker's waiter bound to another peer was forwarded under failure_mode allow: reply {:?}",
        f.host.replies.get(&11)
    );
    assert_eq!(f.host.replies.get(&11).map(|r| r.status), Some(401));
}

/// Control for the two above: the outcome `Token` is bound per waiter .
#[test]
fn a_coalesced_waiter_over_another_peers_connection_gets_401_when_the_exchange_succeeds() {
    let mut f = fixture_with(|c| c["default_rule"]["failure_mode"] = json!("allow"));
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.host.set_prop(&PEER, BOB);
    f.send_token(2, &t);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(f.host.replies[&2].status, 401);
}

// ------------------------------------------------------------------ memo expiry

/// README "Per-worker memo ... valid until the refresh time" and exchange.rs: a memo
/// hit reads a clock up to one `tick_ms` old, so a memoised answer must end a tick
/// before its entry. The cap is applied only by the worker that *wrote* the entry
/// (with its own `tick_ms`); a worker with a longer tick (a configuration reload that
/// raised `tick_ms`: same policy digest, same shared data) memoises it unchanged and
/// serves it long after the entry (and the subject token) ended.
#[test]
fn a_memo_hit_never_serves_an_entry_past_its_expiry_when_a_worker_with_a_shorter_tick_wrote_it() {
    // The writer: tick 1 s.
    let mut f = fixture_with(|c| c["tick_ms"] = json!(1000));
    // The reader: the same configuration after a reload that raised tick_ms to 60 s.
    let mut cfg = base_config(&f.key);
    cfg["tick_ms"] = json!(60_000);
    let mut w2 = worker(&cfg);
    // A 20 s JWT-SVID: the entry ends at 18 s (margin = 10 % of its life).
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 20);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    f.answer(ok_response("participant", 300));
    assert_eq!(f.host.resumed, vec![1]);
    // The reader's first request: a shared-data hit (memoised from here).
    assert_eq!(send_on(&mut w2, &mut f.host, 2, &t), Verdict::Continue);
    // 55 s on, before the reader's next tick: the subject token expired 35 s ago (past
    // the 30 s leeway), the cache entry ended at 18 s.
    f.host.now_ms = (f.now + 55) * 1000;
    let v = send_on(&mut w2, &mut f.host, 3, &t);
    assert!(
        v == Verdict::Pause,
        "an entry 37 s past its end (subject token expired) was served from the memo: {v:?}, authorization {:?}",
        f.host.req_header(3, "authorization")
    );
}

/// Control: the memo never serves another target's entry nor an entry past its time
/// on the worker that wrote it.
#[test]
fn a_memoised_token_is_never_served_for_another_rules_target() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p-default", 300));
    assert_eq!(f.send_token(2, &t), Verdict::Continue); // shared hit, memoised
    assert_eq!(f.send_token(3, &t), Verdict::Continue); // memo hit
    assert_eq!(
        f.host.req_header(3, "authorization").as_deref(),
        Some("Bearer p-default")
    );
    // The /orders rule: another target, so another exchange, never p-default.
    let auth = format!("Bearer {t}");
    let v = f.send(4, &[(":path", "/orders/1"), ("authorization", &auth)]);
    assert_eq!(v, Verdict::Pause);
    assert_eq!(f.host.dispatched.len(), 2);
    assert!(f.host.dispatched[1].body.contains("orders.test"));
}

// ------------------------------------------------------------------ token parsing

/// "Only the participant token, in Authorization": several `authorization` headers (one
/// the subject token, another a client credential) never reach the app beside it.
#[test]
fn a_second_client_authorization_header_never_reaches_the_app_beside_the_participant_token() {
    let mut f = fixture();
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    let sent = [
        (":path", "/x"),
        ("authorization", auth.as_str()),
        ("authorization", "Basic dXNlcjpwdw=="),
    ];
    f.send(1, &sent);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    let auths: Vec<_> = f.host.headers[&1]
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(auths, vec!["Bearer p".to_string()]);
    // Warm hit, same.
    f.send(2, &sent);
    f.send(3, &sent);
    let auths: Vec<_> = f.host.headers[&3]
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(auths, vec!["Bearer p".to_string()]);
}

/// A comma-joined `Authorization` (how Envoy coalesces a repeated inline header) or a
/// token with trailing junk is never served, even once the bare token is cached.
#[test]
fn a_comma_joined_or_junk_trailed_bearer_token_is_refused_even_when_the_bare_token_is_cached() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    for (ctx, v) in [
        (10, format!("Bearer {t},Bearer {t}")),
        (11, format!("Bearer {t}, Bearer {t}")),
        (12, format!("Bearer {t} junk")),
        (13, format!("Bearer {t}\tjunk")),
        (14, format!("Bearer {t}.x")),
        (15, format!("Bearer\t{t}")),
        (16, format!("Bearer{t}")),
    ] {
        let verdict = f.send(ctx, &[(":path", "/x"), ("authorization", &v)]);
        assert_eq!(verdict, Verdict::Pause, "{v:?}");
        let r = &f.host.replies[&ctx];
        assert_eq!(r.status, 401, "{v:?}");
        assert!(r.header("www-authenticate").is_some(), "{v:?}");
        let sig = t.rsplit('.').next().unwrap();
        assert!(!r.body.contains(sig), "token echoed: {}", r.body);
    }
    assert_eq!(f.host.dispatched.len(), 1);
}

/// `max_token_bytes`: larger tokens are 401 (invalid_token) before any parsing.
#[test]
fn an_oversize_token_is_refused_with_an_invalid_token_challenge() {
    let mut f = fixture_with(|c| c["max_token_bytes"] = json!(100));
    let t = f.token(ALICE);
    f.send(
        1,
        &[(":path", "/x"), ("authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(f.host.replies[&1].status, 401);
    let r = &f.host.replies[&1];
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\""));
}

// ------------------------------------------------------------------ hygiene

/// Fail open forwards no credential and no client `x-meshpass-*`; the subject header
/// the filter sets is not set either.
#[test]
fn fail_open_forwards_no_credential_and_no_meshpass_header() {
    let mut f = fixture_with(|c| {
        c["default_rule"]["failure_mode"] = json!("allow");
        c["set_subject_header"] = json!(true);
    });
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    f.send(
        1,
        &[
            (":path", "/x"),
            ("authorization", &auth),
            (
                "x-meshpass-subject",
                "spiffe://cluster.local/ns/shop/sa/admin",
            ),
            ("x-meshpass-role", "admin"),
        ],
    );
    f.answer(outage());
    assert_eq!(f.host.resumed, vec![1]);
    for h in ["authorization", "x-meshpass-subject", "x-meshpass-role"] {
        assert_eq!(f.host.req_header(1, h), None, "{h}");
    }
}

/// `validate_only_for_benchmarks` is a path that forwards a request: "any client
/// Authorization [is] removed on every path that forwards a request". With a custom
/// token header the client's own `Authorization` goes on to the app.
#[test]
fn the_validate_only_aid_never_forwards_a_client_authorization_beside_a_custom_token_header() {
    let key = Key::new("k1");
    let cfg = json!({
        "validate_only_for_benchmarks": true,
        "mode": "CLIENT", "own_identity": {"spiffe_id": ALICE},
        "token_header": "x-subject-token",
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
    });
    let mut w = worker(&cfg);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    w.start(&mut host);
    let t = key.svid(ISS, AUD, ALICE, now, 600);
    host.request(
        1,
        &[
            ("x-subject-token", t.as_str()),
            ("authorization", "Basic dXNlcjpwdw=="),
        ],
    );
    assert_eq!(w.on_request(&mut host, 1), Verdict::Continue);
    assert_eq!(host.req_header(1, "x-subject-token"), None);
    assert_eq!(
        host.req_header(1, "authorization"),
        None,
        "a client Authorization reached the app"
    );
}

// ------------------------------------------------------------------ paths and errors

/// Rules and bypass routes match the normal path; a path normalisation would change is
/// 400 before any bypass (more shapes than tests/logic/).
#[test]
fn paths_that_would_steer_past_a_rule_or_into_a_bypass_are_refused() {
    let mut f = fixture();
    for (ctx, p) in [
        (1, "/healthz/..;/orders"),
        (2, "/healthz/%2e%2e/orders"),
        (3, "/healthz/%2E%2E/orders"),
        (4, "/healthz\\..\\orders"),
        (5, "/healthz/./../orders"),
        (6, "/healthz/.%2e/orders"),
        (7, "/%2Fhealthz"),
        (8, "/healthz//../orders"),
    ] {
        assert_eq!(f.send(ctx, &[(":path", p)]), Verdict::Pause, "{p}");
        assert_eq!(f.host.replies[&ctx].status, 400, "{p}");
    }
    assert_eq!(f.count(Counter::Bypassed), 0);
}

/// 401s carry `WWW-Authenticate`, 429/503 `Retry-After`; nothing echoes the token.
#[test]
fn refusals_carry_their_challenge_or_retry_after_and_never_the_token() {
    let mut f = fixture();
    let t = f.token(ALICE);
    let sig = t.rsplit('.').next().unwrap().to_string();
    let cases = [
        (
            error_response(400, "invalid_grant", None),
            401,
            "www-authenticate",
        ),
        (error_response(429, "slow_down", None), 429, "retry-after"),
        (outage(), 503, "retry-after"),
        (
            error_response(400, "invalid_request", None),
            503,
            "retry-after",
        ),
        (CallResponse::default(), 503, "retry-after"),
    ];
    for (i, (resp, status, header)) in cases.into_iter().enumerate() {
        let ctx = 100 + i as u32;
        f.send_token(ctx, &t);
        f.answer(resp);
        let r = &f.host.replies[&ctx];
        assert_eq!(r.status, status, "case {i}");
        assert!(r.header(header).is_some(), "case {i}: {:?}", r.headers);
        assert!(!r.body.contains(&sig), "case {i}");
        assert!(r.headers.iter().all(|(_, v)| !v.contains(&sig)), "case {i}");
    }
    // Binding mismatch on a hit.
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    f.host.set_prop(&PEER, BOB);
    f.send_token(2, &t);
    let r = &f.host.replies[&2];
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
}

/// README `failure_mode`: "Only a request that would have been served is failed open:
/// one bound to the subject exchanged ... whose subject is not revoked; when no worker
/// can name the subject (the owner worker gone), 503." In `mode: NONE` a request of
/// another worker that joined the exchange, whose owner then vanished, is failed open
/// with no subject to check: here its subject was revoked while it waited.
#[test]
fn in_mode_none_a_waiter_whose_exchange_owner_is_gone_is_not_failed_open_when_its_subject_was_revoked_meanwhile(
) {
    let edit = |c: &mut serde_json::Value| {
        c["mode"] = json!("NONE");
        c["insecure_disable_binding"] = json!(true);
        c["default_rule"]["failure_mode"] = json!("allow");
        c["revocation"] = json!({"poll_interval_ms": 60_000});
    };
    let mut f = fixture_with(edit);
    let mut cfg = base_config(&f.key);
    edit(&mut cfg);
    let mut w2 = worker(&cfg);
    f.w.start(&mut f.host);
    w2.start(&mut f.host);
    let t = f.token(ALICE);
    // The owner validates Alice's token, claims the exchange, dispatches, then is gone.
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    kick(&mut f.host, &mut f.w);
    // The other worker's request joins it (unvalidated, as designed).
    assert_eq!(send_on(&mut w2, &mut f.host, 11, &t), Verdict::Pause);
    // Alice is revoked while it waits; the other worker loads the set.
    let set_key = w2.config.revocation.as_ref().unwrap().set_key.clone();
    let set = json!({"version": 7, "entries": [{"id": "rv-1", "target": "subject",
        "match": ALICE, "reason": "stolen token", "until": null}]});
    meshpass_filter::api::Host::shared_set(
        &mut f.host,
        &set_key,
        Some(set.to_string().as_bytes()),
        None,
    )
    .unwrap();
    f.host.ctx = 0;
    w2.on_notify(&mut f.host, meshpass_filter::revoke::REVOCATIONS_KICK);
    assert_eq!(
        w2.revocation_version(),
        7,
        "the set is enforced by the waiter's worker"
    );
    // The marker's deadline (timeout 2 s + 2 s) passes without an outcome.
    f.host.now_ms += 4_500;
    f.host.ctx = 0;
    w2.on_tick(&mut f.host);
    deliver(&mut f.host, &mut w2);
    assert!(
        !f.host.resumed.contains(&11),
        "a waiter of a revoked subject was failed open (forwarded) with no subject known"
    );
    assert_eq!(f.host.replies.get(&11).map(|r| r.status), Some(503));
    // Control: the revoked subject's own request on that worker is refused.
    assert_eq!(send_on(&mut w2, &mut f.host, 12, &t), Verdict::Pause);
    assert_eq!(f.host.replies[&12].status, 403);
}
