//! Cache of minted participant tokens, keyed by a SHA-256 over the subject token, the
//! actor token and the request's resource, audiences, scopes and requested type. An
//! entry is served while more than `min_remaining_fraction` of its life is left; the
//! map is bounded (the entry closest to expiry is evicted first).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use meshpass_core::oauth::TokenExchangeRequest;
use sha2::{Digest, Sha256};

use crate::store::RateLimit;

/// A cache key: SHA-256 of the request's token-determining parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of a request made by `caller` (its SPIFFE ID, empty when unbound): a
    /// token minted for one caller is never served to another. Each field is
    /// length-prefixed so no two requests collide; `resource`, `audience` and `scope`
    /// are sets here (sorted, deduplicated), so order and repeats cannot multiply
    /// entries.
    pub fn of(req: &TokenExchangeRequest, caller: &str) -> Self {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        field(caller.as_bytes());
        field(req.subject_token.as_bytes());
        field(req.actor_token.as_deref().unwrap_or("").as_bytes());
        field(req.requested_token_type.as_deref().unwrap_or("").as_bytes());
        for (tag, list) in [
            ("r", &req.resource),
            ("a", &req.audience),
            ("s", &req.scope),
        ] {
            let set: BTreeSet<&str> = list.iter().map(String::as_str).collect();
            field(tag.as_bytes());
            field(&(set.len() as u64).to_be_bytes());
            for v in set {
                field(v.as_bytes());
            }
        }
        CacheKey(h.finalize().into())
    }
}

/// A minted token and what is needed to serve it again.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// The participant token.
    pub access_token: Arc<str>,
    /// Granted scopes, space-separated.
    pub scope: Option<Arc<str>>,
    /// `iat`.
    pub issued_at: u64,
    /// `exp`.
    pub expires_at: u64,
    /// The (caller, subject) rate-limit key.
    pub rate_key: Arc<str>,
    /// The mapping that granted it (rate-limit key).
    pub mapping: Arc<str>,
    /// The resource (metrics label).
    pub resource: Arc<str>,
    /// The mapping's rate limit, applied to cache hits too.
    pub rate_limit: Option<RateLimit>,
    /// The token's `jti` (a revoked one is never served again).
    pub jti: Arc<str>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, CachedToken>,
    by_expiry: BTreeSet<(u64, CacheKey)>,
    /// Tokens issued at or before this second are not stored: their exchange may have
    /// read the policy before the last [`TokenCache::clear`].
    issued_after: u64,
}

/// The bounded token cache.
pub struct TokenCache {
    inner: Mutex<Inner>,
    max_entries: usize,
    min_remaining_fraction: f64,
}

impl TokenCache {
    /// A cache of at most `max_entries` tokens.
    pub fn new(max_entries: usize, min_remaining_fraction: f64) -> Self {
        TokenCache {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            min_remaining_fraction,
        }
    }

    fn fresh(&self, t: &CachedToken, now: u64) -> bool {
        let life = t.expires_at.saturating_sub(t.issued_at) as f64;
        let left = t.expires_at.saturating_sub(now) as f64;
        left > 0.0 && left > life * self.min_remaining_fraction
    }

    /// The cached token for `key`, if it still has enough life left.
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<CachedToken> {
        let mut g = self.inner.lock().ok()?;
        let hit = g.map.get(key)?;
        if self.fresh(hit, now) {
            return Some(hit.clone());
        }
        let exp = hit.expires_at;
        g.map.remove(key);
        g.by_expiry.remove(&(exp, *key));
        None
    }

    /// Stores a freshly minted token, evicting the entries closest to expiry when full.
    pub fn insert(&self, key: CacheKey, token: CachedToken, now: u64) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if token.issued_at <= g.issued_after {
            return;
        }
        if let Some(old) = g.map.remove(&key) {
            g.by_expiry.remove(&(old.expires_at, key));
        }
        while g.map.len() >= self.max_entries {
            let Some(first) = g.by_expiry.pop_first() else {
                break;
            };
            g.map.remove(&first.1);
        }
        // Drop a few stale entries on every insert so dead tokens do not pile up.
        for _ in 0..4 {
            match g.by_expiry.first().copied() {
                Some((exp, k)) if exp <= now => {
                    g.by_expiry.pop_first();
                    g.map.remove(&k);
                }
                _ => break,
            }
        }
        g.by_expiry.insert((token.expires_at, key));
        g.map.insert(key, token);
    }

    /// Drops every token (the policy changed at `now`): tokens from exchanges that
    /// started at or before `now` are not stored either.
    pub fn clear(&self, now: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.map.clear();
            g.by_expiry.clear();
            g.issued_after = g.issued_after.max(now);
        }
    }

    /// Drops every token `hit` selects (a revocation); returns how many.
    pub fn remove_where(&self, hit: impl Fn(&CachedToken) -> bool) -> usize {
        let Ok(mut g) = self.inner.lock() else {
            return 0;
        };
        let gone: Vec<(u64, CacheKey)> = g
            .map
            .iter()
            .filter(|(_, t)| hit(t))
            .map(|(k, t)| (t.expires_at, *k))
            .collect();
        for (exp, k) in &gone {
            g.map.remove(k);
            g.by_expiry.remove(&(*exp, *k));
        }
        gone.len()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.map.len()).unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
