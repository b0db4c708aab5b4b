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
//! Revalidation (with [`PolicyCache::with_max_age_secs`] above the TTL, and a store
//! that keeps a change version: [`MappingStore::policy_version`]): a read takes the
//! version first, then the rows. When the snapshot is due again, the cache reads only
//! the version; unchanged, no write committed since the rows were read, so the snapshot
//! is current as of that check and lives another TTL from the check's start. A check
//! is made only while the confirmed snapshot would not serve its rows past `max_age`;
//! after that a refresh reads the rows again, which bounds writes that bypass the
//! version (direct SQL). So a resource of 100,000 mappings is read whole when something
//! changed or every `max_age`, not every TTL. For every write that moves the version
//! the staleness bound is still the TTL: a check is timed from its start, and a failed
//! one serves nothing past the TTL.
//!
//! Resources without mappings are not cached (they are the error path, and caching them
//! would let requests for made-up resource names fill the cache).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;

use super::{Mapping, MappingStore, ResourcePolicy, ScopeClaims, StoreError};
use crate::clock::Clock;
use crate::metrics::{Metrics, MetricsError};

/// `meshpass_policy_snapshot_refreshes_total`, by outcome.
const REFRESHES: &str = "meshpass_policy_snapshot_refreshes_total";

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

#[derive(Clone)]
struct Snapshot {
    /// Service clock (ms) when it was last known current: the start of its read, or of
    /// the version check that confirmed it. Its TTL counts from here.
    checked_at_ms: u64,
    /// When the read of its rows started (a check does not move this): `max_age`
    /// counts from here.
    read_at_ms: u64,
    /// How long that read took (ms): sets how early the next one starts.
    read_ms: u64,
    /// How long the last version check took (ms; 0 before the first).
    check_ms: u64,
    /// The store's change version, read just before the rows (`None`: the store keeps
    /// none, and every refresh reads the rows).
    version: Option<i64>,
    policy: Arc<ResourcePolicy>,
}

/// The outcome of one refresh: a new snapshot, or the old one confirmed.
type Loaded = Result<Snapshot, StoreError>;

/// A refresh in flight, shared by every exchange that needs the resource meanwhile.
type Load = Arc<tokio::sync::OnceCell<Loaded>>;

