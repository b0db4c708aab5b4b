//! The miss: the RFC 8693 form, the rewrite, the cache and its expiry, the exchange's error answers and failure modes.

use super::*;

#[test]
fn miss_validates_then_sends_the_rfc8693_form_with_traceparent() {
    let mut f = fixture();
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    f.host.request(
        7,
        &[
            (":path", "/orders/1"),
            ("authorization", &auth),
            ("traceparent", TRACEPARENT),
        ],
    );
    assert_eq!(f.w.on_request(&mut f.host, 7), Verdict::Pause);
    let d = f.host.dispatched[0].clone();
    assert_eq!(d.cluster, "exchange");
    assert_eq!(d.header(":method"), Some("POST"));
    assert_eq!(d.header(":path"), Some("/token"));
    assert_eq!(d.header(":authority"), Some("exchange.test"));
    assert_eq!(
        d.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(d.header("traceparent"), Some(TRACEPARENT));
    let form: Vec<(String, String)> = form_urlencoded_pairs(&d.body);
    let get = |k: &str| {
        form.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("grant_type"),
        vec!["urn:ietf:params:oauth:grant-type:token-exchange"]
    );
    assert_eq!(get("subject_token"), vec![t.clone()]);
    assert_eq!(
        get("subject_token_type"),
        vec!["urn:ietf:params:oauth:token-type:jwt"]
    );
    assert_eq!(get("resource"), vec!["https://orders.test"]);
    assert_eq!(get("scope"), vec!["orders.read"]);
}

#[test]
fn exchange_success_rewrites_authorization_caches_and_later_requests_hit() {
    let mut f = fixture_with(|c| c["set_subject_header"] = json!(true));
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("participant-1", 300));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(
        f.host.req_header(1, "authorization").as_deref(),
        Some("Bearer participant-1")
    );
    assert_eq!(
        f.host.req_header(1, "x-meshpass-subject").as_deref(),
        Some(ALICE)
    );
    assert_eq!(f.host.latencies.len(), 1);

    // Same token again: served from shared data, no second exchange, no signature check.
    f.host.header_writes.clear();
    f.host.header_reads.borrow_mut().clear();
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    assert_eq!(f.host.dispatched.len(), 1);
    assert_eq!(
        f.host.req_header(2, "authorization").as_deref(),
        Some("Bearer participant-1")
    );
    assert_eq!(f.count(Counter::CacheHit), 1);
    assert_eq!(f.count(Counter::CacheMiss), 1);
    assert_eq!(f.count(Counter::Allowed), 2);
    // The hit path reads the header map once and writes only what changes.
    assert_eq!(*f.host.header_reads.borrow(), vec!["*"]);
    assert_eq!(
        f.host.header_writes,
        vec!["authorization", "x-meshpass-subject"]
    );
}

#[test]
fn cache_entry_stores_subject_and_expires_before_the_participant_token() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    let target = f.w.config.default_target.clone().unwrap();
    let slot = cache::entry_key(&cache::key(0, &target.digest, &t, None), 4096);
    let (bytes, _) = f.host.shared[&slot].clone();
    let e = Entry::decode(&bytes).unwrap();
    assert_eq!(e.subject, ALICE);
    assert_eq!(e.token, "p");
    // Counted from the dispatch, less the second the service's clock rounds away.
    assert_eq!(e.expires_ms, f.host.now_ms - 1_000 + 300_000 - 10_000);
    assert!(e.refresh_ms < e.expires_ms);
    // After expiry it is a miss again (and a new exchange).
    f.host.now_ms = e.expires_ms + 1;
    f.send_token(2, &t);
    assert_eq!(f.host.dispatched.len(), 2);
}

