//! The warm cache-hit path in a loop on the host, for instruction counts that do not
//! depend on the machine's load: `valgrind --tool=callgrind target/release/examples/hit_loop N`
//! twice (N = 0 and N = 100000); the difference over N is the instructions of one hit
//! (the decision code, plus a host stub whose header map is one buffer allocated per call,
//! as the host's).
//! Uses only the filter's public API, so the same file measures an older revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_filter::api::{
    CallResponse, Counter, Gauge, HeaderMap, Host, Level, SharedError, Verdict,
};
use meshpass_filter::config::Config;
use meshpass_filter::exchange::DISPATCH_KICK;
use meshpass_filter::worker::Worker;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use std::collections::HashMap;

const SUB: &str = "spiffe://cluster.local/ns/bench/sa/client";

#[derive(Default)]
struct Stub {
    now: u64,
    headers: Vec<(String, String)>,
    map: HeaderMap,
    shared: HashMap<String, (Vec<u8>, u32)>,
    calls: u32,
    queued: bool,
}

impl Host for Stub {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn log(&self, _: Level, _: &str) {}
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn headers(&self) -> HeaderMap {
        // As the host: one buffer allocated in the module per call.
        self.map.clone()
    }
    fn set_header(&mut self, name: &str, value: &str) {
        std::hint::black_box((name, value));
    }
    fn remove_header(&mut self, name: &str) {
        std::hint::black_box(name);
    }
    fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
        Some(SUB.as_bytes().to_vec())
    }
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.get(key).filter(|(v, _)| !v.is_empty()).cloned()
    }
    fn shared_set(
        &mut self,
        key: &str,
        v: Option<&[u8]>,
        _: Option<u32>,
    ) -> Result<(), SharedError> {
        let v = v.map(<[u8]>::to_vec).unwrap_or_default();
        self.shared.insert(key.to_string(), (v, 1));
        Ok(())
    }
    fn dispatch(&mut self, _: &str, _: &[(&str, &str)], _: &[u8], _: u64) -> Result<u32, String> {
        self.calls += 1;
        Ok(self.calls)
    }
    fn send_response(&mut self, status: u32, _: &[(&str, &str)], body: &[u8]) {
        panic!("{status} {}", String::from_utf8_lossy(body));
    }
    fn set_effective_context(&mut self, _: u32) -> bool {
        true
    }
    fn resume(&mut self) {}
    fn register_queue(&mut self, _: &str) -> bool {
        true
    }
    fn enqueue(&mut self, _: &str, msg: &[u8]) -> bool {
        self.queued |= msg == DISPATCH_KICK;
        true
    }
    fn count(&mut self, _: Counter, _: u64) {}
    fn record_latency_ms(&mut self, _: u64) {}
    fn gauge(&mut self, _: Gauge, _: u64) {}
}

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(0, |a| a.parse().unwrap());
    let mode = std::env::args().nth(2).unwrap_or_else(|| "SERVER".into());
    let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
    let p = sk.verifying_key().to_encoded_point(false);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256",
        "kid": "k1", "x": URL_SAFE_NO_PAD.encode(p.x().unwrap()),
        "y": URL_SAFE_NO_PAD.encode(p.y().unwrap())}]});
    let now = 1_900_000_000u64;
    let claims = serde_json::json!({"iss": "https://issuer.bench", "aud": "meshpass",
        "sub": SUB, "iat": now, "exp": now + 86_400, "jti": "0123456789abcdef01234567"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: Signature = sk.sign(input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    let mut cfg = serde_json::json!({
        "mode": mode,
        "issuers": [{"issuer": "https://issuer.bench", "audiences": ["meshpass"],
                     "trust_domains": ["cluster.local"], "jwks": jwks}],
        "exchange": {"cluster": "exchange"},
        "default_rule": {"resource": "https://orders.bench", "scopes": ["read"]},
        "revocation": {"enabled": false},
    });
    if mode == "CLIENT" {
        cfg["own_identity"] = serde_json::json!({"spiffe_id": SUB});
    }
    let mut w = Worker::new(Config::parse(cfg.to_string().as_bytes()).unwrap());
    let mut host = Stub {
        now: now * 1000,
        ..Default::default()
    };
    w.start(&mut host);
    let auth = format!("Bearer {token}");
    host.headers = [
        (":authority", "127.0.0.1:10000"),
        (":path", "/"),
        (":method", "GET"),
        (":scheme", "http"),
        ("authorization", auth.as_str()),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "7f1c0d0e-7a3b-4c55-9c1e-2b1f0c6d9a11"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    host.map = HeaderMap::encode(host.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    // Miss, exchange, then one shared-data hit that memoises the entry.
    assert_eq!(w.on_request(&mut host, 1), Verdict::Pause);
    assert!(host.queued);
    w.on_notify(&mut host, DISPATCH_KICK);
    let participant = format!("{input}.{}", "p".repeat(86));
    let body = serde_json::json!({"access_token": participant, "issued_token_type":
        "urn:ietf:params:oauth:token-type:jwt", "token_type": "Bearer", "expires_in": 3600});
    let resp = CallResponse {
        status: Some(200),
        retry_after: None,
        body: body.to_string().into_bytes(),
    };
    let call = host.calls;
    w.on_call_response(&mut host, call, resp);
    assert_eq!(w.on_request(&mut host, 2), Verdict::Continue);
    for i in 0..n {
        let v = w.on_request(&mut host, 3 + i as u32);
        assert_eq!(v, Verdict::Continue);
    }
    println!("{} hits", w.pending_count(Counter::CacheHit));
}
