//! Remote key sets across workers and issuers: a start-time outage seen by every
//! worker backs off as one failure, a request waits for its own issuer's first keys,
//! an unknown kid's refetch survives an older fetch's answer, and a parked request
//! waits for the refetch, not for that answer. Also: an issuer with no keys yet is
//! refetched by its first request, a failed refetch answers 503, the min-refetch
//! interval is honoured below 5 s, oversize answers are named, SPIFFE bundles work and
//! last good keys survive bad answers in every worker.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_filter::exchange::DISPATCH_KICK;
use serde_json::Value;

const ISS_B: &str = "https://issuer-b.test";

fn remote_issuer(iss: &str, cluster: &str) -> Value {
    json!({
        "issuer": iss,
        "audiences": [AUD],
        "trust_domains": ["cluster.local"],
        "jwks_cluster": cluster,
        "jwks_path": "/keys",
        "jwks_refresh_secs": 300,
    })
}

fn config(issuers: Vec<Value>) -> Value {
    json!({
        "mode": "SERVER",
        "issuers": issuers,
        "exchange": {"cluster": "exchange", "authority": "exchange.test"},
        "default_rule": {"resource": "https://default.test", "scopes": ["read"]},
        "revocation": {"enabled": false},
    })
}

/// JWKS fetches dispatched so far (to any `jwks*` cluster).
fn jwks_fetches(host: &Mock) -> Vec<Dispatched> {
    host.dispatched
        .iter()
        .filter(|d| d.cluster.starts_with("jwks"))
        .cloned()
        .collect()
}

/// A worker of `cfg` started now (its start-time fetch dispatched): the time in
/// seconds, the host and the worker.
fn started(cfg: &Value) -> (u64, Mock, Worker) {
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(cfg);
    w.start(&mut host);
    (now, host, w)
}

fn answer(w: &mut Worker, host: &mut Mock, d: &Dispatched, resp: CallResponse) {
    host.ctx = d.from_ctx;
    w.on_call_response(host, d.token, resp);
}

fn tick(w: &mut Worker, host: &mut Mock) {
    host.ctx = 0;
    w.on_tick(host);
    // Exchanges go out from the root when the worker's own queue is kicked.
    if let Some(q) = w.queue_name().map(str::to_string) {
        let kick = DISPATCH_KICK;
        let before = host.enqueued.len();
        host.enqueued
            .retain(|(n, m)| !(*n == q && m.as_slice() == kick));
        if host.enqueued.len() != before {
            w.on_notify(host, kick);
        }
    }
}

// ------------------------------------------------------------------ backoff

/// README: "Failures back off 2 s, 4 s, … up to this"; every worker without keys
/// fetches at configure time. An Envoy with several workers started while the JWKS
/// endpoint is briefly down must retry after about 2 s, not after 2^workers s.
#[test]
fn a_start_time_outage_seen_by_every_worker_still_retries_after_the_first_backoff() {
    let cfg = config(vec![remote_issuer(ISS, "jwks")]);
    let mut host = Mock::new(now_secs() * 1000);
    let mut ws: Vec<Worker> = (0..8).map(|_| worker(&cfg)).collect();
    for w in &mut ws {
        w.start(&mut host);
    }
    let starts = jwks_fetches(&host);
    assert_eq!(starts.len(), 8, "one fetch per worker at configure time");
    // The endpoint is down for that moment: every start-time fetch fails.
    for (w, d) in ws.iter_mut().zip(&starts) {
        answer(w, &mut host, d, outage());
    }
    let lease = String::from_utf8(
        host.shared
            .iter()
            .find(|(k, _)| k.starts_with("meshpass/jwks-lease/"))
            .unwrap()
            .1
             .0
            .clone(),
    )
    .unwrap();
    // The endpoint is back. Within the first backoff (2 s; allow one doubling: 4 s)
    // some worker must fetch again.
    for _ in 0..4 {
        host.now_ms += 1000;
        for w in &mut ws {
            tick(w, &mut host);
        }
    }
    assert!(
        jwks_fetches(&host).len() > 8,
        "no JWKS fetch within 4 s of a single outage at start (lease now {lease:?}): \
         every worker's start-time failure counted as one more consecutive failure"
    );
}