/// The service counts `expires_in` from its own clock in whole seconds, read after the
/// call left the filter; the filter counted it from the answer's arrival, so a 5 s
/// token answered 1.5 s late was cached 1.5 s (plus the service's rounding) past its
/// own `exp`, beyond what the margin (10 % of a short life) absorbs: a hit forwarded
/// an expired token. Counted from the dispatch, less the second the service rounds
/// away, the entry ends before the token does.
#[test]
fn a_participant_token_answered_late_is_never_cached_past_its_own_exp() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.host.now_ms = f.host.now_ms / 1000 * 1000 + 900;
    let dispatched = f.host.now_ms;
    f.send_token(1, &t);
    // The service reads its clock (whole seconds) as the call arrives: exp = that + 5.
    let exp_ms = dispatched / 1000 * 1000 + 5_000;
    f.host.now_ms += 1_500;
    f.answer(ok_response("p", 5));
    let target = f.w.config.default_target.clone().unwrap();
    let slot = cache::entry_key(&cache::key(0, &target.digest, &t, None), 4096);
    let (bytes, _) = f.host.shared[&slot].clone();
    let e = Entry::decode(&bytes).unwrap();
    assert!(
        e.expires_ms <= exp_ms,
        "cached until {} ms, {} ms past the token's exp",
        e.expires_ms,
        e.expires_ms.saturating_sub(exp_ms)
    );
}

#[test]
fn cached_token_replayed_over_another_connection_is_refused() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    f.host.set_prop(&PEER, BOB);
    assert_eq!(f.send_token(2, &t), Verdict::Pause);
    assert_eq!(f.host.replies[&2].status, 401);
    assert_eq!(
        f.host.req_header(2, "authorization"),
        Some(format!("Bearer {t}"))
    );
    assert_eq!(f.count(Counter::DeniedBinding), 1);
}

#[test]
fn concurrent_misses_for_one_token_share_one_exchange_and_each_is_bound() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.send_token(2, &t);
    f.host.set_prop(&PEER, BOB);
    f.send_token(3, &t); // same token over Bob's connection: waits, then refused.
    f.host.gone.insert(4);
    f.host.set_prop(&PEER, ALICE);
    f.send_token(4, &t); // stream reset before the answer
    assert_eq!(f.host.dispatched.len(), 1);
    assert_eq!(f.count(Counter::Coalesced), 3);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1, 2]);
    assert_eq!(
        f.host.req_header(2, "authorization").as_deref(),
        Some("Bearer p")
    );
    assert_eq!(f.host.replies[&3].status, 401);
    assert!(!f.host.replies.contains_key(&4));
}

#[test]
fn exchange_errors_map_to_challenged_403s_401s_429s_and_503s_with_retry_after() {
    let cases = [
        (error_response(400, "unauthorized_client", None), 403, None),
        (error_response(400, "invalid_target", None), 403, None),
        (error_response(400, "invalid_scope", None), 403, None),
        (error_response(400, "invalid_grant", None), 401, None),
        (error_response(429, "slow_down", Some("7")), 429, Some("7")),
        (
            error_response(503, "temporarily_unavailable", Some("9")),
            503,
            Some("9"),
        ),
        (error_response(500, "server_error", None), 503, Some("5")),
        (CallResponse::default(), 503, Some("5")), // timeout / reset
        (
            CallResponse {
                status: Some(200),
                retry_after: None,
                body: b"{}".to_vec(),
            },
            503,
            Some("5"),
        ),
    ];
    for (i, (resp, status, retry_after)) in cases.into_iter().enumerate() {
        let mut f = fixture();
        let t = f.token(ALICE);
        f.send_token(1, &t);
        f.answer(resp);
        let r = &f.host.replies[&1];
        assert_eq!(r.status, status, "case {i}");
        assert_eq!(r.header("retry-after"), retry_after, "case {i}");
        assert!(f.host.resumed.is_empty());
        assert!(
            f.host.shared.keys().all(|k| !k.starts_with("meshpass/c/")),
            "case {i}"
        );
        if status == 403 {
            assert!(r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("says the service"));
            // RFC 6750 §3.1: a refused privilege is challenged as insufficient_scope.
            let www = r.header("www-authenticate").unwrap_or_default();
            assert!(
                www.starts_with("Bearer error=\"insufficient_scope\", error_description=\"")
                    && www.contains("says the service"),
                "case {i}: {www:?}"
            );
        } else if status != 401 {
            assert_eq!(r.header("www-authenticate"), None, "case {i}");
        }
    }
}

