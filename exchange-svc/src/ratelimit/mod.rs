//! Mapping rate limits per (caller, subject): `[rate_limit]` selects where they are
//! counted.
//!
//! - `local` (default): token buckets in this process ([`local`]). With N replicas a
//!   subject gets up to N times the rate.
//! - `redis`: one GCRA state per key in Redis shared by every replica ([`redis`]), so
//!   the limit is global. When Redis does not answer (within `redis_timeout_ms`), the
//!   replica falls back, as `on_redis_down` says: `local_share` counts locally with
//!   `limit / replicas` (rate and burst, rounded up), `fail_closed` answers 503
//!   `temporarily_unavailable`. While down, Redis is tried again at most once per
//!   `redis_retry_ms` (requests in between go straight to the fallback, so an outage
//!   costs no latency); the first answer ends the fallback. `/readyz` names the state
//!   (`rate_limit`), and metrics count it; when nothing has asked Redis for
//!   `redis_retry_ms`, `/readyz` asks it (the limiter's script on a probe key, waiting
//!   at most [`READYZ_REDIS_WAIT`]), so an idle replica reports an outage and a recovery
//!   too.

pub mod local;
pub mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::store::RateLimit;

pub use local::LocalBuckets;
pub use redis::{RedisLimitError, RedisLimiter};

/// Where rate limits are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In each replica.
    #[default]
    Local,
    /// In Redis, shared by all replicas.
    Redis,
}

/// What a replica does while Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisDown {
    /// Count locally with `limit / replicas`.
    #[default]
    LocalShare,
    /// Refuse rate-limited exchanges with 503.
    FailClosed,
}

/// `[rate_limit]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `local` or `redis`.
    pub backend: Backend,
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (required with `backend = "redis"`).
    pub redis_url: Option<String>,
    /// `local_share` or `fail_closed`.
    pub on_redis_down: OnRedisDown,
    /// How many replicas share the limit (the local share is `limit / replicas`).
    pub replicas: u32,
    /// Prefix of every Redis key (several deployments may share one Redis).
    pub key_prefix: String,
    /// Longest wait for Redis per check before falling back.
    pub redis_timeout_ms: u64,
    /// While Redis is down, how often it is tried again.
    pub redis_retry_ms: u64,
}

// By hand: `redis_url` may hold a password, shown as `***`.
impl std::fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("backend", &self.backend)
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(crate::redact::url),
            )
            .field("on_redis_down", &self.on_redis_down)
            .field("replicas", &self.replicas)
            .field("key_prefix", &self.key_prefix)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("redis_retry_ms", &self.redis_retry_ms)
            .finish()
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: Backend::Local,
            redis_url: None,
            on_redis_down: OnRedisDown::LocalShare,
            replicas: 2,
            key_prefix: "meshpass:rl".into(),
            redis_timeout_ms: 250,
            redis_retry_ms: 1000,
        }
    }
}

impl RateLimitConfig {
    /// Checks the section: the dotted field and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: &str| Err((format!("rate_limit.{f}"), r.to_string()));
        if self.replicas == 0 {
            return bad("replicas", "must be at least 1");
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 {
            return bad("key_prefix", "must be 1 to 64 bytes");
        }
        if !(10..=10_000).contains(&self.redis_timeout_ms) {
            return bad("redis_timeout_ms", "must be 10 to 10000");
        }
        if !(50..=60_000).contains(&self.redis_retry_ms) {
            return bad("redis_retry_ms", "must be 50 to 60000");
        }
        match (&self.backend, &self.redis_url) {
            (Backend::Redis, None) => bad("redis_url", "is required with backend = \"redis\""),
            (Backend::Redis, Some(u)) => match ::redis::Client::open(u.as_str()) {
                Ok(_) => Ok(()),
                // The URL may hold a password: never echo it.
                Err(_) => bad("redis_url", "is not a redis:// URL"),
            },
            (Backend::Local, _) => Ok(()),
        }
    }
}

