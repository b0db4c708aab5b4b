//! The evidence for several replicas: three real `meshpass-exchange` processes on one
//! real PostgreSQL database, one real Redis (a private `redis-server` the test stops and
//! starts) and one real OpenBao, behind a real Envoy cluster (round robin, active health
//! checks on `/readyz`, retry on connect failure or reset to another host: the
//! documented retry).
//!
//! 1. A mapping written through replica 1's management API is enforced by replicas 2
//!    and 3 because its change notification arrived (the periodic check runs every 60 s
//!    and the policy snapshots live 60 s; the bound is [`PROPAGATION_BOUND`]; both
//!    count a notification and no change found by the periodic check).
//! 2. Redis stopped: exchanges go on (200 or 429, no 5xx: `local_share`), every replica
//!    reports the fallback in its metrics; Redis restarted: they recover by themselves.
//! 3. A global limit of N/s (one (caller, subject) pair, load spread over all three)
//!    holds within 10 %, while replica 3 is SIGKILLed and replica 2 drained (SIGTERM)
//!    mid-load: zero failed exchanges at the client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod replicas_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::envoy::Envoy;
use meshpass_testkit::{free_port, unique_prefix, ExchangeService, Postgres, RedisServer};
use replicas_common::metric;
use serde_json::{json, Value};

const OPS: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const MGMT_AUD: &str = "meshpass-management";
const LOADER: &str = "spiffe://cluster.local/ns/load/sa/gen";
/// The global limit under load (per second).
const RATE: f64 = 20.0;
/// Its burst: 2 absorbs the arrival jitter of a busy machine (with 1, every late
/// request would lose the time it was late by).
const BURST: u32 = 2;
/// How long replicas 2 and 3 may take to enforce replica 1's write: far below the 60 s
/// of their periodic check and policy snapshots, generous for a loaded 2-core machine
/// (the time taken is printed; notifications arrive within milliseconds).
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);

fn envoy_yaml(listen: u16, replicas: &[u16]) -> String {
    let endpoints: Vec<Value> = replicas
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    json!({
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        // The test client stands in for the trusted sidecar's XFCC.
                        "forward_client_cert_details": "ALWAYS_FORWARD_ONLY",
                        "route_config": {"virtual_hosts": [{
                            "name": "exchange", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {
                                "cluster": "exchange",
                                // The documented retry: another replica when the
                                // connection is refused or reset (a killed or closing
                                // replica); exchanges are safe to repeat.
                                "retry_policy": {
                                    "retry_on": "connect-failure,reset,refused-stream",
                                    "num_retries": 3,
                                    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                    "host_selection_retry_max_attempts": 5,
                                },
                            }}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "exchange", "type": "STATIC", "connect_timeout": "0.5s",
                "lb_policy": "ROUND_ROBIN",
                // Route only to healthy replicas even when most are gone (no panic
                // mode), and let every request retry (the default allows 3 at once).
                "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
                "circuit_breakers": {"thresholds": [{"max_retries": 1000}]},
                "health_checks": [{
                    "timeout": "0.5s", "interval": "0.2s",
                    "unhealthy_threshold": 1, "healthy_threshold": 1,
                    "http_health_check": {"path": "/readyz"},
                }],
                "load_assignment": {"cluster_name": "exchange", "endpoints": [{"lb_endpoints": endpoints}]},
            }],
        },
    })
    .to_string()
}