/// What a refresh does.
enum Refresh {
    /// Read the version, then the rows.
    Read,
    /// Read the version; the rows only if it moved.
    Check(Snapshot),
}

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
    /// Longest a snapshot's rows are served, checks included (at least `ttl_ms`; equal:
    /// every refresh reads the rows).
    max_age_ms: u64,
    state: Mutex<State>,
    /// Refreshes by outcome (`confirmed`, `read`, `failed`), once registered.
    refreshes: OnceLock<prometheus::IntCounterVec>,
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
    /// Caches the resource policies of `inner` for `ttl_secs` seconds of `clock`, each
    /// refresh a read of the rows (no revalidation: see [`Self::with_max_age_secs`]).
    pub fn new(inner: Arc<dyn MappingStore>, clock: Arc<dyn Clock>, ttl_secs: u64) -> Self {
        let ttl_ms = ttl_secs.saturating_mul(1000);
        PolicyCache {
            shared: Arc::new(Shared {
                inner,
                clock,
                ttl_ms,
                max_age_ms: ttl_ms,
                state: Mutex::new(State::default()),
                refreshes: OnceLock::new(),
            }),
        }
    }

    /// Lets a snapshot whose store's change version has not moved be confirmed by a
    /// version check instead of a read, until its rows are `max_age_secs` old (at
    /// least the TTL; equal to it: no revalidation). Call before sharing the cache.
    pub fn with_max_age_secs(mut self, max_age_secs: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.max_age_ms = max_age_secs.saturating_mul(1000).max(shared.ttl_ms);
        }
        self
    }

    /// Registers `meshpass_policy_snapshot_refreshes_total{outcome}`: refreshes
    /// `confirmed` by an unchanged change version, that `read` the rows, and that
    /// `failed` (the store did not answer).
    pub fn register_metrics(&self, metrics: &Metrics) -> Result<(), MetricsError> {
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                REFRESHES,
                "Policy snapshot refreshes: confirmed by the change version, rows read, or failed.",
            ),
            &["outcome"],
        )?;
        metrics.register(Box::new(counter.clone()))?;
        // Registered twice: the registry refused the second already.
        let _ = self.shared.refreshes.set(counter);
        Ok(())
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

    /// Time since `since_ms`; `None` when the clock went backwards (that ends a
    /// snapshot's life rather than stretching it).
    fn elapsed(since_ms: u64, now_ms: u64) -> Option<u64> {
        now_ms.checked_sub(since_ms)
    }

    fn fresh(&self, s: &Snapshot, now_ms: u64) -> bool {
        Self::elapsed(s.checked_at_ms, now_ms).is_some_and(|a| a < self.ttl_ms)
    }

    /// Whether refreshing `s` at `now_ms` is a check: the store keeps a version, and a
    /// confirmed snapshot would not serve its rows past `max_age` (else a read).
    fn check_suffices(&self, s: &Snapshot, now_ms: u64) -> bool {
        s.version.is_some()
            && Self::elapsed(s.read_at_ms, now_ms)
                .is_some_and(|a| a.saturating_add(self.ttl_ms) <= self.max_age_ms)
    }

    fn next_refresh(&self, s: &Snapshot, now_ms: u64) -> Refresh {
        if self.check_suffices(s, now_ms) {
            Refresh::Check(s.clone())
        } else {
            Refresh::Read
        }
    }

    /// Whether the fresh snapshot `s` is close enough to expiry to start its refresh in
    /// the background: from `max(200 ms, 2 × what that refresh took last)` before it,
    /// but not before the snapshot is twice that old (the store is then at most half
    /// busy with one resource, and reads never run back to back).
    fn due(&self, s: &Snapshot, now_ms: u64) -> bool {
        let took = if self.check_suffices(s, now_ms) {
            s.check_ms
        } else {
            s.read_ms
        };
        let twice = took.saturating_mul(2);
        let start = self
            .ttl_ms
            .saturating_sub(twice.max(MIN_REFRESH_LEAD_MS))
            .max(twice);
        Self::elapsed(s.checked_at_ms, now_ms).is_some_and(|a| a >= start)
    }

    async fn get(self: &Arc<Self>, resource: &str) -> Result<Arc<ResourcePolicy>, StoreError> {
        let now = self.clock.now_ms();
        let (generation, load, refresh) = {
            let mut g = self.lock();
            let mut refresh = Refresh::Read;
            if let Some(s) = g.entries.get(resource) {
                if self.fresh(s, now) {
                    let policy = Arc::clone(&s.policy);
                    if self.due(s, now) && !g.loading.contains_key(resource) {
                        let refresh = self.next_refresh(s, now);
                        self.refresh_in_background(&mut g, resource, refresh);
                    }
                    return Ok(policy);
                }
                refresh = self.next_refresh(s, now);
            }
            if g.loading.len() >= MAX_ENTRIES {
                // Reads whose callers all went away (made-up resource names, say).
                g.loading.retain(|_, l| Arc::strong_count(l) > 1);
            }
            let load = Arc::clone(g.loading.entry(resource.to_string()).or_default());
            (g.generation, load, refresh)
        };
        self.read(resource, generation, load, refresh).await
    }

    /// Starts one read of `resource` that no exchange waits for (unless its snapshot
    /// expires meanwhile: an exchange then joins it like any read in flight).
    fn refresh_in_background(self: &Arc<Self>, g: &mut State, resource: &str, refresh: Refresh) {
        // Outside a runtime (never in the service) the snapshot simply expires.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let load = Arc::clone(g.loading.entry(resource.to_string()).or_default());
        let generation = g.generation;
        let shared = Arc::clone(self);
        let resource = resource.to_string();
        rt.spawn(async move {
            if let Err(e) = shared.read(&resource, generation, load, refresh).await {
                tracing::warn!(
                    resource = %resource,
                    error = %e,
                    "refreshing a policy snapshot ahead of its expiry failed; it is served until its TTL, then the store is asked again"
                );
            }
        });
    }

    /// Runs `refresh` and counts its outcome.
    async fn load(&self, resource: &str, refresh: Refresh) -> Loaded {
        let loaded = self.refresh(resource, refresh).await;
        if let Some(c) = self.refreshes.get() {
            let outcome = match &loaded {
                Ok((_, true)) => "confirmed",
                Ok((_, false)) => "read",
                Err(_) => "failed",
            };
            c.with_label_values(&[outcome]).inc();
        }
        loaded.map(|(snapshot, _)| snapshot)
    }

    /// A check first when `refresh` has a snapshot to confirm, then (if the version
    /// moved, or there is none) the version and the rows.
    /// Also says whether the snapshot was confirmed (its rows not read).
    async fn refresh(
        &self,
        resource: &str,
        refresh: Refresh,
    ) -> Result<(Snapshot, bool), StoreError> {
        let mut check_ms = 0;
        let mut version = None;
        if let Refresh::Check(old) = refresh {
            let at = self.clock.now_ms();
            let started = Instant::now();
            version = self.inner.policy_version().await?;
            check_ms = millis(started);
            if version.is_some() && version == old.version {
                let confirmed = Snapshot {
                    checked_at_ms: at,
                    check_ms,
                    ..old
                };
                return Ok((confirmed, true));
            }
            // Moved: the rows are read below. The old snapshot may be the last copy
            // (dropped from the cache meanwhile): freed like a replaced one.
            discard(old.policy);
        }
        let read_at_ms = self.clock.now_ms();
        let started = Instant::now();
        // The version before the rows: a write between the two makes the snapshot
        // newer than its version says (the next check reads again), never older.
        if version.is_none() {
            version = self.inner.policy_version().await?;
        }
        let policy = self.inner.resource_policy(resource).await?;
        let read = Snapshot {
            checked_at_ms: read_at_ms,
            read_at_ms,
            read_ms: millis(started),
            check_ms,
            version,
            policy: Arc::new(policy),
        };
        Ok((read, false))
    }

    /// Runs (or joins) the refresh `load` and caches its outcome unless a write came
    /// after it started.
    async fn read(
        &self,
        resource: &str,
        generation: u64,
        load: Load,
        refresh: Refresh,
    ) -> Result<Arc<ResourcePolicy>, StoreError> {
        // If the caller running the refresh is cancelled, the next waiter runs it (the
        // refresh it was given is then a fresh read: safe, just not the cheaper check).
        let mut refresh = Some(refresh);
        let loaded = load
            .get_or_init(|| self.load(resource, refresh.take().unwrap_or(Refresh::Read)))
            .await
            .clone();
        let mut g = self.lock();
        if g.loading
            .get(resource)
            .is_some_and(|l| Arc::ptr_eq(l, &load))
        {
            g.loading.remove(resource);
        }
        let snapshot = loaded?;
        let policy = Arc::clone(&snapshot.policy);
        if !policy.mappings.is_empty() && g.generation == generation {
            if g.entries.len() >= MAX_ENTRIES {
                let now = self.clock.now_ms();
                g.entries.retain(|_, s| self.fresh(s, now));
                if g.entries.len() >= MAX_ENTRIES {
                    g.entries.clear();
                }
            }
            let replaced = g.entries.insert(resource.to_string(), snapshot);
            drop(g);
            if let Some(old) = replaced {
                discard(old.policy);
            }
        }
        Ok(policy)
    }
}

/// Milliseconds since `started`.
fn millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
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

    async fn audit_seeded(&self, before: &Mapping, after: &Mapping) -> Result<(), StoreError> {
        self.shared.inner.audit_seeded(before, after).await
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

    async fn policy_version(&self) -> Result<Option<i64>, StoreError> {
        self.shared.inner.policy_version().await
    }

    fn invalidate(&self) {
        PolicyCache::invalidate(self);
    }
}
