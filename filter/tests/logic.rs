//! Host-side tests of every decision of the filter, through the mock host.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use meshpass_filter::api::{CallResponse, Counter, Verdict};
use meshpass_filter::cache::{self, Entry};
use meshpass_filter::config::{Config, FailureMode, Mode};
use meshpass_filter::exchange::DISPATCH_KICK;
use meshpass_filter::outcome::Outcome;
use meshpass_filter::worker::Worker;
use serde_json::json;

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/shop/sa/bob";
const PEER: [&str; 2] = ["connection", "uri_san_peer_certificate"];
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn base_config(key: &Key) -> serde_json::Value {
    json!({
        "mode": "SERVER",
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "spiffe_id_patterns": ["spiffe://cluster.local/ns/shop/*"],
            "jwks": jwks(&[key]),
        }],
        "exchange": {"cluster": "exchange", "authority": "exchange.test"},
        "bypass": [{"path": "/healthz"}],
        "rules": [{"path_prefix": "/orders", "resource": "https://orders.test", "scopes": ["orders.read"]}],
        "default_rule": {"resource": "https://default.test", "audience": ["app"], "scopes": ["read"]},
        // These tests count dispatched calls; revocation polling has its own tests
        // (tests/revocation.rs).
        "revocation": {"enabled": false},
    })
}

fn worker(cfg: &serde_json::Value) -> Worker {
    Worker::new(Config::parse(cfg.to_string().as_bytes()).unwrap())
}

struct Fixture {
    key: Key,
    w: Worker,
    host: Mock,
    now: u64,
}

fn fixture_with(edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    edit(&mut cfg);
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    host.set_prop(&PEER, ALICE);
    Fixture {
        w: worker(&cfg),
        key,
        host,
        now,
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

impl Fixture {
    fn token(&self, sub: &str) -> String {
        self.key.svid(ISS, AUD, sub, self.now, 600)
    }
    fn send(&mut self, ctx: u32, headers: &[(&str, &str)]) -> Verdict {
        self.host.request(ctx, headers);
        self.w.on_request(&mut self.host, ctx)
    }
    fn send_token(&mut self, ctx: u32, token: &str) -> Verdict {
        let auth = format!("Bearer {token}");
        self.send(ctx, &[(":path", "/x"), ("authorization", &auth)])
    }
    fn answer(&mut self, resp: CallResponse) {
        kick(&mut self.host, &mut self.w);
        let token = self.host.dispatched.last().unwrap().token;
        let from = self.host.dispatched.last().unwrap().from_ctx;
        self.host.ctx = from;
        self.w.on_call_response(&mut self.host, token, resp);
    }
    /// Flushed plus not yet flushed.
    fn count(&self, c: Counter) -> u64 {
        self.w.pending_count(c) + self.host.counter(c)
    }
}

/// Runs the root-context dispatch a started worker asked for on its own queue (as
/// Envoy's `on_queue_ready` would); other messages stay queued.
fn kick(host: &mut Mock, w: &mut Worker) -> bool {
    let Some(q) = w.queue_name().map(str::to_string) else {
        return false;
    };
    let before = host.enqueued.len();
    host.enqueued
        .retain(|(n, m)| !(*n == q && m.as_slice() == DISPATCH_KICK));
    if host.enqueued.len() == before {
        return false;
    }
    host.ctx = 0;
    w.on_notify(host, DISPATCH_KICK);
    true
}

// ---------------------------------------------------------------- configuration

#[test]
fn accepts_a_minimal_config_with_secure_defaults() {
    let key = Key::new("k1");
    let c = Config::parse(
        json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
            "exchange": {"cluster": "outbound|8080||exchange.meshpass.svc.cluster.local"},
            "default_rule": {"resource": "r"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.mode, Mode::Server);
    assert_eq!(c.exchange.path, "/token");
    assert_eq!(c.exchange.timeout_ms, 2000);
    assert_eq!(c.policy.max_token_bytes, 8192);
    assert_eq!(c.token_header, "authorization");
    assert_eq!(c.default_target.unwrap().failure_mode, FailureMode::Deny);
}

#[test]
fn refuses_invalid_configs_naming_the_field() {
    let key = Key::new("k1");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["issuers"] = json!([])), "issuers"),
        (Box::new(|c| c["mode"] = json!("NONE")), "mode"),
        (Box::new(|c| c["mode"] = json!("server")), "mode"),
        (
            Box::new(|c| c["insecure_disable_binding"] = json!(true)),
            "insecure_disable_binding",
        ),
        (
            Box::new(|c| c["issuers"][0]["trust_domains"] = json!(["Bad Domain"])),
            "issuers[0].trust_domains[0]",
        ),
        (
            Box::new(|c| c["issuers"][0]["spiffe_id_patterns"] = json!(["http://x"])),
            "issuers[0].spiffe_id_patterns[0]",
        ),
        (
            Box::new(|c| c["issuers"][0]["audiences"] = json!([])),
            "issuers[0].audiences",
        ),
        (
            Box::new(|c| c["issuers"][0]["subject_format"] = json!("x509")),
            "issuers[0].subject_format",
        ),
        (
            Box::new(|c| c["issuers"][0]["jwks"] = json!({"keys": []})),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| {
                c["issuers"][0].as_object_mut().unwrap().remove("jwks");
            }),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| c["issuers"][0]["jwks_cluster"] = json!("jwks")),
            "issuers[0].jwks",
        ),
        (
            Box::new(|c| c["rules"][0]["failure_mode"] = json!("open")),
            "rules[0].failure_mode",
        ),
        (
            Box::new(|c| c["exchange"]["timeout_ms"] = json!(0)),
            "exchange.timeout_ms",
        ),
        (
            Box::new(|c| c["exchange"]["path"] = json!("token")),
            "exchange.path",
        ),
        (
            Box::new(|c| c["token_header"] = json!("x-meshpass-token")),
            "token_header",
        ),
        (
            Box::new(|c| c["max_token_bytes"] = json!(0)),
            "max_token_bytes",
        ),
        (Box::new(|c| c["bypass"] = json!([{}])), "bypass[0]"),
        (Box::new(|c| c["surprise"] = json!(1)), "surprise"),
        (
            Box::new(|c| c["exchange"]["actor_token_header"] = json!("x-actor")),
            "exchange.actor_token_header",
        ),
    ];
    for (edit, field) in cases {
        let mut cfg = base_config(&key);
        edit(&mut cfg);
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(!e.reason.is_empty());
    }
    let e = Config::parse(b"{\"surprise\": 1}").unwrap_err();
    assert!(e.reason.contains("surprise"), "{e}");
}

