//! Several replicas on one real PostgreSQL database: a write through one replica is
//! enforced by the others' next exchanges because its change notification arrived
//! (`LISTEN`/`NOTIFY`), and also when a notification is missed or the listening
//! connection is killed (the periodic version check). Each replica is the real router,
//! store, policy cache, token cache and change feed, in this process; the policy
//! snapshots live 60 s, so only the feed can explain a replica seeing a write sooner.
//! The notification tests set the periodic check to 60 s too and allow
//! [`PROPAGATION_BOUND`] (generous for a loaded machine, far below 60 s), and check the
//! feed's counters: a notification arrived and the periodic check found nothing.
//! The store restored from a backup (or a standby promoted without the last commits)
//! moves its counters back; writes after it must still reach every replica.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use meshpass_exchange::change_feed::LISTENER_APPLICATION_NAME;
use meshpass_exchange::config::Config;
use meshpass_exchange::store::{
    Actor, MappingStore, NewRevocation, Precondition, RevocationStore, RevocationTarget,
};
use meshpass_testkit::{CutRelay, PgDb, Postgres};

/// The shared test configuration on the database at `url`, the version check every
/// `check_ms`.
fn config(dir: &std::path::Path, issuer: &TestIssuer, url: String, check_ms: u64) -> Config {
    let mut cfg = load_config(dir, &config_toml(issuer, &dir.join("unused.db"), ""));
    cfg.store.url = url;
    cfg.store.max_connections = 2;
    cfg.store.policy_cache_secs = 60;
    cfg.store.change_check_interval_ms = check_ms;
    // The tests delete web-to-payments, which the store refuses while it is the only
    // grant of a scope row: these tests need no scope claims.
    cfg.scope_claims.clear();
    cfg
}

async fn exchange(r: &Replica, token: &str) -> StatusCode {
    post_token(&r.app, exchange_form(token, &[("resource", "payments")]))
        .await
        .status
}

