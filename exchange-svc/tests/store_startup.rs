//! The storage layer's migrations and start-up: concurrent migration of an
//! empty PostgreSQL database, a database migrated by a newer version, SQLite URLs,
//! seeding after a failed start (with configured scope claims), seeding against
//! management-API changes, and a real process started while PostgreSQL is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod replicas_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshpass_exchange::config::Config;
use meshpass_exchange::store::{
    seed, Actor, AuditQuery, MappingStore, Precondition, SqlStore, StoreConfig, StoreError,
};
use meshpass_testkit::{CutRelay, Postgres};
use serde_json::json;

/// The shared test configuration (two mappings, two scope-claim rows on `payments`)
/// with its store at `url`, quick to give up on a connection.
fn config_at(dir: &std::path::Path, issuer: &TestIssuer, url: String) -> Config {
    let mut cfg = load_config(dir, &config_toml(issuer, &dir.join("unused.db"), ""));
    cfg.store.url = url;
    cfg.store.max_connections = 2;
    cfg.store.acquire_timeout_secs = 1;
    assert!(
        !cfg.scope_claims.is_empty(),
        "the test configuration has scope claims"
    );
    cfg
}

/// Polls `store.ping()` (what `/readyz` asks) until it answers Ok or `limit` passes.
async fn wait_ready(store: &SqlStore, limit: Duration) -> Result<Duration, StoreError> {
    let start = Instant::now();
    loop {
        match store.ping().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// README "Mapping store": "A store that is down at startup does not stop the service:
/// migration and seeding retry in the background ... until they are done"; DESIGN.md: a
/// replica whose store was down at start is not ready "until the background retry has
/// migrated and seeded it". With `[[scope_claims]]` configured (the shipped example has
/// them) the retry must still finish once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_postgres_was_down_at_start_becomes_ready_once_it_answers_even_with_configured_scope_claims(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let proxy = CutRelay::start(&db.host_port()).unwrap();
    proxy.cut();
    let cfg = config_at(dir.path(), &issuer, db.url_via(proxy.port()));
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
    meshpass_exchange::server::prepare_store(Arc::clone(&store), &cfg)
        .await
        .expect("a store that is down at start does not stop the service");
    assert!(
        store.ping().await.is_err(),
        "not ready while the store is down"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    // Backoff 1, 2, 4, 8, 16 s: 45 s covers several attempts after the restore.
    let r = wait_ready(&store, Duration::from_secs(45)).await;
    let schema = db.psql("SELECT count(*) FROM meshpass_schema");
    let mappings = db.psql("SELECT count(*) FROM mappings");
    let claims = db.psql("SELECT count(*) FROM scope_claims");
    assert!(
        r.is_ok(),
        "the database answers again (schema rows: {}, mappings: {}, scope_claims: {}) but the \
         store never became ready within 45 s: {:?}",
        schema.trim(),
        mappings.trim(),
        claims.trim(),
        r.err()
    );
}

/// The same on the embedded default: the SQLite file's directory does not exist at
/// start (a volume not mounted yet), then appears. README: migration and seeding retry
/// in the background until done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_sqlite_directory_appears_after_start_becomes_ready_even_with_configured_scope_claims(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let later = dir.path().join("volume");
    let cfg = config_at(
        dir.path(),
        &issuer,
        format!("sqlite://{}", later.join("meshpass.db").display()),
    );
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
    meshpass_exchange::server::prepare_store(Arc::clone(&store), &cfg)
        .await
        .expect("a store that is down at start does not stop the service");
    assert!(
        store.ping().await.is_err(),
        "not ready while the file cannot be opened"
    );
    std::fs::create_dir_all(&later).unwrap();
    let r = wait_ready(&store, Duration::from_secs(40)).await;
    let mappings = store.list_mappings().await.map(|m| m.len());
    assert!(
        r.is_ok(),
        "the SQLite directory exists now (mappings seeded: {mappings:?}) but the store never \
         became ready within 40 s: {:?}",
        r.err()
    );
}

/// README: "on PostgreSQL an advisory lock makes replicas that start together migrate
/// once". Three replicas migrating and seeding one empty database at once: all succeed,
/// each migration recorded once, the configured rows present once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_migrating_and_seeding_an_empty_postgres_database_at_once_all_succeed_and_apply_each_migration_once(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let cfg = config_at(dir.path(), &issuer, db.url());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let store =
                Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
            store.migrate().await?;
            seed(store.as_ref(), &cfg.mappings, &cfg.scope_claims).await?;
            store.close().await;
            Ok::<(), StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every replica migrates and seeds");
    }
    let versions =
        db.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM meshpass_schema");
    assert_eq!(versions.trim(), "1,2,3,4,5,6");
    assert_eq!(db.psql("SELECT count(*) FROM mappings").trim(), "2");
    assert_eq!(db.psql("SELECT count(*) FROM scope_claims").trim(), "2");
}

