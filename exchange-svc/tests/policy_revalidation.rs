//! Revalidation of policy snapshots by the store's change version
//! (`store.policy_max_age_secs`): an unchanged store confirms a snapshot with one small
//! read instead of reading the resource again, a write that moves the version is still
//! seen within the TTL, a write that bypasses it within the max age, and a failed check
//! serves nothing past the TTL. Real SQLite files and real PostgreSQL; time is a manual
//! clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod policy_common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use meshpass_exchange::clock::ManualClock;
use meshpass_exchange::store::{MappingStore, PolicyCache, StoreConfig, StoreError};
use meshpass_testkit::Postgres;
use policy_common::*;

/// A revalidating cache (TTL 2 s, max age `max_age_secs`) over a counting store on the
/// database at `url`, holding one mapping for "payments", read once.
async fn revalidating(
    url: &str,
    max_age_secs: u64,
) -> (Arc<CountingStore>, Arc<ManualClock>, Arc<PolicyCache>) {
    let sql = open(url).await;
    sql.put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let mut counting = CountingStore::new(sql, 0);
    counting.versioned = true;
    let store = Arc::new(counting);
    let clock = Arc::new(ManualClock::new(1_000));
    let cached =
        Arc::new(PolicyCache::new(store.clone(), clock.clone(), 2).with_max_age_secs(max_age_secs));
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    assert_eq!(reads(&store), 1);
    assert_eq!(
        store.version_reads.load(SeqCst),
        1,
        "the version, then the rows"
    );
    (store, clock, cached)
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("m.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_store_confirms_an_expired_snapshot_with_a_version_check_instead_of_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock, cached) = revalidating(&sqlite_url(&dir), 300).await;
    for round in 1..=5 {
        clock.advance(2);
        assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
        assert_eq!(store.version_reads.load(SeqCst), 1 + round);
        assert_eq!(
            reads(&store),
            1,
            "round {round}: the rows are not read again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_near_expiry_renews_the_snapshot_in_the_background_without_reading_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock, cached) = revalidating(&sqlite_url(&dir), 300).await;
    // In its last 200 ms: answered at once, and one check starts.
    clock.advance_ms(1_900);
    within(cached.clone()).await;
    eventually("a background check", || {
        store.version_reads.load(SeqCst) == 2
    })
    .await;
    // Its answer is cached right after the read returns.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Past the first snapshot's expiry (3,000) and within the renewed one's (the check
    // started at 2,900: 4,900), not yet due again: served, nothing read.
    clock.advance_ms(1_700);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(store.version_reads.load(SeqCst), 2, "renewed by the check");
    assert_eq!(store.started.load(SeqCst), 1, "the rows were read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_write_moves_the_version_and_is_seen_within_the_ttl() {
    let db = Postgres::fresh_database();
    let (store, clock, cached) = revalidating(&db.url(), 300).await;
    let replica_b = open(&db.url()).await;
    replica_b
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    clock.advance_ms(1_999);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    clock.advance_ms(1);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "globex");
    assert_eq!(
        reads(&store),
        2,
        "the check saw the new version and read the rows"
    );
    // A deletion moves it too.
    assert!(replica_b.delete_mapping("m").await.unwrap());
    clock.advance(2);
    assert!(within(cached.clone()).await.mappings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_bypasses_the_version_is_seen_once_the_rows_reach_their_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (store, clock, cached) = revalidating(&url, 10).await;
    // Direct SQL: the rows change, the change version does not.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE mappings SET participant = 'globex' WHERE name = 'm'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Checks confirm the snapshot while it would not serve its rows past 10 s...
    for _ in 0..4 {
        clock.advance(2);
        assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    }
    clock.advance_ms(1_799);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
    assert_eq!(reads(&store), 1);
    // ...and at 10 s the rows are read again.
    clock.advance_ms(201);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "globex");
    assert_eq!(reads(&store), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_check_that_fails_serves_nothing_past_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock, cached) = revalidating(&sqlite_url(&dir), 300).await;
    store.inner.close().await;
    // A check ahead of expiry fails in the background; the snapshot lives out its TTL...
    clock.advance_ms(1_900);
    for _ in 0..3 {
        assert_eq!(participant(within(cached.clone()).await.as_ref()), "acme");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ...and not a millisecond more (fail closed, every time).
    clock.advance_ms(100);
    for _ in 0..2 {
        assert!(matches!(
            cached.shared_resource_policy("payments").await,
            Err(StoreError::Unavailable(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_this_process_is_seen_at_once_with_revalidation_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _clock, cached) = revalidating(&sqlite_url(&dir), 300).await;
    cached
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_counted_by_outcome_on_the_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let sql = open(&url).await;
    sql.put_mapping(&mapping("m", "payments", "acme"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let cached = Arc::new(PolicyCache::new(sql.clone(), clock.clone(), 2).with_max_age_secs(300));
    let metrics = meshpass_exchange::metrics::Metrics::new().unwrap();
    cached.register_metrics(&metrics).unwrap();
    let count = |outcome: &str| {
        let text = metrics.render().unwrap();
        let line = format!("meshpass_policy_snapshot_refreshes_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    within(cached.clone()).await;
    assert_eq!(count("read"), 1, "the first read");
    clock.advance(2);
    within(cached.clone()).await;
    clock.advance(2);
    within(cached.clone()).await;
    assert_eq!(count("confirmed"), 2, "two expiries, nothing changed");
    assert_eq!(count("read"), 1);
    // Another writer moves the version: the next refresh reads the rows.
    let other = open(&url).await;
    other
        .put_mapping(&mapping("m", "payments", "globex"))
        .await
        .unwrap();
    clock.advance(2);
    assert_eq!(participant(within(cached.clone()).await.as_ref()), "globex");
    assert_eq!(count("read"), 2);
    // The store goes away: a refresh fails, and is counted.
    sql.close().await;
    clock.advance(2);
    assert!(cached.shared_resource_policy("payments").await.is_err());
    assert_eq!(count("failed"), 1);
}

#[test]
fn a_max_age_shorter_than_the_policy_cache_ttl_is_refused_naming_the_field() {
    let cfg = StoreConfig {
        policy_cache_secs: 5,
        policy_max_age_secs: 4,
        ..StoreConfig::default()
    };
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("store.policy_max_age_secs"), "{e}");
    let cfg = StoreConfig {
        policy_max_age_secs: 3_601,
        ..StoreConfig::default()
    };
    assert!(cfg.validate().is_err());
    assert_eq!(
        StoreConfig::default().policy_max_age_secs,
        300,
        "the default"
    );
    StoreConfig::default().validate().unwrap();
}