// ------------------------------------------------------------------ first keys

/// README `jwks_cluster`: "requests arriving before the first key set wait for it (up
/// to 2 s, then 503)". With two remote issuers, a request of issuer B must wait for
/// B's keys, not be refused 503 the moment issuer A's keys arrive.
#[test]
fn a_request_waiting_for_its_issuers_first_keys_is_not_refused_when_another_issuers_keys_arrive() {
    let cfg = config(vec![
        remote_issuer(ISS, "jwks-a"),
        remote_issuer(ISS_B, "jwks-b"),
    ]);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&cfg);
    w.start(&mut host);
    let starts = jwks_fetches(&host);
    assert_eq!(starts.len(), 2);
    let fa = starts
        .iter()
        .find(|d| d.cluster == "jwks-a")
        .unwrap()
        .clone();
    let fb = starts
        .iter()
        .find(|d| d.cluster == "jwks-b")
        .unwrap()
        .clone();
    let (ka, kb) = (Key::new("a1"), Key::new("b1"));
    let tb = kb.svid(ISS_B, AUD, ALICE, now, 600);
    assert_eq!(send(&mut w, &mut host, 1, &tb), Verdict::Pause);
    assert!(host.replies.is_empty(), "waits for the first keys");
    // Issuer A's keys come first (100 ms later); B's are still on their way.
    host.now_ms += 100;
    answer(&mut w, &mut host, &fa, keys(&[&ka]));
    assert!(
        !host.replies.contains_key(&1),
        "issuer B's request was answered {:?} when issuer A's keys arrived, \
         while issuer B's first fetch was still out",
        host.replies.get(&1).map(|r| (r.status, r.body.clone()))
    );
    // B's keys come 100 ms later: the request goes on to its exchange.
    host.now_ms += 100;
    answer(&mut w, &mut host, &fb, keys(&[&kb]));
    tick(&mut w, &mut host);
    assert_eq!(exchanges(&host), 1);
}

// ------------------------------------------------------------------ unknown kid

/// A worker that has its first keys (fetched at `host.now_ms`), then the regular
/// refresh due: returns the regular refresh fetch, dispatched and not yet answered.
fn keys_then_regular_refresh_out(w: &mut Worker, host: &mut Mock, k1: &Key) -> Dispatched {
    w.start(host);
    let d = jwks_fetches(host)[0].clone();
    answer(w, host, &d, keys(&[k1]));
    host.now_ms += 301_000;
    tick(w, host);
    let f = jwks_fetches(host);
    assert_eq!(f.len(), 2, "the regular refresh is out");
    f[1].clone()
}

/// DESIGN: "an unknown `kid` triggers at most one rate-limited refetch"; README: "a key
/// rotation costs no 401". A kid first seen while the regular refresh is already out
/// (that fetch may well have been served before the rotation) must still get its
/// refetch: the refresh's answer must not cancel it.
#[test]
fn an_unknown_kid_seen_while_a_refresh_is_out_still_gets_its_refetch() {
    let cfg = config(vec![remote_issuer(ISS, "jwks")]);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&cfg);
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = keys_then_regular_refresh_out(&mut w, &mut host, &k1);
    // The issuer rotates to k2; a token signed with it arrives.
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send(&mut w, &mut host, 1, &t2), Verdict::Pause);
    assert_eq!(
        w.pending_count(Counter::JwksUnknownKid),
        1,
        "a refetch was triggered"
    );
    // The refresh (served before the rotation) answers without k2.
    host.now_ms += 50;
    answer(&mut w, &mut host, &refresh, keys(&[&k1]));
    for _ in 0..3 {
        host.now_ms += 1000;
        tick(&mut w, &mut host);
    }
    assert_eq!(
        jwks_fetches(&host).len(),
        3,
        "the refetch the unknown kid triggered was never sent: the refresh's answer \
         reset the lease to the next regular refresh"
    );
}

