//! Cache of verified subject (and actor) tokens: SHA-256 of the token bytes → the
//! [`VerifiedSubject`] the full validation produced, so a token this process already
//! verified is not parsed and signature-checked again (the filter re-sends the same
//! token on every refresh).
//!
//! What a hit skips and what it does not:
//! - skipped: parsing and the signature verification (the expensive part);
//! - re-run on every use: every claim rule of the issuer at the current time (`iss`,
//!   `aud`, `exp`, `nbf`, `iat`, `max_lifetime`, with the leeway) and the subject rules
//!   (trust domain, ID patterns), by the same `meshpass-core` functions;
//! - key rotation and removal: each entry carries the key-set generation of the
//!   snapshot it was verified with; once any issuer's key set changes, older entries
//!   no longer match and the token is verified again with the current keys.
//!
//! An entry lives until `min(token exp, verified + ttl)`. Only successes are cached;
//! a token that failed is verified again each time. The map is bounded: the entry
//! closest to expiry is evicted first.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use meshpass_core::VerifiedSubject;
use sha2::{Digest, Sha256};

/// SHA-256 of a token's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }
}

struct Entry {
    subject: Arc<VerifiedSubject>,
    key_generation: u64,
    valid_until: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<TokenDigest, Entry>,
    by_expiry: BTreeSet<(u64, TokenDigest)>,
}

impl Inner {
    fn remove(&mut self, key: &TokenDigest) {
        if let Some(old) = self.map.remove(key) {
            self.by_expiry.remove(&(old.valid_until, *key));
        }
    }
}

/// The bounded verified-subject cache.
pub struct SubjectCache {
    inner: Mutex<Inner>,
    ttl_secs: u64,
    max_entries: usize,
}

impl SubjectCache {
    /// A cache keeping entries at most `ttl_secs` (and never past the token's `exp`),
    /// holding at most `max_entries`.
    pub fn new(ttl_secs: u64, max_entries: usize) -> Self {
        SubjectCache {
            inner: Mutex::new(Inner::default()),
            ttl_secs,
            max_entries: max_entries.max(1),
        }
    }

    /// The subject verified earlier for `key`, if its entry is still within its life
    /// and was verified with the key-set generation `key_generation`. The caller must
    /// still check the claims against `now` (see the module documentation).
    pub fn get(
        &self,
        key: &TokenDigest,
        now: u64,
        key_generation: u64,
    ) -> Option<Arc<VerifiedSubject>> {
        let mut g = self.inner.lock().ok()?;
        let e = g.map.get(key)?;
        if e.key_generation == key_generation && now < e.valid_until {
            return Some(Arc::clone(&e.subject));
        }
        g.remove(key);
        None
    }

    /// Remembers a subject that passed full validation at `now` with the keys of
    /// generation `key_generation`.
    pub fn insert(
        &self,
        key: TokenDigest,
        subject: Arc<VerifiedSubject>,
        now: u64,
        key_generation: u64,
    ) {
        let valid_until = subject.expires_at.min(now.saturating_add(self.ttl_secs));
        if valid_until <= now {
            return;
        }
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        g.remove(&key);
        // Drop a few dead entries on every insert so they do not pile up.
        for _ in 0..4 {
            match g.by_expiry.first().copied() {
                Some((until, k)) if until <= now => g.remove(&k),
                _ => break,
            }
        }
        while g.map.len() >= self.max_entries {
            let Some((_, k)) = g.by_expiry.first().copied() else {
                break;
            };
            g.remove(&k);
        }
        g.by_expiry.insert((valid_until, key));
        g.map.insert(
            key,
            Entry {
                subject,
                key_generation,
                valid_until,
            },
        );
    }

    /// Drops every entry whose subject `hit` selects (a revocation); returns how many.
    pub fn remove_where(&self, hit: impl Fn(&VerifiedSubject) -> bool) -> usize {
        let Ok(mut g) = self.inner.lock() else {
            return 0;
        };
        let gone: Vec<TokenDigest> = g
            .map
            .iter()
            .filter(|(_, e)| hit(&e.subject))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            g.remove(k);
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
