//! Edges of rate limiting with the Redis backend beyond plain failover: Redis answering
//! `PING` but refusing the limiter's writes, a key under the prefix Redis cannot read as
//! the script expects, and `/readyz` while Redis is black-holed. Same Redis as
//! `ratelimit_redis` (the machine's, a unique key prefix; a private `redis-server` where
//! the test changes its configuration).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::metrics::Metrics;
use meshpass_exchange::ratelimit::{
    self, Backend, OnRedisDown, RateLimitConfig, RateLimiter, RedisLimiter,
};
use meshpass_exchange::store::RateLimit;
use meshpass_testkit::{shared_redis_url, unique_prefix, HoleRelay, RedisServer};

const GENEROUS: RateLimit = RateLimit {
    per_second: 1000.0,
    burst: 1000,
};

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A Redis at `maxmemory` (the default policy `noeviction`, e.g. a shared Redis filled
/// by another tenant) answers `PING` but refuses the script's `SET` with `OOM`: every
/// check fell back to the local share, yet the readiness probe, a `PING`, succeeded,
/// flipped the limiter back to "redis" (and `meshpass_rate_limit_redis_up` to 1), and
/// `/readyz` reported limits counted in Redis. The probe now runs the limiter's script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_does_not_report_redis_while_redis_refuses_every_rate_limit_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let cfg = RateLimitConfig {
        backend: Backend::Redis,
        redis_url: Some(server.url()),
        on_redis_down: OnRedisDown::LocalShare,
        replicas: 2,
        key_prefix: unique_prefix("rl-oom"),
        redis_timeout_ms: 2000,
        redis_retry_ms: 100,
    };
    let l = RateLimiter::from_config(&cfg, &Metrics::new().unwrap(), 1).unwrap();
    l.check("c s0", "m", GENEROUS).await.unwrap();
    assert_eq!(ratelimit::describe(&l), "redis");

    // Redis fills up: writes are refused with OOM, PING still answers.
    let mut a = admin(&server.url()).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut a)
        .await
        .unwrap();
    let _ = l.check("c s1", "m", GENEROUS).await;
    assert_eq!(
        ratelimit::describe(&l),
        "redis unavailable: local share",
        "precondition: the OOM refusal of the script's SET sends the check to the fallback"
    );

    // The replica goes idle; the readiness probe asks Redis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reported = ratelimit::probe_and_describe(&l).await;
    // What the next exchange actually does:
    let _ = l.check("c s2", "m", GENEROUS).await;
    let next = ratelimit::describe(&l);
    assert_ne!(
        reported, "redis",
        "/readyz's probe reports rate limits counted in Redis while Redis refuses every \
         rate-limit write (OOM); the very next check was decided by `{next}`"
    );
}

/// A key Redis cannot read as the script expects (a hash under the prefix, written by
/// another tenant sharing the prefix or by hand) is a property of one (caller, subject)
/// pair, not an outage: Redis answered. The script's `GET` failed with `WRONGTYPE`, which
/// marked the whole replica "redis unavailable" for `redis_retry_ms`, so with
/// `on_redis_down = "fail_closed"` every other pair's rate-limited exchange got 503 (and
/// with the local share every pair was counted locally) each time the poisoned pair
/// asked. The script now reads a key of another type as no state and replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_key_does_not_take_every_pairs_rate_limit_out_of_redis() {
    let url = shared_redis_url();
    let prefix = unique_prefix("rl-wrongtype");
    let cfg = RateLimitConfig {
        backend: Backend::Redis,
        redis_url: Some(url.clone()),
        on_redis_down: OnRedisDown::FailClosed,
        replicas: 2,
        key_prefix: prefix.clone(),
        redis_timeout_ms: 2000,
        redis_retry_ms: 60_000,
    };
    let l = RateLimiter::from_config(&cfg, &Metrics::new().unwrap(), 1).unwrap();
    l.check("c warm", "m", GENEROUS).await.unwrap();
    let key = RedisLimiter::new(&url, &prefix, Duration::from_secs(2))
        .unwrap()
        .redis_key("c poisoned", "m");
    let mut a = admin(&url).await;
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query_async::<i64>(&mut a)
        .await
        .map(|_| ())
        .unwrap();
    let () = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(120)
        .query_async::<i64>(&mut a)
        .await
        .map(|_| ())
        .unwrap();

    let poisoned = l.check("c poisoned", "m", GENEROUS).await;
    let other = l.check("c other", "m", GENEROUS).await;
    let state = ratelimit::describe(&l);
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut a)
        .await
        .unwrap();
    assert!(
        other.is_ok(),
        "a pair whose key is fine was refused ({other:?}) right after another pair's key \
         answered WRONGTYPE (that pair: {poisoned:?}); the limiter now says `{state}` \
         although Redis answers"
    );
}

/// README `/readyz`: "Redis being down never fails readiness: every replica shares it";
/// istio/base/exchange/deployment.yaml gives the probe `timeoutSeconds: 5` (sized for
/// the 3 s store wait). The Redis `PING` of an idle replica's `/readyz` waited the whole
/// `redis_timeout_ms` (valid up to 10000) after the store ping: with Redis black-holed
/// (a partition, a pod gone behind its ClusterIP) every replica's probe outlasted the
/// kubelet's timeout and all replicas went unready together. The probe now waits at
/// most 500 ms for Redis, alongside the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_within_the_manifests_probe_timeout_while_redis_is_black_holed() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let target = shared_redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let relay = HoleRelay::start(&target).unwrap();
    let section = format!(
        "\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n\
         key_prefix = \"{}\"\non_redis_down = \"local_share\"\nreplicas = 2\n\
         redis_timeout_ms = 6000\nredis_retry_ms = 100\n",
        relay.port(),
        unique_prefix("rl-readyz")
    );
    let cfg: Config = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), &section),
    );
    let st = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(st);
    let first = get(&app, "/readyz").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert_eq!(first.json["rate_limit"], "redis", "{}", first.json);

    relay.blackhole();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(30), get(&app, "/readyz"))
        .await
        .expect("/readyz answered within 30 s");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "/readyz took {took:?} with Redis black-holed (status {}, {}): longer than the \
         readiness probe's timeoutSeconds: 5, so the kubelet marks every replica unready",
        answer.status,
        answer.json
    );
}
