//! Rate limits global across replicas (`[rate_limit] backend = "redis"`): the real Redis
//! on 127.0.0.1:6379 (a unique key prefix per test) for the shared limit, and a private
//! `redis-server` the test stops and starts for the outage: the local share or fail
//! closed, reported in `/readyz` and metrics, and automatic recovery (after an outage, a
//! black-holed connection, or a failover that leaves it on a read-only replica); the state in
//! Redis follows a mapping's changed limit at once and survives Redis's clock stepping
//! back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::error::ApiError;
use meshpass_exchange::metrics::Metrics;
use meshpass_exchange::ratelimit::{
    self, Backend, OnRedisDown, RateLimitConfig, RateLimiter, RedisLimiter,
};
use meshpass_exchange::store::RateLimit;
use meshpass_testkit::{shared_redis_url, unique_prefix, HoleRelay, RedisServer};
use serde_json::Value;

/// A replica (own SQLite file, same mappings) counting rate limits in `redis_url`.
/// `web-to-orders` allows 0.5/s with a burst of 2 per (caller, subject).
async fn replica(dir: &std::path::Path, issuer: &TestIssuer, extra: &str) -> Router {
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

/// A different `exp` per call: a token never seen before (no cache hit).
fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn readyz(app: &Router) -> Value {
    get(app, "/readyz").await.json
}

async fn metric(app: &Router, name: &str) -> f64 {
    let text = get_text(app, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_burst_is_shared_by_every_replica_through_redis() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let section = redis_section(
        &shared_redis_url(),
        &unique_prefix("shared-burst"),
        "local_share",
    );
    let r1 = replica(dir.path(), &issuer, &section).await;
    let r2 = replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    // Burst 2 for the pair, whichever replica answers: 2 granted, then 429 on both.
    let mut statuses = Vec::new();
    for app in [&r1, &r2, &r1, &r2, &r1, &r2] {
        statuses.push(orders(app, &token).await.status);
    }
    let granted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(granted, 2, "{statuses:?}");
    let refused = orders(&r2, &token).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json["error"], "slow_down");
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(readyz(&r1).await["rate_limit"], "redis");
    assert_eq!(metric(&r1, "meshpass_rate_limit_redis_up").await, 1.0);
    // Another subject has its own budget.
    let other = issuer.svid("spiffe://cluster.local/ns/shop/sa/api", now(), 600);
    let r = post_token(&r1, exchange_form(&other, &[("resource", "payments")])).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_replica_counts_its_local_share_and_recovers_when_redis_returns() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    let section = redis_section(&redis.url(), &unique_prefix("down-up"), "local_share");
    let app = replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(orders(&app, &token).await.status, StatusCode::OK);

    redis.stop();
    // The local share of burst 2 over 2 replicas is 1: one granted, then 429.
    assert_eq!(orders(&app, &token).await.status, StatusCode::OK);
    assert_eq!(
        orders(&app, &token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let ready = get(&app, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.json);
    assert_eq!(ready.json["rate_limit"], "redis unavailable: local share");
    assert_eq!(metric(&app, "meshpass_rate_limit_redis_up").await, 0.0);
    assert!(metric(&app, "meshpass_rate_limit_fallback_total").await >= 2.0);

    redis.start_again();
    // Recovery needs no restart: the next check after redis_retry_ms asks Redis again
    // (a fresh Redis holds no state: the pair's burst is whole).
    let token2 = issuer.svid(WEB, now(), 601);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = orders(&app, &token2).await;
        if readyz(&app).await["rate_limit"] == "redis" {
            break;
        }
        assert!(Instant::now() < deadline, "never back on Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&app, "meshpass_rate_limit_redis_up").await, 1.0);
    assert!(metric(&app, "meshpass_rate_limit_redis_errors_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_reports_redis_down_and_back_in_readyz_without_any_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    let section = redis_section(&redis.url(), &unique_prefix("idle"), "local_share");
    let app = replica(dir.path(), &issuer, &section).await;
    assert_eq!(readyz(&app).await["rate_limit"], "redis");
    // No exchange from here on: only /readyz (as a kubelet probes it) asks.
    let until = |want: &'static str| {
        let app = app.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let now = readyz(&app).await["rate_limit"].clone();
                if now == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "readyz still says {now}, want {want}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    redis.stop();
    until("redis unavailable: local share").await;
    assert_eq!(metric(&app, "meshpass_rate_limit_redis_up").await, 0.0);
    redis.start_again();
    until("redis").await;
    assert_eq!(metric(&app, "meshpass_rate_limit_redis_up").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_with_redis_down_answers_503_for_limited_mappings_only() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    let section = redis_section(&redis.url(), &unique_prefix("closed"), "fail_closed");
    let app = replica(dir.path(), &issuer, &section).await;
    let token = issuer.svid(WEB, now(), 600);
    redis.stop();
    let r = orders(&app, &token).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.json);
    assert_eq!(r.json["error"], "temporarily_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        readyz(&app).await["rate_limit"],
        "redis unavailable: failing closed"
    );
    // A mapping without a rate limit does not need Redis.
    let p = post_token(&app, exchange_form(&token, &[("resource", "payments")])).await;
    assert_eq!(p.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_rate_through_redis_is_held_within_ten_percent() {
    use meshpass_exchange::metrics::Metrics;
    use meshpass_exchange::ratelimit::{Backend, RateLimitConfig, RateLimiter};
    use meshpass_exchange::store::RateLimit;
    let cfg = RateLimitConfig {
        backend: Backend::Redis,
        redis_url: Some(shared_redis_url()),
        key_prefix: unique_prefix("sustained"),
        ..RateLimitConfig::default()
    };
    let limiter = RateLimiter::from_config(&cfg, &Metrics::new().unwrap(), 1).unwrap();
    // Burst 2: a request arriving late on a busy machine does not lose the time it
    // was late by (with burst 1 every late arrival would).
    let limit = RateLimit {
        per_second: 20.0,
        burst: 2,
    };
    let start = Instant::now();
    let mut granted = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        if limiter.check("caller subject", "m", limit).await.is_ok() {
            granted += 1;
        }
    }
    let expected = 2.0 + 20.0 * start.elapsed().as_secs_f64();
    let off = (f64::from(granted) - expected).abs() / expected;
    assert!(off <= 0.10, "{granted} granted, {expected:.1} expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_load_on_three_replicas_is_held_to_the_global_rate() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let section = redis_section(&shared_redis_url(), &unique_prefix("three"), "local_share");
    // web-to-orders: 0.5/s burst 2 in the shared config; 20/s here (burst 2 absorbs
    // the arrival jitter of a busy machine).
    let mut apps = Vec::new();
    for _ in 0..3 {
        let sub = tempfile::tempdir_in(dir.path()).unwrap().keep();
        let toml = config_toml(&issuer, &sub.join("m.db"), &section).replace(
            "rate_limit = { per_second = 0.5, burst = 2 }",
            "rate_limit = { per_second = 20.0, burst = 2 }",
        );
        let cfg: Config = load_config(&sub, &toml);
        let st = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
        apps.push(meshpass_exchange::app(st));
    }
    let token = issuer.svid(WEB, now(), 600);
    let start = Instant::now();
    let granted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (apps, token, granted) = (apps.clone(), token.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while start.elapsed() < Duration::from_secs(3) {
                if orders(&apps[i % 3], &token).await.status == StatusCode::OK {
                    granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let granted = granted.load(std::sync::atomic::Ordering::Relaxed);
    let expected = 2.0 + 20.0 * start.elapsed().as_secs_f64();
    let off = (f64::from(granted) - expected).abs() / expected;
    assert!(off <= 0.10, "{granted} granted, {expected:.1} expected");
}

/// A limit no test check reaches.
const GENEROUS: RateLimit = RateLimit {
    per_second: 1000.0,
    burst: 1000,
};

/// A limiter counting in Redis through `relay` (local share of 2 replicas, 200 ms
/// timeout, 100 ms retry), with a unique key prefix (returned), that has counted one
/// check there.
async fn limiter_through(relay: &HoleRelay, test: &str) -> (RateLimiter, String) {
    let cfg = RateLimitConfig {
        backend: Backend::Redis,
        redis_url: Some(format!("redis://127.0.0.1:{}", relay.port())),
        on_redis_down: OnRedisDown::LocalShare,
        replicas: 2,
        key_prefix: unique_prefix(test),
        redis_timeout_ms: 200,
        redis_retry_ms: 100,
    };
    let l = RateLimiter::from_config(&cfg, &Metrics::new().unwrap(), 2).unwrap();
    l.check("c s", "m", GENEROUS).await.unwrap();
    assert_eq!(ratelimit::describe(&l), "redis");
    (l, cfg.key_prefix)
}

/// Checks a new pair every 150 ms until the limiter counts in Redis again (10 s at
/// most, then panics naming `since`); returns the pair that was counted there.
async fn back_in_redis(l: &RateLimiter, since: &str) -> String {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(10) {
        n += 1;
        let pair = format!("c s{n}");
        let _ = l.check(&pair, "m", GENEROUS).await;
        if ratelimit::describe(l) == "redis" {
            return pair;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!(
        "still `{}` 10 s after {since} ({n} checks)",
        ratelimit::describe(l)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_return_to_redis_after_a_black_holed_connection() {
    let url = shared_redis_url();
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap();
    let relay = HoleRelay::start(target).unwrap();
    let (l, _) = limiter_through(&relay, "black-hole").await;

    relay.blackhole();
    let _ = l.check("c s", "m", GENEROUS).await;
    assert_eq!(ratelimit::describe(&l), "redis unavailable: local share");

    // Redis is reachable again on a new connection (a fresh connect through the relay
    // works at once), yet the limiter keeps asking on the dead one.
    relay.restore();
    let port = relay.port();
    assert!(
        tokio::task::spawn_blocking(move || meshpass_testkit::redis_pings(port))
            .await
            .unwrap(),
        "relay relays new connections"
    );
    back_in_redis(&l, "Redis was reachable again").await;
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
        &unique_prefix("hits-shared"),
        "local_share",
    );
    let r1 = replica(dir.path(), &issuer, &section).await;
    let r2 = replica(dir.path(), &issuer, &section).await;
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
    let section = redis_section(&redis.url(), &unique_prefix("hits-closed"), "fail_closed");
    let app = replica(dir.path(), &issuer, &section).await;
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
    let section = redis_section(&redis.url(), &unique_prefix("late-redis"), "fail_closed");
    let app = replica(dir.path(), &issuer, &section).await;
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

// ------------------------------------------------------------------ the state in Redis

fn retry_after(a: &Answer) -> String {
    a.headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// README: mappings changed through the API are "decided by the new policy" at the next
/// exchange; the local backend refills at the new rate at once. With `backend =
/// "redis"` the GCRA state (a theoretical arrival time) written under the old, slow
/// limit is kept as is, so after an operator raises the limit (here from one exchange
/// per 100 s to 50/s with a burst of 10) the pair stays refused for the old limit's
/// whole interval, with a `Retry-After` of the old limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_mappings_rate_limit_takes_effect_at_once_with_the_redis_backend() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let section = redis_section(&shared_redis_url(), &unique_prefix("raise"), "local_share");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), &section).replace(
        "rate_limit = { per_second = 0.5, burst = 2 }",
        "rate_limit = { per_second = 0.01, burst = 1 }",
    );
    let cfg = load_config(dir.path(), &toml);
    let st = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(st.clone());

    let first = orders(&app, &issuer.svid(WEB, now(), 600 + rand_suffix())).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let second = orders(&app, &issuer.svid(WEB, now(), 600 + rand_suffix())).await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        second.json
    );

    // The operator raises the limit (through the service's own store view, as the
    // management API writes it).
    let mut m = st
        .store
        .get_mapping("web-to-orders")
        .await
        .unwrap()
        .expect("mapping");
    m.rate_limit = Some(RateLimit {
        per_second: 50.0,
        burst: 10,
    });
    st.store.put_mapping(&m).await.unwrap();

    // Under the new limit one exchange is free again after 20 ms (a whole burst after
    // 200 ms). Ask every 100 ms for two seconds, generously.
    let mut statuses = Vec::new();
    let mut waits = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = orders(&app, &issuer.svid(WEB, now(), 600 + rand_suffix())).await;
        if r.status == StatusCode::OK {
            return;
        }
        statuses.push(r.status.as_u16());
        waits.push(retry_after(&r));
    }
    panic!(
        "2 s after raising the limit to 50/s burst 10 the pair is still refused: \
         statuses {statuses:?}, Retry-After {waits:?}"
    );
}

/// The module promises "replicas' clocks do not matter" because the script reads
/// Redis's own clock; but Redis's clock is not monotonic. After a failover to a node
/// whose clock is behind (or an NTP step back) a stored arrival time lies in the
/// future, and the GCRA refuses the pair until the new clock catches up: a lockout as
/// long as the skew, with `Retry-After` equal to it, whatever the mapping's limit.
/// The state is written here as the script itself writes it on a node one hour ahead
/// (tat = that node's now + one interval, expiring one interval later by its clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_clock_stepping_back_never_locks_a_pair_out_longer_than_its_limits_refill() {
    let url = shared_redis_url();
    let prefix = unique_prefix("clock-back");
    let cfg = RateLimitConfig {
        backend: Backend::Redis,
        redis_url: Some(url.clone()),
        key_prefix: prefix.clone(),
        redis_timeout_ms: 2000,
        ..RateLimitConfig::default()
    };
    let limiter = RateLimiter::from_config(&cfg, &Metrics::new().unwrap(), 1).unwrap();
    // 10/s, burst 5: no state this limit can produce asks for more than 0.5 s.
    let limit = RateLimit {
        per_second: 10.0,
        burst: 5,
    };
    let key = RedisLimiter::new(&url, &prefix, Duration::from_secs(2))
        .unwrap()
        .redis_key("caller subject", "m");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let skew_us: u64 = 3_600_000_000;
    let interval_us: u64 = 100_000;
    let tat = secs * 1_000_000 + micros + skew_us + interval_us;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(tat.to_string())
        .arg("PX")
        .arg((skew_us + interval_us) / 1000 + 1)
        .query_async(&mut c)
        .await
        .unwrap();

    match limiter.check("caller subject", "m", limit).await {
        Ok(()) => {}
        Err(ApiError::RateLimited { retry_after_secs }) => assert!(
            retry_after_secs <= 2,
            "a 10/s burst-5 limit refused with Retry-After {retry_after_secs} s \
             (the Redis clock's step back, not the limit)"
        ),
        Err(e) => panic!("unexpected {e:?}"),
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// README metrics: `meshpass_rate_limit_redis_up` is "1 while Redis answers, 0 while
/// the fallback decides". A replica started while Redis is down reports 1 (set at
/// construction, before Redis was ever asked) for as long as no exchange and no
/// `/readyz` asks: a scrape of `/metrics` alone, however late, sees a Redis that never
/// answered reported as up, so an alert on the gauge never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_up_gauge_never_reports_a_redis_that_has_not_answered_as_up() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut redis = RedisServer::start(dir.path());
    redis.stop();
    let section = redis_section(&redis.url(), &unique_prefix("gauge"), "local_share");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), &section);
    let cfg = load_config(dir.path(), &toml);
    let st = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(st);
    // Ten times redis_retry_ms (100 ms) later, only Prometheus scrapes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let up = metric(&app, "meshpass_rate_limit_redis_up ").await;
    assert_eq!(
        up, 0.0,
        "meshpass_rate_limit_redis_up {up} although Redis has been down since start"
    );
}

/// A failover behind one address (Sentinel or a managed Redis moving its DNS name or VIP
/// to the promoted replica): the open connection stays on the old primary, now a
/// replica that answers every write `READONLY`, while a new connection reaches the new
/// primary. The limiter must reconnect, not count locally for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_follow_a_failover_that_leaves_the_connection_on_a_read_only_replica() {
    let dir = tempfile::tempdir().unwrap();
    let old = RedisServer::start(dir.path());
    let new = RedisServer::start(dir.path());
    let relay = HoleRelay::start(&format!("127.0.0.1:{}", old.port())).unwrap();
    let (l, prefix) = limiter_through(&relay, "failover").await;

    // The failover: the address now leads to `new`; `old` follows it as a replica.
    relay.retarget(&format!("127.0.0.1:{}", new.port()));
    let mut admin = redis::Client::open(old.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port())
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let _ = l.check("c s", "m", GENEROUS).await;
    assert_eq!(
        ratelimit::describe(&l),
        "redis unavailable: local share",
        "the old primary refuses the write"
    );

    let pair = back_in_redis(&l, "the failover").await;
    let probe = RedisLimiter::new(&new.url(), &prefix, Duration::from_secs(1)).unwrap();
    let mut on_new = redis::Client::open(new.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counted: bool = redis::cmd("EXISTS")
        .arg(probe.redis_key(&pair, "m"))
        .query_async(&mut on_new)
        .await
        .unwrap();
    assert!(counted, "counted on the new primary");
}
