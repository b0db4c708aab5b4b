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
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::key_maintenance::LockedKeyAdmin;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::{KeyAdmin, MgmtError};
use meshpass_exchange::server::{spawn_key_reload, start_change_feed, AbortOnDrop};
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{AuditRecord, MappingStore, SqlStore, StoreConfig};
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
    assert_eq!(b.change_version().await.unwrap(), before + 2);
    // A failed operation changes nothing.
    let r = a
        .with_maintenance_lock(async {
            Err::<((), AuditRecord), MgmtError>(MgmtError::Unavailable(
                meshpass_exchange::mgmt::Dependency::Vault,
            ))
        })
        .await;
    assert!(r.is_err());
    assert_eq!(a.change_version().await.unwrap(), before + 2);
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
    assert_eq!(b.change_version().await.unwrap(), before + 1);
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
