//! Host-side tests of every decision of the filter, through the mock host.
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
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
        // (tests/revocation/).
        "revocation": {"enabled": false},
    })
}

fn worker(cfg: &serde_json::Value) -> Worker {
    Worker::new(Config::parse(cfg.to_string().as_bytes()).unwrap())
}

/// A JWKS answer holding `ks`.
fn keys(ks: &[&Key]) -> CallResponse {
    CallResponse {
        status: Some(200),
        retry_after: None,
        body: jwks(ks).into_bytes(),
    }
}

/// A call that met an outage (timeout, reset: no status).
fn outage() -> CallResponse {
    CallResponse::default()
}

/// Exchanges dispatched so far.
fn exchanges(host: &Mock) -> usize {
    host.dispatched
        .iter()
        .filter(|d| d.cluster == "exchange")
        .count()
}

/// Request `ctx` with `token` from ALICE's connection to worker `w` (a second worker
/// beside a fixture's).
fn send(w: &mut Worker, host: &mut Mock, ctx: u32, token: &str) -> Verdict {
    host.set_prop(&PEER, ALICE);
    let auth = format!("Bearer {token}");
    host.request(ctx, &[(":path", "/x"), ("authorization", &auth)]);
    w.on_request(host, ctx)
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
    fn tick(&mut self) {
        self.host.ctx = 0;
        self.w.on_tick(&mut self.host);
    }
    /// The `authorization` the upstream got for request `ctx`.
    fn served(&self, ctx: u32) -> Option<String> {
        self.host.req_header(ctx, "authorization")
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

mod cache_lifecycle;
mod config;
mod denials;
mod exchange;
mod hygiene;
mod jwks;
mod jwks_races;
mod jwks_workers;
mod key_removal;
mod leases;
mod marker_slots;
mod paths;
mod request_edges;
mod warnings;
mod workers;