/// Two workers: worker A's regular refresh is out; worker B sees an unknown kid, wins
/// the forced refetch and sends it. A's (older) answer arrives first. B's parked
/// request must wait for B's refetch (which brings the key), not be refused 401 by the
/// answer to a fetch sent before the kid was seen.
#[test]
fn a_request_parked_on_an_unknown_kid_waits_for_the_refetch_not_for_an_older_fetch() {
    let cfg = config(vec![remote_issuer(ISS, "jwks")]);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut a = worker(&cfg);
    let mut b = worker(&cfg);
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let refresh = keys_then_regular_refresh_out(&mut a, &mut host, &k1);
    b.start(&mut host); // loads the shared keys, no fetch
    assert_eq!(jwks_fetches(&host).len(), 2);
    let t2 = k2.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send(&mut b, &mut host, 1, &t2), Verdict::Pause);
    // B's tick sends the refetch.
    host.now_ms += 100;
    tick(&mut b, &mut host);
    let f = jwks_fetches(&host);
    assert_eq!(f.len(), 3, "B sends the forced refetch");
    let refetch = f[2].clone();
    // A's refresh, served before the rotation, answers first.
    host.now_ms += 50;
    answer(&mut a, &mut host, &refresh, keys(&[&k1]));
    host.now_ms += 900;
    tick(&mut b, &mut host);
    assert!(
        !host.replies.contains_key(&1),
        "parked request refused {:?} by the answer to a fetch sent before its kid was \
         seen, while the refetch was still out",
        host.replies.get(&1).map(|r| (r.status, r.body.clone()))
    );
    // The refetch brings k2: the request goes on to its exchange.
    answer(&mut b, &mut host, &refetch, keys(&[&k1, &k2]));
    tick(&mut b, &mut host);
    assert_eq!(exchanges(&host), 1);
}

fn kick(w: &mut Worker, host: &mut Mock) {
    if let Some(q) = w.queue_name().map(str::to_string) {
        let kick = DISPATCH_KICK;
        let before = host.enqueued.len();
        host.enqueued
            .retain(|(n, m)| !(*n == q && m.as_slice() == kick));
        if host.enqueued.len() != before {
            w.on_notify(host, kick);
        }
    }
}

/// Ticks every second for `secs` seconds, answering every JWKS fetch that goes out
/// with `resp()`.
fn run(w: &mut Worker, host: &mut Mock, secs: u64, resp: &dyn Fn() -> CallResponse) {
    for _ in 0..secs {
        host.now_ms += 1000;
        let before = jwks_fetches(host).len();
        tick(w, host);
        let after = jwks_fetches(host);
        for d in &after[before..] {
            answer(w, host, d, resp());
        }
        kick(w, host);
    }
}

fn lease(host: &Mock) -> String {
    host.shared
        .iter()
        .find(|(k, _)| k.starts_with("meshpass/jwks-lease/"))
        .map(|(_, v)| String::from_utf8(v.0.clone()).unwrap())
        .unwrap_or_default()
}

#[test]
fn a_request_for_an_issuer_without_keys_gets_them_fetched_once_the_endpoint_is_back_not_after_the_backoff(
) {
    let (now, mut host, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, outage());
    // Down for about two minutes.
    run(&mut w, &mut host, 130, &outage);
    let failed = jwks_fetches(&host).len();
    assert!(failed >= 6, "{failed} fetches during the outage");
    // The endpoint is back now. A request arrives.
    let k1 = Key::new("k1");
    let t = k1.svid(ISS, AUD, ALICE, now + 130, 600);
    host.now_ms += 500;
    assert_eq!(send(&mut w, &mut host, 1, &t), Verdict::Pause);
    // Within its 2 s wait a fetch must go out (and, answered, serve the request).
    run(&mut w, &mut host, 2, &|| keys(&[&k1]));
    assert!(
        !host.replies.contains_key(&1),
        "the first request after the endpoint came back was answered {:?}; no fetch went \
         out for it (fetches: {} before, {} after; lease {:?})",
        host.replies.get(&1).map(|r| (r.status, r.body.clone())),
        failed,
        jwks_fetches(&host).len(),
        lease(&host)
    );
    assert_eq!(exchanges(&host), 1);
}

