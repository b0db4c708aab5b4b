//! The caller named by the service's own TLS at its edges (DESIGN.md "Subject tokens"
//! item 5), over real sockets (the service's TLS listener, the binary): no resumed
//! session outlives its CA or certificate, an expired serving certificate is reported,
//! a TLS listener that cannot be bound ends `serve` (exit 1), and a CA bundle finished
//! within one timestamp tick of a partial read is read again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::server::serve_tls_on;
use meshpass_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- helpers

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A configuration file for the binary's `serve`: plain listener on `plain`, TLS on
/// `tls_port` serving `cert`/`key`, client certificates checked against `ca_pem`.
fn serve_tls_config(
    dir: &std::path::Path,
    (cert, key): (&str, &str),
    ca_pem: &str,
    plain: u16,
    tls_port: u16,
) -> String {
    let cert_file = write(dir, "tls.crt", cert);
    let key_file = write(dir, "tls.key", key);
    let ca_file = write(dir, "ca.crt", ca_pem);
    let issuer = TestIssuer::new(ISSUER, "k");
    let toml = config_toml(&issuer, &dir.join("m.db"), "").replace(
        "[callers]",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{plain}\"\ndrain_delay_secs = 0\n[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\nlisten = \"127.0.0.1:{tls_port}\"\n\n[callers]"
        ),
    );
    write(dir, "c.toml", &toml)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One `POST /token` on a new TLS connection made with `cfg`: `(status, body)`, or
/// `None` when the server refused the handshake or the connection.
async fn post_token_tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    body: &str,
) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .ok()?;
    let req = format!(
        "POST /token HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

/// The real service (real signer on OpenBao, SQLite store) on a TLS listener whose
/// serving certificate is for `localhost` and whose client CA bundle is `ca.crt`.
struct TlsService {
    _dir: tempfile::TempDir,
    ca_file: String,
    issuer: TestIssuer,
    addr: SocketAddr,
}

async fn tls_service(pki: &Pki) -> TlsService {
    tls_service_aged(pki, 300).await
}

/// [`tls_service`] with `server.tls.max_connection_age_secs = age`.
async fn tls_service_aged(pki: &Pki, age: u64) -> TlsService {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &key);
    let ca_file = write(dir.path(), "ca.crt", &pki.ca.pem());
    let tls_cfg = format!(
        "[server.tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\nmax_connection_age_secs = {age}\n"
    );
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), &tls_cfg),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let t = cfg.server.tls.clone().unwrap();
    let tls = meshpass_exchange::tls::server_config(&t.cert_file, &t.key_file, &t.client_ca_file)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tls_on(
        listener,
        tls,
        Duration::from_secs(t.max_connection_age_secs),
        state,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    TlsService {
        _dir: dir,
        ca_file,
        issuer,
        addr,
    }
}

// ------------------------------------- mTLS identity and TLS session resumption

/// README `server.tls.client_ca_file`: "re-read when it changes (SPIRE rotates its CA
/// ...)". An operator removes a CA from the bundle (rotated out, or compromised): its
/// client certificates must stop being callers. A fresh handshake is refused, but the
/// rustls server's default TLS 1.3 session cache lets the same client resume its old
/// session, whose stored client certificate is taken as the caller without being
/// verified against the bundle as it is now (and every resumption hands out new
/// tickets, so this never ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_tls_session_is_no_caller_once_its_ca_was_removed_from_the_client_ca_bundle() {
    let pki = Pki::new();
    let svc = tls_service(&pki).await;
    let client = tls_client_config(&pki.ca.pem(), Some(pki.issue(uri(WEB))));
    let body = exchange_form(&svc.issuer.svid(WEB, now(), 600), &[("resource", "orders")]);
    let (status, text) = post_token_tls(svc.addr, client.clone(), &body)
        .await
        .expect("first exchange");
    assert_eq!(status, 200, "{text}");

    // The CA is rotated out: the bundle now holds only the new one.
    let next = Pki::new();
    std::fs::write(&svc.ca_file, next.ca.pem()).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // A fresh handshake with the old CA's certificate is refused (the bundle was re-read)...
    let fresh = tls_client_config(&pki.ca.pem(), Some(pki.issue(uri(WEB))));
    let body = exchange_form(&svc.issuer.svid(WEB, now(), 600), &[("resource", "orders")]);
    let r = post_token_tls(svc.addr, fresh, &body).await;
    assert!(
        r.as_ref().is_none_or(|(s, _)| *s != 200),
        "a fresh handshake of the removed CA was served: {r:?}"
    );
    // ...and so must the client that resumes its session from before the rotation.
    let r = post_token_tls(svc.addr, client, &body).await;
    assert!(
        r.as_ref().is_none_or(|(s, _)| *s != 200),
        "a client certificate of a CA removed from client_ca_file is still the caller of \
         /token over a resumed TLS session: {}",
        r.map(|(s, t)| format!("HTTP {s}, token minted: {}", t.contains("access_token")))
            .unwrap_or_default()
    );
}

