//! Unit tests of the in-process revocation set.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::store::RevocationChanges;

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
                signed_with: crate::signer::SigningKey {
                    kid: "k:v1".into(),
                    version: 1,
                    alg: crate::signer::SigningAlg::ES256,
                    material: 0,
                },
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

/// A real SQLite store whose `revocation_changes`, once armed, reads the store and then
/// waits to be released before answering: a refresh caught between its read and its
/// install, as one is when a revocation is created on this replica meanwhile.
struct Gated {
    inner: Arc<crate::store::SqlStore>,
    armed: std::sync::atomic::AtomicBool,
    /// `sweep_lapsed` fails while set (the write lock held elsewhere).
    fail_sweep: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl RevocationStore for Gated {
    async fn create_revocation(
        &self,
        new: &crate::store::NewRevocation,
        actor: &crate::store::Actor,
        now: u64,
    ) -> Result<Revocation, StoreError> {
        self.inner.create_revocation(new, actor, now).await
    }
    async fn lift_revocation(
        &self,
        id: &str,
        actor: &crate::store::Actor,
    ) -> Result<Revocation, StoreError> {
        self.inner.lift_revocation(id, actor).await
    }
    async fn get_revocation(&self, id: &str) -> Result<Option<Revocation>, StoreError> {
        self.inner.get_revocation(id).await
    }
    async fn revocation_version(&self) -> Result<u64, StoreError> {
        self.inner.revocation_version().await
    }
    async fn revocation_changes(&self, since: u64) -> Result<RevocationChanges, StoreError> {
        let r = self.inner.revocation_changes(since).await;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        r
    }
    async fn sweep_lapsed(&self, now: u64) -> Result<usize, StoreError> {
        if self.fail_sweep.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "timed out waiting for the write lock".into(),
            ));
        }
        self.inner.sweep_lapsed(now).await
    }
}

const X: &str = "spiffe://td/ns/shop/sa/x";

/// A set on a fresh SQLite store behind [`Gated`] (no refresh loop: the test drives
/// every refresh), holding one revocation of X created through this replica.
async fn gated_set(dir: &std::path::Path) -> (Arc<Revocations>, Arc<Gated>, Revocation, u64) {
    let cfg = crate::store::StoreConfig {
        url: format!("sqlite://{}", dir.join("r.db").display()),
        ..Default::default()
    };
    let store = Arc::new(crate::store::SqlStore::connect(&cfg, "participant").unwrap());
    store.migrate().await.unwrap();
    let gated = Arc::new(Gated {
        inner: store,
        armed: false.into(),
        fail_sweep: false.into(),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let revs = Arc::new(Revocations::new(None, None));
    assert!(revs
        .store
        .set(Arc::clone(&gated) as Arc<dyn RevocationStore>)
        .is_ok());
    let now = 1_000;
    revs.refresh(now).await.unwrap();
    let x = gated
        .create_revocation(&new_rev(X), &actor(), now)
        .await
        .unwrap();
    revs.created(x.clone());
    (revs, gated, x, now)
}

fn new_rev(matches: &str) -> crate::store::NewRevocation {
    crate::store::NewRevocation {
        target: RevocationTarget::Subject,
        matches: matches.into(),
        reason: "compromised".into(),
        until: None,
    }
}

fn actor() -> crate::store::Actor {
    crate::store::Actor {
        who: "spiffe://td/ns/ops/sa/admin".into(),
        request_id: "t".into(),
    }
}

/// Runs a refresh that reads the store, then lets `meanwhile` change this replica's
/// set (and the store) before the refresh installs what it read.
async fn refresh_around(
    revs: &Arc<Revocations>,
    gated: &Arc<Gated>,
    now: u64,
    meanwhile: impl std::future::Future<Output = ()>,
) {
    // Another replica's change: the refresh has something to read.
    gated
        .create_revocation(&new_rev("spiffe://td/ns/a/sa/other"), &actor(), now)
        .await
        .unwrap();
    gated.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = Arc::clone(revs);
    let refresh = tokio::spawn(async move { r.refresh(now).await });
    gated.entered.notified().await;
    meanwhile.await;
    gated.release.notify_one();
    refresh.await.unwrap().unwrap();
}

/// A revocation created through this replica while a refresh was between reading the
/// store and installing what it read was overwritten by that install: the replica
/// minted for the revoked subject until the next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_created_here_survives_a_refresh_that_read_the_store_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (revs, gated, _, now) = gated_set(dir.path()).await;
    const Y: &str = "spiffe://td/ns/shop/sa/y";
    refresh_around(&revs, &gated, now, async {
        let y = gated
            .create_revocation(&new_rev(Y), &actor(), now)
            .await
            .unwrap();
        revs.created(y);
        assert!(revs.current().subject(&id(Y), now).is_some());
    })
    .await;
    assert!(
        revs.current().subject(&id(Y), now).is_some(),
        "a revocation created on this replica was undone by a refresh that read the store before it"
    );
    assert!(revs.current().subject(&id(X), now).is_some());
    // The next refresh reads it from the store: still there.
    revs.refresh(now).await.unwrap();
    assert!(revs.current().subject(&id(Y), now).is_some());
}

/// The same for a lift: a stale refresh put the lifted revocation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lift_made_here_survives_a_refresh_that_read_the_store_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (revs, gated, x, now) = gated_set(dir.path()).await;
    refresh_around(&revs, &gated, now, async {
        gated.lift_revocation(&x.id, &actor()).await.unwrap();
        revs.lifted(&x.id);
        assert!(revs.current().subject(&id(X), now).is_none());
    })
    .await;
    assert!(
        revs.current().subject(&id(X), now).is_none(),
        "a lift made on this replica was undone by a refresh that read the store before it"
    );
    revs.refresh(now).await.unwrap();
    assert!(revs.current().subject(&id(X), now).is_none());
}