#[test]
fn failure_mode_allow_forwards_without_any_token_only_when_the_service_is_down() {
    let mut f = fixture_with(|c| c["default_rule"]["failure_mode"] = json!("allow"));
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(error_response(503, "temporarily_unavailable", None));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(f.host.req_header(1, "authorization"), None);
    assert_eq!(f.count(Counter::FailOpen), 1);
    // A policy refusal still denies.
    f.send_token(2, &t);
    f.answer(error_response(400, "unauthorized_client", None));
    assert_eq!(f.host.replies[&2].status, 403);
    // Unreachable cluster (dispatch refused): fail open too.
    f.host.fail_dispatch = true;
    f.send_token(3, &t);
    assert_eq!(f.host.resumed, vec![1, 3]);
}

#[test]
fn dispatch_failure_answers_503_by_default() {
    let mut f = fixture();
    f.host.fail_dispatch = true;
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.replies[&1].status, 503);
    assert_eq!(f.host.replies[&1].header("retry-after"), Some("5"));
}

#[test]
fn stuck_exchange_is_answered_503_on_the_tick() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.host.now_ms += 5000;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.replies[&1].status, 503);
    // A later answer for the cancelled call is ignored safely.
    f.answer(ok_response("late", 300));
    assert!(f.host.resumed.is_empty());
}

#[test]
fn failure_mode_allow_never_fails_open_on_a_broken_answer_from_the_service() {
    let mut f = fixture_with(|c| c["default_rule"]["failure_mode"] = json!("allow"));
    let t = f.token(ALICE);
    // A 4xx that is no policy refusal: the service says the request is wrong.
    for (ctx, code) in [
        (1, "invalid_request"),
        (2, "unsupported_grant_type"),
        (3, "invalid_client"),
    ] {
        f.send_token(ctx, &t);
        f.answer(error_response(400, code, None));
        assert_eq!(f.host.replies[&ctx].status, 503, "{code}");
    }
    // An unparsable 200.
    f.send_token(4, &t);
    f.answer(CallResponse {
        status: Some(200),
        retry_after: None,
        body: b"<html>proxy login</html>".to_vec(),
    });
    assert_eq!(f.host.replies[&4].status, 503);
    assert!(f.host.resumed.is_empty());
    assert_eq!(f.count(Counter::FailOpen), 0);
    // A 5xx is an outage: fail open.
    f.send_token(5, &t);
    f.answer(error_response(502, "server_error", None));
    assert_eq!(f.host.resumed, vec![5]);
}

#[test]
fn a_rule_without_resource_or_audience_is_refused() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["rules"] = json!([{"path_prefix": "/x", "scopes": ["read"]}]);
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "rules[0]", "{e}");
    let mut cfg = base_config(&key);
    cfg["default_rule"] = json!({"scopes": ["read"]});
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "default_rule", "{e}");
    cfg["default_rule"] = json!({"audience": ["app"]});
    Config::parse(cfg.to_string().as_bytes()).unwrap();
}

#[test]
fn only_a_w3c_traceparent_is_forwarded_to_the_exchange() {
    let mut f = fixture();
    for (ctx, tp) in [
        (1, "00-abc-def-01"),
        (
            2,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nx-evil: 1",
        ),
        (3, "00-00000000000000000000000000000000-b7ad6b7169203331-01"),
        (4, "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (5, "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
    ] {
        let t = f.key.svid(ISS, AUD, ALICE, f.now - ctx as u64, 600);
        let auth = format!("Bearer {t}");
        f.send(
            ctx,
            &[
                (":path", "/x"),
                ("authorization", &auth),
                ("traceparent", tp),
            ],
        );
        assert_eq!(
            f.host.dispatched.last().unwrap().header("traceparent"),
            None,
            "{tp}"
        );
    }
}

#[test]
fn a_tightened_policy_never_serves_entries_cached_under_the_old_one() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    assert_eq!(f.host.dispatched.len(), 1);
    // Same host (shared data survives a config reload), stricter issuer policy.
    let mut cfg = base_config(&f.key);
    cfg["issuers"][0]["spiffe_id_patterns"] = json!(["spiffe://cluster.local/ns/shop/sa/alice"]);
    cfg["issuers"][0]["max_lifetime_secs"] = json!(900);
    f.w = worker(&cfg);
    assert_eq!(
        f.send_token(3, &t),
        Verdict::Pause,
        "re-validated under the new policy"
    );
    assert_eq!(f.host.dispatched.len(), 2);
    // So is a change of binding mode.
    let a = Config::parse(base_config(&f.key).to_string().as_bytes()).unwrap();
    let mut cfg = base_config(&f.key);
    cfg["mode"] = json!("CLIENT");
    let b = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_ne!(
        a.default_target.unwrap().digest,
        b.default_target.unwrap().digest
    );
}

