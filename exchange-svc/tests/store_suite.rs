//! The mapping-store suite, one generic function per behaviour, instantiated for the
//! embedded SQLite file and for real PostgreSQL; plus Postgres going away mid-run
//! (through a TCP proxy the test cuts) → 503 + Retry-After, then recovery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::store::{
    seed, Actor, AuditQuery, AuditRecord, Mapping, MappingStore, NewRevocation, Precondition,
    RateLimit, RevocationStore, RevocationTarget, ScopeClaims, SqlStore, StoreConfig, StoreError,
};
use meshpass_testkit::{PgDb, Postgres};
use serde_json::json;

/// A backend under test: how to open (and re-open) a store on the same database.
trait Backend {
    fn config(&self) -> StoreConfig;
}

struct Sqlite(tempfile::TempDir);
impl Backend for Sqlite {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            url: format!("sqlite://{}", self.0.path().join("mappings.db").display()),
            ..StoreConfig::default()
        }
    }
}

struct Pg(PgDb);
impl Backend for Pg {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            url: self.0.url(),
            max_connections: 4,
            ..StoreConfig::default()
        }
    }
}

async fn open(b: &dyn Backend) -> SqlStore {
    let s = SqlStore::connect(&b.config(), "participant").unwrap();
    s.migrate().await.unwrap();
    s
}

fn mapping(name: &str, subject: &str, resource: &str) -> Mapping {
    Mapping {
        name: name.into(),
        subject: subject.into(),
        resource: resource.into(),
        participant: "acme".into(),
        audiences: vec![resource.into()],
        scopes: vec!["read".into(), "write".into()],
        ttl_secs: 300,
        rate_limit: Some(RateLimit {
            per_second: 2.5,
            burst: 5,
        }),
        allowed_callers: vec!["spiffe://cluster.local/ns/edge/*".into()],
        allowed_actors: Vec::new(),
    }
}

fn claims(resource: &str, scope: &str, v: serde_json::Value) -> ScopeClaims {
    ScopeClaims {
        resource: resource.into(),
        scope: scope.into(),
        claims: v.as_object().unwrap().clone(),
    }
}

async fn round_trips_mappings_and_scope_claims(b: &dyn Backend) {
    let s = open(b).await;
    let m = mapping("web-pay", "spiffe://td/ns/shop/*", "payments");
    s.put_mapping(&m).await.unwrap();
    let mut no_limit = mapping("web-orders", "spiffe://td/ns/shop/sa/web", "orders");
    no_limit.rate_limit = None;
    no_limit.audiences.clear();
    s.put_mapping(&no_limit).await.unwrap();
    s.put_scope_claims(&claims(
        "payments",
        "write",
        json!({"role": "writer", "limits": {"eur": 100}}),
    ))
    .await
    .unwrap();
    assert_eq!(s.get_mapping("web-pay").await.unwrap(), Some(m.clone()));
    assert_eq!(s.get_mapping("nope").await.unwrap(), None);
    assert_eq!(
        s.list_mappings().await.unwrap(),
        vec![no_limit.clone(), m.clone()]
    );
    let p = s.resource_policy("payments").await.unwrap();
    assert_eq!(p.mappings, vec![m]);
    assert_eq!(p.scope_claims[0].claims["limits"]["eur"], 100);
    assert_eq!(
        s.resource_policy("orders").await.unwrap().mappings,
        vec![no_limit]
    );
    assert!(s
        .resource_policy("unknown")
        .await
        .unwrap()
        .mappings
        .is_empty());
    s.ping().await.unwrap();
}

async fn upsert_replaces_and_seeding_twice_changes_nothing(b: &dyn Backend) {
    let s = open(b).await;
    let mut m = mapping("web-pay", "spiffe://td/ns/shop/*", "payments");
    let rows = [claims("payments", "read", json!({"r": 1}))];
    assert_eq!(seed(&s, std::slice::from_ref(&m), &rows).await.unwrap(), 2);
    assert_eq!(seed(&s, std::slice::from_ref(&m), &rows).await.unwrap(), 0);
    m.ttl_secs = 60;
    assert_eq!(seed(&s, std::slice::from_ref(&m), &rows).await.unwrap(), 1);
    assert_eq!(
        s.get_mapping("web-pay").await.unwrap().unwrap().ttl_secs,
        60
    );
    assert_eq!(s.list_mappings().await.unwrap().len(), 1);
}

