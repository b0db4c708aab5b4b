//! Server lifecycle and HTTP edges: listener clashes in the configuration (the binary's
//! `check-config`), the request-head deadline on every way into the accept loop (HTTP/1, HTTP/2 prior
//! knowledge, after a TLS handshake), the TLS handshake deadline, mTLS identity, the
//! shape of errors on `/token`, and TLS certificate rotation.
//!
//! The accept-loop tests run `meshpass_exchange::http_serve::serve` (the loop the token
//! listener, the TLS listener and the management API all run on, `server.rs` and
//! `mgmt::start`) and `tls::TlsListener` (what `serve_tls_on` wraps) on real
//! 127.0.0.1 sockets, with a trivial router: what is tested is the loop, not a handler.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::*;
use meshpass_exchange::caller::ConnInfo;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::signer::{SignError, Signer, SigningAlg, SigningKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// README "Configuration": reading a request head is bounded at 10 s, then the
/// connection is closed. Anything well past it (with slack for a loaded 2-core box).
const HEAD_DEADLINE_BOUND: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------- helpers

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A router answering `/whoami` with the connection's TLS identity.
fn whoami_router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/whoami",
            get(|ConnectInfo(c): ConnectInfo<ConnInfo>| async move {
                match c.tls_peer {
                    Some(id) => id.as_str().to_string(),
                    None => "none".to_string(),
                }
            }),
        )
}

/// `http_serve::serve` on plain TCP (as the token and management listeners run).
async fn plain_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshpass_exchange::http_serve::serve(
        listener,
        whoami_router(),
        std::future::pending(),
    ));
    addr
}

/// The service's TLS files (server cert for `localhost`, its CA as the client CA).
struct TlsFiles {
    _dir: tempfile::TempDir,
    pki: Pki,
    cert: String,
    key: String,
    ca: String,
}

fn tls_files() -> TlsFiles {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let cert = write_file(dir.path(), "tls.crt", &cert);
    let key = write_file(dir.path(), "tls.key", &key);
    let ca = write_file(dir.path(), "ca.crt", &pki.ca.pem());
    TlsFiles {
        _dir: dir,
        pki,
        cert,
        key,
        ca,
    }
}

/// `TlsListener` + `http_serve::serve` (what `serve_tls_on` runs).
async fn tls_server(files: &TlsFiles) -> SocketAddr {
    let cfg = meshpass_exchange::tls::server_config(
        files.cert.as_ref(),
        files.key.as_ref(),
        files.ca.as_ref(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls =
        meshpass_exchange::tls::TlsListener::new(listener, cfg, Duration::from_secs(300)).unwrap();
    tokio::spawn(meshpass_exchange::http_serve::serve(
        tls,
        whoami_router(),
        std::future::pending(),
    ));
    addr
}

async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Reads until the peer closes (EOF or error): how long that took, or None when the
/// connection was still open after `bound`. Bytes the server sends (an h2 SETTINGS
/// frame, a 408) are read and ignored.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = bound.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn assert_cut_off_at_the_head_deadline(what: &str, closed: Option<Duration>) {
    let after = closed.unwrap_or_else(|| {
        panic!(
            "{what}: the connection was still open after {HEAD_DEADLINE_BOUND:?}; README: \
             reading a request head is bounded at 10 s (then the connection is closed)"
        )
    });
    assert!(
        after >= Duration::from_secs(5),
        "{what}: cut off suspiciously early ({after:?})"
    );
}

/// One HTTP/1.1 GET over `s`: the response text (read to close).
async fn get_over<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> std::io::Result<String> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

// ------------------------------------------------- configuration: listeners

/// DESIGN.md "As built": the management listener is "refused on the token port"; the
/// TLS listener (`server.tls.listen`) serves `/token` too. Bad configuration refuses to
/// start naming the field (README "Configuration"); `check-config` said ok and `serve`
/// died at bind time with a bare "listener: Address in use" (exit 1).
#[test]
fn a_management_listener_on_the_tls_listeners_address_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files();
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:18080\"\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nlisten = \"127.0.0.1:18443\"\n\n\
             [management]\nlisten = \"127.0.0.1:18443\"\n[[management.callers]]\nid = \"spiffe://cluster.local/ns/ops/sa/admin\"\nroles = [\"read\"]\n\n[callers]",
            files.cert, files.key, files.ca
        ),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let err = Config::load(Some(&path))
        .map(|_| ())
        .expect_err("management.listen on server.tls.listen was accepted: serve would fail at bind")
        .to_string();
    assert!(
        err.contains("management.listen") || err.contains("server.tls.listen"),
        "{err}"
    );
}