#[test]
fn a_five_second_token_is_cached_for_most_of_its_life() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 5));
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    assert_eq!(f.host.dispatched.len(), 1, "served from the cache");
    f.host.now_ms += 4_600;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.send_token(3, &t), Verdict::Pause, "expired 0.5 s early");
}

#[test]
fn noop_benchmark_aid_is_refused_next_to_a_production_config() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["noop_for_benchmarks"] = json!(true);
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "noop_for_benchmarks", "{e}");
}

#[test]
fn worker_queue_names_are_unique_even_when_the_number_races() {
    let mut f = fixture();
    let mut w2 = worker(&base_config(&f.key));
    f.w.start(&mut f.host);
    // Both workers found the counter absent: Envoy lets both "create" it.
    f.host.shared.remove("meshpass/workers");
    w2.start(&mut f.host);
    let (a, b) = (f.w.queue_name().unwrap(), w2.queue_name().unwrap());
    assert_ne!(a, b);
}

#[test]
fn near_expiry_hit_is_served_and_refreshed_once_in_the_background() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 100));
    f.host.now_ms += 80_000; // past 75 % of the 90 s life
    f.w.on_tick(&mut f.host);
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    assert_eq!(f.send_token(3, &t), Verdict::Continue);
    assert_eq!(
        f.host.req_header(3, "authorization").as_deref(),
        Some("Bearer p1")
    );
    assert_eq!(f.host.dispatched.len(), 1);
    f.host.ctx = 0; // root
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 2, "one refresh");
    assert_eq!(f.host.dispatched[1].from_ctx, 0);
    f.answer(ok_response("p2", 300));
    f.send_token(4, &t);
    assert_eq!(
        f.host.req_header(4, "authorization").as_deref(),
        Some("Bearer p2")
    );
    assert_eq!(f.host.counter(Counter::CacheRefresh), 1);
}

/// A token cached as `p1` (90 s life), hit past 75 % of it (request 2), and the
/// background refresh dispatched from the root on the next tick.
fn refresh_in_flight() -> (Fixture, String) {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 100));
    f.host.now_ms += 80_000;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    assert_eq!(f.host.dispatched.len(), 2, "one refresh");
    (f, t)
}

#[test]
fn a_refresh_the_service_refuses_ends_the_cached_token_at_once() {
    // A mapping deleted (or a subject the service no longer accepts) answers the
    // background refresh with a 4xx: the cached participant token must not be served
    // for the rest of its life; the next request exchanges again and is refused.
    for (status, code) in [(403, "unauthorized_client"), (401, "invalid_grant")] {
        let refusal = || error_response(400, code, None);
        let (mut f, t) = refresh_in_flight();
        f.answer(refusal());
        assert_eq!(
            f.send_token(3, &t),
            Verdict::Pause,
            "{status}: a miss, not a hit"
        );
        assert_eq!(f.host.dispatched.len(), 3, "{status}: a new exchange");
        f.answer(refusal());
        assert_eq!(f.host.replies[&3].status, status);
        assert_ne!(
            f.host.req_header(3, "authorization").as_deref(),
            Some("Bearer p1")
        );
    }
}

#[test]
fn a_refresh_that_meets_an_outage_keeps_serving_the_cached_token() {
    for resp in [
        error_response(503, "temporarily_unavailable", Some("2")),
        error_response(429, "slow_down", Some("2")),
    ] {
        let (mut f, t) = refresh_in_flight();
        f.answer(resp);
        assert_eq!(f.send_token(3, &t), Verdict::Continue);
        assert_eq!(
            f.host.req_header(3, "authorization").as_deref(),
            Some("Bearer p1")
        );
    }
}

