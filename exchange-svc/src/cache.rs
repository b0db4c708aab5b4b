//! Cache of minted participant tokens, keyed by a SHA-256 over the caller, the subject
//! token, the actor token and the request's resource, audiences, scopes and requested
//! type. An entry is served while more than `min_remaining_fraction` of its life is
//! left; the map is bounded (the entry closest to expiry is evicted first).
//!
//! The warm path does not parse the form: a second, "form" key (SHA-256 of the caller
//! and the exact body bytes) is an alias of the request key, recorded once that body
//! was parsed and answered. The same bytes from the same caller are the same request,
//! so an alias can only find the token the full path would have found; a dropped or
//! evicted token leaves its aliases pointing at nothing (they miss, and are removed).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use meshpass_core::oauth::{TokenExchangeRequest, TOKEN_TYPE_JWT};
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
        field(b"request");
        field(caller.as_bytes());
        field(req.subject_token.as_bytes());
        field(req.actor_token.as_deref().unwrap_or("").as_bytes());
        field(req.requested_token_type.as_deref().unwrap_or("").as_bytes());
        // Order does not matter within each list but one: without a `resource` the first
        // `audience` picks the mappings (`form::target`), so it is part of the key.
        let target = req.resource.first().or_else(|| req.audience.first());
        field(target.map_or("", String::as_str).as_bytes());
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

    /// The alias key of the exact form `body` sent by `caller` (see the module comment):
    /// hashing the bytes is cheaper than parsing them, and a tag keeps it apart from
    /// [`CacheKey::of`].
    pub fn of_form(body: &[u8], caller: &str) -> Self {
        let mut h = Sha256::new();
        for b in [&b"form"[..], caller.as_bytes(), body] {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
        CacheKey(h.finalize().into())
    }
}

/// The RFC 8693 §2.2 success body of one minted token, serialised once when it is
/// minted: between answers only `expires_in` changes. No `Debug`: it holds the token.
#[derive(Clone)]
pub struct AnswerBody {
    /// Everything up to the value of `expires_in`.
    head: Arc<str>,
    /// Everything after it.
    tail: Arc<str>,
}

impl AnswerBody {
    /// The body for `access_token` with `scope` (the same bytes as serialising
    /// `meshpass_core::oauth::TokenExchangeResponse`).
    pub fn new(access_token: &str, scope: Option<&str>) -> Self {
        // JSON strings written directly (a compact JWS needs no escaping, but a scope
        // might): no `Value` per string, no formatting machinery.
        let string = |out: &mut String, s: &str| {
            // Serialising a `str` cannot fail.
            if let Ok(quoted) = serde_json::to_string(s) {
                out.push_str(&quoted);
            }
        };
        let mut head = String::with_capacity(access_token.len() + 120);
        head.push_str("{\"access_token\":");
        string(&mut head, access_token);
        head.push_str(",\"issued_token_type\":");
        string(&mut head, TOKEN_TYPE_JWT);
        head.push_str(",\"token_type\":\"Bearer\",\"expires_in\":");
        let tail = match scope {
            Some(s) => {
                let mut tail = String::with_capacity(s.len() + 12);
                tail.push_str(",\"scope\":");
                string(&mut tail, s);
                tail.push('}');
                tail
            }
            None => "}".to_string(),
        };
        AnswerBody {
            head: head.into(),
            tail: tail.into(),
        }
    }

