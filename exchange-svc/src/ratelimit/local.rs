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
    /// The limit it was last charged under (pruning judges each bucket by its own).
    limit: RateLimit,
}

/// The longest wait a refusal names: the local share of the slowest valid rate can ask
/// for more, and `Duration::from_secs_f64` panics past `u64::MAX` seconds.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// The in-process buckets.
#[derive(Default)]
pub struct LocalBuckets {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

/// Above this many buckets, full (idle) ones are dropped; then, if still above, the
/// least recently charged ones, down to [`PRUNED_TO`] (so a table full of slow limits
/// is neither scanned on every check nor grown without bound).
const MAX_BUCKETS: usize = 100_000;
/// What a prune leaves at most.
const PRUNED_TO: usize = MAX_BUCKETS * 9 / 10;

impl LocalBuckets {
    /// Takes one token for `(key, mapping)`; on refusal, how long until one is free.
    /// The exchange uses the (caller, subject) pair as `key`.
    pub fn check(&self, key: &str, mapping: &str, limit: RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        // Nothing panics under the lock; were it poisoned, counting goes on (never open).
        let mut g = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(limit.burst);
        if g.len() >= MAX_BUCKETS {
            g.retain(|_, b| {
                let refill = now.duration_since(b.last).as_secs_f64() * b.limit.per_second;
                b.tokens + refill < f64::from(b.limit.burst)
            });
            if g.len() > PRUNED_TO {
                // The longest idle have refilled the most: forgetting them forgives the
                // least (a limit is approximate here anyway: one share per replica).
                let mut lasts: Vec<Instant> = g.values().map(|b| b.last).collect();
                let cut = g.len() - PRUNED_TO;
                let (_, nth, _) = lasts.select_nth_unstable(cut - 1);
                let oldest_kept = *nth;
                g.retain(|_, b| b.last > oldest_kept);
            }
        }
        let b = g
            .entry((key.to_string(), mapping.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                last: now,
                limit,
            });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limit.per_second).min(burst);
        b.last = now;
        b.limit = limit;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / limit.per_second;
            Err(Duration::try_from_secs_f64(wait.max(0.001)).map_or(MAX_WAIT, |w| w.min(MAX_WAIT)))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_vanishingly_small_rate_refuses_with_a_bounded_wait_instead_of_panicking() {
        let b = LocalBuckets::default();
        let limit = RateLimit {
            per_second: 1e-20,
            burst: 1,
        };
        assert!(b.check("alice", "m", limit).is_ok());
        assert_eq!(b.check("alice", "m", limit), Err(MAX_WAIT));
        // And the buckets keep counting afterwards.
        assert_eq!(b.check("alice", "m", limit), Err(MAX_WAIT));
    }

    #[test]
    fn pruning_judges_each_bucket_by_its_own_limit() {
        let b = LocalBuckets::default();
        let slow = RateLimit {
            per_second: MIN_RATE,
            burst: 1,
        };
        assert!(b.check("alice", "slow", slow).is_ok());
        // Fill the table with full buckets of a fast mapping until it prunes.
        let fast = RateLimit {
            per_second: 1e9,
            burst: 1,
        };
        for i in 0..MAX_BUCKETS {
            let _ = b.check(&format!("k{i}"), "fast", fast);
        }
        // Under the fast limit alice's bucket would look full and be dropped (reset);
        // under its own it is still empty.
        assert!(b.check("alice", "slow", slow).is_err());
    }

    #[test]
    fn a_table_full_of_buckets_still_counting_stays_bounded() {
        let b = LocalBuckets::default();
        let slow = RateLimit {
            per_second: MIN_RATE,
            burst: 5,
        };
        // Every bucket charged once: none is full again, so none is idle.
        for i in 0..MAX_BUCKETS + 5_000 {
            let _ = b.check(&format!("k{i}"), "slow", slow);
        }
        let len = b.buckets.lock().unwrap().len();
        assert!(
            len <= MAX_BUCKETS,
            "{len} buckets after {} distinct keys (bound {MAX_BUCKETS})",
            MAX_BUCKETS + 5_000
        );
        // The most recent keys are still counted.
        let last = format!("k{}", MAX_BUCKETS + 4_999);
        assert!(b
            .buckets
            .lock()
            .unwrap()
            .contains_key(&(last, "slow".into())));
    }

    const MIN_RATE: f64 = crate::store::MIN_RATE_PER_SECOND;
}
