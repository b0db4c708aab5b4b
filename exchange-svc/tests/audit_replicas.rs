//! Audit of the replica machinery: readiness while the store is not yet migrated and
//! seeded, and what a replica cut off from PostgreSQL keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use common::*;
use meshpass_exchange::change_feed::ChangeFeed;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::store::{Actor, MappingStore, Precondition, SqlStore};
use meshpass_exchange::AppState;
use meshpass_testkit::{PgDb, Postgres};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP forwarder to the machine's PostgreSQL that can be switched off: while off,
/// every connection is accepted and dropped at once; `cut` also kills the live ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    accepts: Arc<Mutex<Vec<Instant>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _task: JoinHandle<()>,
}

impl Proxy {
    async fn start(up: bool) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let upf = Arc::new(AtomicBool::new(up));
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (u, a, c) = (upf.clone(), accepts.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                a.lock().unwrap().push(Instant::now());
                if !u.load(Ordering::SeqCst) {
                    drop(s);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut t) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        Proxy {
            port,
            up: upf,
            accepts,
            conns,
            _task: task,
        }
    }
    fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
    fn url(&self, db: &PgDb) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name())
    }
}

fn base_config(dir: &std::path::Path, issuer: &TestIssuer, url: String) -> Config {
    let mut cfg = load_config(dir, &config_toml(issuer, &dir.join("unused.db"), ""));
    cfg.store.url = url;
    cfg.store.max_connections = 2;
    cfg.store.acquire_timeout_secs = 1;
    cfg.scope_claims.clear();
    cfg
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
    let proxy = Proxy::start(false).await;
    let cfg = base_config(dir.path(), &issuer, proxy.url(&db));
    let store = Arc::new(SqlStore::connect(&cfg.store, &cfg.token.participant_claim).unwrap());
    // As `serve` does: the store is down, so migration and seeding go to the background.
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
    let app = meshpass_exchange::app(state);
    assert_eq!(get(&app, "/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    // The background retry sleeps 1 s, 2 s, 4 s... Bring the database back just after
    // the attempt that follows the 2 s sleep failed, so the next one is ~4 s away.
    let first = loop {
        if let Some(t) = proxy.accepts.lock().unwrap().first().copied() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let late = proxy
            .accepts
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.duration_since(first) >= Duration::from_millis(2500));
        if late {
            break;
        }
        assert!(Instant::now() < deadline, "the store was never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let that attempt fail (acquire timeout 1 s), then the database is back.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    proxy.set_up();
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
    let proxy = Proxy::start(false).await;
    let cfg = base_config(dir.path(), &issuer, proxy.url(&db));
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
    let app = meshpass_exchange::app(state);
    let first = loop {
        if let Some(t) = proxy.accepts.lock().unwrap().first().copied() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy
        .accepts
        .lock()
        .unwrap()
        .iter()
        .any(|t| t.duration_since(first) >= Duration::from_millis(2500))
    {
        assert!(Instant::now() < deadline, "the store was never retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    proxy.set_up();
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
    assert_eq!(wrong, 0, "/readyz said ready while /token refused the configured mapping");
}

struct Replica {
    app: Router,
    store: Arc<SqlStore>,
    _feed: ChangeFeed,
}

async fn replica(cfg: &Config) -> Replica {
    let (mut state, store) = state_and_store(cfg, signer().await, Arc::new(SystemClock)).await;
    state
        .revocations
        .attach(
            Arc::clone(&store) as Arc<dyn meshpass_exchange::store::RevocationStore>,
            Arc::clone(&state.clock),
        )
        .await;
    let feed =
        meshpass_exchange::server::start_change_feed(Arc::clone(&store), cfg, &mut state).unwrap();
    Replica {
        app: meshpass_exchange::app(state),
        store,
        _feed: feed,
    }
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
    let proxy = Proxy::start(true).await;
    let mut cfg_a = base_config(dir.path(), &issuer, db.url());
    cfg_a.store.policy_cache_secs = 1;
    cfg_a.store.change_check_interval_ms = 200;
    let mut cfg_b = cfg_a.clone();
    cfg_b.store.url = proxy.url(&db);
    let a = replica(&cfg_a).await;
    let b = replica(&cfg_b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = issuer.svid(WEB, now(), 600);
    assert_eq!(exchange(&b.app, &token).await.status, StatusCode::OK);
    assert_eq!(exchange(&b.app, &token).await.status, StatusCode::OK);
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

/// A client that never finishes its request head keeps its connection (and the task
/// and buffer behind it) for as long as it likes: no header read timeout is set
/// (`axum::serve` gives hyper no timer, so hyper's 30 s default is off: hyper logs
/// "timeout `header_read_timeout` has default, but no timer set").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_slower_than_thirty_seconds_is_still_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let cfg = load_config(dir.path(), &config_toml(&issuer, &dir.path().join("m.db"), ""));
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshpass_exchange::server::serve_on(
        listener,
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    for i in 0..7 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        // One more header line every 5 s: the head is never complete.
        let _ = s.write_all(format!("x-slow-{i}: y\r\n").as_bytes()).await;
    }
    let _ = s.write_all(b"\r\n").await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    eprintln!("after 35 s of header lines: {answer:?}");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a request head trickled over 35 s was still read and answered: {answer:?}"
    );
}