/// Operator expectation (rolling back a deployment, or an old replica beside new ones):
/// a database recorded as migrated past what this binary knows is refused with an error
/// that names the unknown migration, not used silently by code that does not know its
/// schema. (README: migrations are recorded in `meshpass_schema`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_version_is_refused_with_a_message_naming_the_unknown_migration(
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        url: format!("sqlite://{}", dir.path().join("m.db").display()),
        ..StoreConfig::default()
    };
    let s = SqlStore::connect(&cfg, "participant").unwrap();
    s.migrate().await.unwrap();
    s.close().await;
    {
        // A newer meshpass recorded migration 99.
        let db = dir.path().join("m.db");
        let out = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg("INSERT INTO meshpass_schema (version, applied_at) VALUES (99, 0)")
            .output();
        if out.as_ref().map(|o| !o.status.success()).unwrap_or(true) {
            // No sqlite3 CLI: record it through sqlx.
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            sqlx::query("INSERT INTO meshpass_schema (version, applied_at) VALUES (99, 0)")
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    let s = SqlStore::connect(&cfg, "participant").unwrap();
    let r = s.migrate().await;
    eprintln!("migrate on a database at version 99: {r:?}");
    match r {
        Err(e) => assert!(
            e.to_string().contains("99"),
            "refused, but the message does not name the unknown migration: {e}"
        ),
        Ok(()) => panic!(
            "a database recorded at migration 99 (this binary knows 1 to 6) was accepted silently"
        ),
    }
}

/// README: `store.url` is `sqlite://PATH`; sqlx (which the store is built on) reads
/// `sqlite:////abs/path` as the absolute path `//abs/path`, and SQLAlchemy users write
/// absolute paths that way. Operator expectation: the file is the absolute one, never a
/// relative path below the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_sqlite_path_written_with_four_slashes_opens_that_absolute_file() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("four.db");
    let url = format!("sqlite:///{}", abs.display()); // "sqlite:////tmp/.../four.db"
    assert!(url.starts_with("sqlite:////"), "{url}");
    let s = SqlStore::connect(
        &StoreConfig {
            url: url.clone(),
            ..StoreConfig::default()
        },
        "participant",
    )
    .unwrap();
    let r = s.migrate().await;
    assert!(
        r.is_ok() && abs.is_file(),
        "{url}: migrate {r:?}; {} exists: {}",
        abs.display(),
        abs.is_file()
    );
}