#[test]
fn an_oversize_jwks_answer_is_refused_with_a_warning_naming_the_size_bound() {
    let (_, mut host, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let k1 = Key::new("k1");
    let d = jwks_fetches(&host)[0].clone();
    let big = format!(
        r#"{{"pad":"{}","keys":[{}]}}"#,
        "x".repeat(300 * 1024),
        k1.jwk()
    );
    answer(
        &mut w,
        &mut host,
        &d,
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: big.into_bytes(),
        },
    );
    assert_eq!(w.pending_count(Counter::JwksRefreshFailure), 1);
    let logs = host.logs.borrow().clone();
    let line = logs.iter().find(|l| l.contains("JWKS fetch")).unwrap();
    assert!(
        line.contains("larger than") && !line.contains("status 200"),
        "the warning does not name the size bound: {line:?}"
    );
}

#[test]
fn with_a_one_second_min_refetch_a_new_kid_two_seconds_after_a_refetch_forces_another() {
    let mut iss = remote_issuer(ISS, "jwks");
    iss["jwks_min_refetch_secs"] = json!(1);
    let cfg = config(vec![iss]);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&cfg);
    w.start(&mut host);
    let (k1, k2, k3) = (Key::new("k1"), Key::new("k2"), Key::new("k3"));
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    host.now_ms += 60_000;
    // k2 appears: one forced refetch, which brings it.
    let t2 = k2.svid(ISS, AUD, ALICE, now + 60, 600);
    assert_eq!(send(&mut w, &mut host, 1, &t2), Verdict::Pause);
    run(&mut w, &mut host, 1, &|| keys(&[&k1, &k2]));
    assert_eq!(jwks_fetches(&host).len(), 2);
    assert_eq!(exchanges(&host), 1);
    // 2 s later (past jwks_min_refetch_secs) k3 appears, already published.
    host.now_ms += 2_000;
    let t3 = k3.svid(ISS, AUD, ALICE, now + 63, 600);
    assert_eq!(send(&mut w, &mut host, 2, &t3), Verdict::Pause);
    run(&mut w, &mut host, 2, &|| keys(&[&k1, &k2, &k3]));
    assert_eq!(
        jwks_fetches(&host).len(),
        3,
        "no refetch for k3 though jwks_min_refetch_secs (1 s) had passed; reply {:?}",
        host.replies.get(&2).map(|r| (r.status, r.body.clone()))
    );
    assert!(
        !host.replies.contains_key(&2),
        "{:?}",
        host.replies.get(&2).map(|r| (r.status, r.body.clone()))
    );
    assert_eq!(exchanges(&host), 2);
}