/// The limiter's metrics.
#[derive(Clone)]
struct LimitMetrics {
    redis_up: prometheus::IntGauge,
    fallback: prometheus::IntCounter,
    redis_errors: prometheus::IntCounter,
}

impl LimitMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(LimitMetrics {
            redis_up: prometheus::IntGauge::new(
                "meshpass_rate_limit_redis_up",
                "1 while Redis answers rate-limit checks, 0 while the fallback decides (backend = redis only).",
            )?,
            fallback: prometheus::IntCounter::new(
                "meshpass_rate_limit_fallback_total",
                "Rate-limit checks decided by the fallback (local share or fail closed) because Redis was down.",
            )?,
            redis_errors: prometheus::IntCounter::new(
                "meshpass_rate_limit_redis_errors_total",
                "Rate-limit checks Redis failed to answer in time.",
            )?,
        })
    }
}

struct Shared {
    redis: RedisLimiter,
    on_down: OnRedisDown,
    replicas: u32,
    retry_after_down: Duration,
    /// Whether the last attempt failed.
    down: AtomicBool,
    /// Milliseconds since `epoch` of the last contact with Redis (an answer, a failure,
    /// or a claimed attempt).
    last_try_ms: AtomicU64,
    epoch: Instant,
    metrics: LimitMetrics,
}

/// The limiter the token endpoint charges.
pub struct RateLimiter {
    local: LocalBuckets,
    shared: Option<Shared>,
    retry_after_secs: u64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            local: LocalBuckets::default(),
            shared: None,
            retry_after_secs: 1,
        }
    }
}

/// Longest wait of `/readyz` for Redis (or `redis_timeout_ms` if shorter): the probe
/// must answer within the kubelet's `timeoutSeconds` (5 in the manifests, sized for the
/// store's 3 s wait, which runs alongside) whatever `redis_timeout_ms` (up to 10 s) is,
/// or a black-holed Redis takes every replica out of service at once.
pub const READYZ_REDIS_WAIT: Duration = Duration::from_millis(500);

/// How rate limits are counted right now (for `/readyz`).
pub fn describe(l: &RateLimiter) -> &'static str {
    match &l.shared {
        None => "local",
        Some(s) if !s.down.load(Ordering::Relaxed) => "redis",
        Some(s) => match s.on_down {
            OnRedisDown::LocalShare => "redis unavailable: local share",
            OnRedisDown::FailClosed => "redis unavailable: failing closed",
        },
    }
}

/// [`describe`], after asking Redis when nothing has for `redis_retry_ms`: an idle
/// replica reports an outage, and the recovery, as a busy one does (its `/readyz` and
/// `meshpass_rate_limit_redis_up`), instead of the last exchange's view. The question is
/// the limiter's own script (so a Redis that answers `PING` but refuses checks stays
/// down), waiting at most [`READYZ_REDIS_WAIT`].
pub async fn probe_and_describe(l: &RateLimiter) -> &'static str {
    if let Some(s) = &l.shared {
        if s.probe_due() {
            match s.redis.probe(READYZ_REDIS_WAIT).await {
                Ok(()) => s.up(),
                Err(e) => s.failed(&e),
            }
        }
    }
    describe(l)
}