// ------------------------------------------------- request-head deadline

/// README: "reading a request head is bounded apart, at 10 s (then the connection is
/// closed)". A client that connects and sends nothing has not sent a head either; it
/// must not hold a connection and a task for ever (the http1 deadline only starts once
/// hyper-util's auto builder has seen enough bytes to pick HTTP/1 or HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_connection_that_sends_nothing_is_cut_off_at_the_head_deadline() {
    let addr = plain_server().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let closed = closed_within(&mut s, HEAD_DEADLINE_BOUND).await;
    assert_cut_off_at_the_head_deadline("silent plain connection", closed);
}

/// Same rule for a client that stops inside the HTTP/2 connection preface (16 of its 24
/// bytes): the auto builder waits for the rest with no deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_inside_the_http2_preface_is_cut_off_at_the_head_deadline() {
    let addr = plain_server().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed = closed_within(&mut s, HEAD_DEADLINE_BOUND).await;
    assert_cut_off_at_the_head_deadline("partial h2 preface", closed);
}

/// HTTP/2 (prior knowledge, served on the plain listener): a HEADERS frame without
/// END_HEADERS and no CONTINUATION is a request head that never completes. The 10 s
/// head deadline is set on the http1 builder only; the http2 side has no deadline and
/// no keep-alive ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_head_never_finished_is_cut_off_at_the_head_deadline() {
    let addr = plain_server().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS, empty.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1, flags 0 (no END_HEADERS, no END_STREAM):
    // :method GET (0x82), :scheme http (0x86), :path / (0x84).
    out.extend_from_slice(&[0, 0, 3, 0x1, 0x0, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    s.write_all(&out).await.unwrap();
    let closed = closed_within(&mut s, HEAD_DEADLINE_BOUND).await;
    assert_cut_off_at_the_head_deadline("unfinished h2 HEADERS", closed);
}

/// With `[server.tls]`: a client completing the TLS handshake and then sending nothing
/// is a client that never sends a request head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_silent_after_its_handshake_is_cut_off_at_the_head_deadline() {
    let files = tls_files();
    let addr = tls_server(&files).await;
    let mut s = tls_connect(addr, tls_client_config(&files.pki.ca.pem(), None))
        .await
        .unwrap();
    let closed = closed_within(&mut s, HEAD_DEADLINE_BOUND).await;
    assert_cut_off_at_the_head_deadline("silent TLS connection", closed);
}

/// Slowloris on the TLS handshake itself: a TCP connection that never sends its
/// ClientHello is dropped by the handshake deadline (tls.rs HANDSHAKE_TIMEOUT, 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_cut_off() {
    let files = tls_files();
    let addr = tls_server(&files).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Half a TLS record header, then nothing.
    s.write_all(&[0x16, 0x03]).await.unwrap();
    let closed = closed_within(&mut s, HEAD_DEADLINE_BOUND).await;
    assert_cut_off_at_the_head_deadline("stalled TLS handshake", closed);
    // The listener still serves others.
    let mut ok = tls_connect(addr, tls_client_config(&files.pki.ca.pem(), None))
        .await
        .unwrap();
    let text = get_over(&mut ok, "/healthz").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

// ------------------------------------------------- mTLS identity