async fn seeding_refuses_a_scope_row_no_mapping_grants_and_names_it(b: &dyn Backend) {
    let s = open(b).await;
    // Granted by a mapping stored before (not in the seeded file): accepted.
    s.put_mapping(&mapping("web-pay", "spiffe://td/ns/shop/*", "payments"))
        .await
        .unwrap();
    let granted = claims("payments", "read", json!({"r": 1}));
    assert_eq!(
        seed(&s, &[], std::slice::from_ref(&granted)).await.unwrap(),
        1
    );
    let typo = claims("payments", "raed", json!({"q": 1}));
    let other = claims("orders", "read", json!({"o": 1}));
    for (rows, index) in [(vec![granted.clone(), typo], 1), (vec![other], 0)] {
        match seed(&s, &[], &rows).await {
            Err(StoreError::Invalid { field, reason }) => {
                assert_eq!(field, format!("scope_claims[{index}].scope"), "{reason}");
                assert!(reason.contains("grants it"), "{reason}");
            }
            other => panic!("{rows:?}: {other:?}"),
        }
    }
    assert_eq!(s.list_scope_claims().await.unwrap(), vec![granted]);
}

async fn refuses_reserved_claims_bad_patterns_and_bad_values(b: &dyn Backend) {
    let s = open(b).await;
    for field in ["allowed_callers", "allowed_actors"] {
        let mut m = mapping("bad-list", "spiffe://cluster.local/ns/shop/*", "payments");
        let list = vec!["https://not-spiffe".to_string()];
        if field == "allowed_callers" {
            m.allowed_callers = list;
        } else {
            m.allowed_actors = list;
        }
        let r = s.put_mapping(&m).await;
        assert!(
            matches!(&r, Err(StoreError::Invalid { field: f, .. }) if f == field),
            "{field}: {r:?}"
        );
    }
    for reserved in [
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "scope",
        "act",
        "cnf",
        "participant",
    ] {
        let r = s
            .put_scope_claims(&claims("payments", "read", json!({reserved: "x"})))
            .await;
        assert!(
            matches!(r, Err(StoreError::Invalid { .. })),
            "{reserved}: {r:?}"
        );
    }
    for bad in [
        "spiffe://td/ns/*/sa/web",
        "https://td/x",
        "spiffe://TD/x",
        "spiffe://td/a/../b",
        "",
    ] {
        let r = s.put_mapping(&mapping("m", bad, "payments")).await;
        assert!(
            matches!(&r, Err(StoreError::Invalid { field, .. }) if field == "subject"),
            "{bad}: {r:?}"
        );
    }
    let mut m = mapping("m", "spiffe://td/x", "payments");
    m.ttl_secs = 0;
    assert!(matches!(
        s.put_mapping(&m).await,
        Err(StoreError::Invalid { .. })
    ));
    let mut m = mapping("m", "spiffe://td/x", "payments");
    m.scopes = vec!["read".into(), "read".into()];
    assert!(matches!(
        s.put_mapping(&m).await,
        Err(StoreError::Invalid { .. })
    ));
    let mut m = mapping("bad name!", "spiffe://td/x", "payments");
    m.rate_limit = None;
    assert!(matches!(
        s.put_mapping(&m).await,
        Err(StoreError::Invalid { .. })
    ));
    let mut m = mapping("m", "spiffe://td/x", "payments");
    m.rate_limit = Some(RateLimit {
        per_second: 0.0,
        burst: 1,
    });
    assert!(matches!(
        s.put_mapping(&m).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(
        s.list_mappings().await.unwrap().is_empty(),
        "an invalid write was stored"
    );
}

async fn refuses_conflicting_claims_and_duplicate_subject_resource_pairs(b: &dyn Backend) {
    let s = open(b).await;
    s.put_scope_claims(&claims(
        "payments",
        "read",
        json!({"role": "reader", "x": 1}),
    ))
    .await
    .unwrap();
    let r = s
        .put_scope_claims(&claims("payments", "write", json!({"role": "writer"})))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    // The same value is no conflict; another resource is independent.
    s.put_scope_claims(&claims("payments", "write", json!({"x": 1, "w": true})))
        .await
        .unwrap();
    s.put_scope_claims(&claims("orders", "write", json!({"role": "writer"})))
        .await
        .unwrap();
    // Replacing a scope's own claims is allowed.
    s.put_scope_claims(&claims(
        "payments",
        "read",
        json!({"role": "auditor", "x": 1}),
    ))
    .await
    .unwrap();

    s.put_mapping(&mapping("a", "spiffe://td/ns/shop/*", "payments"))
        .await
        .unwrap();
    let r = s
        .put_mapping(&mapping("b", "spiffe://td/ns/shop/*", "payments"))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    s.put_mapping(&mapping("b", "spiffe://td/ns/shop/*", "orders"))
        .await
        .unwrap();
}

async fn deletes_mappings_and_scope_claims(b: &dyn Backend) {
    let s = open(b).await;
    s.put_mapping(&mapping("a", "spiffe://td/x", "payments"))
        .await
        .unwrap();
    s.put_scope_claims(&claims("payments", "read", json!({"r": 1})))
        .await
        .unwrap();
    assert!(s.delete_mapping("a").await.unwrap());
    assert!(!s.delete_mapping("a").await.unwrap());
    assert!(s.delete_scope_claims("payments", "read").await.unwrap());
    assert!(!s.delete_scope_claims("payments", "read").await.unwrap());
    assert!(s.list_mappings().await.unwrap().is_empty());
    assert!(s.list_scope_claims().await.unwrap().is_empty());
}

async fn a_restart_keeps_every_mapping(b: &dyn Backend) {
    let s = open(b).await;
    for i in 0..20 {
        s.put_mapping(&mapping(
            &format!("m{i:02}"),
            &format!("spiffe://td/sa/{i}"),
            "payments",
        ))
        .await
        .unwrap();
    }
    s.put_scope_claims(&claims("payments", "read", json!({"r": 1})))
        .await
        .unwrap();
    let before = (
        s.list_mappings().await.unwrap(),
        s.list_scope_claims().await.unwrap(),
    );
    s.close().await;
    drop(s);
    let s = open(b).await; // migrations run again: must be a no-op
    let after = (
        s.list_mappings().await.unwrap(),
        s.list_scope_claims().await.unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(after.0.len(), 20);
}

async fn concurrent_writers_and_readers_do_not_fail(b: &dyn Backend) {
    let s = Arc::new(open(b).await);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                s.put_mapping(&mapping(
                    &format!("w{w}-{i}"),
                    &format!("spiffe://td/w{w}/{i}"),
                    "payments",
                ))
                .await
                .unwrap();
                s.resource_policy("payments").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.list_mappings().await.unwrap().len(), 60);
}

/// A database written by the first release (schema version 1, no caller or actor
/// columns) is upgraded in place: its mappings survive with no callers or actors.
async fn upgrades_a_version_1_database_and_keeps_its_mappings(b: &dyn Backend) {
    sqlx::any::install_default_drivers();
    let url = b.config().url;
    let (url, real) = if url.starts_with("sqlite:") {
        (format!("{url}?mode=rwc"), "REAL")
    } else {
        (url, "DOUBLE PRECISION")
    };
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    for stmt in [
        format!(
            "CREATE TABLE mappings (name TEXT PRIMARY KEY, subject TEXT NOT NULL, resource TEXT NOT NULL, \
             participant TEXT NOT NULL, audiences TEXT NOT NULL, scopes TEXT NOT NULL, ttl_secs BIGINT NOT NULL, \
             rate_per_second {real} NOT NULL, rate_burst BIGINT NOT NULL, revision BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL, UNIQUE (subject, resource))"
        ),
        "CREATE TABLE scope_claims (resource TEXT NOT NULL, scope TEXT NOT NULL, claims TEXT NOT NULL, \
         revision BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (resource, scope))"
            .into(),
        "CREATE TABLE meshpass_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)".into(),
        "INSERT INTO meshpass_schema (version, applied_at) VALUES (1, 0)".into(),
        "INSERT INTO mappings VALUES ('old', 'spiffe://cluster.local/ns/shop/sa/web', 'payments', \
         'acme', '[]', '[\"read\"]', 300, 0, 0, 1, 0)"
            .into(),
    ] {
        sqlx::query(&stmt).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let s = open(b).await;
    let old = s.get_mapping("old").await.unwrap().unwrap();
    assert_eq!(old.subject, "spiffe://cluster.local/ns/shop/sa/web");
    assert!(old.allowed_callers.is_empty() && old.allowed_actors.is_empty());
    let mut m = mapping("new", "spiffe://cluster.local/ns/shop/*", "orders");
    m.allowed_actors = vec!["spiffe://cluster.local/ns/batch/sa/job".into()];
    s.put_mapping(&m).await.unwrap();
    assert_eq!(s.get_mapping("new").await.unwrap(), Some(m));
}

/// The refusal audit writes on its own (a background task) while operators revoke and
/// lift: on SQLite a lift reads then writes in one transaction, and a commit from an
/// unserialised writer between the two made it fail with SQLITE_BUSY (a 503 for the
/// operator). Every write, audit included, must wait its turn instead.
async fn audit_writes_beside_revocation_changes_never_fail_either(b: &dyn Backend) {
    let s = Arc::new(open(b).await);
    let stop = Arc::new(AtomicBool::new(false));
    let auditor = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                s.record_audit(&AuditRecord {
                    request_id: format!("r{n}"),
                    actor: "spiffe://td/ns/shop/sa/web".into(),
                    action: "exchange.refused".into(),
                    target: "resources/payments".into(),
                    before: None,
                    after: None,
                    reason: "revoked".into(),
                })
                .await
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let actor = Actor {
        who: "spiffe://td/ns/ops/sa/admin".into(),
        request_id: "rq".into(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..40 {
        let r = s
            .create_revocation(
                &NewRevocation {
                    target: RevocationTarget::Subject,
                    matches: format!("spiffe://td/ns/shop/sa/w{i}"),
                    reason: "drill".into(),
                    until: None,
                },
                &actor,
                now,
            )
            .await
            .unwrap_or_else(|e| panic!("create {i}: {e}"));
        s.lift_revocation(&r.id, &actor)
            .await
            .unwrap_or_else(|e| panic!("lift {i}: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let audited = auditor.await.unwrap();
    assert!(audited > 0, "the auditor wrote meanwhile");
    let count = |action: &str| {
        let s = s.clone();
        let action = action.to_string();
        async move {
            s.audit_events(&AuditQuery {
                limit: 1000,
                action: Some(action),
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .len()
        }
    };
    assert_eq!(count("revocation.create").await, 40);
    assert_eq!(count("revocation.lift").await, 40);
    assert_eq!(
        count("exchange.refused").await,
        usize::try_from(audited.min(1000)).unwrap(),
        "every refusal is in the log"
    );
}

fn admin() -> Actor {
    Actor {
        who: "spiffe://td/ns/ops/sa/admin".into(),
        request_id: "rq".into(),
    }
}

/// Every audit event, oldest first.
async fn audit_log(s: &SqlStore) -> Vec<meshpass_exchange::store::AuditEvent> {
    let all = AuditQuery {
        after: Some(0),
        limit: 1000,
        ..AuditQuery::default()
    };
    s.audit_events(&all).await.unwrap()
}

/// The service does not start on a configuration it cannot apply (exit 2), so seeding
/// refused changes nothing: not the stored mappings (on PostgreSQL, every running
/// replica's policy), not the audit log.
async fn a_configuration_seeding_refuses_writes_nothing(b: &dyn Backend) {
    let s = open(b).await;
    let web = mapping("web-pay", "spiffe://td/ns/shop/*", "payments");
    let read = claims("payments", "read", json!({"tier": "r"}));
    seed(&s, std::slice::from_ref(&web), std::slice::from_ref(&read))
        .await
        .unwrap();
    let (before, audited) = (s.export().await.unwrap(), audit_log(&s).await);
    // The file: `web-pay` with another TTL, and a scope row with a typo'd scope.
    let mut changed = web.clone();
    changed.ttl_secs = 60;
    let typo = claims("payments", "wirte", json!({"tier": "w"}));
    let r = seed(&s, &[changed], &[read, typo]).await;
    assert!(
        matches!(&r, Err(StoreError::Invalid { field, .. }) if field == "scope_claims[1].scope"),
        "{r:?}"
    );
    assert_eq!(
        s.export().await.unwrap(),
        before,
        "seeding was refused, yet it changed the store"
    );
    assert_eq!(audit_log(&s).await, audited);
}

/// README: a scope row is never dead configuration, so every export imports again.
/// A configured mapping that no longer grants the scope of a stored row no other
/// mapping grants is refused, naming the mapping's `scopes`, and nothing is written.
async fn seeding_never_leaves_a_scope_row_no_mapping_grants(b: &dyn Backend) {
    let s = open(b).await;
    let web = mapping("web-pay", "spiffe://td/ns/shop/*", "payments");
    let read = claims("payments", "read", json!({"tier": "r"}));
    seed(&s, std::slice::from_ref(&web), &[read]).await.unwrap();
    let before = s.export().await.unwrap();
    let mut narrowed = web.clone();
    narrowed.scopes = vec!["write".into()];
    match seed(&s, &[narrowed], &[]).await {
        Err(StoreError::Invalid { field, reason }) => {
            assert_eq!(field, "mappings[0].scopes", "{reason}");
            assert!(reason.contains("payments/read"), "{reason}");
        }
        other => panic!("seeding left a dead scope row: {other:?}"),
    }
    let export = s.export().await.unwrap();
    assert_eq!(export, before);
    s.import(&export, false, true, &admin()).await.unwrap();
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let b = super::Sqlite(tempfile::tempdir().unwrap());
                    super::$name(&b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let b = super::Pg(super::Postgres::fresh_database());
                    super::$name(&b).await;
                }
            )*
        }
    };
}

both_backends!(
    round_trips_mappings_and_scope_claims,
    upsert_replaces_and_seeding_twice_changes_nothing,
    seeding_refuses_a_scope_row_no_mapping_grants_and_names_it,
    refuses_reserved_claims_bad_patterns_and_bad_values,
    refuses_conflicting_claims_and_duplicate_subject_resource_pairs,
    deletes_mappings_and_scope_claims,
    a_restart_keeps_every_mapping,
    concurrent_writers_and_readers_do_not_fail,
    upgrades_a_version_1_database_and_keeps_its_mappings,
    audit_writes_beside_revocation_changes_never_fail_either,
    a_configuration_seeding_refuses_writes_nothing,
    seeding_never_leaves_a_scope_row_no_mapping_grants,
);

/// Another process on the same SQLite file (a second pod during a rolling update, an
/// operator's `sqlite3`) holds the write lock for 300 ms, far below the 5 s
/// `busy_timeout`: a write that reads before it writes (a mapping save) waits and
/// succeeds. Under a deferred `BEGIN` its first write upgraded a read transaction, an
/// upgrade SQLite never calls the busy handler for: "database is locked" at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_write_that_reads_first_waits_for_the_write_lock_like_busy_timeout_promises() {
    use sqlx::Connection;
    let b = Sqlite(tempfile::tempdir().unwrap());
    let s = open(&b).await;
    let mut m = mapping("web-pay", "spiffe://td/ns/shop/*", "payments");
    s.save_mapping(&m, Precondition::None, &admin())
        .await
        .unwrap();
    let file = format!("sqlite://{}", b.0.path().join("mappings.db").display());
    let mut other = sqlx::sqlite::SqliteConnection::connect(&file)
        .await
        .unwrap();
    let mut failures = Vec::new();
    for attempt in 0..3 {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let started = Instant::now();
        let holder = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        };
        m.ttl_secs = 100 + attempt;
        let write = async {
            let r = s.save_mapping(&m, Precondition::None, &admin()).await;
            (r, started.elapsed())
        };
        let (_, (r, took)) = tokio::join!(holder, write);
        if let Err(e) = r {
            failures.push(format!(
                "attempt {attempt}: {e} after {took:?} (the lock was held 300 ms)"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "writes failed instead of waiting their turn:\n{}",
        failures.join("\n")
    );
}

/// The advisory key every write takes first on PostgreSQL.
const WRITE_LOCK: i64 = 7_270_014_103;

/// A session holding the write lock and gone silent (a replica partitioned from the
/// database mid-write: PostgreSQL keeps its session and locks until TCP keepalive
/// gives up, hours later) makes a write (here an emergency revocation) answer
/// unavailable (503 + Retry-After) after `store.acquire_timeout_secs`, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_write_blocked_by_a_stuck_lock_holder_answers_unavailable_in_bounded_time() {
    use sqlx::Connection;
    let b = Pg(Postgres::fresh_database());
    let s = open(&b).await;
    let mut stuck = sqlx::postgres::PgConnection::connect(&b.0.url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut stuck)
        .await
        .unwrap();
    let started = Instant::now();
    let new = NewRevocation {
        target: RevocationTarget::Subject,
        matches: "spiffe://td/ns/shop/sa/compromised".into(),
        reason: "incident".into(),
        until: None,
    };
    let who = admin();
    let revoke = s.create_revocation(&new, &who, now());
    let r = tokio::time::timeout(Duration::from_secs(30), revoke).await;
    drop(stuck);
    match r {
        Ok(Err(StoreError::Unavailable(m))) => {
            assert!(m.contains("store.acquire_timeout_secs"), "{m}")
        }
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(_) => panic!(
            "the revocation was still waiting for the write lock after {:?}: no 503, no answer",
            started.elapsed()
        ),
    }
}

/// While another replica holds the write lock (a long import), this replica's queued
/// writes (management requests, the refusal audit) wait in the process, not each on a
/// pooled connection: once they were `store.max_connections`, the token endpoint's
/// policy reads (which need no lock) found none and answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_waiting_for_the_write_lock_leave_connections_for_policy_reads() {
    use sqlx::Connection;
    let b = Pg(Postgres::fresh_database());
    let s = Arc::new(open(&b).await);
    s.put_mapping(&mapping("web-pay", "spiffe://td/ns/shop/*", "payments"))
        .await
        .unwrap();
    let mut other = sqlx::postgres::PgConnection::connect(&b.0.url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    // As many as the pool has connections (the Pg backend's `max_connections`: 4).
    let writers: Vec<_> = (0..b.config().max_connections)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.record_audit(&AuditRecord {
                    request_id: format!("q{i}"),
                    actor: "spiffe://td/ns/shop/sa/web via x".into(),
                    action: "exchange.refused".into(),
                    target: "resources/payments".into(),
                    before: None,
                    after: None,
                    reason: "no mapping".into(),
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = tokio::time::timeout(Duration::from_secs(20), s.resource_policy("payments")).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    match read {
        Ok(Ok(p)) => assert_eq!(p.mappings.len(), 1),
        Ok(Err(e)) => panic!("the token endpoint's policy read failed while writes queued: {e}"),
        Err(_) => panic!("the policy read did not answer in 20 s"),
    }
}

#[test]
fn in_memory_sqlite_and_unknown_schemes_are_refused() {
    for url in [
        "sqlite::memory:",
        "sqlite://file?mode=memory",
        "mysql://x",
        "meshpass.db",
    ] {
        let cfg = StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        };
        assert!(
            matches!(
                SqlStore::connect(&cfg, "participant"),
                Err(StoreError::Config(_))
            ),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503_with_retry_after_while_postgres_is_unreachable_and_recovers_by_itself() {
    let db = Postgres::fresh_database();
    let proxy = meshpass_testkit::CutRelay::start(&db.host_port()).unwrap();
    let proxied = db.url_via(proxy.port());

    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let toml = config_toml(&issuer, &dir.path().join("unused.db"), "").replace(
        &format!(
            "url = \"sqlite://{}\"",
            dir.path().join("unused.db").display()
        ),
        &format!("url = \"{proxied}\"\nacquire_timeout_secs = 1\nretry_after_secs = 7"),
    );
    let cfg = load_config(dir.path(), &toml);
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let subject = issuer.svid(WEB, now(), 3600);
    let body = || exchange_form(&subject, &[("resource", "orders")]);
    assert_eq!(post_token(&app, body()).await.status.as_u16(), 200);

    proxy.cut();
    // A new subject token each time so the token cache cannot answer, and a resource
    // not read before so the policy cache has no snapshot of it (a fresh snapshot may
    // bridge an outage for `store.policy_cache_secs`: see tests/policy_cache.rs).
    let other = issuer.svid(WEB, now() - 1, 3600);
    let a = post_token(&app, exchange_form(&other, &[("resource", "payments")])).await;
    assert_eq!(a.status.as_u16(), 503, "{}", a.json);
    assert_eq!(a.json["error"], "temporarily_unavailable");
    assert_eq!(a.headers["retry-after"], "7");
    assert!(!a.json["error_description"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    let r = get(&app, "/readyz").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.json["store"], "unavailable");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = issuer.svid(WEB, now() - 2, 3600);
        let a = post_token(&app, exchange_form(&fresh, &[("resource", "payments")])).await;
        if a.status.as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", a.json);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&app, "/readyz").await.status.as_u16(), 200);
}