/// Polls `r` until an exchange answers `want`; the time it took, or None after `limit`.
async fn until_status(
    r: &Replica,
    token: &str,
    want: StatusCode,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if exchange(r, token).await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn metric(r: &Replica, name: &str) -> f64 {
    let text = get_text(&r.app, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// How long a change may take to be enforced by another replica: far below the 60 s of
/// the periodic check and of the policy snapshots, generous for a loaded 2-core machine
/// (the time taken is printed; notifications arrive within milliseconds).
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);

/// The change reached `r` by notification: one arrived, and the periodic check never
/// found a version the notifications had not already applied.
async fn came_by_notification(r: &Replica, name: &str) {
    assert!(
        metric(r, "meshpass_change_notifications_total").await >= 1.0,
        "{name} received no change notification"
    );
    assert_eq!(
        metric(r, "meshpass_change_fallback_invalidations_total").await,
        0.0,
        "{name}: the periodic check found the change, not a notification"
    );
}

fn actor() -> Actor {
    Actor {
        who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
        request_id: "test".into(),
    }
}

/// Waits until every replica's feed has read the version once (listener connected).
async fn feeds_ready(replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in replicas {
        while metric(r, "meshpass_change_listener_up").await < 1.0 {
            assert!(Instant::now() < deadline, "change listener never came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_deleted_through_replica_one_is_refused_by_replicas_two_and_three_by_notification_not_the_periodic_check(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    // The periodic check is as good as off: only the notification can be in time.
    let cfg = config(dir.path(), &issuer, db.url(), 60_000);
    let (r1, r2, r3) = (
        replica(&cfg).await,
        replica(&cfg).await,
        replica(&cfg).await,
    );
    feeds_ready(&[&r1, &r2, &r3]).await;
    let token = issuer.svid(WEB, now(), 600);
    // Replicas 2 and 3 hold a policy snapshot and a minted token for the mapping.
    for r in [&r2, &r3] {
        assert_eq!(exchange(r, &token).await, StatusCode::OK);
        assert_eq!(exchange(r, &token).await, StatusCode::OK);
    }
    r1.store
        .remove_mapping("web-to-payments", Precondition::None, &actor())
        .await
        .unwrap();
    for (name, r) in [("replica 2", &r2), ("replica 3", &r3)] {
        let took = until_status(r, &token, StatusCode::BAD_REQUEST, PROPAGATION_BOUND).await;
        let took = took.unwrap_or_else(|| {
            panic!("{name} still honours the deleted mapping after {PROPAGATION_BOUND:?}")
        });
        eprintln!("{name} refused the deleted mapping after {took:?}");
        came_by_notification(r, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_created_through_one_replica_is_honoured_by_another_by_notification_not_the_periodic_check(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config(dir.path(), &issuer, db.url(), 60_000);
    let (r1, r2) = (replica(&cfg).await, replica(&cfg).await);
    feeds_ready(&[&r1, &r2]).await;
    let token = issuer.svid(WEB, now(), 600);
    let ask = |r: &Replica| {
        let app = r.app.clone();
        let token = token.clone();
        async move {
            post_token(
                &app,
                exchange_form(&token, &[("resource", "payments"), ("scope", "admin")]),
            )
            .await
            .status
        }
    };
    // Replica 2 refuses the scope (and caches the policy that says so)...
    assert_eq!(ask(&r2).await, StatusCode::BAD_REQUEST);
    let mut m = r1
        .store
        .get_mapping("web-to-payments")
        .await
        .unwrap()
        .unwrap();
    m.scopes.push("admin".into());
    r1.store
        .save_mapping(&m, Precondition::Exists, &actor())
        .await
        .unwrap();
    // ...and grants it once replica 1 added it.
    let start = Instant::now();
    while ask(&r2).await != StatusCode::OK {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "replica 2 still refuses the new scope after {PROPAGATION_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "replica 2 granted the new scope after {:?}",
        start.elapsed()
    );
    came_by_notification(&r2, "replica 2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notification_is_missed_is_found_by_the_periodic_version_check() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config(dir.path(), &issuer, db.url(), 200);
    let r2 = replica(&cfg).await;
    feeds_ready(&[&r2]).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&r2, &token).await, StatusCode::OK);
    // A write that bumps the version but sends no notification (as if it was lost).
    db.psql(
        "BEGIN; DELETE FROM mappings WHERE name = 'web-to-payments'; \
         UPDATE meshpass_changes SET version = version + 1 WHERE id = 1; COMMIT;",
    );
    let took = until_status(&r2, &token, StatusCode::BAD_REQUEST, Duration::from_secs(5))
        .await
        .expect("the periodic check never found the change");
    eprintln!("found by the periodic check after {took:?}");
    assert!(metric(&r2, "meshpass_change_fallback_invalidations_total").await >= 1.0);
    assert_eq!(
        metric(&r2, "meshpass_change_notifications_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_listening_connection_is_killed_reconnect_and_still_converge() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config(dir.path(), &issuer, db.url(), 500);
    let (r1, r2) = (replica(&cfg).await, replica(&cfg).await);
    feeds_ready(&[&r1, &r2]).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&r2, &token).await, StatusCode::OK);
    let killed = db.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{LISTENER_APPLICATION_NAME}'"
    ));
    assert_eq!(killed, "2", "both listeners' backends are killed");
    r1.store
        .remove_mapping("web-to-payments", Precondition::None, &actor())
        .await
        .unwrap();
    let took = until_status(&r2, &token, StatusCode::BAD_REQUEST, Duration::from_secs(5))
        .await
        .expect("replica 2 never saw the write after its listener was killed");
    eprintln!("converged after {took:?} with the listener killed");
    // The loss is counted and the listener comes back by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reconnects = metric(&r2, "meshpass_change_listener_reconnects_total").await;
        let up = metric(&r2, "meshpass_change_listener_up").await;
        if reconnects >= 1.0 && up == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "listener not back: reconnects {reconnects}, up {up}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And notifications flow again: a new mapping is honoured through the new connection.
    r1.store
        .save_mapping(
            &r1.store
                .get_mapping("web-to-orders")
                .await
                .unwrap()
                .unwrap(),
            Precondition::Exists,
            &actor(),
        )
        .await
        .unwrap();
    let seen = Instant::now() + Duration::from_secs(5);
    while metric(&r2, "meshpass_change_notifications_total").await < 1.0 {
        assert!(Instant::now() < seen, "no notification after reconnecting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_revoked_through_replica_one_is_refused_by_replica_two_and_served_again_once_lifted(
) {
    // Revocations reach replica 2 by the change notification and also by its own
    // refresh of the revocation set every `revocation::REFRESH_INTERVAL` (1 s), so this
    // proves that a revocation and its lift reach replica 2, not which path carried
    // them (the mapping tests above prove the notification path).
    use meshpass_exchange::store::{NewRevocation, RevocationStore, RevocationTarget};
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config(dir.path(), &issuer, db.url(), 60_000);
    let (r1, r2) = (replica(&cfg).await, replica(&cfg).await);
    feeds_ready(&[&r1, &r2]).await;
    let token = issuer.svid(WEB, now(), 600);
    // Replica 2 holds a minted token for the subject.
    assert_eq!(exchange(&r2, &token).await, StatusCode::OK);
    assert_eq!(exchange(&r2, &token).await, StatusCode::OK);
    let new = NewRevocation {
        target: RevocationTarget::Subject,
        matches: WEB.into(),
        reason: "compromised".into(),
        until: None,
    };
    let rev = r1
        .store
        .create_revocation(&new, &actor(), now())
        .await
        .unwrap();
    let took = until_status(&r2, &token, StatusCode::FORBIDDEN, PROPAGATION_BOUND)
        .await
        .unwrap_or_else(|| {
            panic!("replica 2 still serves the revoked subject after {PROPAGATION_BOUND:?}")
        });
    eprintln!("replica 2 refused the revoked subject after {took:?}");
    r1.store.lift_revocation(&rev.id, &actor()).await.unwrap();
    let took = until_status(&r2, &token, StatusCode::OK, PROPAGATION_BOUND)
        .await
        .unwrap_or_else(|| {
            panic!("replica 2 still refuses the lifted subject after {PROPAGATION_BOUND:?}")
        });
    eprintln!("replica 2 served the lifted subject again after {took:?}");
}

// ------------------------------------------- a store restored from a backup

/// The tables whose content a backup holds (everything the replicas' views come from,
/// and the counters that version it).
const TABLES: &[&str] = &[
    "mappings",
    "scope_claims",
    "revocations",
    "revocation_log",
    "revocation_state",
    "meshpass_changes",
];

/// A backup of the enforced state (what `pg_dump --data-only` of these tables holds).
fn backup(db: &PgDb) {
    let sql: String = TABLES
        .iter()
        .map(|t| format!("CREATE TABLE bk_{t} AS SELECT * FROM {t};"))
        .collect();
    db.psql(&sql);
}

/// Restores the backup in one transaction (a logical restore of the data).
fn restore(db: &PgDb) {
    let body: String = TABLES
        .iter()
        .map(|t| format!("DELETE FROM {t}; INSERT INTO {t} SELECT * FROM bk_{t};"))
        .collect();
    db.psql(&format!("BEGIN; {body} COMMIT;"));
}

async fn until_metric(r: &Replica, name: &str, want: f64) {
    let start = Instant::now();
    while metric(r, name).await != want {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "{name} never reached {want} (is {})",
            metric(r, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas A and B on one fresh database (checking every 200 ms), B through a relay
/// the test cuts while the store is restored.
struct Restore {
    _dir: tempfile::TempDir,
    issuer: TestIssuer,
    db: PgDb,
    relay: CutRelay,
    a: Replica,
    b: Replica,
}

impl Restore {
    async fn start() -> Restore {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(ISSUER, "k1");
        let db = Postgres::fresh_database();
        let relay = CutRelay::start(&db.host_port()).unwrap();
        let cfg_a = config(dir.path(), &issuer, db.url(), 200);
        let mut cfg_b = config(dir.path(), &issuer, db.url_via(relay.port()), 200);
        // Cut off, B's checks fail fast instead of waiting on the pool.
        cfg_b.store.acquire_timeout_secs = 1;
        let a = replica(&cfg_a).await.settled().await;
        let b = replica(&cfg_b).await.settled().await;
        Restore {
            _dir: dir,
            issuer,
            db,
            relay,
            a,
            b,
        }
    }
}

/// DESIGN "Several replicas": every replica enforces a write within one second. A
/// replica (B) briefly cut off from PostgreSQL while the store is restored from a backup
/// and one revocation is then created through another replica must enforce that
/// revocation once it reaches the store again. With bare counters B compared the
/// revocation version it held with the store's, back at the same number after the
/// restore and one write (the change version too), so B never reloaded: the subject
/// revoked after the restore kept getting tokens from B (and B's `/revocations` feed
/// told filters nothing changed), with no expiry. Versions now jump past the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_created_after_the_store_is_restored_from_a_backup_is_enforced_by_every_replica(
) {
    let Restore {
        _dir,
        issuer,
        db,
        relay,
        a,
        b,
    } = Restore::start().await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&b, &token).await, StatusCode::OK);

    backup(&db);
    // A revocation of another workload, seen by B; the restore below loses it.
    let lost = NewRevocation {
        target: RevocationTarget::Subject,
        matches: "spiffe://cluster.local/ns/shop/sa/other".into(),
        reason: "lost in the restore".into(),
        until: None,
    };
    a.store
        .create_revocation(&lost, &actor(), now())
        .await
        .unwrap();
    until_metric(&b, "meshpass_revocations_active", 1.0).await;
    let seen_version = b.feed.version();
    let seen_revocations = a.store.revocation_version().await.unwrap();

    // B loses the database for a moment; meanwhile the store is restored and the
    // operator revokes the workload that matters.
    relay.cut();
    restore(&db);
    let revoked = NewRevocation {
        target: RevocationTarget::Subject,
        matches: WEB.into(),
        reason: "compromised".into(),
        until: None,
    };
    a.store
        .create_revocation(&revoked, &actor(), now())
        .await
        .unwrap();
    relay.restore();

    let fresh = issuer.svid(WEB, now(), 601);
    let took = until_status(&b, &fresh, StatusCode::FORBIDDEN, PROPAGATION_BOUND).await;
    eprintln!(
        "B: change version before {seen_version:?}, now {:?}; revocation version {}, active {}",
        b.feed.version(),
        metric(&b, "meshpass_revocation_version").await,
        metric(&b, "meshpass_revocations_active").await,
    );
    assert!(
        took.is_some(),
        "replica B still mints tokens for {WEB}, revoked {PROPAGATION_BOUND:?} ago after a restore of \
         the store (B's revocation set is the pre-restore one, at the same version)"
    );
    // A filter that polled B before the restore asks for the changes since the version
    // it holds: that version is from the history the restore undid, so it gets the
    // whole set, WEB revoked and the lost revocation gone.
    let mut req = axum::http::Request::get(format!("/revocations?since={seen_revocations}"))
        .body(axum::body::Body::empty())
        .unwrap();
    with_caller(&mut req, Some("spiffe://cluster.local/ns/shop/sa/cart"));
    let feed = call(&b.app, req).await;
    let body = feed.json;
    assert_eq!(feed.status, StatusCode::OK, "{body}");
    assert_eq!(
        body["full"], true,
        "a delta from a version the restore undid: {body}"
    );
    let text = body.to_string();
    assert!(text.contains(WEB) && !text.contains("sa/other"), "{body}");
}

/// README "Several replicas": a write reaches every replica within a second, and the
/// periodic check drops the views whenever the version differs. A replica (B) cut off
/// from PostgreSQL for a moment while the store is restored from a backup and a mapping
/// is then deleted through another replica found, once back, the change version it last
/// applied (a bare counter, back at the same number): it never dropped its policy
/// snapshots or minted tokens and kept granting the deleted mapping (until its snapshot
/// expired, its cached token for the token's whole life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_deleted_after_the_store_is_restored_from_a_backup_is_refused_by_every_replica() {
    let Restore {
        _dir,
        issuer,
        db,
        relay,
        a,
        b,
    } = Restore::start().await;

    backup(&db);
    // A write the restore below loses (any mapping write), applied by B.
    let orders = a.store.get_mapping("web-to-orders").await.unwrap().unwrap();
    a.store
        .save_mapping(&orders, Precondition::Exists, &actor())
        .await
        .unwrap();
    let after_write = a.store.change_version().await.unwrap();
    let start = Instant::now();
    while b.feed.version() != Some(after_write) {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "B never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the second of that drop: what B mints now stays cached.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&b, &token).await, StatusCode::OK);
    assert_eq!(exchange(&b, &token).await, StatusCode::OK);
    assert_eq!(b.cache.len(), 1, "B cached the token it minted");

    relay.cut();
    restore(&db);
    a.store
        .remove_mapping("web-to-payments", Precondition::None, &actor())
        .await
        .unwrap();
    relay.restore();

    let took = until_status(&b, &token, StatusCode::BAD_REQUEST, PROPAGATION_BOUND).await;
    let other = issuer.svid(WEB, now(), 601);
    let uncached = exchange(&b, &other).await;
    eprintln!(
        "B after {PROPAGATION_BOUND:?}: cached request refused after {took:?}; a new subject token gets {uncached}; \
         listener up {}, fallback invalidations {}",
        metric(&b, "meshpass_change_listener_up").await,
        metric(&b, "meshpass_change_fallback_invalidations_total").await,
    );
    assert!(
        took.is_some(),
        "replica B still grants web-to-payments {PROPAGATION_BOUND:?} after it was deleted (store \
         restored from a backup, change version back at the number B had applied)"
    );
}

/// README "Several replicas": "a write's NOTIFY arrives within milliseconds of its
/// commit" and is enforced at once; the periodic check is only for notifications that
/// were missed. After the store is restored from a backup (its change version moves
/// back), the notification of the next write carried a version below the one the
/// replica applied before the restore, and was dropped as late: the write was enforced
/// only at the next periodic check (here 60 s, the largest
/// `store.change_check_interval_ms` allows), though its notification arrived. Now the
/// version jumps past the restore, and a notification not newer triggers a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_store_is_restored_from_a_backup_is_enforced_by_its_notification() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config(dir.path(), &issuer, db.url(), 60_000);
    let a = replica(&cfg).await.settled().await;
    let b = replica(&cfg).await.settled().await;
    let start = Instant::now();
    while metric(&b, "meshpass_change_listener_up").await < 1.0 {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "B's listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    backup(&db);
    // Two writes the restore below loses, both applied by B (by notification).
    let orders = a.store.get_mapping("web-to-orders").await.unwrap().unwrap();
    for _ in 0..2 {
        a.store
            .save_mapping(&orders, Precondition::Exists, &actor())
            .await
            .unwrap();
    }
    let before_restore = a.store.change_version().await.unwrap();
    let start = Instant::now();
    while b.feed.version() != Some(before_restore) {
        assert!(
            start.elapsed() < PROPAGATION_BOUND,
            "B never applied the writes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&b, &token).await, StatusCode::OK);

    let notified = metric(&b, "meshpass_change_notifications_total").await;
    restore(&db);
    a.store
        .remove_mapping("web-to-payments", Precondition::None, &actor())
        .await
        .unwrap();

    let took = until_status(&b, &token, StatusCode::BAD_REQUEST, PROPAGATION_BOUND).await;
    eprintln!(
        "B: applied version {:?}, store at {}, notifications {} (before the delete: {notified}); \
         refused after {took:?}",
        b.feed.version(),
        a.store.change_version().await.unwrap(),
        metric(&b, "meshpass_change_notifications_total").await,
    );
    assert!(
        took.is_some(),
        "replica B still grants web-to-payments {PROPAGATION_BOUND:?} after it was deleted: the delete's \
         notification (version below the pre-restore one) was dropped"
    );
}