/// README `server.tls.client_ca_file`: client certificates are verified against it; a
/// verified certificate's one `spiffe://` URI SAN is the caller. A certificate from
/// another CA is never an identity; one from the CA without a SPIFFE URI SAN neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_certificate_of_the_configured_ca_with_a_spiffe_uri_san_is_an_identity() {
    let files = tls_files();
    let addr = tls_server(&files).await;
    let ca = files.pki.ca.pem();
    let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());

    let good = files.pki.issue(uri(WEB));
    let mut s = tls_connect(addr, tls_client_config(&ca, Some(good)))
        .await
        .unwrap();
    let text = get_over(&mut s, "/whoami").await.unwrap();
    assert!(text.ends_with(WEB), "{text}");

    let other_ca = Pki::new();
    let foreign = other_ca.issue(uri(WEB));
    let refused = match tls_connect(addr, tls_client_config(&ca, Some(foreign))).await {
        Err(_) => true,
        // TLS 1.3: the server's verdict on the client certificate comes after the
        // client's handshake finished; the first request then fails.
        Ok(mut s) => match get_over(&mut s, "/whoami").await {
            Err(_) => true,
            Ok(t) => !t.contains(WEB),
        },
    };
    assert!(refused, "a certificate from another CA was taken as {WEB}");

    let no_uri = files
        .pki
        .issue(rcgen::SanType::DnsName("web.shop.svc".try_into().unwrap()));
    let mut s = tls_connect(addr, tls_client_config(&ca, Some(no_uri)))
        .await
        .unwrap();
    let text = get_over(&mut s, "/whoami").await.unwrap();
    assert!(text.ends_with("none"), "{text}");
}

// ------------------------------------------------- errors on /token

struct NoSigner;

#[async_trait::async_trait]
impl Signer for NoSigner {
    fn current_key(&self) -> Result<SigningKey, SignError> {
        Ok(SigningKey {
            kid: "k:1".into(),
            version: 1,
            alg: SigningAlg::ES256,
            material: 0,
        })
    }
    async fn sign(&self, _key: &SigningKey, _input: &[u8]) -> Result<String, SignError> {
        Err(SignError::Unavailable("test".into()))
    }
    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }
    fn is_ready(&self) -> bool {
        true
    }
}

/// DESIGN.md "The exchange": errors of the token endpoint are RFC 6749 §5.2 JSON
/// `{error, error_description}`, and README: every answer of `/token` has
/// `Cache-Control: no-store`. A client (or a filter) using the wrong method on `/token`
/// gets axum's bare 405 with an empty body instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_the_token_endpoint_is_answered_with_an_rfc6749_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, Arc::new(NoSigner), Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    for method in [Method::GET, Method::PUT] {
        let req = Request::builder()
            .method(method.clone())
            .uri("/token")
            .body(Body::empty())
            .unwrap();
        let a = call(&app, req).await;
        assert!(a.status.is_client_error(), "{method}: {}", a.status);
        assert!(
            a.json["error"].is_string(),
            "{method} /token: {} with a body that is not RFC 6749 JSON: {}",
            a.status,
            a.json
        );
        assert_eq!(
            a.headers.get("cache-control").map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{method} /token"
        );
    }
    // Sanity: the right method reaches the handler's JSON errors.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/token")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let a = call(&app, req).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"], "invalid_request");
}

// ------------------------------------------------- certificate rotation