    /// The body with `expires_in`.
    pub fn render(&self, expires_in: u64) -> Vec<u8> {
        let n = expires_in.to_string();
        let mut out = Vec::with_capacity(self.head.len() + n.len() + self.tail.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
        out
    }
}

/// A minted token and what is needed to serve it again (`Debug` never shows the token).
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
    /// The SPIFFE IDs of the workloads that acted in it: the one the token names as
    /// acting (`act.sub`: the actor token's subject, or the subject token's own actor)
    /// and, when an actor token took its place, the subject token's own actor too. A
    /// revoked one's tokens are never served again.
    pub actors: Box<[Arc<str>]>,
    /// The answer, serialised at mint time.
    pub body: AnswerBody,
    /// The issuer key-set generation its subject (and actor) token last verified under
    /// ([`crate::keys::IssuerKeySource::generation`]). Once the keys change, the token
    /// is served again only after those tokens verify with the new keys: a key removed
    /// from an issuer's JWKS must not leave tokens it vouched for being served.
    pub key_generation: std::sync::atomic::AtomicU64,
    /// The key that signed it: served again only while the signer still publishes that
    /// version with that material ([`crate::signer::Signer::still_publishes`]).
    pub signed_with: crate::signer::SigningKey,
    /// `meshpass_exchanges_total{outcome="cached", resource}`, resolved at mint time
    /// (None: not counted, e.g. in tests).
    pub cached_counter: Option<prometheus::IntCounter>,
}

impl CachedToken {
    /// Whether its subject (and actor) token last verified under key-set `generation`.
    pub fn under_keys(&self, generation: u64) -> bool {
        self.key_generation
            .load(std::sync::atomic::Ordering::Relaxed)
            == generation
    }
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field(
                "access_token",
                &crate::redact::Redacted(self.access_token.len()),
            )
            .field("scope", &self.scope)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("mapping", &self.mapping)
            .field("resource", &self.resource)
            .field("jti", &self.jti)
            .field("actors", &self.actors)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Arc<CachedToken>>,
    /// Form keys → request keys (see the module comment).
    aliases: HashMap<CacheKey, CacheKey>,
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
    /// Longest a token is served after it was minted (see [`Self::with_max_age_secs`]).
    max_age_secs: u64,
}

impl TokenCache {
    /// A cache of at most `max_entries` tokens.
    pub fn new(max_entries: usize, min_remaining_fraction: f64) -> Self {
        TokenCache {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            min_remaining_fraction,
            max_age_secs: u64::MAX,
        }
    }

    /// Serves a token at most `secs` after it was minted (`store.policy_max_age_secs`):
    /// a hit reads no policy, and a write that bypasses meshpass's change version
    /// (direct SQL) clears nothing, so only age bounds what the mapping of the moment
    /// would no longer grant.
    pub fn with_max_age_secs(mut self, secs: u64) -> Self {
        self.max_age_secs = secs;
        self
    }

    fn fresh(&self, t: &CachedToken, now: u64) -> bool {
        let life = t.expires_at.saturating_sub(t.issued_at) as f64;
        let left = t.expires_at.saturating_sub(now) as f64;
        left > 0.0
            && left > life * self.min_remaining_fraction
            && now < t.issued_at.saturating_add(self.max_age_secs)
    }

    /// The cached token for `key`, if it still has enough life left.
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<Arc<CachedToken>> {
        let mut g = self.inner.lock().ok()?;
        self.get_locked(&mut g, key, now)
    }

    fn get_locked(&self, g: &mut Inner, key: &CacheKey, now: u64) -> Option<Arc<CachedToken>> {
        let hit = g.map.get(key)?;
        if self.fresh(hit, now) {
            return Some(Arc::clone(hit));
        }
        let exp = hit.expires_at;
        g.map.remove(key);
        g.by_expiry.remove(&(exp, *key));
        None
    }

    /// The cached token the form key `alias` points at, if it still has enough life
    /// left (a dangling alias is removed).
    pub fn get_alias(&self, alias: &CacheKey, now: u64) -> Option<Arc<CachedToken>> {
        let mut g = self.inner.lock().ok()?;
        let key = *g.aliases.get(alias)?;
        let hit = self.get_locked(&mut g, &key, now);
        if hit.is_none() {
            g.aliases.remove(alias);
        }
        hit
    }

