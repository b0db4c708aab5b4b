//! Graceful drain of a real `meshpass-exchange` process: on SIGTERM `/readyz` fails at
//! once while requests are still served for `server.drain_delay_secs`; then the
//! listener closes, the exchange in flight (its signature held up by a frozen OpenBao)
//! still completes with 200, and the process exits 0; refusals queued for the audit
//! log are written before it exits. SIGHUP reloads nothing and ends nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod replicas_common;

use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::free_port;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_then_finishes_the_exchange_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let (mut bao, svc_dir) = (
        tokio::task::spawn_blocking(replicas_common::openbao)
            .await
            .unwrap(),
        dir.path().to_path_buf(),
    );
    let port = free_port();
    let cfg = replicas_common::config(
        port,
        &bao,
        &format!("sqlite://{}", dir.path().join("m.db").display()),
        &issuer,
        json!({"server": {"drain_delay_secs": 2, "request_timeout_secs": 20}}),
    );
    let mut svc =
        tokio::task::spawn_blocking(move || replicas_common::start(&svc_dir, "r1", port, &cfg))
            .await
            .unwrap();
    let base = svc.base_url();
    let client = reqwest::Client::new();
    let warm = issuer.svid(WEB, now(), 600);
    let (status, _) = replicas_common::exchange(&client, &base, &warm, WEB)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // An exchange whose signature hangs: OpenBao is frozen.
    bao.pause();
    let in_flight = {
        let (client, base) = (client.clone(), base.clone());
        let token = issuer.svid(WEB, now(), 601);
        tokio::spawn(async move { replicas_common::exchange(&client, &base, &token, WEB).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the exchange should wait for OpenBao"
    );

    svc.signal("TERM");
    let sent = Instant::now();
    // Readiness fails first...
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["draining"], true, "{body}");
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "/readyz never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while requests are still served during the delay.
    let h = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200, "still served after /readyz failed");
    // Then the listener closes (new connections are refused)...
    let fresh = reqwest::Client::new();
    loop {
        if fresh.get(format!("{base}/healthz")).send().await.is_err() {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "closed before the drain delay"
    );
    assert!(
        !in_flight.is_finished(),
        "the exchange in flight is still waiting"
    );
    // ...and the exchange in flight completes once OpenBao answers.
    bao.resume();
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    let exit = tokio::task::spawn_blocking(move || {
        let s = svc.wait_exit(Duration::from_secs(15));
        (s, svc.log_tail(20))
    })
    .await
    .unwrap();
    let (status, log) = exit;
    let status = status.unwrap_or_else(|| panic!("still running after the drain:\n{log}"));
    assert!(status.success(), "exit {status:?}:\n{log}");
}

/// SIGHUP's default is to end the process, with no drain: an operator's `kill -HUP`
/// (the usual "reload") or a closed terminal would take the replica down mid-request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_and_the_replica_keeps_serving_and_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let port = free_port();
    let cfg = replicas_common::config(
        port,
        &bao,
        &format!("sqlite://{}", dir.path().join("m.db").display()),
        &issuer,
        json!({}),
    );
    let svc_dir = dir.path().to_path_buf();
    let mut svc =
        tokio::task::spawn_blocking(move || replicas_common::start(&svc_dir, "r1", port, &cfg))
            .await
            .unwrap();
    let base = svc.base_url();
    let client = reqwest::Client::new();

    svc.signal("HUP");
    // The warning is the sign the signal was handled (and not still on its way).
    let sent = Instant::now();
    while !svc.log_tail(50).contains("SIGHUP ignored") {
        assert!(
            svc.is_running(),
            "SIGHUP ended the process:\n{}",
            svc.log_tail(20)
        );
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "no SIGHUP warning:\n{}",
            svc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.is_running());
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "not draining after SIGHUP");
    let token = issuer.svid(WEB, now(), 600);
    let (status, body) = replicas_common::exchange(&client, &base, &token, WEB)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// DESIGN.md: "every refused exchange is audited". Refusals go to the audit log through
/// a queue and a background writer, which waits behind the write lock (an import) or a
/// locked table; at SIGTERM the process closed the store as soon as its listeners were
/// done and exited, and the refusals still queued were lost, uncounted. They are now
/// written first (the wait is bounded: 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_queued_for_the_audit_log_at_sigterm_are_written_before_the_process_exits() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let db = meshpass_testkit::Postgres::fresh_database();
    let port = free_port();
    let cfg = replicas_common::config(port, &bao, &db.url(), &issuer, json!({}));
    let svc_dir = dir.path().to_path_buf();
    let mut svc =
        tokio::task::spawn_blocking(move || replicas_common::start(&svc_dir, "r1", port, &cfg))
            .await
            .unwrap();
    let base = svc.base_url();
    // Another session holds the audit table: the writer waits (and retries).
    let mut holder = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let (status, body) = replicas_common::exchange(&client, &base, "not.a.token", WEB)
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
    }
    svc.signal("TERM");
    // Released once the listener is closed: the process is on its way out.
    let sent = Instant::now();
    while reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok()
    {
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || {
        let s = svc.wait_exit(Duration::from_secs(30));
        (s, svc.log_tail(20))
    })
    .await
    .unwrap();
    let status = status.unwrap_or_else(|| panic!("still running after the drain:\n{log}"));
    assert!(status.success(), "exit {status:?}:\n{log}");
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'exchange.refused'")
            .fetch_one(&mut holder)
            .await
            .unwrap();
    assert_eq!(
        written, 2,
        "refusals queued at SIGTERM were lost (written: {written}):\n{log}"
    );
}