#[test]
fn an_unknown_kid_whose_refetch_fails_is_answered_503_not_401() {
    let (now, mut host, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    host.now_ms += 60_000;
    let t2 = k2.svid(ISS, AUD, ALICE, now + 60, 600);
    assert_eq!(send(&mut w, &mut host, 1, &t2), Verdict::Pause);
    // The refetch goes out and meets the outage.
    run(&mut w, &mut host, 6, &|| CallResponse {
        status: Some(503),
        ..Default::default()
    });
    assert_eq!(
        w.pending_count(Counter::JwksUnknownKid) + host.counter(Counter::JwksUnknownKid),
        1
    );
    assert!(jwks_fetches(&host).len() >= 2, "the refetch went out");
    let r = host.replies.get(&1).expect("answered after the park time");
    assert_eq!(
        r.status, 503,
        "refetch failed (endpoint down) but the request got {} {}",
        r.status, r.body
    );
}

#[test]
fn a_spiffe_bundle_from_spires_endpoint_validates_jwt_svids_end_to_end() {
    let (now, mut host, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let k = Key::new("Xq3ZJpq9YdfZqO0ZjGdQeQmQn0X1tW2E");
    let ca = Key::new("ca");
    let p = k.sk.verifying_key().to_encoded_point(false);
    let c = ca.sk.verifying_key().to_encoded_point(false);
    let bundle = json!({
        "keys": [
            {"use": "x509-svid", "kty": "EC", "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(c.x().unwrap()),
             "y": URL_SAFE_NO_PAD.encode(c.y().unwrap()),
             "x5c": ["MIIBjTCCATOgAwIBAgIRAOZT"]},
            {"use": "jwt-svid", "kty": "EC", "kid": k.kid, "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()),
             "y": URL_SAFE_NO_PAD.encode(p.y().unwrap())}
        ],
        "spiffe_sequence": 3,
        "spiffe_refresh_hint": 300
    });
    let d = jwks_fetches(&host)[0].clone();
    answer(
        &mut w,
        &mut host,
        &d,
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: bundle.to_string().into_bytes(),
        },
    );
    assert_eq!(w.pending_count(Counter::JwksRefreshSuccess), 1);
    let t = k.svid(ISS, AUD, ALICE, now, 600);
    assert_eq!(send(&mut w, &mut host, 1, &t), Verdict::Pause);
    assert!(host.replies.is_empty(), "{:?}", host.replies.get(&1));
    tick(&mut w, &mut host);
    assert_eq!(exchanges(&host), 1);
    assert!(host.logs.borrow().iter().any(|l| l.contains("dropped")));
}

#[test]
fn last_good_keys_survive_every_kind_of_bad_answer_in_every_worker() {
    let (_, mut host, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let k1 = Key::new("k1");
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    let bad: Vec<CallResponse> = vec![
        CallResponse {
            status: Some(502),
            ..Default::default()
        },
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: b"<html>".to_vec(),
        },
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: br#"{"keys":[]}"#.to_vec(),
        },
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"z","x":"AA","y":"AA"}]}"#.to_vec(),
        },
    ];
    let mut n = 1;
    for b in bad {
        host.now_ms += 400_000;
        tick(&mut w, &mut host);
        let f = jwks_fetches(&host);
        assert_eq!(f.len(), n + 1);
        n += 1;
        answer(&mut w, &mut host, &f[n - 1], b);
    }
    assert_eq!(
        w.pending_count(Counter::JwksRefreshFailure) + host.counter(Counter::JwksRefreshFailure),
        4
    );
    let t = k1.svid(ISS, AUD, ALICE, host.now_ms / 1000, 600);
    let mut other = worker(&config(vec![remote_issuer(ISS, "jwks")]));
    other.start(&mut host);
    assert_eq!(send(&mut w, &mut host, 1, &t), Verdict::Pause);
    assert_eq!(send(&mut other, &mut host, 2, &t), Verdict::Pause);
    assert!(host.replies.is_empty(), "{:?}", host.replies);
}

/// A configuration reload that shortens `jwks_refresh_secs` refreshes on the new
/// interval: the shared schedule written under the old one (a day ahead) is not kept.
#[test]
fn a_reload_that_shortens_jwks_refresh_secs_refreshes_on_the_new_interval() {
    let mut iss = remote_issuer(ISS, "jwks");
    iss["jwks_refresh_secs"] = json!(86_400);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    let mut w = worker(&config(vec![iss.clone()]));
    w.start(&mut host);
    let k1 = Key::new("k1");
    let d = jwks_fetches(&host)[0].clone();
    answer(&mut w, &mut host, &d, keys(&[&k1]));
    // Reload: a new VM with a one-minute refresh; the shared data stays.
    iss["jwks_refresh_secs"] = json!(60);
    let mut w = worker(&config(vec![iss]));
    w.start(&mut host);
    let before = jwks_fetches(&host).len();
    run(&mut w, &mut host, 120, &|| keys(&[&k1]));
    assert!(
        jwks_fetches(&host).len() > before,
        "no refresh in 2 minutes after the reload to 60 s; lease {}",
        lease(&host)
    );
}

