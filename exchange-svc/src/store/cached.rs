//! [`PolicyCache`]: a short-lived snapshot cache in front of
//! [`MappingStore::resource_policy`], so the token endpoint does not run two SQL queries
//! per exchange.
//!
//! Staleness bound:
//! - writes made through this process (this wrapper) drop every snapshot as soon as the
//!   write returns, and a read that raced with a write is not cached;
//! - writes made elsewhere (another replica on the same PostgreSQL database, the CLI)
//!   are seen once the snapshot expires: a snapshot is served for at most `ttl_secs`
//!   (`store.policy_cache_secs`) after its read started, measured on the service clock
//!   in milliseconds;
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
//! Refresh ahead: an exchange that finds its snapshot in the last part of its life (the
//! longer of 200 ms and twice what the snapshot's own read took, but not before the
//! snapshot is twice its read old, so reads of one resource never run back to back) is
//! answered from it at once and starts one read in the background. A resource in
//! steady use whose read takes under a quarter of the TTL is so never re-read while
//! exchanges wait (with 100,000 mappings a read took 0.8 s on SQLite, a stall every
//! TTL); a longer read starts later and shortens the wait; one over half the TTL is
//! not started ahead (the snapshot expires as before: a full run of `make bench` with
//! reads back to back spent 0.8 core on them). The bounds above are unchanged: the new
//! snapshot counts its age from when its read started, a failed background read leaves
//! the old snapshot to expire on time, and a read started before a write is not cached.
//!
//! Resources without mappings are not cached (they are the error path, and caching them
//! would let requests for made-up resource names fill the cache).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use super::{Mapping, MappingStore, ResourcePolicy, ScopeClaims, StoreError};
use crate::clock::Clock;

/// Most resources held; when full, expired snapshots go first, then all of them.
const MAX_ENTRIES: usize = 4096;

/// Frees a replaced snapshot outside the lock, and a large one off the async workers
/// (freeing 100,000 mappings is not free).
fn discard(policy: Arc<ResourcePolicy>) {
    if policy.mappings.len() >= super::LARGE_RESOURCE && Arc::strong_count(&policy) == 1 {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(policy));
        }
    }
}

/// Shortest lead before expiry at which a background refresh starts.
const MIN_REFRESH_LEAD_MS: u64 = 200;

struct Snapshot {
    /// Service clock (ms) when the read that produced it started.
    read_at_ms: u64,
    /// How long that read took (ms): sets how early the next one starts.
    read_ms: u64,
    policy: Arc<ResourcePolicy>,
}

/// The outcome of one read: when it started, how long it took, and what it returned.
type Loaded = Result<(u64, u64, Arc<ResourcePolicy>), StoreError>;

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

/// What the cache and its background refreshes share.
struct Shared {
    inner: Arc<dyn MappingStore>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    state: Mutex<State>,
}

