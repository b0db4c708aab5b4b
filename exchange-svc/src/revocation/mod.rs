//! Revocations in this process (issue #16): the set the token endpoint enforces, kept
//! in memory and refreshed cheaply from the store, and the feed the filters poll
//! ([`feed`]).
//!
//! Freshness:
//! - a revocation created or lifted through THIS replica's management API is applied
//!   to the set (and its cached tokens and verified subjects dropped) before the API
//!   answers, so the very next exchange enforces it, and re-applied over any refresh
//!   that read the store before it committed;
//! - other replicas' changes arrive with the refresh: once a second one small read of
//!   the store's version, and a reload only when it changed (no query per exchange);
//! - a lapsed entry (`until` passed) is ignored by the checks at once; the refresh
//!   sweeps it from the store (a version bump) so the feed reports it removed.

pub mod feed;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use axum::body::Bytes;
use meshpass_core::{SpiffeId, SpiffeIdPattern, VerifiedSubject};

use crate::cache::{CachedToken, TokenCache};
use crate::clock::Clock;
use crate::store::{Revocation, RevocationStore, RevocationTarget, StoreError};
use crate::subject_cache::SubjectCache;

/// How often the store's version is checked.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a failed lapse sweep the next one is tried: a sweep waits for the
/// write lock, which a key rotation or an import may hold for seconds, and the feed's
/// polls must not queue behind it every time.
const SWEEP_RETRY: Duration = Duration::from_secs(5);

/// Most memoised feed answers (one per distinct `since` at the current version).
const MAX_MEMO: usize = 4096;
/// Most bytes of memoised feed answers: deltas from old `since`s can be nearly
/// snapshot-sized, and the log reaches back 10,000 versions.
const MAX_MEMO_BYTES: usize = 32 << 20;

#[derive(Clone)]
struct Entry {
    rev: Revocation,
    /// Subject and caller entries: the parsed pattern (exact IDs are patterns too).
    pattern: Option<SpiffeIdPattern>,
}

impl Entry {
    fn new(rev: Revocation) -> Self {
        let pattern = match rev.target {
            RevocationTarget::Subject | RevocationTarget::Caller => {
                SpiffeIdPattern::parse(&rev.matches).ok()
            }
            RevocationTarget::Jti => None,
        };
        if pattern.is_none() && rev.target != RevocationTarget::Jti {
            tracing::warn!(id = %rev.id, "stored revocation has an invalid pattern; ignored");
        }
        Entry { rev, pattern }
    }

    fn hits(&self, target: RevocationTarget, id: &SpiffeId, now: u64) -> bool {
        self.rev.target == target
            && self.rev.active_at(now)
            && self.pattern.as_ref().is_some_and(|p| p.matches(id))
    }
}

/// One version of the revocation set.
pub struct RevocationSet {
    /// The store version it reflects (local writes may be applied on top).
    pub version: u64,
    entries: Vec<Entry>,
    /// Every entry revoking each `jti` (one may be revoked more than once, with
    /// different `until`s).
    jtis: HashMap<String, Vec<usize>>,
    earliest_until: Option<u64>,
}

impl RevocationSet {
    fn build(version: u64, revs: Vec<Revocation>) -> Self {
        Self::of_entries(version, revs.into_iter().map(Entry::new).collect())
    }

    fn of_entries(version: u64, entries: Vec<Entry>) -> Self {
        let mut jtis: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.rev.target == RevocationTarget::Jti {
                jtis.entry(e.rev.matches.clone()).or_default().push(i);
            }
        }
        let earliest_until = entries.iter().filter_map(|e| e.rev.until).min();
        RevocationSet {
            version,
            entries,
            jtis,
            earliest_until,
        }
    }

    fn empty() -> Self {
        Self::build(0, Vec::new())
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The revocation covering subject `id` at `now`.
    pub fn subject(&self, id: &SpiffeId, now: u64) -> Option<&Revocation> {
        self.find(RevocationTarget::Subject, id, now)
    }

    /// The revocation covering caller `id` at `now`.
    pub fn caller(&self, id: &SpiffeId, now: u64) -> Option<&Revocation> {
        self.find(RevocationTarget::Caller, id, now)
    }

    /// The revocation of the participant token `jti` at `now`.
    pub fn jti(&self, jti: &str, now: u64) -> Option<&Revocation> {
        self.jtis
            .get(jti)?
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .find(|e| e.rev.active_at(now))
            .map(|e| &e.rev)
    }

    fn find(&self, target: RevocationTarget, id: &SpiffeId, now: u64) -> Option<&Revocation> {
        self.entries
            .iter()
            .find(|e| e.hits(target, id, now))
            .map(|e| &e.rev)
    }

    /// Whether some entry's `until` has passed at `now` (a sweep is due).
    pub fn lapse_due(&self, now: u64) -> bool {
        self.earliest_until.is_some_and(|u| u <= now)
    }

    /// The active entries at `now`.
    pub fn active(&self, now: u64) -> Vec<Revocation> {
        self.entries
            .iter()
            .filter(|e| e.rev.active_at(now))
            .map(|e| e.rev.clone())
            .collect()
    }

    /// This set at `version` with `add` added (replacing entries of the same id) and
    /// the ids in `lift` gone.
    fn with(&self, version: u64, add: Vec<Revocation>, lift: &[String]) -> Self {
        let gone: HashSet<&str> = lift
            .iter()
            .map(String::as_str)
            .chain(add.iter().map(|a| a.id.as_str()))
            .collect();
        // The kept entries keep their parsed patterns: only the new ones are parsed.
        let mut entries: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| !gone.contains(e.rev.id.as_str()))
            .cloned()
            .collect();
        entries.extend(add.into_iter().map(Entry::new));
        Self::of_entries(version, entries)
    }
}

