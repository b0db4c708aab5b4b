//! `POST /token`'s request handling and error answers (DESIGN.md "The
//! exchange", exchange-svc/README.md "Error codes of POST /token", RFC 6749 §5.2,
//! RFC 8693 §2.2.2). Each test asserts the behaviour the contract asks for: the real
//! router over a real SQLite store and the real transit signer on the shared OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use meshpass_exchange::clock::SystemClock;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";

/// The service's state with `extra` configuration, on SQLite and the real signer.
async fn state(
    extra: &str,
) -> (
    tempfile::TempDir,
    TestIssuer,
    meshpass_exchange::state::AppState,
) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), extra),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    (dir, issuer, state)
}

async fn app_with(extra: &str) -> (tempfile::TempDir, TestIssuer, axum::Router) {
    let (dir, issuer, state) = state(extra).await;
    (dir, issuer, meshpass_exchange::app(state))
}

/// The service on a real socket (as `serve` runs it), with `extra` configuration.
async fn start_socket(extra: &str) -> (tempfile::TempDir, std::net::SocketAddr) {
    let (dir, _, state) = state(extra).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshpass_exchange::server::serve_on(
        listener,
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    (dir, addr)
}

/// RFC 6749 §5.2: `error_description` "MUST NOT include characters outside the set
/// %x20-21 / %x23-5B / %x5D-7E".
fn rfc6749_description_char(c: char) -> bool {
    matches!(c as u32, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e)
}

/// README "Error codes": a client that stops sending its body is the client's fault
/// (DESIGN.md reserves `503 temporarily_unavailable` + `Retry-After` for "Vault or
/// storage is down"), and a refusal answered before the body was read says
/// `Connection: close` (error.rs `BodyUnread`): the server closes the connection.
/// Today the body read runs inside `server.request_timeout_secs`, so the stalled
/// upload is answered as a service outage (`retry-after`, counted as
/// `temporarily_unavailable`, and a filter with `failure_mode: allow` would treat it
/// as one), and the connection is then closed without saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_a_client_error_that_says_connection_close_not_a_503_outage()
{
    let (_dir, addr) = start_socket("[server]\nrequest_timeout_secs = 1\n").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // 200 bytes declared, 12 sent, then nothing.
    s.write_all(
        format!(
            "POST /token HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             x-forwarded-client-cert: URI={WEB}\r\ncontent-length: 200\r\n\r\ngrant_type=x"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    let status_line = answer.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("http/1.1 4"),
        "a stalled upload was answered as a server outage:\n{answer}"
    );
    assert!(
        !answer.contains("temporarily_unavailable") && !answer.contains("retry-after"),
        "{answer}"
    );
    assert!(
        answer.contains("connection: close"),
        "answered before the body was read, without connection: close:\n{answer}"
    );
}

/// RFC 6749 §5.2 (the contract of every `POST /token` error, DESIGN.md "The
/// exchange"): `error_description` may hold only %x20-21 / %x23-5B / %x5D-7E, so no
/// `"` (0x22), no `\` and nothing outside ASCII. Several descriptions break it: `§`
/// ("RFC 6749 §3.2/§3.3"), the quotes of `{:?}`-quoted scopes and issuers, `…`.
#[tokio::test]
async fn every_error_description_uses_only_the_characters_rfc6749_section_5_2_allows() {
    let (_dir, issuer, app) = app_with("").await;
    let t = issuer.svid(WEB, now(), 600);
    let stranger_kid = TestIssuer::new(ISSUER, "unknown-kid").svid(WEB, now(), 600);
    let mut answers = vec![
        // A scope the mapping does not grant, and one quoted only in part.
        post_token(
            &app,
            exchange_form(&t, &[("resource", "payments"), ("scope", "admin")]),
        )
        .await,
        post_token(
            &app,
            exchange_form(&t, &[("resource", "payments"), ("scope", &"x".repeat(100))]),
        )
        .await,
        // A malformed scope.
        post_token(
            &app,
            exchange_form(&t, &[("resource", "payments"), ("scope", "read\twrite")]),
        )
        .await,
        // A subject token signed under a kid the issuer does not publish.
        post_token(
            &app,
            exchange_form(&stranger_kid, &[("resource", "payments")]),
        )
        .await,
    ];
    // The wrong method.
    answers.push(call(&app, Request::get("/token").body(Body::empty()).unwrap()).await);
    let mut bad = Vec::new();
    for a in &answers {
        assert!(a.status.is_client_error(), "{}: {}", a.status, a.json);
        let d = a.json["error_description"].as_str().unwrap();
        if let Some(c) = d.chars().find(|c| !rfc6749_description_char(*c)) {
            bad.push(format!("{} {c:?} in {d:?}", a.json["error"]));
        }
    }
    assert!(
        bad.is_empty(),
        "error_description outside RFC 6749 §5.2's set:\n{}",
        bad.join("\n")
    );
}

/// README "Error codes": `invalid_grant` when "subject or actor token fails
/// validation ... or it expires now". An actor token inside the validation leeway
/// (expired 5 s ago, leeway 30 s) passes validation, then caps `exp` at the past and is
/// refused: the answer must name the actor token, not send the operator looking at a
/// subject token that is valid for ten more minutes.
#[tokio::test]
async fn an_actor_token_that_expires_now_is_refused_naming_the_actor_token_not_the_subject_token() {
    let (_dir, issuer, app) = app_with(DELEGATED_LEDGER).await;
    let n = now();
    let subject = issuer.svid(WEB, n, 600);
    let actor = issuer.sign(
        &json!({"iss": ISSUER, "sub": BATCH, "aud": "meshpass", "iat": n - 60, "exp": n - 5}),
    );
    let a = post_token(
        &app,
        exchange_form(
            &subject,
            &[
                ("resource", "ledger"),
                ("actor_token", &actor),
                ("actor_token_type", JWT_TYPE),
            ],
        ),
    )
    .await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.json);
    assert_eq!(a.json["error"], "invalid_grant", "{}", a.json);
    let d = a.json["error_description"].as_str().unwrap();
    assert!(
        d.contains("actor_token") && !d.contains("subject_token"),
        "the refusal names the wrong token: {d:?}"
    );
}