impl RateLimiter {
    /// The limiter of `cfg`; Redis metrics are registered in `metrics`.
    /// `retry_after_secs` goes with a fail-closed 503.
    pub fn from_config(
        cfg: &RateLimitConfig,
        metrics: &crate::metrics::Metrics,
        retry_after_secs: u64,
    ) -> Result<Self, String> {
        let mut l = RateLimiter {
            retry_after_secs,
            ..RateLimiter::default()
        };
        if cfg.backend == Backend::Redis {
            let url = cfg
                .redis_url
                .as_deref()
                .ok_or("rate_limit.redis_url is required")?;
            let timeout = Duration::from_millis(cfg.redis_timeout_ms);
            let redis =
                RedisLimiter::new(url, &cfg.key_prefix, timeout).map_err(|e| e.to_string())?;
            let m = LimitMetrics::new().map_err(|e| e.to_string())?;
            for c in [
                Box::new(m.redis_up.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(m.fallback.clone()),
                Box::new(m.redis_errors.clone()),
            ] {
                metrics.register(c).map_err(|e| e.to_string())?;
            }
            // 0 until Redis has answered: a replica started during an outage, with no
            // traffic and no readiness probe yet, must not report Redis up.
            m.redis_up.set(0);
            l.shared = Some(Shared {
                redis,
                on_down: cfg.on_redis_down,
                replicas: cfg.replicas,
                retry_after_down: Duration::from_millis(cfg.redis_retry_ms),
                down: AtomicBool::new(false),
                last_try_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                metrics: m,
            });
        }
        Ok(l)
    }

    /// Charges one exchange of `key` (the (caller, subject) pair) under `mapping`.
    /// Refused: 429 `slow_down` with `Retry-After`; Redis down and failing closed: 503.
    pub async fn check(&self, key: &str, mapping: &str, limit: RateLimit) -> Result<(), ApiError> {
        let limited = |wait: Duration| ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        };
        let Some(s) = &self.shared else {
            return self.local.check(key, mapping, limit).map_err(limited);
        };
        if s.should_try() {
            match s.redis.check(key, mapping, limit).await {
                Ok(wait) => {
                    s.up();
                    return match wait {
                        None => Ok(()),
                        Some(w) => Err(limited(w)),
                    };
                }
                Err(e) => s.failed(&e),
            }
        }
        s.metrics.fallback.inc();
        match s.on_down {
            OnRedisDown::LocalShare => {
                let share = RateLimit {
                    per_second: limit.per_second / f64::from(s.replicas),
                    burst: limit.burst.div_ceil(s.replicas).max(1),
                };
                self.local.check(key, mapping, share).map_err(limited)
            }
            OnRedisDown::FailClosed => Err(ApiError::Unavailable {
                what: "rate limiting",
                detail: "redis unavailable and rate_limit.on_redis_down = fail_closed".into(),
                retry_after_secs: self.retry_after_secs,
            }),
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Up: always. Down: one request per `retry_after_down` probes Redis.
    fn should_try(&self) -> bool {
        !self.down.load(Ordering::Relaxed) || self.probe_due()
    }

    /// Whether nothing has asked Redis for `retry_after_down` (and this caller is the one
    /// to ask now).
    fn probe_due(&self) -> bool {
        let now = self.now_ms();
        let last = self.last_try_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.retry_after_down.as_millis() as u64
            && self
                .last_try_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn up(&self) {
        self.last_try_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again: rate limits are global again");
        }
        self.metrics.redis_up.set(1);
    }

    fn failed(&self, e: &RedisLimitError) {
        self.metrics.redis_errors.inc();
        self.last_try_ms.store(self.now_ms(), Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.metrics.redis_up.set(0);
            match self.on_down {
                OnRedisDown::LocalShare => {
                    tracing::warn!(error = %e, replicas = self.replicas, "redis unavailable: rate limits fall back to this replica's local share")
                }
                OnRedisDown::FailClosed => {
                    tracing::error!(error = %e, "redis unavailable: rate-limited exchanges fail closed (503)")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_output_never_shows_the_redis_password() {
        let cfg = RateLimitConfig {
            backend: Backend::Redis,
            redis_url: Some("redis://:hunter2-redis-pass@redis:6379/0".into()),
            ..RateLimitConfig::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@redis:6379/0"), "{text}");
    }

    #[test]
    fn a_redis_backend_without_a_url_or_with_a_bad_one_is_refused_naming_the_field() {
        let mut c = RateLimitConfig {
            backend: Backend::Redis,
            ..RateLimitConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "rate_limit.redis_url");
        c.redis_url = Some("http://secret@x".into());
        let (field, reason) = c.validate().unwrap_err();
        assert_eq!(field, "rate_limit.redis_url");
        assert!(!reason.contains("secret"));
        c.redis_url = Some("redis://127.0.0.1:6379".into());
        assert!(c.validate().is_ok());
        c.replicas = 0;
        assert_eq!(c.validate().unwrap_err().0, "rate_limit.replicas");
    }
}
