//! The policy snapshot cache in front of `MappingStore::resource_policy`: writes through
//! this process take effect at once, another replica's writes on the same PostgreSQL
//! database are seen once the snapshot's TTL has passed, and a store outage is bridged
//! only within that TTL. Real SQLite files and real PostgreSQL; time is a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod policy_common;

use std::sync::Arc;

use common::*;
use meshpass_exchange::clock::ManualClock;
use meshpass_exchange::store::{MappingStore, PolicyCache, StoreConfig, StoreError};
use meshpass_testkit::Postgres;
use policy_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_write_on_postgres_is_seen_once_the_snapshot_is_older_than_its_ttl() {
    let db = Postgres::fresh_database();
    let replica_a = open(&db.url()).await;
    let replica_b = open(&db.url()).await;
    replica_b
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = PolicyCache::new(replica_a.clone(), clock.clone(), 2);

    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "acme"
    );
    replica_b
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    // Within the TTL this replica still serves its snapshot (the documented bound)...
    clock.advance(1);
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "acme"
    );
    // ...and reads the database again once the snapshot is `ttl` seconds old.
    clock.advance(1);
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "globex"
    );
    // A deletion by the other replica is seen within the same bound.
    assert!(replica_b.delete_mapping("m").await.unwrap());
    clock.advance(2);
    assert!(cached
        .resource_policy("payments")
        .await
        .unwrap()
        .mappings
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_this_process_is_seen_by_the_next_read_at_once() {
    let db = Postgres::fresh_database();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = PolicyCache::new(open(&db.url()).await, clock.clone(), 60);
    cached
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "acme"
    );
    assert_eq!(cached.len(), 1);

    cached
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "globex"
    );
    // Moving the mapping to another resource empties the old one at once too.
    cached
        .put_mapping(&mapping("m", "orders", "globex"))
        .await
        .unwrap();
    assert!(cached
        .resource_policy("payments")
        .await
        .unwrap()
        .mappings
        .is_empty());
    assert_eq!(
        participant(&cached.resource_policy("orders").await.unwrap()),
        "globex"
    );
    assert!(cached.delete_mapping("m").await.unwrap());
    assert!(cached
        .resource_policy("orders")
        .await
        .unwrap()
        .mappings
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_without_mappings_is_not_cached_so_a_new_mapping_elsewhere_is_seen_at_once() {
    let db = Postgres::fresh_database();
    let replica_b = open(&db.url()).await;
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = PolicyCache::new(open(&db.url()).await, clock, 60);
    assert!(cached
        .resource_policy("payments")
        .await
        .unwrap()
        .mappings
        .is_empty());
    assert!(cached.is_empty());
    replica_b
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "acme"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_bridged_by_a_fresh_snapshot_only_within_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
    store
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    store
        .put_mapping(&mapping("n", "orders", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = PolicyCache::new(store.clone(), clock.clone(), 2);
    cached.resource_policy("payments").await.unwrap();

    // The database goes away (its pool is closed: every query fails).
    store.close().await;
    assert!(matches!(
        store.resource_policy("payments").await,
        Err(StoreError::Unavailable(_))
    ));
    // The fresh snapshot keeps answering within its TTL...
    clock.advance(1);
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "acme"
    );
    // ...a resource it does not hold fails at once...
    assert!(matches!(
        cached.resource_policy("orders").await,
        Err(StoreError::Unavailable(_))
    ));
    // ...a read ahead of expiry fails in the background without dropping it...
    clock.advance_ms(900);
    for _ in 0..3 {
        assert_eq!(
            participant(&cached.resource_policy("payments").await.unwrap()),
            "acme"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ...and once the TTL is over the outage shows (fail closed), every time.
    clock.advance_ms(100);
    for _ in 0..2 {
        assert!(matches!(
            cached.resource_policy("payments").await,
            Err(StoreError::Unavailable(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_goes_backwards_does_not_stretch_a_snapshots_life() {
    let db = Postgres::fresh_database();
    let replica_b = open(&db.url()).await;
    replica_b
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = PolicyCache::new(open(&db.url()).await, clock.clone(), 2);
    cached.resource_policy("payments").await.unwrap();
    replica_b
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    clock.set(900);
    assert_eq!(
        participant(&cached.resource_policy("payments").await.unwrap()),
        "globex"
    );
}

/// Through the token endpoint: the service's own store handle writes, and the next
/// exchange (a new subject token, so the minted-token cache cannot answer) obeys it.
#[tokio::test]
async fn the_token_endpoint_obeys_a_mapping_deleted_through_the_service_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    assert_eq!(cfg.store.policy_cache_secs, 2, "the default");
    let clock = Arc::new(ManualClock::new(now()));
    let state = state_with(&cfg, signer().await, clock.clone()).await;
    let app = meshpass_exchange::app(state.clone());
    let t = now();
    let first = issuer.svid(WEB, t, 3600);
    let a = post_token(&app, exchange_form(&first, &[("resource", "orders")])).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);

    assert!(state.store.delete_mapping("web-to-orders").await.unwrap());
    let second = issuer.svid(WEB, t - 1, 3600);
    let a = post_token(&app, exchange_form(&second, &[("resource", "orders")])).await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.json);
    assert_eq!(a.json["error"], "invalid_target");
}

/// `store.policy_cache_secs = 0` turns the cache off: a write made by another store
/// instance on the same database is obeyed by the very next exchange.
#[tokio::test]
async fn with_the_policy_cache_off_every_exchange_reads_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let db = dir.path().join("m.db");
    let toml =
        config_toml(&issuer, &db, "").replace("[store]\n", "[store]\npolicy_cache_secs = 0\n");
    let cfg = load_config(dir.path(), &toml);
    assert_eq!(cfg.store.policy_cache_secs, 0);
    let state = state_with(&cfg, signer().await, Arc::new(ManualClock::new(now()))).await;
    let app = meshpass_exchange::app(state);
    let other = open(&format!("sqlite://{}", db.display())).await;
    let t = now();
    let a = post_token(
        &app,
        exchange_form(&issuer.svid(WEB, t, 3600), &[("resource", "orders")]),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    assert!(other.delete_mapping("web-to-orders").await.unwrap());
    let a = post_token(
        &app,
        exchange_form(&issuer.svid(WEB, t - 1, 3600), &[("resource", "orders")]),
    )
    .await;
    assert_eq!(a.json["error"], "invalid_target", "{}", a.json);
}

#[test]
fn a_policy_cache_longer_than_a_minute_is_refused_naming_the_field() {
    let cfg = StoreConfig {
        policy_cache_secs: 61,
        ..StoreConfig::default()
    };
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("store.policy_cache_secs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_for_an_expired_resource_share_one_read_of_the_store() {
    let db = Postgres::fresh_database();
    let store = Arc::new(CountingStore::new(open(&db.url()).await, 200));
    store
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = Arc::new(PolicyCache::new(store.clone(), clock.clone(), 2));
    let all = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let c = cached.clone();
                tokio::spawn(async move { c.shared_resource_policy("payments").await })
            })
            .collect();
        async move {
            for t in tasks {
                assert_eq!(participant(&t.await.unwrap().unwrap()), "acme");
            }
        }
    };
    all(32).await;
    assert_eq!(reads(&store), 1, "32 exchanges on an empty cache");
    // Expired: again one read for all of them, not one each.
    clock.advance(2);
    all(32).await;
    assert_eq!(reads(&store), 2, "32 exchanges on an expired snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_during_a_write_is_not_joined_by_later_exchanges() {
    let db = Postgres::fresh_database();
    let store = Arc::new(CountingStore::new(open(&db.url()).await, 500));
    store
        .put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = Arc::new(PolicyCache::new(store.clone(), clock.clone(), 60));
    let early = {
        let c = cached.clone();
        tokio::spawn(async move { c.shared_resource_policy("payments").await })
    };
    while reads(&store) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The early read has left the database; a write lands while it is held.
    cached
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    let late = cached.shared_resource_policy("payments").await.unwrap();
    assert_eq!(participant(&late), "globex", "a new read after the write");
    assert_eq!(reads(&store), 2);
    assert_eq!(participant(&early.await.unwrap().unwrap()), "acme");
    // The early read, older than the write, was not cached over the new one.
    assert_eq!(
        participant(&cached.shared_resource_policy("payments").await.unwrap()),
        "globex"
    );
    assert_eq!(reads(&store), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_near_its_expiry_is_read_again_in_the_background_while_exchanges_go_on() {
    use std::sync::atomic::Ordering::SeqCst;
    let db = Postgres::fresh_database();
    let sql = open(&db.url()).await;
    sql.put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let mut counting = CountingStore::new(sql.clone(), 0);
    counting.gate = Some(tokio::sync::Semaphore::new(1));
    let store = Arc::new(counting);
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = Arc::new(PolicyCache::new(store.clone(), clock.clone(), 2));
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    // Another replica changes the mapping; the gate is now shut.
    sql.put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();

    // Early in its life (no read, however long, is due before 1,000 ms) the snapshot
    // is served and nothing is read.
    clock.advance_ms(900);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(store.started.load(SeqCst), 1);

    // In its last 200 ms: exchanges are answered from it at once, and one read starts.
    clock.advance_ms(950);
    for _ in 0..10 {
        assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    }
    eventually("a background read starts", || {
        store.started.load(SeqCst) == 2
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        store.started.load(SeqCst),
        2,
        "one read, not one per exchange"
    );

    // The read lands and replaces the snapshot...
    store.gate.as_ref().unwrap().add_permits(1);
    let c = cached.clone();
    let mut seen = String::new();
    for _ in 0..6_000 {
        seen = participant(within(c.clone()).await.as_ref()).to_string();
        if seen == "globex" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(seen, "globex", "the background read replaced the snapshot");
    assert_eq!(store.reads.load(SeqCst), 2);
    // ...and past the old snapshot's expiry the new one answers (its age counts from
    // the start of its read, 1,850 ms), with the gate shut and no exchange waiting.
    clock.advance_ms(650);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "globex");
    assert_eq!(store.reads.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_with_thousands_of_mappings_is_read_whole_and_matched_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&format!("sqlite://{}", dir.path().join("m.db").display())).await;
    // Past the size from which the store decodes and indexes on the blocking pool.
    for i in 0..1_200 {
        let mut m = mapping(&format!("m{i:05}"), "payments", &format!("p{i}"));
        m.subject = format!("spiffe://cluster.local/ns/shop/sa/s{i}");
        store.put_mapping(&m).await.unwrap();
    }
    store
        .put_mapping(&mapping("wild", "payments", "anyone"))
        .await
        .unwrap();
    let p = store.resource_policy("payments").await.unwrap();
    assert_eq!(p.mappings.len(), 1_201);
    assert!(p.mappings.windows(2).all(|w| w[0].name < w[1].name));
    let id = |s: &str| meshpass_core::SpiffeId::parse(s).unwrap();
    let exact = p
        .mapping_for(&id("spiffe://cluster.local/ns/shop/sa/s777"))
        .unwrap();
    assert_eq!(exact.participant, "p777");
    let other = p
        .mapping_for(&id("spiffe://cluster.local/ns/shop/sa/nobody"))
        .unwrap();
    assert_eq!(other.participant, "anyone");
}

/// A 2 s policy cache over the database at `url` (one mapping for "payments") whose
/// every read takes at least `hold_ms`, after its first read.
async fn read_once_with_slow_reads(
    url: &str,
    hold_ms: u64,
) -> (Arc<CountingStore>, Arc<ManualClock>, Arc<PolicyCache>) {
    let sql = open(url).await;
    sql.put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let store = Arc::new(CountingStore::new(sql, hold_ms));
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = Arc::new(PolicyCache::new(store.clone(), clock.clone(), 2));
    within(cached.clone()).await;
    (store, clock, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_is_started_ahead_only_once_the_snapshot_is_twice_its_read_old() {
    use std::sync::atomic::Ordering::SeqCst;
    let db = Postgres::fresh_database();
    // Each read takes at least 500 ms: a quarter of the 2 s TTL.
    let (store, clock, cached) = read_once_with_slow_reads(&db.url(), 500).await;
    // 1,000 ms before expiry (twice the read) but younger than twice its read: no read.
    clock.advance_ms(990);
    within(cached.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(store.started.load(SeqCst), 1);
    // Old enough just before expiry (a read of up to 999 ms, on a busy machine, is due).
    clock.advance_ms(1_009);
    within(cached.clone()).await;
    eventually("a background read starts", || {
        store.started.load(SeqCst) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_longer_than_half_the_ttl_is_never_started_ahead() {
    use std::sync::atomic::Ordering::SeqCst;
    let db = Postgres::fresh_database();
    let (store, clock, cached) = read_once_with_slow_reads(&db.url(), 1_050).await;
    // Back-to-back reads would keep the store busy with this one resource.
    clock.advance_ms(1_999);
    for _ in 0..5 {
        within(cached.clone()).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(store.started.load(SeqCst), 1);
    // It expires and is read again as before, once for all.
    clock.advance_ms(1);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    assert_eq!(store.started.load(SeqCst), 2);
}
