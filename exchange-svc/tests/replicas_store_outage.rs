//! A replica and its store across outages: not ready (and not granting) until the
//! configuration's migration and seeding are done after a failed start, and no cached
//! grant outliving the policy-cache bound while cut off from PostgreSQL. Real
//! PostgreSQL behind a relay the tests cut.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::store::{Actor, MappingStore, Precondition, SqlStore};
use meshpass_exchange::AppState;
use meshpass_testkit::{CutRelay, Postgres};

fn base_config(dir: &std::path::Path, issuer: &TestIssuer, url: String) -> Config {
    let mut cfg = load_config(dir, &config_toml(issuer, &dir.join("unused.db"), ""));
    cfg.store.url = url;
    cfg.store.max_connections = 2;
    cfg.store.acquire_timeout_secs = 1;
    cfg.scope_claims.clear();
    cfg
}

/// A replica started as `serve` starts it while its database is unreachable (behind a
/// cut relay): migration and seeding go to the background retry.
async fn start_with_the_store_down(
    dir: &std::path::Path,
    issuer: &TestIssuer,
    db: &meshpass_testkit::PgDb,
) -> (CutRelay, Router) {
    let proxy = CutRelay::start(&db.host_port()).unwrap();
    proxy.cut();
    let cfg = base_config(dir, issuer, db.url_via(proxy.port()));
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
    meshpass_exchange::server::prepare_store(Arc::clone(&store), &cfg)
        .await
        .unwrap();
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    keys.refresh_all().await;
    let state = AppState::new(
        &cfg,
        signer().await,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    (proxy, meshpass_exchange::app(state))
}

/// Restores the database just after the background retry that follows the 2 s sleep
/// failed (the retry sleeps 1 s, 2 s, 4 s, ...), so the next one is about 4 s away: the
/// window in which the database answers but the store is not set up yet.
async fn restore_between_retries(proxy: &CutRelay) {
    let first = loop {
        if let Some(t) = proxy.accepted_at().first().copied() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy
        .accepted_at()
        .iter()
        .any(|t| t.duration_since(first) >= Duration::from_millis(2500))
    {
        assert!(Instant::now() < deadline, "the store was never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let that attempt fail (acquire timeout 1 s), then the database is back.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    proxy.restore();
}

async fn exchange(app: &Router, token: &str) -> Answer {
    post_token(app, exchange_form(token, &[("resource", "payments")])).await
}

/// README: "A store that is down at startup does not stop the service: migration and
/// seeding retry in the background while `/token` answers 503 and `/readyz` says
/// `store: unavailable`". Once the database answers again, `/readyz` must not say ready
/// while the background retry has not migrated and seeded it yet (a load balancer
/// would send exchanges that all fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_the_store_is_reachable_but_not_yet_migrated_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let (proxy, app) = start_with_the_store_down(dir.path(), &issuer, &db).await;
    assert_eq!(
        get(&app, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    restore_between_retries(&proxy).await;
    let token = issuer.svid(WEB, now(), 600);
    let start = Instant::now();
    loop {
        let ready = get(&app, "/readyz").await;
        if ready.status == StatusCode::OK {
            let ex = exchange(&app, &token).await;
            eprintln!(
                "ready after {:?}: /readyz {} {}; /token {} {}",
                start.elapsed(),
                ready.status,
                ready.json,
                ex.status,
                ex.json
            );
            assert_eq!(
                ex.status,
                StatusCode::OK,
                "/readyz says ready ({}) but /token for the configured mapping answers {} {}",
                ready.json,
                ex.status,
                ex.json
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "never ready: {}",
            ready.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same with a database other replicas migrated long ago (the common case): the
/// schema is there, only this replica's configured mapping has not been seeded yet. A
/// ready replica then refuses the exchange with a 4xx (a deny the filter never fails
/// open on), not even a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_the_configured_mappings_are_not_yet_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    {
        // Another replica migrated the database (without this configuration's mappings).
        let mut other = base_config(dir.path(), &issuer, db.url());
        other.mappings.clear();
        let s = SqlStore::connect(&other.store, &other.token.participant_claim).unwrap();
        s.migrate().await.unwrap();
        s.close().await;
    }
    let (proxy, app) = start_with_the_store_down(dir.path(), &issuer, &db).await;
    restore_between_retries(&proxy).await;
    let token = issuer.svid(WEB, now(), 600);
    let start = Instant::now();
    let mut wrong = 0;
    loop {
        let ready = get(&app, "/readyz").await;
        let ex = exchange(&app, &token).await;
        if ready.status == StatusCode::OK && ex.status != StatusCode::OK {
            wrong += 1;
            if wrong == 1 {
                eprintln!(
                    "after {:?}: /readyz {} {}; /token {} {}",
                    start.elapsed(),
                    ready.status,
                    ready.json,
                    ex.status,
                    ex.json
                );
            }
        }
        if ex.status == StatusCode::OK {
            eprintln!(
                "/token granted after {:?}; {wrong} polls (50 ms apart) were ready yet refused",
                start.elapsed()
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "never granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        wrong, 0,
        "/readyz said ready while /token refused the configured mapping"
    );
}

/// README "Several replicas": "Should both fail (database down), the policy cache's own
/// expiry (`store.policy_cache_secs`) still bounds staleness, then exchanges fail closed
/// (503)." A replica cut off from PostgreSQL (listener and version check both failing)
/// while another replica deletes a mapping must not keep granting it past that bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_store_does_not_serve_a_deleted_mappings_cached_token_past_the_policy_cache_bound(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let proxy = CutRelay::start(&db.host_port()).unwrap();
    let mut cfg_a = base_config(dir.path(), &issuer, db.url());
    cfg_a.store.policy_cache_secs = 1;
    cfg_a.store.change_check_interval_ms = 200;
    let mut cfg_b = cfg_a.clone();
    cfg_b.store.url = db.url_via(proxy.port());
    let a = replica(&cfg_a).await.settled().await;
    let b = replica(&cfg_b).await.settled().await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&b.app, &token).await.status, StatusCode::OK);
    assert_eq!(exchange(&b.app, &token).await.status, StatusCode::OK);
    assert_eq!(b.cache.len(), 1, "B cached the token it minted");
    // B loses the database (listener and pool), A deletes the mapping.
    proxy.cut();
    a.store
        .remove_mapping(
            "web-to-payments",
            Precondition::None,
            &Actor {
                who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
                request_id: "audit".into(),
            },
        )
        .await
        .unwrap();
    let _ = &b.store;
    // Well past policy_cache_secs (1 s) and the check interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let other = issuer.svid(WEB, now(), 601);
    let fresh = exchange(&b.app, &other).await;
    eprintln!("B, a new subject token: {} {}", fresh.status, fresh.json);
    let cached = exchange(&b.app, &token).await;
    eprintln!("B, the cached request: {} {}", cached.status, cached.json);
    let ready = get(&b.app, "/readyz").await;
    eprintln!("B /readyz: {} {}", ready.status, ready.json);
    assert_ne!(
        cached.status,
        StatusCode::OK,
        "replica B still grants the mapping replica A deleted 5 s ago (store unreachable; \
         an uncached request gets {})",
        fresh.status
    );
}
