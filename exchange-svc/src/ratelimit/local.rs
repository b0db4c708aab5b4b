//! Token buckets in this process, one per (caller, subject) key and mapping: the
//! `local` backend, and the local share while Redis is down. Each replica counts on its
//! own: with N replicas behind a load balancer a subject gets up to N times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::RateLimit;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The in-process buckets.
#[derive(Default)]
pub struct LocalBuckets {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

/// Above this many buckets, full (idle) ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl LocalBuckets {
    /// Takes one token for `(key, mapping)`; on refusal, how long until one is free.
    /// The exchange uses the (caller, subject) pair as `key`.
    pub fn check(&self, key: &str, mapping: &str, limit: RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut g) = self.buckets.lock() else {
            return Ok(());
        };
        let burst = f64::from(limit.burst);
        if g.len() >= MAX_BUCKETS {
            g.retain(|_, b| {
                let refill = now.duration_since(b.last).as_secs_f64() * limit.per_second;
                b.tokens + refill < burst
            });
        }
        let b = g
            .entry((key.to_string(), mapping.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                last: now,
            });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limit.per_second).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / limit.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}
