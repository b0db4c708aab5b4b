//! Key maintenance by one replica at a time (a PostgreSQL advisory lock around rotation
//! and retirement), and every replica serving the same JWKS: a rotation through one
//! replica reaches the others through the change feed, long before their own
//! `key_refresh_interval` (an hour here). Real PostgreSQL and OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod vault_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use common::*;
use meshpass_exchange::change_feed::ChangeFeed;
use meshpass_exchange::clock::{Clock as _, SystemClock};
use meshpass_exchange::key_maintenance::LockedKeyAdmin;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::{Dependency, KeyAdmin, KeyStatus, MgmtError};
use meshpass_exchange::server::{spawn_key_reload, start_change_feed, AbortOnDrop};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{Actor, AuditRecord, MappingStore, SqlStore, StoreConfig};
use meshpass_exchange::vault::TransitSigner;
use meshpass_exchange::AppState;
use meshpass_testkit::Postgres;

async fn open(url: &str) -> Arc<SqlStore> {
    let cfg = StoreConfig {
        url: url.into(),
        max_connections: 2,
        ..StoreConfig::default()
    };
    let s = Arc::new(SqlStore::connect(&cfg, "participant").unwrap());
    s.migrate().await.unwrap();
    s
}

fn audit_record() -> AuditRecord {
    AuditRecord {
        request_id: "r-1".into(),
        actor: "spiffe://cluster.local/ns/ops/sa/admin".into(),
        action: "keys.rotate".into(),
        target: "keys/mp".into(),
        before: None,
        after: None,
        reason: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_maintenance_on_two_replicas_never_overlaps_and_bumps_the_change_version() {
    let db = Postgres::fresh_database();
    let (a, b) = (open(&db.url()).await, open(&db.url()).await);
    let before = a.change_version().await.unwrap();
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let op = |store: Arc<SqlStore>, spans: Arc<Mutex<Vec<(Instant, Instant)>>>| async move {
        store
            .with_maintenance_lock(async {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                spans.lock().unwrap().push((start, Instant::now()));
                Ok::<_, MgmtError>(((), audit_record()))
            })
            .await
    };
    let (ra, rb) = tokio::join!(op(a.clone(), spans.clone()), op(b.clone(), spans.clone()));
    ra.unwrap();
    rb.unwrap();
    let mut s = spans.lock().unwrap().clone();
    s.sort();
    assert_eq!(s.len(), 2);
    assert!(
        s[0].1 <= s[1].0,
        "the two maintenance runs overlapped: {s:?}"
    );
    // Two bumps (versions increase by one at least, jumping to the clock in ms).
    let after = b.change_version().await.unwrap();
    assert!(after >= before + 2, "{before} → {after}");
    // A failed operation changes nothing.
    let r = a
        .with_maintenance_lock(async {
            Err::<((), AuditRecord), MgmtError>(MgmtError::Unavailable(
                meshpass_exchange::mgmt::Dependency::Vault,
            ))
        })
        .await;
    assert!(r.is_err());
    assert_eq!(a.change_version().await.unwrap(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_maintenance_skips_at_once_while_another_replica_holds_the_lock() {
    let db = Postgres::fresh_database();
    let (a, b) = (open(&db.url()).await, open(&db.url()).await);
    let before = a.change_version().await.unwrap();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        a.with_maintenance_lock(async {
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
            Ok::<_, MgmtError>(((), audit_record()))
        })
        .await
    });
    held_rx.await.unwrap();
    // Another replica's tick neither waits nor runs its operation.
    let ran = Arc::new(Mutex::new(false));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        b.try_maintenance(async {
            *ran.lock().unwrap() = true;
            Ok::<((), Vec<_>), MgmtError>(((), Vec::new()))
        }),
    )
    .await
    .expect("try_maintenance queued behind the lock holder")
    .unwrap();
    assert!(r.is_none() && !*ran.lock().unwrap());
    release_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();
    // Free now: it runs; a tick that changed nothing (no audit records) bumps nothing.
    let r = b
        .try_maintenance(async { Ok::<(u8, Vec<_>), MgmtError>((7, Vec::new())) })
        .await
        .unwrap();
    assert_eq!(r, Some(7));
    assert!(b.change_version().await.unwrap() > before);
}

/// How many `keys.rotate` events the audit log holds.
async fn rotations(store: &SqlStore) -> usize {
    let q = meshpass_exchange::store::AuditQuery {
        action: Some("keys.rotate".into()),
        limit: 1000,
        ..Default::default()
    };
    store.audit_events(&q).await.unwrap().len()
}

/// Holds the maintenance lock (as a rotation waiting on a slow or unreachable Vault
/// does, for up to seconds per call) through `scheduled` or manual maintenance, and
/// writes a revocation meanwhile.
async fn revoke_during_maintenance(store: &Arc<SqlStore>, scheduled: bool) {
    use meshpass_exchange::store::{NewRevocation, RevocationStore, RevocationTarget};
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let s = Arc::clone(store);
    let holder = tokio::spawn(async move {
        let waits_on_vault = async {
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
        };
        if scheduled {
            s.try_maintenance(async {
                waits_on_vault.await;
                Ok::<_, MgmtError>(((), vec![audit_record()]))
            })
            .await
            .map(|r| assert!(r.is_some(), "the tick skipped with nobody holding the lock"))
        } else {
            s.with_maintenance_lock(async {
                waits_on_vault.await;
                Ok::<_, MgmtError>(((), audit_record()))
            })
            .await
        }
    });
    held_rx.await.unwrap();
    let before = store.change_version().await.unwrap();
    let rotations_before = rotations(store).await;
    let new = NewRevocation {
        target: RevocationTarget::Subject,
        matches: "spiffe://cluster.local/ns/shop/sa/stolen".into(),
        reason: "compromised".into(),
        until: None,
    };
    let actor = Actor {
        who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
        request_id: "r-2".into(),
    };
    let now = SystemClock.now();
    // Generous: the write takes milliseconds; before, it waited for the maintenance
    // (SQLite) or gave up after store.acquire_timeout_secs (PostgreSQL: 503).
    let created = tokio::time::timeout(
        Duration::from_secs(10),
        store.create_revocation(&new, &actor, now),
    )
    .await;
    release_tx.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let created = created
        .unwrap_or_else(|_| {
            panic!("scheduled={scheduled}: the revocation waited for key maintenance")
        })
        .unwrap_or_else(|e| panic!("scheduled={scheduled}: the revocation was refused: {e}"));
    assert!(store.get_revocation(&created.id).await.unwrap().is_some());
    // The maintenance still recorded what it did and told every replica (one bump for
    // the revocation, one for the key change).
    assert_eq!(
        rotations(store).await,
        rotations_before + 1,
        "scheduled={scheduled}: no audit record of the key change"
    );
    assert!(store.change_version().await.unwrap() > before);
}

/// Key maintenance waits on Vault and used to do so holding the store's write lock: a
/// revocation (or any write) meanwhile waited for it on SQLite, and answered 503 after
/// `store.acquire_timeout_secs` on PostgreSQL, exactly when an operator revokes during
/// a Vault incident. Both backends, the management API's and the scheduled kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_written_while_key_maintenance_waits_on_vault() {
    let dir = tempfile::tempdir().unwrap();
    let db = Postgres::fresh_database();
    let sqlite = format!("sqlite://{}", dir.path().join("m.db").display());
    for url in [sqlite, db.url()] {
        let store = open(&url).await;
        revoke_during_maintenance(&store, false).await;
        revoke_during_maintenance(&store, true).await;
    }
}

struct Replica {
    app: Router,
    signer: Arc<TransitSigner>,
    store: Arc<SqlStore>,
    _feed: ChangeFeed,
    _reload: Option<AbortOnDrop>,
}

async fn replica(
    cfg: &meshpass_exchange::config::Config,
    vault: &meshpass_exchange::vault::VaultConfig,
) -> Replica {
    let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
    store.migrate().await.unwrap();
    let signer = Arc::new(TransitSigner::start(vault).await.unwrap());
    let keys = IssuerKeys::from_config(cfg).unwrap();
    let mut state = AppState::new(
        cfg,
        signer.clone() as Arc<dyn Signer>,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let feed = start_change_feed(store.clone(), cfg, &mut state).unwrap();
    let reload = spawn_key_reload(&state, signer.clone());
    Replica {
        app: meshpass_exchange::app(state),
        signer,
        store,
        _feed: feed,
        _reload: reload,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_one_replica_is_in_every_replicas_jwks_at_once() {
    let bao = tokio::task::spawn_blocking(|| vault_common::bao_with_key("mp", "ecdsa-p256"))
        .await
        .unwrap();
    let db = Postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let mut cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("x.db"), ""),
    );
    cfg.store.url = db.url();
    cfg.store.max_connections = 2;
    let mut vault = vault_common::config(&bao, "mp");
    // Without the feed, a replica would see the new version only after an hour.
    vault.key_refresh_interval = Duration::from_secs(3600);
    let (r1, r2, r3) = (
        replica(&cfg, &vault).await,
        replica(&cfg, &vault).await,
        replica(&cfg, &vault).await,
    );
    let jwks = |r: &Replica| {
        let app = r.app.clone();
        async move { get_text(&app, "/.well-known/jwks.json").await }
    };
    assert_eq!(jwks(&r1).await, jwks(&r2).await);
    let admin = LockedKeyAdmin::new(r1.signer.clone() as Arc<dyn KeyAdmin>, r1.store.clone());
    let actor = meshpass_exchange::store::Actor {
        who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
        request_id: "rotate-1".into(),
    };
    let status = admin.rotate(&actor).await.unwrap();
    assert_eq!(status.versions.len(), 2, "{status:?}");
    let want = jwks(&r1).await;
    assert!(want.contains("mp:v2"), "{want}");
    let start = Instant::now();
    for r in [&r2, &r3] {
        while jwks(r).await != want {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a replica still serves the old JWKS"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "every replica served the new JWKS after {:?}",
        start.elapsed()
    );
    // Same bytes, so verifiers' caches agree whichever replica they asked.
    assert_eq!(jwks(&r2).await.as_bytes(), want.as_bytes());
    assert_eq!(jwks(&r3).await.as_bytes(), want.as_bytes());
}

// Decisions on the key state: what Vault holds now, rounded the safe way, and audited
// once Vault has changed.

const KEY: &str = "mp";

fn actor(id: &str) -> Actor {
    Actor {
        who: "spiffe://cluster.local/ns/ops/sa/keys".into(),
        request_id: id.into(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// README "Several replicas": rotation and retirement through the management API "run
/// under a PostgreSQL advisory lock, decide on the key state read under it". Replica
/// r2 has not yet re-read the key after r1 retired versions below 3 (its notification
/// is on its way, or its listener reconnects): under the lock it must decide on what
/// Vault holds now, so "retire below 2" finds nothing below 2 published and changes
/// nothing. Deciding on its cached view instead, it lowers `min_decryption_version`
/// from 3 to 2 and puts a retired key version back into every replica's JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_decided_on_a_stale_view_never_publishes_a_retired_version_again() {
    let bao = tokio::task::spawn_blocking(|| vault_common::bao_with_key(KEY, "ecdsa-p256"))
        .await
        .unwrap();
    let db = Postgres::fresh_database();
    let mut vault = vault_common::config(&bao, KEY);
    // Replicas re-read the key on change notifications; none arrives here in time.
    vault.key_refresh_interval = Duration::from_secs(3600);
    let s1 = open(&db.url()).await;
    let s2 = open(&db.url()).await;
    let r1 = Arc::new(TransitSigner::start(&vault).await.unwrap());
    for _ in 0..3 {
        r1.rotate().await.unwrap();
    }
    let r2 = Arc::new(TransitSigner::start(&vault).await.unwrap());
    assert_eq!(
        vault_common::kids(&r2),
        ["mp:v1", "mp:v2", "mp:v3", "mp:v4"]
    );
    let a1 = LockedKeyAdmin::new(r1.clone() as Arc<dyn KeyAdmin>, s1);
    let a2 = LockedKeyAdmin::new(r2.clone() as Arc<dyn KeyAdmin>, s2);
    // Every token the old versions signed has long expired (max lifetime 0, now far ahead).
    let later = unix_now() + 100_000;
    a1.retire_below(3, 0, later, &actor("retire-3"))
        .await
        .unwrap();
    assert_eq!(vault_common::kids(&r1), ["mp:v3", "mp:v4"]);

    // r2's operator asks to retire below 2: nothing is published below 2 any more.
    let r = a2.retire_below(2, 0, later, &actor("retire-2")).await;
    let (_, key) = bao.api("GET", &format!("transit/keys/{KEY}"), None);
    let min_dec = key["data"]["min_decryption_version"].as_u64().unwrap();
    r1.refresh().await.unwrap();
    assert_eq!(
        (min_dec, vault_common::kids(&r1)),
        (3, vec!["mp:v3".to_string(), "mp:v4".to_string()]),
        "retire below 2 on a stale view answered {:?} and un-retired v2",
        r.as_ref()
            .map(|s| s.versions.iter().map(|v| v.version).collect::<Vec<_>>())
    );
    assert!(matches!(r, Err(MgmtError::Invalid { .. })), "{r:?}");
}

/// README, `POST /keys/retire`: "only when version N signed for longer than
/// `token.max_ttl_secs` + `keys.verifier_leeway` + `vault.key_refresh_interval`" (a
/// replica that learns of version N late keeps signing with older versions for up to
/// one refresh interval). With a refresh of 1.9 s, the successor published (and
/// signing, lead 0) at P and tokens accepted for 1 s, no retirement is safe before
/// P + 1.9 s + 1 s, which is always later than floor(P) + 2. The API path truncates
/// both the refresh interval (1.9 s → 1 s; 500 ms → 0) and the successor's start
/// (`unix()` instead of the schedule's `unix_ceil`), so it allows the retirement a
/// second or more early. (`vault_status`, the schedule's view, rounds both up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_retirement_waits_the_whole_key_refresh_interval_not_its_whole_seconds() {
    let bao = tokio::task::spawn_blocking(|| vault_common::bao_with_key(KEY, "ecdsa-p256"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
    let mut vault = vault_common::config(&bao, KEY);
    vault.key_refresh_interval = Duration::from_millis(1900);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let admin = LockedKeyAdmin::new(signer.clone() as Arc<dyn KeyAdmin>, store);
    let status = admin.rotate(&actor("rotate-1")).await.unwrap();
    assert_eq!(status.signing_version, Some(2), "{status:?}");
    // floor(P): the unix second in which v2 was published and began to sign here.
    let published = status.versions[1].published_since;
    let too_early = published + 2;
    let r = admin
        .retire_below(2, 1, too_early, &actor("retire-2"))
        .await;
    assert!(
        matches!(r, Err(MgmtError::Conflict(_))),
        "retiring v1 was allowed at {too_early}, though v2 began to sign at {published}.x \
         and a replica refreshing every 1.9 s may sign with v1 until {published}.x + 1.9 \
         (tokens accepted 1 s after): {:?}",
        r.map(|s| s.versions.iter().map(|v| v.version).collect::<Vec<_>>())
    );
}

/// The real signer, except that reading the key fails once a rotation was asked for
/// (as when the token expires or Vault goes away at that moment).
struct RereadFailsAfterRotate {
    inner: Arc<TransitSigner>,
    rotated: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl KeyAdmin for RereadFailsAfterRotate {
    async fn status(&self) -> Result<KeyStatus, MgmtError> {
        self.inner.status().await
    }
    async fn fresh_status(&self) -> Result<KeyStatus, MgmtError> {
        if self.rotated.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(MgmtError::Unavailable(Dependency::Vault));
        }
        self.inner.fresh_status().await
    }
    async fn rotate(&self) -> Result<(), MgmtError> {
        self.inner.rotate().await?;
        self.rotated
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn retire_below(&self, below: u64) -> Result<(), MgmtError> {
        self.inner.retire_below(below).await
    }
}

/// README "Several replicas": key changes through the management API "write their
/// audit event ... in the same transaction (an audit event that cannot be written makes
/// the call fail rather than report an unrecorded change done)". The reverse must hold
/// too: Vault rotates the key, then reading it again fails: the rotation is done (every
/// replica publishes v2 at its next refresh), so it is audited and the change version
/// bumped, and the call fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_done_in_vault_is_audited_even_when_the_reread_after_it_fails() {
    let bao = tokio::task::spawn_blocking(|| vault_common::bao_with_key(KEY, "ecdsa-p256"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
    let mut vault = vault_common::config(&bao, KEY);
    vault.key_refresh_interval = Duration::from_secs(3600);
    let signer = Arc::new(TransitSigner::start(&vault).await.unwrap());
    let flaky = RereadFailsAfterRotate {
        inner: signer,
        rotated: false.into(),
    };
    let admin = LockedKeyAdmin::new(Arc::new(flaky), store.clone());
    let version_before = store.change_version().await.unwrap();
    let r = admin.rotate(&actor("rotate-1")).await;
    assert_eq!(bao.transit_key_version(KEY), 2, "{r:?}");
    let err = r.unwrap_err().to_string();
    assert!(err.contains("internal"), "{err}");
    let events = store
        .audit_events(&meshpass_exchange::store::AuditQuery {
            limit: 10,
            action: Some("keys.rotate".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "no keys.rotate audit event");
    assert!(
        events[0].record.reason.contains("done in Vault"),
        "{:?}",
        events[0].record.reason
    );
    assert!(store.change_version().await.unwrap() > version_before);
}