#[test]
fn refuses_an_id_pattern_outside_the_issuers_trust_domains() {
    // Core's ValidationPolicy::check: such a pattern could never match.
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["issuers"][0]["spiffe_id_patterns"] = json!(["spiffe://elsewhere.test/ns/shop/*"]);
    let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "issuers[0].id_patterns", "{e}");
    assert!(e.reason.contains("outside"), "{e}");
}

#[test]
fn issuer_policy_accepts_core_spellings_and_older_filter_ones() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    let pats = cfg["issuers"][0]
        .as_object_mut()
        .unwrap()
        .remove("spiffe_id_patterns")
        .unwrap();
    cfg["issuers"][0]["id_patterns"] = pats;
    cfg["issuers"][0]["subject_format"] = json!("kubernetes_sa");
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert_eq!(c.policy.issuers[0].id_patterns.len(), 1);
    cfg["issuers"][0]["subject_format"] = json!("kubernetes_service_account");
    Config::parse(cfg.to_string().as_bytes()).unwrap();
    // Both spellings at once are ambiguous.
    cfg["issuers"][0]["spiffe_id_patterns"] = json!([]);
    assert!(Config::parse(cfg.to_string().as_bytes()).is_err());
}

#[test]
fn refuses_typed_field_errors_naming_the_nested_field() {
    let key = Key::new("k1");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"rules": [{"resource": "r"}, {"resource": "r", "scopes": ["a b"]}]}),
            "rules[1].scopes[0]",
        ),
        (
            json!({"rules": [{"resource": "r", "audience": [""]}]}),
            "rules[0].audience[0]",
        ),
        (
            json!({"rules": [{"resource": "r", "surprise": 1}]}),
            "rules[0].surprise",
        ),
        (
            json!({"exchange": {"cluster": "x", "timeout_ms": "soon"}}),
            "exchange.timeout_ms",
        ),
        (
            json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key]), "leeway_secs": -1}]}),
            "issuers[0].leeway_secs",
        ),
    ];
    for (edit, field) in cases {
        let mut cfg = base_config(&key);
        for (k, v) in edit.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let e = Config::parse(cfg.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn mode_none_needs_the_insecure_flag() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["mode"] = json!("NONE");
    cfg["insecure_disable_binding"] = json!(true);
    assert_eq!(
        Config::parse(cfg.to_string().as_bytes()).unwrap().mode,
        Mode::NoneInsecure
    );
}

#[test]
fn rules_select_by_authority_path_and_method_then_default() {
    let key = Key::new("k1");
    let mut cfg = base_config(&key);
    cfg["rules"] = json!([
        {"authority": "api.test", "path_prefix": "/admin", "methods": ["post"], "resource": "admin"},
        {"authority": "*.shop.test", "resource": "shop"},
    ]);
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    let pick = |a, p, m| c.select(a, p, m).and_then(|t| t.resource.clone());
    assert_eq!(
        pick(Some("api.test:443"), Some("/admin/x"), Some("POST")),
        Some("admin".into())
    );
    assert_eq!(
        pick(Some("api.test"), Some("/admin/x"), Some("GET")),
        Some("https://default.test".into())
    );
    assert_eq!(
        pick(Some("a.shop.test"), Some("/"), Some("GET")),
        Some("shop".into())
    );
    assert_eq!(
        pick(Some("shop.test"), Some("/"), Some("GET")),
        Some("https://default.test".into())
    );
    cfg.as_object_mut().unwrap().remove("default_rule");
    let c = Config::parse(cfg.to_string().as_bytes()).unwrap();
    assert!(c.select(Some("x"), Some("/"), Some("GET")).is_none());
}

// ---------------------------------------------------------------- denials

#[test]
fn request_without_token_gets_401_with_bearer_challenge() {
    let mut f = fixture();
    assert_eq!(f.send(1, &[(":path", "/x")]), Verdict::Pause);
    let r = &f.host.replies[&1];
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(f.count(Counter::DeniedNoToken), 1);
    assert!(f.host.dispatched.is_empty());
}

#[test]
fn invalid_token_gets_401_invalid_token_and_json_that_never_echoes_the_token() {
    let mut f = fixture();
    let other = Key::new("k1");
    let forged = other.svid(ISS, AUD, ALICE, f.now, 600);
    f.send_token(1, &forged);
    let r = f.host.replies[&1].clone();
    assert_eq!(r.status, 401);
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{www}"
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("signature"));
    let sig = forged.rsplit('.').next().unwrap();
    assert!(!r.body.contains(sig) && !www.contains(sig));
    assert_eq!(f.count(Counter::DeniedInvalidToken), 1);

    // Not a Bearer token, expired, wrong audience: all 401 without any dispatch.
    f.send(
        2,
        &[(":path", "/x"), ("authorization", "Basic dXNlcjpwdw==")],
    );
    assert_eq!(f.host.replies[&2].status, 401);
    let expired = f.key.svid(ISS, AUD, ALICE, f.now - 4000, 600);
    f.send_token(3, &expired);
    assert!(f.host.replies[&3].json()["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let wrong_aud = f.key.svid(ISS, "other", ALICE, f.now, 600);
    f.send_token(4, &wrong_aud);
    assert_eq!(f.host.replies[&4].status, 401);
    assert!(f.host.dispatched.is_empty());
}

#[test]
fn paths_that_normalisation_would_change_are_refused_before_any_rule() {
    let mut f = fixture_with(|c| c["bypass"] = json!([{"path_prefix": "/healthz"}]));
    for (ctx, p) in [
        (1, "/healthz/../orders"),
        (2, "//healthz"),
        (3, "/healthz%2F..%2Fadmin"),
        (4, "/%68ealthz/x"),
    ] {
        assert_eq!(f.send(ctx, &[(":path", p)]), Verdict::Pause, "{p}");
        assert_eq!(f.host.replies[&ctx].status, 400, "{p}");
    }
    assert_eq!(f.count(Counter::Bypassed), 0);
    assert_eq!(f.count(Counter::DeniedBadPath), 4);
    // Normal paths, with any query, go on as before.
    assert_eq!(
        f.send(5, &[(":path", "/healthz/live?x=/../")]),
        Verdict::Continue
    );

    // Configured otherwise: matched on the normal form (here: not a bypass, so 401).
    let mut f = fixture_with(|c| {
        c["bypass"] = json!([{"path_prefix": "/healthz"}]);
        c["allow_unnormalised_paths"] = json!(true);
    });
    f.send(1, &[(":path", "/healthz/../orders")]);
    assert_eq!(f.host.replies[&1].status, 401);
    assert_eq!(f.send(2, &[(":path", "//healthz")]), Verdict::Continue);
}

#[test]
fn oversize_token_is_refused_before_any_parsing() {
    let mut f = fixture_with(|c| c["max_token_bytes"] = json!(100));
    let t = f.token(ALICE);
    f.send_token(1, &t);
    let r = &f.host.replies[&1];
    assert_eq!(r.status, 401);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("100-byte"));
}

#[test]
fn token_whose_subject_is_not_the_mtls_peer_is_refused() {
    let mut f = fixture();
    let t = f.token(BOB);
    f.send_token(1, &t);
    assert_eq!(f.host.replies[&1].status, 401);
    assert_eq!(f.count(Counter::DeniedBinding), 1);
    // No peer certificate at all: binding unavailable, still 401.
    f.host.props.clear();
    let t = f.token(ALICE);
    f.send_token(2, &t);
    assert_eq!(f.host.replies[&2].status, 401);
    assert_eq!(f.count(Counter::DeniedBinding), 2);
    assert!(f.host.dispatched.is_empty());
}

#[test]
fn no_matching_rule_without_default_is_403() {
    let mut f = fixture_with(|c| {
        c.as_object_mut().unwrap().remove("default_rule");
    });
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.replies[&1].status, 403);
    assert_eq!(f.count(Counter::DeniedNoRule), 1);
}