/// The same cache outlives the client certificate itself: a workload's SVID expires
/// (or the workload is decommissioned), a fresh handshake with it is refused, yet the
/// resumed session is still that workload and gets participant tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_tls_session_is_no_caller_once_its_client_certificate_has_expired() {
    let pki = Pki::new();
    let svc = tls_service(&pki).await;
    // A client certificate valid for 4 more seconds, from a CA the service trusts.
    let ca = Pki::new();
    std::fs::write(&svc.ca_file, ca.ca.pem()).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ident = ca.issue_with(vec![uri(WEB)], Some(unix_now() + 4));
    let client = tls_client_config(&pki.ca.pem(), Some(ident.clone()));

    let body = exchange_form(&svc.issuer.svid(WEB, now(), 600), &[("resource", "orders")]);
    // The first connection also makes the service re-read the bundle (at most every 5 s).
    let mut first = None;
    for _ in 0..3 {
        first = post_token_tls(svc.addr, client.clone(), &body).await;
        if first.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
    }
    let (status, text) = first.expect("first exchange");
    assert_eq!(status, 200, "{text}");

    tokio::time::sleep(Duration::from_secs(6)).await;
    let body = exchange_form(&svc.issuer.svid(WEB, now(), 600), &[("resource", "orders")]);
    let fresh = tls_client_config(&pki.ca.pem(), Some(ident));
    let r = post_token_tls(svc.addr, fresh, &body).await;
    assert!(
        r.as_ref().is_none_or(|(s, _)| *s != 200),
        "a fresh handshake with an expired client certificate was served: {r:?}"
    );
    let r = post_token_tls(svc.addr, client, &body).await;
    assert!(
        r.as_ref().is_none_or(|(s, _)| *s != 200),
        "an expired client certificate is still the caller of /token over a resumed TLS \
         session: {}",
        r.map(|(s, t)| format!("HTTP {s}, token minted: {}", t.contains("access_token")))
            .unwrap_or_default()
    );
}

