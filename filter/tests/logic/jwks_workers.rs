//! Remote key sets across workers and issuers: a start-time outage seen by every
//! worker backs off as one failure, a request waits for its own issuer's first keys,
//! an unknown kid's refetch survives an older fetch's answer, and a parked request
//! waits for the refetch, not for that answer.

use super::*;
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

fn send(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    host.set_prop(&PEER, ALICE);
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
    w.on_request(host, ctx)
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
