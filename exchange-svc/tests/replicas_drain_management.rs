//! Serving plumbing of a real `meshpass-exchange` process: how the management listener
//! behaves on SIGTERM next to the token listener's documented drain (readiness fails
//! first, requests are still served for `server.drain_delay_secs`, then in-flight
//! requests get `server.shutdown_grace_secs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod replicas_common;

use std::time::{Duration, Instant};

use common::*;
use meshpass_testkit::{free_port, ExchangeService, OpenBao};
use serde_json::{json, Value};

const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";
const MGMT_AUD: &str = "meshpass-admin";

/// A replica with the management API on its own loopback port, under the Kubernetes
/// shape of the manifests (both ports behind one Service): (OpenBao, service, token
/// base URL, management base URL).
async fn replica_with_management(
    dir: &std::path::Path,
    issuer: &TestIssuer,
    server: Value,
) -> (OpenBao, ExchangeService, String, String) {
    let bao = tokio::task::spawn_blocking(replicas_common::openbao)
        .await
        .unwrap();
    let (port, mport) = (free_port(), free_port());
    let cfg = replicas_common::config(
        port,
        &bao,
        &format!("sqlite://{}", dir.join("m.db").display()),
        issuer,
        json!({
            "server": server,
            "management": {
                "enabled": true,
                "listen": format!("127.0.0.1:{mport}"),
                "audiences": [MGMT_AUD],
                "callers": [{"id": ADMIN, "roles": ["read", "write", "keys"]}],
            },
        }),
    );
    let svc_dir = dir.to_path_buf();
    let svc =
        tokio::task::spawn_blocking(move || replicas_common::start(&svc_dir, "r1", port, &cfg))
            .await
            .unwrap();
    let base = svc.base_url();
    let api = format!("http://127.0.0.1:{mport}");
    // The management listener is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{api}/openapi.json")).await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "management API never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (bao, svc, base, api)
}

/// Waits for `/readyz` to say draining (SIGTERM seen).
async fn wait_draining(base: &str, sent: Instant) {
    let client = reqwest::Client::new();
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["draining"], true, "{body}");
            return;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "/readyz never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_is_still_served_during_the_drain_delay_like_the_token_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let (_bao, svc, base, api) =
        replica_with_management(dir.path(), &issuer, json!({"drain_delay_secs": 4})).await;

    svc.signal("TERM");
    let sent = Instant::now();
    wait_draining(&base, sent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sent.elapsed() < Duration::from_secs(3), "too slow to judge");

    // The load balancer still sends both ports' traffic here until it has seen the
    // readiness failure: a fresh connection to the token port is served...
    let fresh = reqwest::Client::new();
    let h = fresh.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200, "token port served during the drain delay");
    // ...and so must one to the management port (same Service, same endpoints).
    let m = reqwest::Client::new()
        .get(format!("{api}/openapi.json"))
        .send()
        .await;
    match m {
        Ok(r) => assert_eq!(r.status(), 200),
        Err(e) => panic!(
            "management API refused a new connection {:?} after SIGTERM, inside the \
             {}s drain delay the token port still serves: {e}",
            sent.elapsed(),
            4
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_management_request_in_flight_finish_before_the_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let (mut bao, mut svc, base, api) = replica_with_management(
        dir.path(),
        &issuer,
        json!({"drain_delay_secs": 1, "shutdown_grace_secs": 20}),
    )
    .await;

    // A key rotation whose Vault call hangs: OpenBao is frozen.
    bao.pause();
    let now = now();
    let token = issuer.sign(
        &json!({"iss": ISSUER, "sub": ADMIN, "aud": [MGMT_AUD], "iat": now, "exp": now + 3600}),
    );
    let in_flight = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{api}/api/v1/keys/rotate"))
            .bearer_auth(token)
            .header("x-forwarded-client-cert", format!("URI={ADMIN}"))
            .send()
            .await?;
        let status = r.status().as_u16();
        let body = r.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    let ended = {
        let in_flight = in_flight;
        tokio::spawn(async move { (in_flight.await.unwrap(), Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ended.is_finished(), "the rotation should wait for OpenBao");

    svc.signal("TERM");
    let sent = Instant::now();
    wait_draining(&base, sent).await;
    // Past the drain delay: the token listener has closed, nothing is in flight there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    bao.resume();
    let (answer, at) = tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("the management request never ended")
        .unwrap();
    let log = svc.log_tail(15);
    match answer {
        Ok((status, body)) => assert!(status < 600, "{status} {body}"),
        Err(e) => panic!(
            "the management request in flight was cut off {:?} after SIGTERM (drain delay \
             1 s, shutdown_grace_secs = 20) instead of being answered: {e}\n{log}",
            at - sent
        ),
    }
    let exit = tokio::task::spawn_blocking(move || svc.wait_exit(Duration::from_secs(25)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "exit {exit:?}");
}
