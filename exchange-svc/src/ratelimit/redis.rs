//! The `redis` backend: one GCRA (generic cell rate algorithm) state per (caller,
//! subject, mapping) in Redis, shared by every replica, updated by one atomic Lua script
//! per check. The script reads Redis's own clock (`TIME`), so replicas' clocks do not
//! matter (and a step back of Redis's clock costs a pair at most one refill), and
//! stores only the "theoretical arrival time" and its interval with an expiry: a key
//! lives no longer than its bucket takes to refill.
//!
//! Keys are `{key_prefix}:` + the SHA-256 (hex) of the mapping and the (caller,
//! subject) pair: bounded length, and no workload identity in Redis.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::store::RateLimit;

/// GCRA in one step. KEYS[1]: the state, `TAT:T` (the theoretical arrival time and
/// the interval it was counted in, µs; a bare `TAT` from older builds is read in the
/// current interval); ARGV[1]: emission interval T (µs, the time one request "costs");
/// ARGV[2]: tolerance (µs) = T × (burst − 1). Returns 0 when allowed (and records it),
/// else the µs to wait.
///
/// The state is brought to the current limit before it is used: a debt counted in
/// another interval (the mapping's limit changed) is rescaled, as the local buckets
/// refill at a new rate at once; and an arrival time no state of this limit can reach
/// (Redis's clock stepped back: a failover to a node behind) is capped at one full
/// bucket ahead, so a pair is never locked out for longer than its limit refills.
///
/// A key of another type (a hash written by hand or by another deployment sharing the
/// prefix) is read as no state, and the `SET` replaces it: a `GET` on it would fail the
/// script with `WRONGTYPE`, and a failed check sends the whole replica, every pair, to
/// the fallback over one pair's key.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local stored = false
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  stored = redis.call('GET', KEYS[1])
end
local tat = now
local fixed = false
if stored then
  local s_tat, s_int = string.match(stored, '^(%d+):(%d+)$')
  if s_tat then
    tat = tonumber(s_tat)
    local old = tonumber(s_int)
    if old ~= interval and old > 0 and tat > now then
      tat = now + (tat - now) * interval / old
      fixed = true
    end
  else
    tat = tonumber(stored) or now
  end
end
if tat < now then tat = now end
local cap = now + tolerance + interval
if tat > cap then
  tat = cap
  fixed = true
end
local allow_at = tat - tolerance
if now < allow_at then
  if fixed then
    redis.call('SET', KEYS[1], string.format('%.0f:%.0f', tat, interval), 'PX', math.floor((tat - now) / 1000) + 1)
  end
  return math.max(1, math.floor(allow_at - now))
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', new_tat, interval), 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
";

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    /// The URL is not a Redis URL.
    #[error("rate_limit.redis_url: {0}")]
    Url(String),
    /// Redis did not answer in time or refused the command.
    #[error("redis: {0}")]
    Unavailable(String),
}

/// The shared limiter's connection and script.
pub struct RedisLimiter {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Replaced after a timeout: the manager reconnects only when the connection is
    /// reported dropped, and a peer gone without a reset (a Redis pod replaced behind
    /// a ClusterIP) only ever times out.
    conn: std::sync::Mutex<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl RedisLimiter {
    /// A limiter on `url` (connected lazily, re-connected by the connection manager, and
    /// by the limiter after a timeout); every call is bounded by `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RedisLimitError> {
        let client = redis::Client::open(url).map_err(|e| RedisLimitError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // No retry loop inside a request: the caller falls back and tries again later.
            .set_number_of_retries(0)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| RedisLimitError::Url(e.to_string()))?;
        Ok(RedisLimiter {
            client,
            config,
            conn: std::sync::Mutex::new(conn),
            script: redis::Script::new(GCRA),
            prefix: prefix.to_string(),
            timeout,
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a timeout: the next call starts on a fresh connection (lazily).
    fn reconnect(&self) {
        if let Ok(c) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            *self
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
        }
    }

    /// The error of a call that did not answer: a timeout (ours or the manager's)
    /// drops the connection, and so does `READONLY`: after a failover behind one name or
    /// VIP the open connection stays on the old primary, now a replica, which the
    /// manager never leaves on its own (the connection works); a new one reaches the
    /// promoted primary.
    fn unavailable(&self, e: Option<redis::RedisError>) -> RedisLimitError {
        match e {
            None => {
                self.reconnect();
                RedisLimitError::Unavailable("timed out".into())
            }
            Some(e) => {
                if e.is_timeout() || e.code() == Some("READONLY") {
                    self.reconnect();
                }
                RedisLimitError::Unavailable(e.to_string())
            }
        }
    }

    /// The Redis key of a (caller, subject) `key` under `mapping`.
    pub fn redis_key(&self, key: &str, mapping: &str) -> String {
        let mut h = Sha256::new();
        h.update(mapping.as_bytes());
        h.update([0u8]);
        h.update(key.as_bytes());
        format!("{}:{}", self.prefix, hex::encode(h.finalize()))
    }

    /// The limiter's script on a fixed key under the prefix (no pair's key: those are
    /// hex digests) with a limit no probe reaches, bounded by `bound` (at most the
    /// timeout): whether Redis does what a check needs (asked by `/readyz` when no
    /// exchange has asked for a while). Not a `PING`: a Redis at `maxmemory` (`OOM`), a
    /// read-only replica or a user without `EVALSHA` answers `PING` yet refuses every
    /// check.
    pub async fn probe(&self, bound: Duration) -> Result<(), RedisLimitError> {
        let key = format!("{}:probe", self.prefix);
        // 1 µs per request, a burst of a second's worth: never refused, and the key
        // expires 1 ms after each probe.
        self.run(key, 1, 1_000_000, bound.min(self.timeout))
            .await
            .map(|_| ())
    }

    /// One request against the shared limit: Ok(None) allowed, Ok(Some(wait)) refused.
    pub async fn check(
        &self,
        key: &str,
        mapping: &str,
        limit: RateLimit,
    ) -> Result<Option<Duration>, RedisLimitError> {
        let interval_us = (1_000_000.0 / limit.per_second).max(1.0).round() as u64;
        let tolerance_us = interval_us.saturating_mul(u64::from(limit.burst.saturating_sub(1)));
        let wait = self
            .run(
                self.redis_key(key, mapping),
                interval_us,
                tolerance_us,
                self.timeout,
            )
            .await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }

    /// The script on `key`, bounded by `bound`: the µs to wait (0: allowed).
    async fn run(
        &self,
        key: String,
        interval_us: u64,
        tolerance_us: u64,
        bound: Duration,
    ) -> Result<u64, RedisLimitError> {
        let mut conn = self.conn();
        let mut call = self.script.key(key);
        call.arg(interval_us).arg(tolerance_us);
        tokio::time::timeout(bound, call.invoke_async(&mut conn))
            .await
            .map_err(|_| self.unavailable(None))?
            .map_err(|e| self.unavailable(Some(e)))
    }
}