/// The process's revocation state: the set, the store it comes from, the caches it
/// empties, and the memoised feed answers.
pub struct Revocations {
    store: OnceLock<Arc<dyn RevocationStore>>,
    current: RwLock<Arc<RevocationSet>>,
    refreshing: tokio::sync::Mutex<()>,
    tokens: Option<Arc<TokenCache>>,
    subjects: Option<Arc<SubjectCache>>,
    /// `since` → (version, body) of answers at the current version.
    memo: Mutex<HashMap<u64, (u64, Bytes)>>,
    /// This replica's own creates and lifts not yet covered by a read of the store: a
    /// refresh that read the store before one committed would otherwise undo it when it
    /// installs. Held across every install, so none interleaves.
    local: Mutex<Vec<Local>>,
    /// Numbers the local writes; a refresh notes it before reading the store.
    local_seq: std::sync::atomic::AtomicU64,
    /// Unix time before which a failed lapse sweep is not tried again.
    sweep_retry_at: std::sync::atomic::AtomicU64,
    /// Whether a read of the attached store has succeeded once: until then the empty
    /// set says nothing (a replica that started with its store down must not take it for
    /// "nothing is revoked").
    loaded: std::sync::atomic::AtomicBool,
}

/// A create or lift made through this replica, applied after its commit.
struct Local {
    /// Its number in `local_seq`: a read that began after it was applied began after
    /// the commit, so shows the store's truth about it, whatever another replica did
    /// since (a revocation created here may already be lifted there).
    seq: u64,
    add: Option<Revocation>,
    lift: Option<String>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("attached", &self.store.get().is_some())
            .field("version", &self.current().version)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// An empty set, not yet attached to a store; `tokens` and `subjects` are the
    /// caches whose entries of a revoked party are dropped.
    pub fn new(tokens: Option<Arc<TokenCache>>, subjects: Option<Arc<SubjectCache>>) -> Self {
        Revocations {
            store: OnceLock::new(),
            current: RwLock::new(Arc::new(RevocationSet::empty())),
            refreshing: tokio::sync::Mutex::new(()),
            tokens,
            subjects,
            memo: Mutex::new(HashMap::new()),
            local: Mutex::new(Vec::new()),
            local_seq: std::sync::atomic::AtomicU64::new(0),
            sweep_retry_at: std::sync::atomic::AtomicU64::new(0),
            loaded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether [`Self::current`] can be trusted: a store is attached and was read once,
    /// or none is attached (nothing can revoke). Checked before every use of the set
    /// that would say "not revoked": `/token`, introspection, management callers.
    pub fn loaded(&self) -> bool {
        self.store.get().is_none() || self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Attaches the store (first caller wins: `serve` attaches before the management
    /// API, which attaches the plain SQL store only when nothing else was), loads the
    /// set once and starts the refresh task. Returns whether this call attached it.
    pub async fn attach(
        self: &Arc<Self>,
        store: Arc<dyn RevocationStore>,
        clock: Arc<dyn Clock>,
    ) -> bool {
        if self.store.set(store).is_err() {
            return false;
        }
        if let Err(e) = self.refresh(clock.now()).await {
            tracing::warn!(error = %e, "revocations not loaded yet; retrying every second");
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(REFRESH_INTERVAL).await;
                let Some(me) = weak.upgrade() else { break };
                match me.refresh(clock.now()).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("revocation refresh recovered");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "revocation refresh failed; enforcing the last set");
                    }
                    Err(_) => {}
                }
            }
        });
        true
    }

    /// The attached store.
    pub fn store(&self) -> Option<&Arc<dyn RevocationStore>> {
        self.store.get()
    }

    /// The current set (cheap: an `Arc` clone under a read lock).
    pub fn current(&self) -> Arc<RevocationSet> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn install(&self, set: RevocationSet) {
        let old = self.current();
        let known: HashSet<&str> = old.entries.iter().map(|e| e.rev.id.as_str()).collect();
        for e in &set.entries {
            if !known.contains(e.rev.id.as_str()) {
                self.drop_cached(e);
            }
        }
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
        if let Ok(mut m) = self.memo.lock() {
            m.clear();
        }
    }

    /// Reads the store: sweeps lapsed entries when one is due, then reloads the set
    /// when the version moved. A failed sweep is no failed refresh: a lapsed entry is
    /// enforced nowhere already (`active_at`), and the read must still bring in what
    /// other replicas wrote.
    pub async fn refresh(&self, now: u64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let _one = self.refreshing.lock().await;
        let started = self.local_seq.load(Ordering::Acquire);
        if self.current().lapse_due(now) && now >= self.sweep_retry_at.load(Ordering::Relaxed) {
            if let Err(e) = store.sweep_lapsed(now).await {
                self.sweep_retry_at
                    .store(now.saturating_add(SWEEP_RETRY.as_secs()), Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in_secs = SWEEP_RETRY.as_secs(),
                    "lapsed revocations not swept (no longer enforced all the same); trying again");
            }
        }
        let version = store.revocation_version().await?;
        if version == self.current().version {
            self.loaded
                .store(true, std::sync::atomic::Ordering::Release);
            return Ok(());
        }
        // A delta from this set's version (a snapshot when the log no longer reaches it).
        let current = self.current();
        let changes = store.revocation_changes(current.version).await?;
        tracing::info!(
            version = changes.version,
            added = changes.added.len(),
            removed = changes.removed.len(),
            snapshot = changes.full,
            "revocation set updated"
        );
        let read = if changes.full {
            RevocationSet::build(changes.version, changes.added)
        } else {
            current.with(changes.version, changes.added, &changes.removed)
        };
        self.install_read(read, started);
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Installs a set read from the store by a refresh that began at `started` (of
    /// `local_seq`), with this replica's own writes applied after that on top.
    fn install_read(&self, read: RevocationSet, started: u64) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.retain(|l| l.seq > started);
        let add: Vec<Revocation> = local.iter().filter_map(|l| l.add.clone()).collect();
        let lift: Vec<String> = local.iter().filter_map(|l| l.lift.clone()).collect();
        let set = if add.is_empty() && lift.is_empty() {
            read
        } else {
            read.with(read.version, add, &lift)
        };
        self.install(set);
    }

    /// Applies a revocation created through this process at once (held over the
    /// refreshes that read the store before it).
    pub fn created(&self, rev: Revocation) {
        self.apply_local(Local {
            seq: 0,
            add: Some(rev),
            lift: None,
        });
    }

    /// Applies a lift made through this process at once (likewise held).
    pub fn lifted(&self, id: &str) {
        self.apply_local(Local {
            seq: 0,
            add: None,
            lift: Some(id.to_string()),
        });
    }

    fn apply_local(&self, mut l: Local) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        l.seq = self
            .local_seq
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            .saturating_add(1);
        let current = self.current();
        let lift: Vec<String> = l.lift.iter().cloned().collect();
        let set = current.with(current.version, l.add.iter().cloned().collect(), &lift);
        // A later write of the same id replaces an earlier one (create, then lift).
        let id = l
            .add
            .as_ref()
            .map(|r| r.id.clone())
            .or_else(|| l.lift.clone());
        local.retain(|o| o.add.as_ref().map(|r| &r.id).or(o.lift.as_ref()) != id.as_ref());
        local.push(l);
        self.install(set);
    }

    /// Drops the cached tokens and verified subjects `e` covers.
    fn drop_cached(&self, e: &Entry) {
        let hits_token = |t: &CachedToken| -> bool {
            let (caller, subject) = t.rate_key.split_once(' ').unwrap_or(("", &t.rate_key));
            let id = |s: &str| SpiffeId::parse(s).ok();
            match (e.rev.target, &e.pattern) {
                (RevocationTarget::Jti, _) => *t.jti == *e.rev.matches,
                (RevocationTarget::Subject, Some(p)) => {
                    let hit = |x: &str| id(x).is_some_and(|s| p.matches(&s));
                    hit(subject) || t.actors.iter().any(|a| hit(a))
                }
                (RevocationTarget::Caller, Some(p)) => id(caller).is_some_and(|c| p.matches(&c)),
                (_, None) => false,
            }
        };
        if let Some(c) = &self.tokens {
            let n = c.remove_where(hits_token);
            if n > 0 {
                tracing::info!(revocation = %e.rev.id, dropped = n, "cached tokens of a revoked party dropped");
            }
        }
        if let (Some(c), RevocationTarget::Subject, Some(p)) =
            (&self.subjects, e.rev.target, &e.pattern)
        {
            c.remove_where(|s: &VerifiedSubject| p.matches(&s.spiffe_id));
        }
    }

    /// A memoised feed answer for `since` at `version`.
    fn memo_get(&self, since: u64, version: u64) -> Option<Bytes> {
        let m = self.memo.lock().ok()?;
        m.get(&since)
            .filter(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    fn memo_put(&self, since: u64, version: u64, body: Bytes) {
        if let Ok(mut m) = self.memo.lock() {
            let held: usize = m.values().map(|(_, b)| b.len()).sum();
            if m.len() >= MAX_MEMO || held + body.len() > MAX_MEMO_BYTES {
                m.clear();
            }
            m.insert(since, (version, body));
        }
    }

    /// Bytes held by memoised feed answers.
    pub fn memo_bytes(&self) -> usize {
        self.memo
            .lock()
            .map(|m| m.values().map(|(_, b)| b.len()).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