/// `meshpass_jwks_unknown_kid_refetch` ("Unknown `kid` triggered a refetch"): a
/// request that arrives while its issuer has no keys yet (the JWKS endpoint down at
/// start) names no unknown kid, yet its forced refetch is counted as one. During a
/// JWKS outage at start the counter then reads as a key rotation / forged-kid signal.
#[test]
fn a_request_waiting_for_the_first_key_set_is_not_counted_as_an_unknown_kid_refetch() {
    let (now, mut h, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    // The start-time fetch meets the endpoint down.
    let d = h.dispatched.last().unwrap().clone();
    h.ctx = 0;
    w.on_call_response(&mut h, d.token, CallResponse::default());
    // 10 s later (past the 2 s backoff's schedule, within it for the forced refetch
    // rule), a request for the issuer: no keys at all, so it waits for them.
    h.now_ms += 1000;
    let k = Key::new("k1");
    let t = k.svid(ISS, AUD, ALICE, now, 600);
    let auth = format!("Bearer {t}");
    h.request(1, &[(":path", "/x"), ("authorization", &auth)]);
    assert_eq!(
        w.on_request(&mut h, 1),
        Verdict::Pause,
        "waits for first keys"
    );
    assert_eq!(
        w.pending_count(Counter::JwksUnknownKid) + h.counter(Counter::JwksUnknownKid),
        0,
        "no kid was unknown: the issuer had no keys at all"
    );
}

/// `meshpass_exchange_coalesced` ("Request waited on an exchange already in flight"):
/// two requests with one token whose kid was unknown park, the refetch brings the key,
/// and both are served by one exchange. The second joined the first's exchange, like
/// any concurrent miss, but is not counted: misses − coalesced no longer equals the
/// exchanges sent.
#[test]
fn a_parked_request_that_joins_an_exchange_in_flight_is_counted_as_coalesced() {
    let (now, mut h, mut w) = started(&config(vec![remote_issuer(ISS, "jwks")]));
    let k1 = Key::new("k1");
    let d = h.dispatched.last().unwrap().clone();
    h.ctx = 0;
    w.on_call_response(
        &mut h,
        d.token,
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: jwks(&[&k1]).into_bytes(),
        },
    );
    h.now_ms += 60_000;
    // The issuer rotates to k2.
    let k2 = Key::new("k2");
    let t2 = k2.svid(ISS, AUD, ALICE, now + 60, 600);
    for ctx in [1, 2] {
        assert_eq!(send(&mut w, &mut h, ctx, &t2), Verdict::Pause);
    }
    assert!(h.replies.is_empty(), "both parked");
    h.ctx = 0;
    w.on_tick(&mut h);
    let refetch = h.dispatched.last().unwrap().clone();
    assert_eq!(refetch.cluster, "jwks");
    h.ctx = 0;
    w.on_call_response(
        &mut h,
        refetch.token,
        CallResponse {
            status: Some(200),
            retry_after: None,
            body: jwks(&[&k1, &k2]).into_bytes(),
        },
    );
    // A started worker dispatches exchanges from the root on its own queue's kick.
    h.ctx = 0;
    w.on_notify(&mut h, DISPATCH_KICK);
    let ex: Vec<_> = h
        .dispatched
        .iter()
        .filter(|d| d.cluster == "exchange")
        .cloned()
        .collect();
    assert_eq!(ex.len(), 1, "one exchange for both");
    h.ctx = 0;
    w.on_call_response(&mut h, ex[0].token, ok_response("p", 300));
    assert_eq!(h.resumed, vec![1, 2]);
    w.flush_metrics(&mut h);
    let c = |c| h.counter(c);
    assert_eq!(c(Counter::CacheMiss), 2);
    assert_eq!(c(Counter::ExchangeCalls), 1);
    assert_eq!(
        c(Counter::Coalesced),
        1,
        "two misses, one exchange: the request that waited on the other's exchange"
    );
}