/// A [`MappingStore`] that caches [`MappingStore::resource_policy`] for `ttl_secs` and
/// passes everything else through, dropping its snapshots on every write.
pub struct PolicyCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache")
            .field("ttl_ms", &self.shared.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl PolicyCache {
    /// Caches the resource policies of `inner` for `ttl_secs` seconds of `clock`.
    pub fn new(inner: Arc<dyn MappingStore>, clock: Arc<dyn Clock>, ttl_secs: u64) -> Self {
        PolicyCache {
            shared: Arc::new(Shared {
                inner,
                clock,
                ttl_ms: ttl_secs.saturating_mul(1000),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Drops every snapshot and makes reads in flight uncacheable.
    pub fn invalidate(&self) {
        let mut g = self.shared.lock();
        g.generation = g.generation.wrapping_add(1);
        g.entries.clear();
        g.loading.clear();
    }

    /// Number of cached resources.
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn age(s: &Snapshot, now_ms: u64) -> Option<u64> {
        // A clock that went backwards does not stretch a snapshot's life.
        now_ms.checked_sub(s.read_at_ms)
    }

    fn fresh(&self, s: &Snapshot, now_ms: u64) -> bool {
        Self::age(s, now_ms).is_some_and(|a| a < self.ttl_ms)
    }

    /// Whether a fresh snapshot is close enough to expiry to be read again now: from
    /// `max(200 ms, 2 × its read)` before expiry, but not before it is twice its read
    /// old (the store is then at most half busy with one resource).
    fn due(&self, s: &Snapshot, now_ms: u64) -> bool {
        let twice = s.read_ms.saturating_mul(2);
        let start = self
            .ttl_ms
            .saturating_sub(twice.max(MIN_REFRESH_LEAD_MS))
            .max(twice);
        Self::age(s, now_ms).is_some_and(|a| a >= start)
    }

    async fn get(self: &Arc<Self>, resource: &str) -> Result<Arc<ResourcePolicy>, StoreError> {
        let now = self.clock.now_ms();
        let (generation, load) = {
            let mut g = self.lock();
            if let Some(s) = g.entries.get(resource) {
                if self.fresh(s, now) {
                    let policy = Arc::clone(&s.policy);
                    if self.due(s, now) && !g.loading.contains_key(resource) {
                        self.refresh_in_background(&mut g, resource);
                    }
                    return Ok(policy);
                }
            }
            if g.loading.len() >= MAX_ENTRIES {
                // Reads whose callers all went away (made-up resource names, say).
                g.loading.retain(|_, l| Arc::strong_count(l) > 1);
            }
            let load = Arc::clone(g.loading.entry(resource.to_string()).or_default());
            (g.generation, load)
        };
        self.read(resource, generation, load).await
    }

    /// Starts one read of `resource` that no exchange waits for (unless its snapshot
    /// expires meanwhile: an exchange then joins it like any read in flight).
    fn refresh_in_background(self: &Arc<Self>, g: &mut State, resource: &str) {
        // Outside a runtime (never in the service) the snapshot simply expires.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let load = Arc::clone(g.loading.entry(resource.to_string()).or_default());
        let generation = g.generation;
        let shared = Arc::clone(self);
        let resource = resource.to_string();
        rt.spawn(async move {
            if let Err(e) = shared.read(&resource, generation, load).await {
                tracing::warn!(
                    resource = %resource,
                    error = %e,
                    "refreshing a policy snapshot ahead of its expiry failed; it is served until its TTL, then the store is asked again"
                );
            }
        });
    }

    /// Runs (or joins) the read `load` and caches its outcome unless a write came after
    /// it started.
    async fn read(
        &self,
        resource: &str,
        generation: u64,
        load: Load,
    ) -> Result<Arc<ResourcePolicy>, StoreError> {
        // If the caller running the read is cancelled, the next waiter runs it.
        let loaded = load
            .get_or_init(|| async {
                let read_at_ms = self.clock.now_ms();
                let started = Instant::now();
                let policy = self.inner.resource_policy(resource).await?;
                let read_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                Ok((read_at_ms, read_ms, Arc::new(policy)))
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
        let (read_at_ms, read_ms, policy) = loaded?;
        if !policy.mappings.is_empty() && g.generation == generation {
            if g.entries.len() >= MAX_ENTRIES {
                let now = self.clock.now_ms();
                g.entries.retain(|_, s| self.fresh(s, now));
                if g.entries.len() >= MAX_ENTRIES {
                    g.entries.clear();
                }
            }
            let replaced = g.entries.insert(
                resource.to_string(),
                Snapshot {
                    read_at_ms,
                    read_ms,
                    policy: Arc::clone(&policy),
                },
            );
            drop(g);
            if let Some(old) = replaced {
                discard(old.policy);
            }
        }
        Ok(policy)
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
        self.shared.get(resource).await
    }

    async fn list_mappings(&self) -> Result<Vec<Mapping>, StoreError> {
        self.shared.inner.list_mappings().await
    }

    async fn get_mapping(&self, name: &str) -> Result<Option<Mapping>, StoreError> {
        self.shared.inner.get_mapping(name).await
    }

    // Writes invalidate whatever their outcome: an error (a timeout, say) may still
    // have committed.
    async fn put_mapping(&self, mapping: &Mapping) -> Result<(), StoreError> {
        let r = self.shared.inner.put_mapping(mapping).await;
        self.invalidate();
        r
    }

    async fn delete_mapping(&self, name: &str) -> Result<bool, StoreError> {
        let r = self.shared.inner.delete_mapping(name).await;
        self.invalidate();
        r
    }

    async fn list_scope_claims(&self) -> Result<Vec<ScopeClaims>, StoreError> {
        self.shared.inner.list_scope_claims().await
    }

    async fn put_scope_claims(&self, row: &ScopeClaims) -> Result<(), StoreError> {
        let r = self.shared.inner.put_scope_claims(row).await;
        self.invalidate();
        r
    }

    async fn delete_scope_claims(&self, resource: &str, scope: &str) -> Result<bool, StoreError> {
        let r = self.shared.inner.delete_scope_claims(resource, scope).await;
        self.invalidate();
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.inner.ping().await
    }

    fn invalidate(&self) {
        PolicyCache::invalidate(self);
    }
}
