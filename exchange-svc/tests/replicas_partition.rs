//! A replica black-holed from PostgreSQL (no RST: the peer vanished) no longer serves
//! its minted tokens once the store has not confirmed it for `store.policy_cache_secs`
//! plus one check interval. Real PostgreSQL and OpenBao, two in-process replicas.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use common::*;
use meshpass_exchange::store::{Actor, Precondition};
use meshpass_testkit::{HoleRelay, Postgres};

/// DESIGN.md "Several replicas": "Cut off from the store (no notification, no check)
/// for `store.policy_cache_secs`, a replica drops its minted tokens too, so it grants
/// nothing another replica may have revoked or deleted". Here the replica is cut off
/// by a partition (no reset: its version checks hang until the pool's acquire timeout)
/// while another replica deletes the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_partitioned_from_the_store_stops_serving_cached_tokens_after_the_policy_cache_bound(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let relay = HoleRelay::start(&db.host_port()).unwrap();
    let mut cfg_a = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("u.db"), ""),
    );
    cfg_a.store.url = db.url();
    cfg_a.store.max_connections = 2;
    cfg_a.store.acquire_timeout_secs = 5;
    cfg_a.store.policy_cache_secs = 1;
    cfg_a.store.change_check_interval_ms = 200;
    cfg_a.scope_claims.clear();
    let mut cfg_b = cfg_a.clone();
    cfg_b.store.url = db.url_via(relay.port());
    let a = replica(&cfg_a).await.settled().await;
    let b = replica(&cfg_b).await.settled().await;
    let token = issuer.svid(WEB, now(), 600);
    let pay = |app: Router, t: String| async move {
        post_token(&app, exchange_form(&t, &[("resource", "payments")])).await
    };
    assert_eq!(
        pay(b.app.clone(), token.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        pay(b.app.clone(), token.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(b.cache.len(), 1, "B cached the token it minted");

    relay.blackhole();
    let cut_at = Instant::now();
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
    // policy_cache_secs (1 s) + one check interval (0.2 s), with 2.8 s to spare.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cached = pay(b.app.clone(), token.clone()).await;
    // Diagnostics only: when did B stop serving it?
    if cached.status == StatusCode::OK {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let r = pay(b.app.clone(), token.clone()).await;
            if r.status != StatusCode::OK {
                eprintln!(
                    "B stopped serving the cached token {:.1} s after the cut: {} {}",
                    cut_at.elapsed().as_secs_f64(),
                    r.status,
                    r.json
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_ne!(
        cached.status,
        StatusCode::OK,
        "replica B, cut off from PostgreSQL for {:.1} s (policy_cache_secs = 1), still \
         served its cached token of the mapping replica A deleted",
        cut_at.elapsed().as_secs_f64()
    );
    drop(b);
}