/// A client keeping its connection open (HTTP keep-alive; Envoy's cluster does the
/// same over HTTP/2): a request every half second for up to 20 s after `changed`, until
/// one is not answered 200. `Some(seconds)` when one was refused, with when.
async fn kept_connection_refused_after(
    addr: SocketAddr,
    client: &reqwest::Client,
    issuer: &TestIssuer,
    changed: Instant,
) -> Option<(f64, String)> {
    while changed.elapsed() < Duration::from_secs(20) {
        // `payments`: `orders` is rate limited (0.5/s).
        let body = exchange_form(&issuer.svid(WEB, now(), 600), &[("resource", "payments")]);
        let r = client
            .post(format!("https://localhost:{}/token", addr.port()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => {
                return Some((
                    changed.elapsed().as_secs_f64(),
                    format!("HTTP {}", r.status()),
                ))
            }
            Err(e) => return Some((changed.elapsed().as_secs_f64(), format!("{e:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// A reqwest client over `cfg` that keeps one connection to `addr` (named `localhost`).
fn keeping_client(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .resolve("localhost", addr)
        .pool_idle_timeout(Duration::from_secs(120))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Without resumption, an open connection still carries the identity it was verified
/// with: a CA taken out of `client_ca_file` kept a caller's kept-alive (or HTTP/2)
/// connection minting tokens for as long as the client held it. Connections naming a
/// caller now end after `server.tls.max_connection_age_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_stops_naming_its_caller_within_the_max_age_once_its_ca_was_removed() {
    let pki = Pki::new();
    let svc = tls_service_aged(&pki, 3).await;
    let client = keeping_client(
        svc.addr,
        tls_client_config(&pki.ca.pem(), Some(pki.issue(uri(WEB)))),
    );
    let changed = Instant::now();
    std::fs::write(&svc.ca_file, Pki::new().ca.pem()).unwrap();
    let refused = kept_connection_refused_after(svc.addr, &client, &svc.issuer, changed).await;
    let (after, how) = refused.expect(
        "a caller whose CA left client_ca_file kept minting tokens over its open connection \
         for 20 s (max_connection_age_secs = 3)",
    );
    assert!(after >= 2.5, "refused before the age ({after:.1} s): {how}");
}

/// The same open connection outlived its client certificate: a workload whose SVID
/// expired kept being the caller. The connection now ends at the certificate's notAfter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_stops_naming_its_caller_when_its_client_certificate_expires() {
    let pki = Pki::new();
    let svc = tls_service(&pki).await;
    let ident = pki.issue_with(vec![uri(WEB)], Some(unix_now() + 4));
    let client = keeping_client(svc.addr, tls_client_config(&pki.ca.pem(), Some(ident)));
    let issued = Instant::now();
    let refused = kept_connection_refused_after(svc.addr, &client, &svc.issuer, issued).await;
    let (after, how) = refused.expect(
        "an expired client certificate kept minting tokens over its open connection for 20 s",
    );
    assert!(
        after >= 2.0,
        "refused before the certificate expired ({after:.1} s): {how}"
    );
}

// ------------------------------------------------- the serving certificate

/// The brief of `tls_reload.rs`: a service must not "serve an expired certificate"
/// unnoticed. Started with a serving certificate that has already expired, `serve`
/// says nothing: every client's handshake fails and the log only says it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_an_expired_tls_certificate_is_reported_naming_server_tls_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    // A serving certificate that expired a day ago, from a CA of the test's own.
    let ca = Pki::new();
    let (cert, key) = ca.issue_with(
        vec![rcgen::SanType::DnsName("localhost".try_into().unwrap())],
        Some(unix_now() - 86_400),
    );
    let (plain, tls_port) = (free_port(), free_port());
    let cfg_path = serve_tls_config(dir.path(), (&cert, &key), &ca.ca.pem(), plain, tls_port);
    let log_path = dir.path().join("svc.log");
    let mut child = Serving::start(&cfg_path, &log_path);
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            // Refusing to start, naming the field, is an answer too.
            let text = std::fs::read_to_string(&log_path).unwrap();
            assert!(
                text.contains("server.tls.cert_file"),
                "exited {status:?}: {text}"
            );
            return;
        }
        if TcpStream::connect(("127.0.0.1", tls_port)).await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never came up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A handshake (the certificate is resolved then; the client refuses it as expired)
    // and a moment for the log.
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let client = tls_client_config(&ca.ca.pem(), Some(ca.issue_with(vec![uri(WEB)], None)));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await;
    assert!(
        handshake.is_err(),
        "the expired certificate was accepted by the client"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let said = text
        .lines()
        .any(|l| l.contains("expire") && (l.contains("WARN") || l.contains("ERROR")));
    let tls_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("TLS") || l.contains("listening"))
        .collect();
    drop(child);
    assert!(
        said,
        "the service serves a certificate that expired a day ago and never says so; its \
         TLS log lines: {tls_lines:#?}"
    );
}

// ------------------------------------------------- a TLS listener that cannot be bound

/// README "Configuration": bad configuration refuses to start; a listener that cannot
/// be bound ended `serve` with an error (exit 1) before the listeners were put under
/// one stop. `server.tls.listen` on a port another process holds: the `?` on its bind
/// leaves the serving future early, the stop is never sent, and `serve` waits for a
/// SIGTERM for ever (its token port bound but never served, the management API up).
#[test]
fn serve_exits_with_an_error_when_its_tls_listener_address_is_already_taken() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.issue(rcgen::SanType::DnsName("localhost".try_into().unwrap()));
    // Another process's listener on the TLS port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = taken.local_addr().unwrap().port();
    let cfg_path = serve_tls_config(
        dir.path(),
        (&cert, &key),
        &pki.ca.pem(),
        free_port(),
        tls_port,
    );
    let log_path = dir.path().join("svc.log");
    let mut child = Serving::start(&cfg_path, &log_path);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // What the service said of its listeners (the rest is Vault, unreachable here).
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("listen") || l.contains("ERROR") || l.contains("stopped"))
        .collect();
    let status = status.unwrap_or_else(|| {
        panic!(
            "serve still runs 30 s after its TLS listener (127.0.0.1:{tls_port}) could not \
             be bound; its log of its listeners: {tail:#?}"
        )
    });
    drop(taken);
    assert!(!status.success(), "exited {status:?}: {log}");
    assert!(
        log.contains("in use") || log.contains("AddrInUse"),
        "exited {status:?} without naming the bind error: {log}"
    );
}

// ------------------------------------------------- reload of a half-written bundle

/// tls_reload.rs: "files that do not load (half written ...) keep the last good ones".
/// A bundle read while it is being written, cut between two certificates, loads (one CA
/// of two); the write completes within the same file-system timestamp tick (Linux
/// stamps mtimes with a coarse clock), the modification time is the one already
/// recorded, and the complete bundle is never read: callers of the second CA are refused
/// until the file changes again. Simulated by giving both writes the same mtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_bundle_completed_within_one_mtime_tick_of_a_partial_read_is_still_re_read() {
    let pki = Pki::new();
    let svc = tls_service(&pki).await;
    let next = Pki::new();
    let old_client = tls_client_config(&pki.ca.pem(), Some(pki.issue(uri(WEB))));
    let new_client = || tls_client_config(&pki.ca.pem(), Some(next.issue(uri(WEB))));
    let body = || exchange_form(&svc.issuer.svid(WEB, now(), 600), &[("resource", "orders")]);
    let stamp = SystemTime::now() + Duration::from_secs(3600);
    let write_at = |text: &str| {
        std::fs::write(&svc.ca_file, text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&svc.ca_file)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
    };
    // The rotated bundle is new CA + old CA; the reader catches it after the first.
    write_at(&next.ca.pem());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = post_token_tls(svc.addr, new_client(), &body()).await;
    // The writer finishes (same tick).
    write_at(&format!("{}{}", next.ca.pem(), pki.ca.pem()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = post_token_tls(svc.addr, new_client(), &body()).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The old CA is in the file: its (fresh, unresumed) client is a caller.
    let mut fresh = (*old_client).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    let r = post_token_tls(svc.addr, Arc::new(fresh), &body()).await;
    assert!(
        r.as_ref().is_some_and(|(s, _)| *s == 200),
        "a CA present in client_ca_file is refused: the bundle's completed write was never \
         re-read after a partial read: {r:?}"
    );
}