#[test]
fn tick_deletes_expired_entries_from_shared_data() {
    let mut f = fixture();
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p", 60));
    assert_eq!(
        f.host
            .shared
            .keys()
            .filter(|k| k.starts_with("meshpass/c/"))
            .count(),
        1
    );
    f.host.now_ms += 61_000;
    f.w.on_tick(&mut f.host);
    // Emptied: Envoy keeps the key, the slot is reused by the next entry.
    assert_eq!(
        f.host
            .shared
            .iter()
            .filter(|(k, (v, _))| k.starts_with("meshpass/c/") && !v.is_empty())
            .count(),
        0
    );
}

#[test]
fn token_churn_keeps_shared_data_within_the_configured_slots() {
    let mut f = fixture_with(|c| c["cache"] = json!({"slots": 16}));
    f.w.start(&mut f.host);
    for i in 0..200u64 {
        let t = f.key.svid(ISS, AUD, ALICE, f.now - i, 600);
        f.send_token(1000 + i as u32, &t);
        f.answer(ok_response(&format!("p{i}"), 300));
        assert_eq!(
            f.send_token(5000 + i as u32, &t),
            Verdict::Continue,
            "token {i}"
        );
    }
    let count = |prefix: &str| {
        f.host
            .shared
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    };
    assert!(count("meshpass/c/") <= 16, "{}", count("meshpass/c/"));
    assert!(count("meshpass/f/") <= 16, "{}", count("meshpass/f/"));
    assert!(
        f.host.shared.len() <= 16 + 16 + 4,
        "{:?}",
        f.host.shared.len()
    );
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["cache"] = json!({"slots": 1});
    assert_eq!(
        Config::parse(cfg.to_string().as_bytes()).unwrap_err().field,
        "cache.slots"
    );
}

#[test]
fn a_token_whose_slot_keeps_a_longer_lived_entry_is_memoised_not_exchanged_on_every_request() {
    // The slot keeps the entry that lives longer, so a shorter-lived answer for another
    // key on the same slot is not cached there; before the memo fallback each of that
    // token's requests was a new exchange. Pairs until two tokens share one of 16 slots.
    let filled = |f: &Fixture| {
        f.host
            .shared
            .iter()
            .filter(|(k, (v, _))| k.starts_with("meshpass/c/") && !v.is_empty())
            .count()
    };
    for pair in 0..400u64 {
        let mut f = fixture_with(|c| c["cache"] = json!({"slots": 16}));
        let long = f.key.svid(ISS, AUD, ALICE, f.now - 2 * pair, 600);
        let short = f.key.svid(ISS, AUD, ALICE, f.now - 2 * pair - 1, 600);
        f.send_token(1, &long);
        f.answer(ok_response("p-long", 3000));
        f.send_token(2, &short);
        f.answer(ok_response("p-short", 300));
        assert_eq!(
            f.host.req_header(2, "authorization").as_deref(),
            Some("Bearer p-short")
        );
        if filled(&f) != 1 {
            continue; // two slots: no contest
        }
        let calls = f.host.dispatched.len();
        assert_eq!(f.send_token(3, &short), Verdict::Continue, "pair {pair}");
        assert_eq!(
            f.host.req_header(3, "authorization").as_deref(),
            Some("Bearer p-short")
        );
        assert_eq!(
            f.host.dispatched.len(),
            calls,
            "the short-lived token was exchanged again"
        );
        // The slot's own entry is still served from shared data.
        assert_eq!(f.send_token(4, &long), Verdict::Continue);
        assert_eq!(
            f.host.req_header(4, "authorization").as_deref(),
            Some("Bearer p-long")
        );
        return;
    }
    panic!("no two of 400 token pairs shared a slot");
}