/// Sum of every `meshpass_exchanges_total` sample of a replica.
async fn exchanges_total(client: &reqwest::Client, base: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("meshpass_exchanges_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_envoy_share_writes_and_limits_and_survive_a_kill_a_drain_and_a_redis_outage(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let db = Postgres::fresh_database();
    let mut redis = RedisServer::start(dir.path());
    let ports = [free_port(), free_port(), free_port()];
    let mgmt = free_port();
    // One prefix for all three: they share the budget.
    let prefix = unique_prefix("envoy");
    let base_cfg = |port: u16, i: usize| {
        replicas_common::config(
            port,
            &bao,
            &db.url(),
            &issuer,
            json!({
                "server": {"drain_delay_secs": 1, "shutdown_grace_secs": 5},
                // Only a notification can tell replicas 2 and 3 of a write in time.
                "store": {"change_check_interval_ms": 60_000},
                "rate_limit": {
                    "backend": "redis", "redis_url": redis.url(),
                    "key_prefix": prefix, "replicas": 3,
                    "redis_timeout_ms": 200, "redis_retry_ms": 200,
                },
                "management": {
                    "enabled": i == 0,
                    "listen": format!("127.0.0.1:{}", if i == 0 { mgmt } else { free_port() }),
                    "audiences": [MGMT_AUD],
                    "callers": [{"id": OPS, "roles": ["read", "write"]}],
                },
                "mappings": [{
                    "name": "load-to-orders", "subject": "spiffe://cluster.local/ns/load/*",
                    "resource": "payments", "participant": "acme", "ttl_secs": 600,
                    "rate_limit": {"per_second": RATE, "burst": BURST},
                }],
            }),
        )
    };
    let cfgs: Vec<Value> = (0..3).map(|i| base_cfg(ports[i], i)).collect();
    let root = dir.path().to_path_buf();
    let mut replicas: Vec<ExchangeService> = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|i| replicas_common::start(&root, &format!("r{}", i + 1), ports[i], &cfgs[i]))
            .collect()
    })
    .await
    .unwrap();
    let listen = free_port();
    let envoy = {
        let yaml = envoy_yaml(listen, &ports);
        tokio::task::spawn_blocking(move || Envoy::start(&yaml, 1))
            .await
            .unwrap()
    };
    let front = format!("http://127.0.0.1:{listen}");
    let bases: Vec<String> = replicas.iter().map(ExchangeService::base_url).collect();
    let client = reqwest::Client::new();

    // ---- 1. A write through replica 1 reaches replicas 2 and 3 by notification. ----
    let web_token = issuer.svid(WEB, now(), 600);
    for b in &bases[1..] {
        let (s, body) = replicas_common::exchange(&client, b, &web_token, WEB)
            .await
            .unwrap();
        assert_eq!(s, 400, "no mapping for shop yet: {body}");
    }
    let now_s = now();
    let admin = issuer.sign(
        &json!({"iss": ISSUER, "sub": OPS, "aud": [MGMT_AUD], "iat": now_s, "exp": now_s + 600}),
    );
    let r = client
        .post(format!("http://127.0.0.1:{mgmt}/api/v1/mappings"))
        .bearer_auth(admin)
        // The operator's connection, as the service's own (trusted) proxy names it.
        .header("x-forwarded-client-cert", format!("URI={OPS}"))
        .json(
            &json!({"name": "web-to-payments-2", "subject": WEB, "resource": "payments",
            "participant": "acme", "scopes": ["read"], "ttl_secs": 600}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let written = Instant::now();
    for (i, b) in bases.iter().enumerate().skip(1) {
        loop {
            let (s, _) = replicas_common::exchange(&client, b, &web_token, WEB)
                .await
                .unwrap();
            if s == 200 {
                break;
            }
            assert!(
                written.elapsed() < PROPAGATION_BOUND,
                "replica {} does not enforce the write after {PROPAGATION_BOUND:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!(
        "replicas 2 and 3 enforced the write after {:?}",
        written.elapsed()
    );
    for (i, b) in bases.iter().enumerate().skip(1) {
        let notified = metric(&client, b, "meshpass_change_notifications_total").await;
        let by_check = metric(&client, b, "meshpass_change_fallback_invalidations_total").await;
        assert!(
            notified.is_some_and(|n| n >= 1.0),
            "replica {} received no change notification ({notified:?})",
            i + 1
        );
        assert_eq!(
            by_check,
            Some(0.0),
            "replica {}: the periodic check found the write, not a notification",
            i + 1
        );
    }

    // ---- 2. Redis outage: fallback and recovery, visible in metrics, no 5xx. ----
    let loader = issuer.svid(LOADER, now(), 600);
    redis.stop();
    let outage = Instant::now();
    loop {
        for _ in 0..6 {
            let (s, body) = replicas_common::exchange(&client, &front, &loader, LOADER)
                .await
                .unwrap();
            assert!(
                s == 200 || s == 429,
                "only 200 or 429 while Redis is down: {s} {body}"
            );
        }
        let mut down = 0;
        for b in &bases {
            if metric(&client, b, "meshpass_rate_limit_redis_up").await == Some(0.0) {
                down += 1;
            }
        }
        if down == 3 {
            break;
        }
        assert!(
            outage.elapsed() < Duration::from_secs(10),
            "not every replica fell back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for b in &bases {
        assert!(
            metric(&client, b, "meshpass_rate_limit_fallback_total")
                .await
                .unwrap()
                >= 1.0
        );
    }
    // (Blocking for the few milliseconds Redis takes to start.)
    redis.start_again();
    let back = Instant::now();
    loop {
        for _ in 0..6 {
            let (s, _) = replicas_common::exchange(&client, &front, &loader, LOADER)
                .await
                .unwrap();
            assert!(s == 200 || s == 429, "{s}");
        }
        let mut up = 0;
        for b in &bases {
            if metric(&client, b, "meshpass_rate_limit_redis_up").await == Some(1.0) {
                up += 1;
            }
        }
        if up == 3 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not every replica recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "Redis outage: fallback on all three, recovered after {:?}",
        back.elapsed()
    );

    // ---- 3. Load over all three: the global limit holds; a kill and a drain lose nothing. ----
    // A fresh subject token for a fresh budget (the key is the (caller, subject) pair).
    let gen = "spiffe://cluster.local/ns/load/sa/gen2";
    let token = issuer.svid(gen, now(), 600);
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for b in &bases {
            v.push(exchanges_total(&client, b).await);
        }
        v
    };
    let tally = Arc::new(Tally::default());
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (client, front, token, tally) =
            (client.clone(), front.clone(), token.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while start.elapsed() < window {
                match replicas_common::exchange(&client, &front, &token, gen).await {
                    Ok((200, _)) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Ok((429, _)) => tally.limited.fetch_add(1, Ordering::Relaxed),
                    Ok((s, body)) => {
                        errors.push(format!("{s} {body}"));
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut spread = Vec::new();
    for b in &bases {
        spread.push(exchanges_total(&client, b).await);
    }
    replicas[2].signal("KILL");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    replicas[1].signal("TERM");
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, limited, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.limited.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "load: {ok} granted, {limited} limited, {failed} failed in {elapsed:.2} s; \
         exchanges per replica in the first 1.2 s: {:?}",
        spread
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "replica 1: redis errors {:?}, fallback checks {:?}",
        metric(&client, &bases[0], "meshpass_rate_limit_redis_errors_total").await,
        metric(&client, &bases[0], "meshpass_rate_limit_fallback_total").await
    );
    errors.truncate(5);
    assert_eq!(
        failed, 0,
        "failed exchanges at the client, e.g.: {errors:?}"
    );
    for (i, (a, b)) in spread.iter().zip(&before).enumerate() {
        assert!(a - b > 0.0, "replica {} got none of the load", i + 1);
    }
    // GCRA grants the burst, then RATE per second of the window.
    let expected = f64::from(BURST) + RATE * elapsed;
    let off = (ok as f64 - expected).abs() / expected;
    assert!(
        off <= 0.10,
        "{ok} granted, {expected:.1} expected ({:.1} % off)",
        off * 100.0
    );
    assert!(
        limited > ok,
        "the load exceeded the limit ({limited} refused)"
    );
    // Replica 2 drained and exited 0; replica 1 still serves.
    let r2 = replicas.remove(1);
    let status = tokio::task::spawn_blocking(move || {
        let mut r2 = r2;
        (r2.wait_exit(Duration::from_secs(10)), r2.log_tail(10))
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "replica 2 after SIGTERM: {:?}\n{}",
        status.0,
        status.1
    );
    let (s, _) = replicas_common::exchange(&client, &front, &web_token, WEB)
        .await
        .unwrap();
    assert_eq!(s, 200);
    drop(envoy);
}
