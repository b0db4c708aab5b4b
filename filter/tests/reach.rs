//! What reaches the application behind the filter and what a refused client is told
//! (DESIGN.md "What reaches the application", filter/README.md, RFC 6750 §3.1): another
//! scheme or `Bearer` alone is a missing token (bare challenge), and the validate-only
//! aid never forwards a client's own `x-meshpass-subject`.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;

use common::*;
use meshpass_filter::api::{Counter, Verdict};
use meshpass_filter::config::Config;
use meshpass_filter::worker::Worker;
use serde_json::json;

const ISS: &str = "https://issuer.test";
const AUD: &str = "meshpass";
const ALICE: &str = "spiffe://cluster.local/ns/shop/sa/alice";
const PEER: [&str; 2] = ["connection", "uri_san_peer_certificate"];

fn config(key: &Key) -> serde_json::Value {
    json!({
        "mode": "SERVER",
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "trust_domains": ["cluster.local"],
            "id_patterns": ["spiffe://cluster.local/ns/shop/*"],
            "jwks": jwks(&[key]),
        }],
        "exchange": {"cluster": "exchange", "authority": "exchange.test"},
        "default_rule": {"resource": "https://default.test", "scopes": ["read"]},
        "revocation": {"enabled": false},
    })
}

struct Setup {
    key: Key,
    w: Worker,
    host: Mock,
    now: u64,
}

fn setup() -> Setup {
    let key = Key::new("k1");
    let w = Worker::new(Config::parse(config(&key).to_string().as_bytes()).unwrap());
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    host.set_prop(&PEER, ALICE);
    Setup { key, w, host, now }
}

impl Setup {
    fn send(&mut self, ctx: u32, headers: &[(&str, &str)]) -> Verdict {
        self.host.request(ctx, headers);
        self.w.on_request(&mut self.host, ctx)
    }
    fn count(&self, c: Counter) -> u64 {
        self.w.pending_count(c) + self.host.counter(c)
    }
}

/// RFC 6750 §3.1: "If the request lacks any authentication information (e.g., the client
/// was unaware that authentication is necessary or attempted using an unsupported
/// authentication method), the resource server SHOULD NOT include an error code or other
/// error information." A `Basic`, `DPoP` or `Negotiate` credential is such an unsupported
/// method: the challenge must be the bare `Bearer`, as for no `Authorization` at all.
#[test]
fn a_credential_of_another_scheme_gets_a_bare_bearer_challenge_without_an_error_code() {
    let mut s = setup();
    let t = s.key.svid(ISS, AUD, ALICE, s.now, 600);
    let dpop = format!("DPoP {t}");
    for (ctx, v) in [
        (1, "Basic dXNlcjpwdw=="),
        (2, dpop.as_str()),
        (3, "Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1MIIGcaADAgEF"),
    ] {
        assert_eq!(
            s.send(ctx, &[(":path", "/x"), ("authorization", v)]),
            Verdict::Pause
        );
        let r = &s.host.replies[&ctx];
        assert_eq!(r.status, 401, "{v}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "an unsupported scheme ({}) got an error code in its challenge",
            v.split(' ').next().unwrap()
        );
    }
    assert!(s.host.dispatched.is_empty());
}

/// `Authorization: Bearer ` (scheme, no token) is how a client without a token often
/// writes it; Envoy trims trailing whitespace and hands the filter `Bearer` (checked
/// against Envoy 1.40: `Bearer   ` reaches the upstream as `Bearer`). The filter's own
/// branch for an empty Bearer token ("no subject token", `DeniedNoToken`, bare challenge)
/// is then never reached: the request is described as "not a Bearer token" and counted
/// as an invalid token.
#[test]
fn a_bearer_scheme_without_a_token_as_envoy_forwards_it_is_refused_as_a_missing_token() {
    let mut s = setup();
    for (ctx, v) in [(1, "Bearer"), (2, "bearer")] {
        assert_eq!(
            s.send(ctx, &[(":path", "/x"), ("authorization", v)]),
            Verdict::Pause
        );
        let r = s.host.replies[&ctx].clone();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json()["error_description"],
            "no subject token",
            "{v:?}: {}",
            r.body
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{v:?}");
    }
    assert_eq!(s.count(Counter::DeniedNoToken), 2);
    assert_eq!(s.count(Counter::DeniedInvalidToken), 0);
}

/// `insecure_keep_x_meshpass_headers` (per-name reads) "strips x-meshpass-subject alone",
/// and with `set_subject_header` it leaves the client's value for the overwrite on an
/// allowed request. The validate-only aid allows requests without that overwrite: the
/// client's forged `x-meshpass-subject` reaches the app as if the filter vouched for it.
#[test]
fn the_validate_only_aid_in_per_name_mode_never_forwards_a_client_sent_subject_header() {
    let key = Key::new("k1");
    let cfg = json!({
        "validate_only_for_benchmarks": true,
        "mode": "CLIENT", "own_identity": {"spiffe_id": ALICE},
        "insecure_keep_x_meshpass_headers": true,
        "set_subject_header": true,
        "issuers": [{"issuer": ISS, "audiences": [AUD], "trust_domains": ["cluster.local"], "jwks": jwks(&[&key])}],
    });
    let mut w = Worker::new(Config::parse(cfg.to_string().as_bytes()).unwrap());
    let now = now_secs();
    let mut host = Mock::new(now * 1000);
    w.start(&mut host);
    let t = key.svid(ISS, AUD, ALICE, now, 600);
    let auth = format!("Bearer {t}");
    let forged = "spiffe://cluster.local/ns/shop/sa/admin";
    host.request(
        1,
        &[
            ("authorization", auth.as_str()),
            ("x-meshpass-subject", forged),
        ],
    );
    assert_eq!(w.on_request(&mut host, 1), Verdict::Continue);
    assert_eq!(
        host.req_header(1, "x-meshpass-subject"),
        None,
        "a client-sent x-meshpass-subject reached the app"
    );
}