/// Two rules with one target share an exchange; on an outage each request keeps its
/// own rule's `failure_mode`: a `deny` request is never forwarded without a credential
/// because an `allow` one was waiting on the same exchange.
#[test]
fn a_deny_rule_request_coalesced_with_an_allow_rule_request_never_fails_open() {
    let mut f = fixture_with(|c| {
        c["rules"] = json!([{
            "path_prefix": "/public",
            "resource": "https://orders.test",
            "failure_mode": "allow",
        }]);
        c["default_rule"] = json!({"resource": "https://orders.test"});
    });
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    for (ctx, path) in [(1, "/public/x"), (2, "/admin")] {
        let v = f.send(ctx, &[(":path", path), ("authorization", &auth)]);
        assert_eq!(v, Verdict::Pause, "{path}");
    }
    kick(&mut f.host, &mut f.w);
    assert!(!f.host.dispatched.is_empty());
    // The exchange service is down: every exchange sent gets a 503.
    for call in f
        .host
        .dispatched
        .iter()
        .map(|d| d.token)
        .collect::<Vec<_>>()
    {
        let resp = CallResponse {
            status: Some(503),
            retry_after: None,
            body: Vec::new(),
        };
        f.w.on_call_response(&mut f.host, call, resp);
    }
    assert!(
        f.host.resumed.contains(&1),
        "the allow rule's request goes on"
    );
    assert!(
        !f.host.resumed.contains(&2),
        "the deny rule's request was forwarded without a credential: {:?}",
        f.host.replies.get(&2)
    );
    assert_eq!(f.host.replies.get(&2).map(|r| r.status), Some(503));
}

/// The warm (memo) hit reads a clock up to one `tick_ms` old (up to 60 s): a memoised
/// answer must still never outlive its cache entry, which ends before the subject
/// token does.
#[test]
fn a_memo_hit_never_serves_a_subject_token_past_its_expiry_with_a_long_tick() {
    let mut f = fixture_with(|c| c["tick_ms"] = json!(60_000));
    // A 20 s JWT-SVID (leeway: the default 30 s).
    let t = f.key.svid(ISS, AUD, ALICE, f.now, 20);
    assert_eq!(f.send_token(1, &t), Verdict::Pause);
    f.answer(ok_response("participant", 300));
    assert_eq!(f.host.resumed, vec![1]);
    // Served from shared data once: memoised from here.
    assert_eq!(f.send_token(2, &t), Verdict::Continue);
    f.host.ctx = 0;
    f.w.on_tick(&mut f.host);
    // 55 s on, before the next tick: the subject token expired 35 s ago, past the
    // leeway, and the cache entry ended at 18 s.
    f.host.now_ms = (f.now + 55) * 1000;
    let v = f.send_token(3, &t);
    assert!(
        v == Verdict::Pause && f.host.replies.get(&3).is_none_or(|r| r.status == 401),
        "an expired subject token was served from the memo: {v:?}, authorization {:?}",
        f.host.req_header(3, "authorization")
    );
}

/// DESIGN: a success issues the JWT type, and an unusable answer always denies. A 200
/// issuing another kind of token (a refresh token, an assertion), or one the service
/// says is already over (`expires_in: 0`), was forwarded to the app as the participant
/// token; now 503, never fail-open.
#[test]
fn a_200_with_another_token_type_or_an_expired_token_is_never_forwarded() {
    let answer = |issued: &str, expires_in: u64| CallResponse {
        status: Some(200),
        retry_after: None,
        body: json!({"access_token": "not-a-participant-token", "issued_token_type": issued,
                     "token_type": "Bearer", "expires_in": expires_in})
        .to_string()
        .into_bytes(),
    };
    let jwt = "urn:ietf:params:oauth:token-type:jwt";
    for (issued, expires_in) in [
        ("urn:ietf:params:oauth:token-type:refresh_token", 300),
        ("urn:ietf:params:oauth:token-type:saml2", 300),
        ("", 300),
        (jwt, 0),
    ] {
        let mut f = fixture();
        let t = f.token(ALICE);
        assert_eq!(f.send_token(1, &t), Verdict::Pause);
        f.answer(answer(issued, expires_in));
        assert_ne!(
            f.served(1).as_deref(),
            Some("Bearer not-a-participant-token"),
            "{issued:?}, expires_in {expires_in}: forwarded"
        );
        assert_eq!(f.host.replies[&1].status, 503, "{issued:?} {expires_in}");
    }
}