    /// Records that the form key `alias` means the request key `key`. Aliases are
    /// bounded like entries (all are dropped when too many: they come back with use).
    pub fn alias(&self, alias: CacheKey, key: CacheKey) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.aliases.len() >= self.max_entries.saturating_mul(2) {
            g.aliases.clear();
        }
        g.aliases.insert(alias, key);
    }

    /// Stores a freshly minted token, evicting the entries closest to expiry when full.
    pub fn insert(&self, key: CacheKey, token: Arc<CachedToken>, now: u64) {
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
            g.aliases.clear();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshpass_core::oauth::TokenExchangeResponse;

    fn token(jti: &str, issued_at: u64, expires_at: u64) -> Arc<CachedToken> {
        Arc::new(CachedToken {
            access_token: "t".into(),
            scope: None,
            issued_at,
            expires_at,
            rate_key: "c s".into(),
            mapping: "m".into(),
            resource: "r".into(),
            rate_limit: None,
            key_generation: 0.into(),
            signed_with: crate::signer::SigningKey {
                kid: "k:v1".into(),
                version: 1,
                alg: crate::signer::SigningAlg::ES256,
                material: 0,
            },
            jti: jti.into(),
            actors: Box::new([]),
            body: AnswerBody::new("t", None),
            cached_counter: None,
        })
    }

    #[test]
    fn debug_output_never_shows_the_participant_token() {
        let secret = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
        let Ok(mut t) = Arc::try_unwrap(token("j1", 1, 2)) else {
            unreachable!("the only reference")
        };
        t.access_token = secret.into();
        t.body = AnswerBody::new(secret, None);
        let shown = format!("{t:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(
            shown.contains("j1") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn the_preserialised_answer_is_the_same_bytes_as_the_serialised_response() {
        for (token, scope) in [
            ("a.b.c", None),
            ("eyJ.eyJ.sig-_", Some("read write")),
            ("x", Some("we\"ird \\ scope\u{1}é")),
        ] {
            for expires_in in [0, 1, 299, u64::MAX] {
                let expected = serde_json::to_vec(&TokenExchangeResponse {
                    access_token: token.into(),
                    issued_token_type: TOKEN_TYPE_JWT.into(),
                    token_type: "Bearer".into(),
                    expires_in,
                    scope: scope.map(str::to_string),
                })
                .unwrap();
                let body = AnswerBody::new(token, scope).render(expires_in);
                assert_eq!(
                    String::from_utf8(body).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_form_alias_finds_its_token_only_while_the_token_is_cached_and_fresh() {
        let cache = TokenCache::new(8, 0.5);
        let (key, alias) = (CacheKey([1; 32]), CacheKey::of_form(b"body", "caller"));
        assert!(cache.get_alias(&alias, 10).is_none());
        cache.insert(key, token("j", 10, 110), 10);
        cache.alias(alias, key);
        assert_eq!(&*cache.get_alias(&alias, 20).unwrap().jti, "j");
        assert_eq!(cache.len(), 1, "an alias is not a second entry");
        // Past half its life: neither key serves it.
        assert!(cache.get_alias(&alias, 61).is_none());
        assert!(cache.get(&key, 61).is_none());
        // Dropped by a revocation: the alias dangles and misses.
        cache.insert(key, token("k", 100, 200), 100);
        cache.alias(alias, key);
        assert_eq!(cache.remove_where(|t| &*t.jti == "k"), 1);
        assert!(cache.get_alias(&alias, 101).is_none());
        // Cleared by a policy change: aliases go too.
        cache.insert(key, token("l", 300, 400), 300);
        cache.alias(alias, key);
        cache.clear(300);
        assert!(cache.get_alias(&alias, 301).is_none());
    }

    #[test]
    fn form_keys_differ_by_caller_and_by_any_byte_of_the_body() {
        let a = CacheKey::of_form(b"subject_token=x&resource=r", "spiffe://td/a");
        assert_eq!(
            a,
            CacheKey::of_form(b"subject_token=x&resource=r", "spiffe://td/a")
        );
        assert_ne!(
            a,
            CacheKey::of_form(b"subject_token=x&resource=r", "spiffe://td/b")
        );
        assert_ne!(
            a,
            CacheKey::of_form(b"subject_token=x&resource=s", "spiffe://td/a")
        );
        // Length-prefixed fields: moving bytes between caller and body changes the key.
        assert_ne!(CacheKey::of_form(b"ab", "c"), CacheKey::of_form(b"b", "ca"));
    }
}
