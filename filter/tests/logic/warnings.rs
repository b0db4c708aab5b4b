//! Warnings a sustained condition would repeat per request (a missing exchange cluster,
//! a missing actor token, a refresh outage) come at most once a minute.

use super::*;

/// Alice's token once a second for 20 s, each request refused 503.
fn refused_every_second_for_20_s(f: &mut Fixture) {
    let t = f.token(ALICE);
    for ctx in 1..=20u32 {
        f.send_token(ctx, &t);
        assert_eq!(f.host.replies[&ctx].status, 503);
        f.host.now_ms += 1000;
        f.tick();
    }
}

/// A sustained exchange outage that makes every dispatch fail (the cluster missing
/// from Envoy's configuration, e.g. a renamed Istio service): every request is a miss
/// (nothing gets cached) and each one writes a warning. Over a minute of 1 request/s
/// that is 60 identical warn lines; the revocation feed's outage warns once a minute
/// (README "Revocation"), the same outage of the exchange itself should not flood
/// Envoy's log once per request.
#[test]
fn a_sustained_exchange_dispatch_failure_warns_at_most_once_a_minute_not_once_per_request() {
    let mut f = fixture_with(|_| {});
    f.host.fail_dispatch = true;
    refused_every_second_for_20_s(&mut f);
    assert_eq!(f.count(Counter::DeniedUnavailable), 20);
    let n = f.host.warnings("exchange dispatch failed");
    assert!(
        n <= 1,
        "{n} warn lines for one 20 s outage (one per request): {:?}",
        f.host.warns.borrow().first()
    );
}

/// CLIENT mode with `exchange.actor_token_header`: when Envoy's `credential_injector`
/// stops adding the proxy's own token (SDS outage), every request is refused 503 and
/// every one writes the same warning: a per-request warn flood for a sustained,
/// proxy-wide condition.
#[test]
fn a_missing_actor_token_warns_at_most_once_a_minute_not_once_per_request() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"spiffe_id": ALICE});
        c["exchange"]["actor_token_header"] = json!("x-actor-token");
    });
    refused_every_second_for_20_s(&mut f);
    let n = f.host.warnings("actor token header");
    assert!(n <= 1, "{n} warn lines in 20 s, one per request");
}

/// A cached token past its refresh point, the exchange service down (503): the token
/// is served (as documented) and background refreshes keep failing. Each failure used
/// to log a warning: one hot token gave a warn line per tick per worker (with 1,000 hot
/// tokens, 1,000 lines a second per worker) for as long as the outage lasted.
#[test]
fn a_background_refresh_outage_warns_at_most_once_a_minute_not_once_per_tick() {
    let mut f = fixture_with(|_| {});
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(ok_response("p1", 300));
    // Past 75 % of the entry's life.
    f.host.now_ms += 230_000;
    f.tick();
    for ctx in 2..32 {
        assert_eq!(f.send_token(ctx, &t), Verdict::Continue, "still served");
        f.tick(); // the refresh goes out
        if f.host.dispatched.last().unwrap().from_ctx == 0 {
            f.answer(error_response(503, "temporarily_unavailable", None));
        }
        f.host.now_ms += 1000;
    }
    // Refreshes keep going out (with their backoff: 2, 4, 8, 16 s).
    assert!(f.count(Counter::CacheRefresh) >= 3);
    let n = f.host.warnings("background refresh failed");
    assert!(n <= 1, "{n} warn lines in 30 s for one cached token");
}

/// The exchange service failing (an upstream 502 from Envoy, then no answer at all:
/// a timeout): each request is refused 503, and the log said nothing about why, so an
/// operator saw only 503s. Now a warning names what the service did, at most once a
/// minute with the count of the failures held back.
#[test]
fn a_failed_exchange_is_logged_with_what_the_service_answered_at_most_once_a_minute() {
    let mut f = fixture_with(|_| {});
    let t = f.token(ALICE);
    for ctx in 1..=5u32 {
        f.send_token(ctx, &t);
        f.answer(error_response(502, "bad_gateway", None));
        assert_eq!(f.host.replies[&ctx].status, 503);
        f.host.now_ms += 1000;
    }
    assert_eq!(f.host.warnings("exchange failed"), 1, "{:?}", f.host.warns);
    assert_eq!(f.host.warnings("status 502"), 1, "{:?}", f.host.warns);

    f.host.now_ms += 60_000;
    f.send_token(6, &t);
    f.answer(outage());
    assert_eq!(f.host.replies[&6].status, 503);
    assert_eq!(f.host.warnings("exchange failed"), 2, "{:?}", f.host.warns);
    let warns = f.host.warns.borrow();
    let last = warns.last().unwrap();
    assert!(
        last.contains("no answer") && last.contains("4 more"),
        "{last}"
    );
    assert!(!last.contains(&t), "no token in the log: {last}");
}

/// A refusal by policy is the service doing its job, not a failure to warn about.
#[test]
fn a_refused_exchange_writes_no_warning() {
    let mut f = fixture_with(|_| {});
    let t = f.token(ALICE);
    f.send_token(1, &t);
    f.answer(error_response(403, "unauthorized_client", None));
    assert_eq!(f.host.replies[&1].status, 403);
    assert_eq!(f.host.warnings("exchange"), 0, "{:?}", f.host.warns);
}

/// CLIENT mode discovering its identity, with neither a local certificate nor Istio
/// node metadata (a wrong property path, a bootstrap without NAMESPACE): a proxy-wide
/// fault. It was answered 401 `invalid_token`, blaming the caller's token, and never
/// logged; now 503 with `Retry-After` and a warning at most once a minute.
#[test]
fn an_undiscoverable_own_identity_is_a_503_warned_at_most_once_a_minute() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"trust_domain": "cluster.local"});
    });
    f.host.props.clear();
    refused_every_second_for_20_s(&mut f);
    let r = &f.host.replies[&1];
    assert!(r.body.contains("own workload identity"), "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let n = f.host.warnings("own workload identity unavailable");
    assert_eq!(n, 1, "one warn line in 20 s");
    assert_eq!(exchanges(&f.host), 0);
}
