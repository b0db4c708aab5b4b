//! What a cached answer may outlive: the shared Redis budget spent by cache hits on
//! two replicas, fail-closed on the warm path, Redis down at start-up then back, and a
//! replica black-holed from PostgreSQL (no RST: the peer vanished) no longer serving
//! its minted tokens once the store has not confirmed it for `store.policy_cache_secs`
//! plus one check interval. Real Redis, PostgreSQL and OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::store::{Actor, Precondition};
use meshpass_testkit::{shared_redis_url, unique_prefix, HoleRelay, Postgres, RedisServer};
use serde_json::Value;

async fn redis_replica(dir: &std::path::Path, issuer: &TestIssuer, extra: &str) -> Router {
    let sub = tempfile::tempdir_in(dir).unwrap().keep();
    let cfg: Config = load_config(&sub, &config_toml(issuer, &sub.join("m.db"), extra));
    let st = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    meshpass_exchange::app(st)
}

fn redis_section(url: &str, prefix: &str, on_down: &str) -> String {
    format!(
        "\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\n\
         on_redis_down = \"{on_down}\"\nreplicas = 2\nredis_timeout_ms = 200\nredis_retry_ms = 100\n"
    )
}

async fn orders(app: &Router, token: &str) -> Answer {
    post_token(app, exchange_form(token, &[("resource", "orders")])).await
}

async fn readyz(app: &Router) -> Value {
    get(app, "/readyz").await.json
}

/// README step 3: "The rate limit still applies" to cached answers, and "Several
/// replicas": the budget of a (caller, subject) pair is shared by all replicas. Cache
/// hits on two replicas spend the one Redis budget (burst 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_on_two_replicas_spend_the_one_shared_redis_budget() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let section = redis_section(
        &shared_redis_url(),
        &unique_prefix("audit-hits"),
        "local_share",
    );
    let r1 = redis_replica(dir.path(), &issuer, &section).await;
    let r2 = redis_replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    let a = orders(&r1, &token).await; // minted on r1
    let b = orders(&r2, &token).await; // minted on r2
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    // Both replicas now hold the token: hits must still be refused, on either replica.
    for app in [&r1, &r2, &r1, &r2] {
        let r = orders(app, &token).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "a cache hit beyond the shared burst was served: {}",
            r.json
        );
    }
}

/// README `rate_limit.on_redis_down = "fail_closed"`: 503 for rate-limited mappings,
/// on the warm path (cached token, form alias) as on the cold one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_refuses_cached_answers_of_a_limited_mapping_while_redis_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    let section = redis_section(&redis.url(), &unique_prefix("audit-closed"), "fail_closed");
    let app = redis_replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(orders(&app, &token).await.status, StatusCode::OK);
    redis.stop();
    for _ in 0..3 {
        let r = orders(&app, &token).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "cached answer served with Redis down and fail_closed: {}",
            r.json
        );
    }
}

/// README "Several replicas": "one check per redis_retry_ms tries Redis again, and the
/// first answer ends the fallback" — also for a replica that never reached Redis (down
/// when the replica started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_counts_in_redis_once_redis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    redis.stop();
    let section = redis_section(&redis.url(), &unique_prefix("audit-late"), "fail_closed");
    let app = redis_replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    let r = orders(&app, &token).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json);
    redis.start_again();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = issuer.svid(WEB, now(), 600 + rand_suffix());
        let r = orders(&app, &t).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} 15 s after Redis came up; readyz {}",
            r.status,
            readyz(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(&app).await["rate_limit"], "redis");
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// DESIGN.md "Several replicas": "Cut off from the store (no notification, no check)
/// for `store.policy_cache_secs`, a replica drops its minted tokens too, so it grants
/// nothing another replica may have revoked or deleted". Here the replica is cut off
/// by a partition (no reset: its version checks hang until the pool's acquire timeout)
/// while another replica deletes the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_partitioned_from_the_store_stops_serving_cached_tokens_after_the_policy_cache_bound(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let relay = HoleRelay::start(&db.host_port()).unwrap();
    let mut cfg_a = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("u.db"), ""),
    );
    cfg_a.store.url = db.url();
    cfg_a.store.max_connections = 2;
    cfg_a.store.acquire_timeout_secs = 5;
    cfg_a.store.policy_cache_secs = 1;
    cfg_a.store.change_check_interval_ms = 200;
    cfg_a.scope_claims.clear();
    let mut cfg_b = cfg_a.clone();
    cfg_b.store.url = db.url_via(relay.port());
    let a = replica(&cfg_a).await.settled().await;
    let b = replica(&cfg_b).await.settled().await;
    let token = issuer.svid(WEB, now(), 600);
    let pay = |app: Router, t: String| async move {
        post_token(&app, exchange_form(&t, &[("resource", "payments")])).await
    };
    assert_eq!(
        pay(b.app.clone(), token.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        pay(b.app.clone(), token.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(b.cache.len(), 1, "B cached the token it minted");

    relay.blackhole();
    let cut_at = Instant::now();
    a.store
        .remove_mapping(
            "web-to-payments",
            Precondition::None,
            &Actor {
                who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
                request_id: "audit".into(),
            },
        )
        .await
        .unwrap();
    // policy_cache_secs (1 s) + one check interval (0.2 s), with 2.8 s to spare.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cached = pay(b.app.clone(), token.clone()).await;
    // Diagnostics only: when did B stop serving it?
    if cached.status == StatusCode::OK {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let r = pay(b.app.clone(), token.clone()).await;
            if r.status != StatusCode::OK {
                eprintln!(
                    "B stopped serving the cached token {:.1} s after the cut: {} {}",
                    cut_at.elapsed().as_secs_f64(),
                    r.status,
                    r.json
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_ne!(
        cached.status,
        StatusCode::OK,
        "replica B, cut off from PostgreSQL for {:.1} s (policy_cache_secs = 1), still \
         served its cached token of the mapping replica A deleted",
        cut_at.elapsed().as_secs_f64()
    );
    drop(b);
}