// ---------------------------------------------------------------- exchange and cache

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

fn form_urlencoded_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
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
    let slot = cache::entry_key(&cache::key(&target.digest, &t, None), 4096);
    let (bytes, _) = f.host.shared[&slot].clone();
    let e = Entry::decode(&bytes).unwrap();
    assert_eq!(e.subject, ALICE);
    assert_eq!(e.token, "p");
    assert_eq!(e.expires_ms, f.host.now_ms + 300_000 - 10_000);
    assert!(e.refresh_ms < e.expires_ms);
    // After expiry it is a miss again (and a new exchange).
    f.host.now_ms = e.expires_ms + 1;
    f.send_token(2, &t);
    assert_eq!(f.host.dispatched.len(), 2);
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
fn exchange_errors_map_to_403_401_429_and_503_with_retry_after() {
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

// ---------------------------------------------------------------- header hygiene

#[test]
fn client_sent_meshpass_headers_never_reach_the_app() {
    let mut f = fixture();
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert_eq!(f.count(Counter::Bypassed), 1);

    let mut f = fixture_with(|c| c["set_subject_header"] = json!(true));
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);

    let mut f = fixture_with(|c| c["strip_all_x_meshpass_headers"] = json!(true));
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass-anything", "1"),
            ("x-other", "2"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-anything"), None);
    assert_eq!(f.host.req_header(1, "x-other").as_deref(), Some("2"));
}

#[test]
fn a_header_name_with_a_multibyte_char_at_the_reserved_prefix_boundary_does_not_trap() {
    // "x-meshpass" + 'é' has no char boundary at the prefix's 11 bytes; slicing the name as `str` at
    // the prefix's length used to panic (a trap that kills the VM for every stream).
    let mut f = fixture();
    f.send(
        1,
        &[
            (":path", "/healthz"),
            ("x-meshpass\u{e9}subject", "1"),
            ("x-meshpass-subject", "spiffe://evil/x"),
        ],
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert_eq!(
        f.host.req_header(1, "x-meshpass\u{e9}subject").as_deref(),
        Some("1")
    );
    assert_eq!(f.count(Counter::Bypassed), 1);
}

#[test]
fn every_client_sent_meshpass_header_is_removed_by_default() {
    let mut f = fixture();
    let t = f.token(ALICE);
    let auth = format!("Bearer {t}");
    let sent = [
        (":path", "/x"),
        ("authorization", auth.as_str()),
        ("x-meshpass-role", "admin"),
        ("X-Meshpass-Subject", "spiffe://evil/x"),
        ("x-other", "kept"),
    ];
    f.send(1, &sent);
    assert!(f.host.replies.is_empty(), "{:?}", f.host.replies.get(&1));
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
    assert_eq!(f.host.req_header(1, "x-meshpass-role"), None);
    assert_eq!(f.host.req_header(1, "X-Meshpass-Subject"), None);
    assert_eq!(f.host.req_header(1, "x-other").as_deref(), Some("kept"));

    // Only the insecure flag keeps them (it strips x-meshpass-subject alone).
    let mut f = fixture_with(|c| c["insecure_keep_x_meshpass_headers"] = json!(true));
    let auth = format!("Bearer {}", f.token(ALICE));
    let sent = [
        (":path", "/x"),
        ("authorization", auth.as_str()),
        ("x-meshpass-role", "admin"),
        ("x-meshpass-subject", "spiffe://evil/x"),
    ];
    f.send(1, &sent);
    f.answer(ok_response("p", 300));
    assert_eq!(
        f.host.req_header(1, "x-meshpass-role").as_deref(),
        Some("admin")
    );
    assert_eq!(f.host.req_header(1, "x-meshpass-subject"), None);
    assert!(f
        .w
        .config
        .warnings()
        .iter()
        .any(|w| w.contains("insecure_keep_x_meshpass_headers")));
}

#[test]
fn bypass_routes_and_fail_open_forward_no_client_credential() {
    let mut f = fixture_with(|c| {
        c["token_header"] = json!("x-subject-token");
        c["default_rule"]["failure_mode"] = json!("allow");
    });
    let t = f.token(ALICE);
    let sent = [
        (":path", "/healthz"),
        ("authorization", "Basic dXNlcjpwdw=="),
        ("x-subject-token", t.as_str()),
    ];
    assert_eq!(f.send(1, &sent), Verdict::Continue);
    assert_eq!(f.host.req_header(1, "authorization"), None);
    assert_eq!(f.host.req_header(1, "x-subject-token"), None);

    // Fail open: neither the subject token nor the client's own Authorization goes on.
    let sent = [
        (":path", "/x"),
        ("authorization", "Basic dXNlcjpwdw=="),
        ("x-subject-token", t.as_str()),
    ];
    f.send(2, &sent);
    f.answer(error_response(503, "temporarily_unavailable", None));
    assert_eq!(f.host.resumed, vec![2]);
    assert_eq!(f.host.req_header(2, "authorization"), None);
    assert_eq!(f.host.req_header(2, "x-subject-token"), None);
}

#[test]
fn token_from_a_custom_header_is_removed_once_exchanged() {
    let mut f = fixture_with(|c| c["token_header"] = json!("X-Workload-Token"));
    let t = f.token(ALICE);
    f.send(1, &[(":path", "/x"), ("x-workload-token", &t)]);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.req_header(1, "x-workload-token"), None);
    assert_eq!(
        f.host.req_header(1, "authorization").as_deref(),
        Some("Bearer p")
    );
}

// ---------------------------------------------------------------- modes

#[test]
fn client_mode_binds_to_the_identity_from_istio_node_metadata() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("CLIENT");
        c["own_identity"] = json!({"trust_domain": "cluster.local"});
    });
    f.host.props.clear();
    f.host.set_prop(&["node", "metadata", "NAMESPACE"], "shop");
    f.host
        .set_prop(&["node", "metadata", "SERVICE_ACCOUNT"], "alice");
    let t = f.token(ALICE);
    f.send_token(1, &t);
    assert_eq!(f.host.dispatched.len(), 1);
    let t = f.token(BOB);
    f.send_token(2, &t);
    assert_eq!(f.host.replies[&2].status, 401);
}

#[test]
fn mode_none_skips_binding() {
    let mut f = fixture_with(|c| {
        c["mode"] = json!("NONE");
        c["insecure_disable_binding"] = json!(true);
    });
    f.host.props.clear();
    let t = f.token(BOB);
    f.send_token(1, &t);
    f.answer(ok_response("p", 300));
    assert_eq!(f.host.resumed, vec![1]);
}

// ---------------------------------------------------------------- JWKS

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
    let key = cache::key(&target.digest, &t, None);
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

// ---------------------------------------------------------------- across workers

/// A second worker (another Envoy worker thread) over the same host: shared data and
/// shared queues are common, HTTP contexts are not. Both workers are started.
fn second_worker(f: &mut Fixture) -> Worker {
    let mut w2 = worker(&base_config(&f.key));
    f.w.start(&mut f.host);
    w2.start(&mut f.host);
    w2
}

fn send_on(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
    w.on_request(host, ctx)
}

/// Delivers what was enqueued on `w`'s queue, as Envoy's `on_queue_ready` would.
fn deliver(host: &mut Mock, w: &mut Worker) -> usize {
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
    let key = cache::key(&target.digest, &t, None);
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
    let marker = cache::marker_key(&cache::key(&target.digest, &t, None), 4096);
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
