//! The service over real sockets with the real TransitSigner against a real OpenBao:
//! every key type, key rotation under load, OpenBao paused and stopped mid-run, and
//! graceful shutdown with an exchange in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::server::{build_signer, serve_on};
use meshpass_exchange::signer::Signer;
use meshpass_testkit::OpenBao;
use serde_json::Value;

fn clear_vault_env() {
    meshpass_testkit::clear_vault_env_once();
}

/// A running service on a real socket.
struct Service {
    _dir: tempfile::TempDir,
    url: String,
    issuer: TestIssuer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Service {
    async fn start(bao: &OpenBao, key: &str, vault_extra: &str, extra: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(ISSUER, "spire-1");
        let timeout = if vault_extra.contains("request_timeout") {
            ""
        } else {
            "request_timeout = \"800ms\"\n"
        };
        let vault = format!(
            "address = \"{}\"\nauth = {{ method = \"token\", token = \"{}\" }}\nkey_name = \"{key}\"\npublish_lead = \"0s\"\n{timeout}{vault_extra}",
            bao.addr(),
            bao.root_token()
        );
        let cfg = load_config(
            dir.path(),
            &config_toml_vault(&issuer, &dir.path().join("m.db"), &vault, extra),
        );
        let signer = build_signer(&cfg).await.unwrap();
        let state = state_with(&cfg, signer as Arc<dyn Signer>, Arc::new(SystemClock)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_on(
                listener,
                state,
                async move {
                    let _ = rx.await;
                },
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        });
        Service {
            _dir: dir,
            url,
            issuer,
            stop: Some(tx),
            task,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        }
    }

    async fn exchange(
        &self,
        subject: &str,
        extra: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}/token", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .body(exchange_form(subject, extra))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn jwks(&self) -> Value {
        self.get_json("/.well-known/jwks.json").await.1
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Verifies a participant token against a JWKS: meshpass-core for ES*/PS*/RS*,
/// ed25519-dalek for EdDSA (which subject tokens may not use, so core does not).
fn verify_any(token: &str, jwks: &Value) -> (String, serde_json::Map<String, Value>) {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    if header["alg"] != "EdDSA" {
        return verify(token, jwks);
    }
    let kid = header["kid"].as_str().unwrap().to_string();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    vk.verify_strict(input.as_bytes(), &sig).unwrap();
    let payload = input.split('.').nth(1).unwrap();
    let claims: serde_json::Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    (kid, claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_openbao_signed_tokens_that_verify_against_the_published_jwks_for_every_key_type() {
    clear_vault_env();
    let bao = OpenBao::start();
    bao.enable_transit();
    let cases = [
        ("k-p256", "ecdsa-p256", "", "ES256"),
        ("k-p384", "ecdsa-p384", "", "ES384"),
        ("k-rsa-pss", "rsa-2048", "", "PS256"),
        ("k-rsa-pkcs1", "rsa-2048", "rsa_alg = \"RS256\"", "RS256"),
        ("k-ed25519", "ed25519", "", "EdDSA"),
    ];
    for (key, key_type, vault_extra, alg) in cases {
        bao.create_transit_key(key, key_type);
        let svc = Service::start(&bao, key, vault_extra, "").await;
        let t = now();
        let subject = svc.issuer.svid(WEB, t, 3600);
        let (status, headers, body) = svc
            .exchange(&subject, &[("resource", "payments"), ("scope", "read")])
            .await;
        assert_eq!(status, 200, "{key_type}: {body}");
        assert_eq!(headers["cache-control"], "no-store");
        let token = body["access_token"].as_str().unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg, "{key_type}");
        assert_eq!(header["kid"], format!("{key}:v1"));
        assert_eq!(header["typ"], "JWT");
        let (kid, claims) = verify_any(token, &svc.jwks().await);
        assert_eq!(kid, format!("{key}:v1"));
        assert_eq!(claims["sub"], WEB);
        assert_eq!(claims["scope"], "read");
        assert_eq!(claims["role_read"], true);
        let (_, oidc) = svc.get_json("/.well-known/openid-configuration").await;
        assert_eq!(oidc["id_token_signing_alg_values_supported"][0], alg);
        let (ready, r) = svc.get_json("/readyz").await;
        assert_eq!(ready, 200, "{r}");
        svc.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_while_exchanges_run_causes_no_failure_and_every_token_verifies_against_the_key_it_names(
) {
    clear_vault_env();
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("rot", "ecdsa-p256");
    let svc = Arc::new(
        Service::start(
            &bao,
            "rot",
            "key_refresh_interval = \"200ms\"",
            "[cache]\nenabled = false",
        )
        .await,
    );
    let failures = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let svc = svc.clone();
        let failures = failures.clone();
        workers.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                let subject = svc.issuer.svid(WEB, now() - (w * 10_000 + i) % 60, 3600);
                i += 1;
                let (status, _, body) = svc.exchange(&subject, &[("resource", "payments")]).await;
                if status != 200 {
                    eprintln!("exchange failed during rotation: {status} {body}");
                    failures.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let token = body["access_token"].as_str().unwrap().to_string();
                // The key a token names is in the JWKS as soon as the token exists.
                let jwks = svc.jwks().await;
                let (kid, _) = verify(&token, &jwks);
                tokens.push(kid);
            }
            tokens
        }));
    }
    let rotator = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(800));
        let v2 = bao.rotate_key("rot");
        std::thread::sleep(Duration::from_millis(1200));
        let v3 = bao.rotate_key("rot");
        (bao, v2, v3)
    });
    let mut kids = Vec::new();
    for w in workers {
        kids.extend(w.await.unwrap());
    }
    let (_bao, v2, v3) = rotator.await.unwrap();
    assert_eq!((v2, v3), (2, 3));
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "exchanges failed during rotation"
    );
    assert!(kids.len() > 20, "only {} exchanges ran", kids.len());
    for v in ["rot:v1", "rot:v2", "rot:v3"] {
        assert!(kids.iter().any(|k| k == v), "no token was signed with {v}");
    }
    Arc::try_unwrap(svc).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503_with_retry_after_while_openbao_is_paused_or_stopped_and_recovers_by_itself() {
    clear_vault_env();
    let mut bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("out", "ecdsa-p256");
    let svc = Service::start(
        &bao,
        "out",
        "key_refresh_interval = \"200ms\"",
        "[cache]\nenabled = false",
    )
    .await;
    let subject = svc.issuer.svid(WEB, now(), 3600);
    let form = [("resource", "payments")];
    assert_eq!(svc.exchange(&subject, &form).await.0, 200);

    bao.pause();
    let (status, headers, body) = svc.exchange(&subject, &form).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.contains_key("retry-after"));
    bao.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = svc.exchange(&subject, &form).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bao.stop();
    let (status, headers, body) = svc.exchange(&subject, &form).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.contains_key("retry-after"));
    // The signer counts as not ready once its Vault calls keep failing.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ready, r) = svc.get_json("/readyz").await;
        if ready == 503 {
            assert_eq!(r["signer"], "not ready", "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed 200 with OpenBao stopped: {r}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Dev-mode OpenBao comes back empty: re-create the mount and key.
    let bao = tokio::task::spawn_blocking(move || {
        bao.restart_same_port();
        bao.enable_transit();
        bao.create_transit_key("out", "ecdsa-p256");
        bao
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let (status, _, body) = svc.exchange(&subject, &form).await;
        if status == 200 {
            break body["access_token"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after restart: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    verify(&token, &svc.jwks().await);
    drop(bao);
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_but_finishes_the_exchange_in_flight() {
    clear_vault_env();
    let mut bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("grace", "ecdsa-p256");
    let svc = Service::start(&bao, "grace", "request_timeout = \"5s\"", "").await;
    let subject = svc.issuer.svid(WEB, now(), 3600);
    assert_eq!(
        svc.exchange(&subject, &[("resource", "orders")]).await.0,
        200
    );
    // Hold the next exchange inside Vault, then ask the server to stop.
    bao.pause();
    let http = svc.http.clone();
    let url = format!("{}/token", svc.url);
    let body = exchange_form(&subject, &[("resource", "payments")]);
    let in_flight = tokio::spawn(async move {
        http.post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = svc.url.clone();
    let shutdown = tokio::spawn(svc.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused once shutdown started.
    let fresh = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted during shutdown"
    );
    bao.resume();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    shutdown.await.unwrap();
}

/// Before the signer has read its key (Vault down at start),
/// the JWKS is not an empty key set a verifier would cache for `jwks_max_age_secs` and
/// then refuse every participant token with: 503, `Retry-After`, nothing cacheable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_unavailable_not_empty_until_the_signing_key_is_read() {
    clear_vault_env();
    let mut bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("k-later", "ecdsa-p256");
    bao.pause();
    let svc = Service::start(&bao, "k-later", "", "").await;
    let r = svc
        .http
        .get(format!("{}/.well-known/jwks.json", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.headers());
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    assert_eq!(r.headers()["cache-control"], "no-store");
    bao.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, jwks) = svc.get_json("/.well-known/jwks.json").await;
        if st == 200 {
            assert_eq!(jwks["keys"][0]["kid"], "k-later:v1", "{jwks}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never published: {st} {jwks}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    svc.shutdown().await;
}