/// A revocation created here and lifted through another replica before a refresh here
/// read it back: the hold that protects a local write from a stale read put it back
/// over the read that showed the lift, and no later delta names it again, so this
/// replica refused the subject until it restarted.
#[tokio::test]
async fn a_revocation_created_here_and_lifted_elsewhere_before_a_refresh_is_not_enforced_after_it()
{
    let dir = tempfile::tempdir().unwrap();
    let (revs, gated, x, now) = gated_set(dir.path()).await;
    // Another replica lifts it: not through `revs`.
    gated.lift_revocation(&x.id, &actor()).await.unwrap();
    revs.refresh(now).await.unwrap();
    assert!(
        revs.current().subject(&id(X), now).is_none(),
        "a revocation lifted elsewhere was put back by this replica's own create"
    );
    // Nor does it come back with later changes.
    gated
        .create_revocation(&new_rev("spiffe://td/ns/a/sa/other"), &actor(), now)
        .await
        .unwrap();
    revs.refresh(now).await.unwrap();
    assert!(revs.current().subject(&id(X), now).is_none());
    assert_eq!(
        revs.current().version,
        gated.revocation_version().await.unwrap()
    );
}

/// A refresh whose lapse sweep failed returned before reading the store: a revocation
/// another replica created was not enforced here while the sweep kept failing (a key
/// rotation or an import holding the write lock), and the feed answered 503.
#[tokio::test]
async fn a_refresh_whose_lapse_sweep_fails_still_loads_a_revocation_created_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (revs, gated, _, now) = gated_set(dir.path()).await;
    let lapsing = crate::store::NewRevocation {
        until: Some(now + 10),
        ..new_rev("spiffe://td/ns/a/sa/lapsing")
    };
    gated
        .create_revocation(&lapsing, &actor(), now)
        .await
        .unwrap();
    revs.refresh(now).await.unwrap();
    let later = now + 20;
    assert!(revs.current().lapse_due(later));
    gated
        .fail_sweep
        .store(true, std::sync::atomic::Ordering::SeqCst);
    const Y: &str = "spiffe://td/ns/shop/sa/y";
    gated
        .create_revocation(&new_rev(Y), &actor(), later)
        .await
        .unwrap();
    revs.refresh(later)
        .await
        .expect("a failed sweep is no failed read");
    assert!(
        revs.current().subject(&id(Y), later).is_some(),
        "a revocation created elsewhere was not loaded while the sweep failed"
    );
    // The sweep runs once the store takes writes again.
    gated
        .fail_sweep
        .store(false, std::sync::atomic::Ordering::SeqCst);
    revs.refresh(later + SWEEP_RETRY.as_secs() + 1)
        .await
        .unwrap();
    assert!(!revs.current().lapse_due(later + SWEEP_RETRY.as_secs() + 1));
}
