//! Revocations in this process (issue #16): the set the token endpoint enforces, kept
//! in memory and refreshed cheaply from the store, and the feed the filters poll
//! ([`feed`]).
//!
//! Freshness:
//! - a revocation created or lifted through THIS replica's management API is applied
//!   to the set (and its cached tokens and verified subjects dropped) before the API
//!   answers, so the very next exchange enforces it;
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
use crate::store::{Revocation, RevocationChanges, RevocationStore, RevocationTarget, StoreError};
use crate::subject_cache::SubjectCache;

/// How often the store's version is checked.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

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
        }
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
    /// when the version moved.
    pub async fn refresh(&self, now: u64) -> Result<(), StoreError> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let _one = self.refreshing.lock().await;
        if self.current().lapse_due(now) {
            store.sweep_lapsed(now).await?;
        }
        let version = store.revocation_version().await?;
        if version == self.current().version {
            return Ok(());
        }
        // A delta from this set's version (a snapshot when the log no longer reaches it).
        let current = self.current();
        let changes = store.revocation_changes(current.version).await?;
        if changes.full {
            self.load(changes);
        } else {
            tracing::info!(
                version = changes.version,
                added = changes.added.len(),
                removed = changes.removed.len(),
                "revocation set updated"
            );
            self.install(current.with(changes.version, changes.added, &changes.removed));
        }
        Ok(())
    }

    fn load(&self, changes: RevocationChanges) {
        if changes.version != self.current().version {
            tracing::info!(
                version = changes.version,
                entries = changes.added.len(),
                "revocation set updated"
            );
        }
        self.install(RevocationSet::build(changes.version, changes.added));
    }

    /// Applies a revocation created through this process at once (the refresh
    /// confirms it from the store).
    pub fn created(&self, rev: Revocation) {
        let current = self.current();
        let set = current.with(current.version, vec![rev], &[]);
        self.install(set);
    }

    /// Applies a lift made through this process at once.
    pub fn lifted(&self, id: &str) {
        let current = self.current();
        let set = current.with(current.version, Vec::new(), &[id.to_string()]);
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rev(id: &str, target: RevocationTarget, matches: &str, until: Option<u64>) -> Revocation {
        Revocation {
            id: id.into(),
            target,
            matches: matches.into(),
            reason: format!("reason {id}"),
            until,
            created_at: 1,
            created_by: "spiffe://td/ns/ops/sa/admin".into(),
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn subjects_match_exactly_or_by_pattern_and_targets_stay_apart() {
        let set = RevocationSet::build(
            3,
            vec![
                rev(
                    "a",
                    RevocationTarget::Subject,
                    "spiffe://td/ns/shop/*",
                    None,
                ),
                rev(
                    "b",
                    RevocationTarget::Caller,
                    "spiffe://td/ns/edge/sa/gw",
                    None,
                ),
                rev("c", RevocationTarget::Jti, "jti-1", None),
            ],
        );
        assert_eq!(
            set.subject(&id("spiffe://td/ns/shop/sa/web"), 10)
                .unwrap()
                .id,
            "a"
        );
        assert!(set
            .subject(&id("spiffe://td/ns/other/sa/web"), 10)
            .is_none());
        assert!(set.subject(&id("spiffe://td/ns/edge/sa/gw"), 10).is_none());
        assert_eq!(
            set.caller(&id("spiffe://td/ns/edge/sa/gw"), 10).unwrap().id,
            "b"
        );
        assert!(set.caller(&id("spiffe://td/ns/shop/sa/web"), 10).is_none());
        assert_eq!(set.jti("jti-1", 10).unwrap().id, "c");
        assert!(set.jti("jti-2", 10).is_none());
    }

    #[test]
    fn an_entry_past_its_until_no_longer_applies_and_makes_a_sweep_due() {
        let set = RevocationSet::build(1, vec![rev("a", RevocationTarget::Jti, "j", Some(100))]);
        assert!(set.jti("j", 99).is_some());
        assert!(!set.lapse_due(99));
        assert!(set.jti("j", 100).is_none());
        assert!(set.lapse_due(100));
        assert!(set.active(100).is_empty());
    }

    #[test]
    fn a_jti_revoked_twice_stays_revoked_while_either_revocation_is_in_force() {
        // Nothing makes a jti unique in the store: revoked for good, then for a while.
        for order in [["forever", "for-a-while"], ["for-a-while", "forever"]] {
            let revs = order
                .iter()
                .map(|name| {
                    let until = (*name == "for-a-while").then_some(1_000);
                    rev(name, RevocationTarget::Jti, "jti-1", until)
                })
                .collect();
            let set = RevocationSet::build(2, revs);
            assert!(set.jti("jti-1", 500).is_some(), "{order:?}");
            assert_eq!(
                set.jti("jti-1", 2_000).map(|r| r.id.as_str()),
                Some("forever"),
                "{order:?}: the lapsed one hid the one in force"
            );
        }
    }

    #[test]
    fn local_writes_apply_on_top_of_the_version_without_duplicates() {
        let set = RevocationSet::build(5, vec![rev("a", RevocationTarget::Jti, "j", None)]);
        let added = set.with(5, vec![rev("a", RevocationTarget::Jti, "j", None)], &[]);
        assert_eq!((added.version, added.active(0).len()), (5, 1));
        let lifted = added.with(5, Vec::new(), &["a".to_string()]);
        assert!(lifted.is_empty());
    }

    #[test]
    fn a_delta_adds_lifts_and_moves_to_its_version() {
        let set = RevocationSet::build(
            5,
            vec![
                rev("a", RevocationTarget::Jti, "j", None),
                rev("b", RevocationTarget::Jti, "k", None),
            ],
        );
        let next = set.with(
            7,
            vec![rev("c", RevocationTarget::Jti, "l", None)],
            &["a".to_string(), "gone-before".to_string()],
        );
        assert_eq!(next.version, 7);
        assert!(next.jti("j", 0).is_none());
        assert!(next.jti("k", 0).is_some() && next.jti("l", 0).is_some());
    }

    #[test]
    fn a_new_entry_drops_the_cached_tokens_it_covers() {
        let tokens = Arc::new(TokenCache::new(16, 0.5));
        let put = |n: u8, rate_key: &str, jti: &str, actor: Option<&str>| {
            let req = meshpass_core::oauth::TokenExchangeRequest::parse_form(
                format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=t{n}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&resource=r"
                )
                .as_bytes(),
            )
            .unwrap();
            tokens.insert(
                crate::cache::CacheKey::of(&req, ""),
                Arc::new(CachedToken {
                    access_token: "x".into(),
                    scope: None,
                    issued_at: 10,
                    expires_at: 1000,
                    rate_key: rate_key.into(),
                    mapping: "m".into(),
                    resource: "r".into(),
                    rate_limit: None,
                    jti: jti.into(),
                    actors: actor.map(Arc::from).into_iter().collect(),
                    body: crate::cache::AnswerBody::new("x", None),
                    cached_counter: None,
                    key_generation: 0.into(),
                }),
                10,
            );
        };
        put(
            1,
            "spiffe://td/ns/shop/sa/web spiffe://td/ns/shop/sa/web",
            "j1",
            None,
        );
        put(
            2,
            "spiffe://td/ns/edge/sa/gw spiffe://td/ns/app/sa/api",
            "j2",
            None,
        );
        put(
            3,
            "spiffe://td/ns/app/sa/x spiffe://td/ns/app/sa/x",
            "j3",
            None,
        );
        // Acted for by a workload of ns/shop: goes with the shop subjects.
        put(
            4,
            "spiffe://td/ns/app/sa/y spiffe://td/ns/app/sa/y",
            "j4",
            Some("spiffe://td/ns/shop/sa/batch"),
        );
        let revs = Revocations::new(Some(Arc::clone(&tokens)), None);
        revs.created(rev(
            "a",
            RevocationTarget::Subject,
            "spiffe://td/ns/shop/*",
            None,
        ));
        assert_eq!(tokens.len(), 2);
        revs.created(rev(
            "b",
            RevocationTarget::Caller,
            "spiffe://td/ns/edge/sa/gw",
            None,
        ));
        assert_eq!(tokens.len(), 1);
        revs.created(rev("c", RevocationTarget::Jti, "j3", None));
        assert!(tokens.is_empty());
    }
}