/// An operator's expectation (DESIGN.md: "where this file is silent, do what a mesh
/// operator would expect"): `[server.tls]` files are renewed in place by cert-manager
/// (short-lived certificates); a running service must serve the renewed certificate
/// without a restart, or every replica serves an expired one. Today `serve` reads the
/// files once (`tls::server_config` at start) and never again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_tls_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls_files();
    let issuer = TestIssuer::new(ISSUER, "k");
    let (plain, tls_port) = (meshpass_testkit::free_port(), meshpass_testkit::free_port());
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{plain}\"\ndrain_delay_secs = 0\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nlisten = \"127.0.0.1:{tls_port}\"\n\n[callers]",
            files.cert, files.key, files.ca
        ),
    );
    let cfg_path = write_file(dir.path(), "c.toml", &toml);
    let mut child = Serving::start(&cfg_path, &dir.path().join("svc.log"));
    let ca = files.pki.ca.pem();
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let leaf = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    // Up (Vault is unreachable: the service starts not ready, the listeners run).
    let started = Instant::now();
    let first = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "serve exited {status:?}: {}",
                std::fs::read_to_string(dir.path().join("svc.log")).unwrap()
            );
        }
        if let Ok(s) = tls_connect(addr, tls_client_config(&ca, None)).await {
            break leaf(&s);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "TLS listener never came up: {}",
            std::fs::read_to_string(dir.path().join("svc.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // cert-manager renews: new key, new certificate, same paths, same CA.
    let (cert2, key2) = files
        .pki
        .issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    std::fs::write(&files.key, key2).unwrap();
    std::fs::write(&files.cert, cert2).unwrap();

    let renewed = Instant::now();
    loop {
        let s = tls_connect(addr, tls_client_config(&ca, None))
            .await
            .unwrap();
        if leaf(&s) != first {
            break;
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(40),
            "the renewed certificate was still not served 40 s after the files changed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(child);
}

/// SPIRE rotates its CA (a day by default) and trust-manager or spiffe-helper rewrite
/// the bundle file in place: client certificates of the new CA must be identities
/// without a restart, as the serving certificate is re-read. A bundle that does not load
/// keeps the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_client_ca_bundle_is_trusted_without_a_restart() {
    let files = tls_files();
    let addr = tls_server(&files).await;
    let ca = files.pki.ca.pem();
    let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
    let whoami = |client: (String, String)| {
        let cfg = tls_client_config(&ca, Some(client));
        async move {
            match tls_connect(addr, cfg).await {
                Err(_) => None,
                Ok(mut s) => get_over(&mut s, "/whoami").await.ok(),
            }
        }
    };
    let next = Pki::new();
    let old_cert = files.pki.issue(uri(WEB));
    let new_cert = next.issue(uri(WEB));
    assert!(whoami(new_cert.clone())
        .await
        .is_none_or(|t| !t.ends_with(WEB)));

    // A half-written bundle first: ignored, the old CA still trusted.
    std::fs::write(&files.ca, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let t = whoami(old_cert.clone()).await.unwrap_or_default();
    assert!(
        t.ends_with(WEB),
        "a broken bundle replaced the last good one: {t:?}"
    );

    // The rotated bundle: both CAs.
    std::fs::write(&files.ca, format!("{ca}{}", next.ca.pem())).unwrap();
    let changed = Instant::now();
    loop {
        if whoami(new_cert.clone())
            .await
            .is_some_and(|t| t.ends_with(WEB))
        {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(40),
            "a client certificate of the new CA was still refused 40 s after the bundle changed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let t = whoami(old_cert).await.unwrap_or_default();
    assert!(t.ends_with(WEB), "{t:?}");
}

// ------------------------------------------------- a panicking request

/// A signer that panics: a bug anywhere below a handler (a library's index, an
/// arithmetic overflow) must cost that one request a `500 server_error`, not every
/// request in flight on the replica.
struct PanicSigner;

#[async_trait::async_trait]
impl Signer for PanicSigner {
    fn current_key(&self) -> Result<SigningKey, SignError> {
        NoSigner.current_key()
    }
    #[allow(clippy::panic)]
    async fn sign(&self, _key: &SigningKey, _input: &[u8]) -> Result<String, SignError> {
        panic!("a bug below the handler");
    }
    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }
    fn is_ready(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_panics_gets_a_500_server_error_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, Arc::new(PanicSigner), Arc::new(SystemClock)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshpass_exchange::server::serve_on(
        listener,
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let form = exchange_form(&issuer.svid(WEB, now(), 600), &[("resource", "payments")]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /token HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-www-form-urlencoded\r\nx-forwarded-client-cert: URI={WEB}\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 500"),
        "a panicking exchange got no answer: {text:?}"
    );
    assert!(text.contains("\"error\":\"server_error\""), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{text}"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    let text = get_over(&mut s, "/healthz").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// In release builds a panic aborts the whole process unless the profile unwinds (the
/// layer above cannot catch an abort).
#[test]
fn the_release_profile_unwinds_so_a_panic_stays_in_its_request() {
    let manifest: toml::Value = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let release = &manifest["profile"]["release"];
    assert_ne!(
        release.get("panic").and_then(|p| p.as_str()),
        Some("abort"),
        "[profile.release] panic = \"abort\": one panicking request ends the replica"
    );
}