/// README: "in-memory SQLite is refused"; `store.max_connections` "at least 1".
#[test]
fn in_memory_sqlite_and_a_pool_of_zero_connections_are_refused_naming_the_key() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://file:x?mode=memory&cache=shared",
        "sqlite://",
    ] {
        let r = SqlStore::connect(
            &StoreConfig {
                url: url.into(),
                ..StoreConfig::default()
            },
            "participant",
        );
        match r {
            Err(StoreError::Config(m)) => assert!(m.contains("store.url"), "{url}: {m}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    let r = SqlStore::connect(
        &StoreConfig {
            max_connections: 0,
            ..StoreConfig::default()
        },
        "participant",
    );
    match r {
        Err(StoreError::Config(m)) => assert!(m.contains("store.max_connections"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// README "Writes": "A write and its audit event commit in one transaction". Operator
/// expectation: a configured mapping changed through the management API and then
/// reverted by the start-up seeding of the next restart leaves a trace in the audit log
/// (else `GET /audit` says the API's version is current while the store serves the
/// file's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_reverts_a_management_api_change_to_a_configured_mapping_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let cfg = config_at(
        dir.path(),
        &issuer,
        format!("sqlite://{}", dir.path().join("m.db").display()),
    );
    let s = SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap();
    s.migrate().await.unwrap();
    seed(&s, &cfg.mappings, &cfg.scope_claims).await.unwrap();
    let mut changed = s.get_mapping("web-to-orders").await.unwrap().unwrap();
    changed.ttl_secs = 60;
    s.save_mapping(
        &changed,
        Precondition::Exists,
        &Actor {
            who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
            request_id: "api-change".into(),
        },
    )
    .await
    .unwrap();
    s.close().await;
    // Restart with the same configuration file.
    let s = SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap();
    s.migrate().await.unwrap();
    let written = seed(&s, &cfg.mappings, &cfg.scope_claims).await.unwrap();
    let now = s.get_mapping("web-to-orders").await.unwrap().unwrap();
    let events = s
        .audit_events(&AuditQuery {
            limit: 100,
            target_prefix: Some("mappings/web-to-orders".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    eprintln!(
        "after restart: seed wrote {written}, ttl_secs {}, audit events: {}",
        now.ttl_secs,
        json!(events
            .iter()
            .map(|e| json!({"action": e.record.action, "request_id": e.record.request_id, "after": e.record.after}))
            .collect::<Vec<_>>())
    );
    if now.ttl_secs == 60 {
        return; // the API's change survived the restart
    }
    let last = events.last().expect("the API change was audited");
    assert_ne!(
        last.record.request_id, "api-change",
        "the restart reverted web-to-orders to the file's ttl_secs {} but the newest audit \
         event is still the API change (ttl_secs 60): the revert is unaudited",
        now.ttl_secs
    );
}

/// DESIGN.md "Postgres down → 503 + Retry-After, recover by itself"; README: a store
/// down at startup does not stop the service. The real binary, started while its
/// PostgreSQL is unreachable, keeps running, reports `store: unavailable`, and reports
/// the store ready by itself once PostgreSQL answers. The password in `store.url` never
/// appears in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_started_while_postgres_is_down_keeps_running_and_its_store_becomes_ready_by_itself(
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let db = Postgres::fresh_database();
    let proxy = CutRelay::start(&db.host_port()).unwrap();
    proxy.cut();
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let url = db
        .url_via(proxy.port())
        .replacen("@127.0.0.1", ":Sup3rSecretPw@127.0.0.1", 1);
    assert!(url.contains(":Sup3rSecretPw@"), "{url}");
    let port = meshpass_testkit::free_port();
    let cfg = replicas_common::config(
        port,
        &bao,
        &url,
        &issuer,
        json!({"store": {"acquire_timeout_secs": 1}, "log": {"level": "debug"}}),
    );
    let svc_dir = dir.path().to_path_buf();
    let mut svc =
        tokio::task::spawn_blocking(move || replicas_common::start(&svc_dir, "r1", port, &cfg))
            .await
            .unwrap();
    let client = reqwest::Client::new();
    let base = svc.base_url();
    let readyz = |client: reqwest::Client, base: String| async move {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    let (status, body) = readyz(client.clone(), base.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["store"], "unavailable", "{body}");
    let token = issuer.svid(WEB, now(), 600);
    let (st, b) = replicas_common::exchange(&client, &base, &token, WEB)
        .await
        .unwrap();
    assert_eq!(st, 503, "/token while the store is down: {b}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(svc.is_running(), "exited: {}", svc.log_tail(40));
    proxy.restore();
    let start = Instant::now();
    loop {
        let (status, body) = readyz(client.clone(), base.clone()).await;
        if status == 200 {
            break;
        }
        assert!(svc.is_running(), "exited: {}", svc.log_tail(40));
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "never ready after PostgreSQL came back: {body}\n{}",
            svc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, b) = replicas_common::exchange(&client, &base, &token, WEB)
        .await
        .unwrap();
    assert_eq!(st, 200, "/token once ready: {b}");
    let log = std::fs::read_to_string(svc.log_path()).unwrap_or_default();
    assert!(
        !log.contains("Sup3rSecretPw"),
        "the store password appears in the log:\n{}",
        log.lines()
            .filter(|l| l.contains("Sup3rSecretPw"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
