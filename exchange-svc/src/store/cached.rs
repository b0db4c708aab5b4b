//! [`PolicyCache`]: a short-lived snapshot cache in front of
//! [`MappingStore::resource_policy`], so the token endpoint does not run two SQL queries
//! per exchange.
//!
//! Staleness bound:
//! - writes made through this process (this wrapper) drop every snapshot as soon as the
//!   write returns, and a read that raced with a write is not cached;
//! - writes made elsewhere (another replica on the same PostgreSQL database, the CLI)
//!   are seen once the snapshot expires: a snapshot is served for at most `ttl_secs`
//!   (`store.policy_cache_secs`) after it was read, measured on the service clock
//!   (whole seconds, so its life is between `ttl_secs - 1` and `ttl_secs`);
//! - while the database is down, a snapshot is served only within that same life;
//!   after it the store is asked again and its error is returned (503): the cache
//!   never extends a snapshot because the store failed.
//!
//! One read per resource at a time: when a snapshot is missing or expired, the first
//! exchange reads it and every concurrent exchange for the same resource waits for that
//! read and shares its outcome (also an error), instead of each reading and decoding the
//! whole resource again (with many mappings, 32 concurrent copies collapsed the service:
//! `make bench`, "mapping scaling"). A read joined after a write is a new read.
//!
//! Resources without mappings are not cached (they are the error path, and caching them
//! would let requests for made-up resource names fill the cache).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Mapping, MappingStore, ResourcePolicy, ScopeClaims, StoreError};
use crate::clock::Clock;

/// Most resources held; when full, expired snapshots go first, then all of them.
const MAX_ENTRIES: usize = 4096;

struct Snapshot {
    read_at: u64,
    policy: Arc<ResourcePolicy>,
}

/// The outcome of one read: when it started (the snapshot's age counts from there) and
/// what it returned.
type Loaded = Result<(u64, Arc<ResourcePolicy>), StoreError>;

/// A read in flight, shared by every exchange that needs the resource meanwhile.
type Load = Arc<tokio::sync::OnceCell<Loaded>>;

#[derive(Default)]
struct State {
    /// Moves on every write through this process; a read started under an older
    /// generation is not cached.
    generation: u64,
    entries: HashMap<String, Snapshot>,
    /// Reads in flight by resource (dropped by the first caller back, and on writes).
    loading: HashMap<String, Load>,
}

/// A [`MappingStore`] that caches [`MappingStore::resource_policy`] for `ttl_secs` and
/// passes everything else through, dropping its snapshots on every write.
pub struct PolicyCache {
    inner: Arc<dyn MappingStore>,
    clock: Arc<dyn Clock>,
    ttl_secs: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl PolicyCache {
    /// Caches the resource policies of `inner` for `ttl_secs` seconds of `clock`.
    pub fn new(inner: Arc<dyn MappingStore>, clock: Arc<dyn Clock>, ttl_secs: u64) -> Self {
        PolicyCache {
            inner,
            clock,
            ttl_secs,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn fresh(&self, s: &Snapshot, now: u64) -> bool {
        // A clock that went backwards does not stretch a snapshot's life.
        now >= s.read_at && now - s.read_at < self.ttl_secs
    }

    /// Drops every snapshot and makes reads in flight uncacheable.
    pub fn invalidate(&self) {
        let mut g = self.lock();
        g.generation = g.generation.wrapping_add(1);
        g.entries.clear();
        g.loading.clear();
    }

    /// Number of cached resources.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl MappingStore for PolicyCache {
    async fn resource_policy(&self, resource: &str) -> Result<ResourcePolicy, StoreError> {
        self.shared_resource_policy(resource)
            .await
            .map(|p| ResourcePolicy::clone(&p))
    }

    async fn shared_resource_policy(
        &self,
        resource: &str,
    ) -> Result<Arc<ResourcePolicy>, StoreError> {
        let now = self.clock.now();
        let (generation, load) = {
            let mut g = self.lock();
            if let Some(s) = g.entries.get(resource) {
                if self.fresh(s, now) {
                    return Ok(Arc::clone(&s.policy));
                }
            }
            if g.loading.len() >= MAX_ENTRIES {
                // Reads whose callers all went away (made-up resource names, say).
                g.loading.retain(|_, l| Arc::strong_count(l) > 1);
            }
            let load = Arc::clone(g.loading.entry(resource.to_string()).or_default());
            (g.generation, load)
        };
        // If the caller running the read is cancelled, the next waiter runs it.
        let loaded = load
            .get_or_init(|| async {
                let read_at = self.clock.now();
                let policy = self.inner.resource_policy(resource).await?;
                Ok((read_at, Arc::new(policy)))
            })
            .await
            .clone();
        let mut g = self.lock();
        if g.loading
            .get(resource)
            .is_some_and(|l| Arc::ptr_eq(l, &load))
        {
            g.loading.remove(resource);
        }
        let (read_at, policy) = loaded?;
        if !policy.mappings.is_empty() && g.generation == generation {
            if g.entries.len() >= MAX_ENTRIES {
                g.entries
                    .retain(|_, s| now >= s.read_at && now - s.read_at < self.ttl_secs);
                if g.entries.len() >= MAX_ENTRIES {
                    g.entries.clear();
                }
            }
            g.entries.insert(
                resource.to_string(),
                Snapshot {
                    read_at,
                    policy: Arc::clone(&policy),
                },
            );
        }
        Ok(policy)
    }

    async fn list_mappings(&self) -> Result<Vec<Mapping>, StoreError> {
        self.inner.list_mappings().await
    }

    async fn get_mapping(&self, name: &str) -> Result<Option<Mapping>, StoreError> {
        self.inner.get_mapping(name).await
    }

    // Writes invalidate whatever their outcome: an error (a timeout, say) may still
    // have committed.
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError> {
        let r = self.inner.put_mapping(mapping).await;
        self.invalidate();
        r
    }

    async fn delete_mapping(&self, name: &str) -> Result<bool, StoreError> {
        let r = self.inner.delete_mapping(name).await;
        self.invalidate();
        r
    }

    async fn list_scope_claims(&self) -> Result<Vec<ScopeClaims>, StoreError> {
        self.inner.list_scope_claims().await
    }

    async fn put_scope_claims(&self, row: &ScopeClaims) -> Result<(), StoreError> {
        let r = self.inner.put_scope_claims(row).await;
        self.invalidate();
        r
    }

    async fn delete_scope_claims(&self, resource: &str, scope: &str) -> Result<bool, StoreError> {
        let r = self.inner.delete_scope_claims(resource, scope).await;
        self.invalidate();
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn invalidate(&self) {
        PolicyCache::invalidate(self);
    }
}
