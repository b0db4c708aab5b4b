//! The signing path and the minted-token cache when Vault's key or answers go wrong,
//! against a real OpenBao: a token the service hands out verifies under the JWKS it
//! publishes now, whether just signed or served again from the cache (the key re-created
//! under its name, a version taken out of the JWKS, the key's type changed); a Vault
//! answer is read to a bound, never whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshpass_core::{CompactJws, KeySet};
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::vault::{TransitSigner, VaultConfig};
use meshpass_testkit::OpenBao;
use serde_json::Value;

/// Whether `token` verifies under `jwks` (by its `kid`), as any verifier would check it.
fn verifies(token: &str, jwks: &Value) -> Result<String, String> {
    let (set, _) = KeySet::parse(jwks.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let jws = CompactJws::parse(token, 64 * 1024).map_err(|e| e.to_string())?;
    let kid = jws.header.kid.clone().unwrap_or_default();
    let key = set
        .select(Some(&kid), jws.header.alg)
        .map_err(|e| format!("kid {kid} is not published: {e}"))?;
    jws.verify(key)
        .map_err(|e| format!("kid {kid}: signature does not verify: {e}"))?;
    Ok(kid)
}

/// A signer on a new transit key of the shared OpenBao, kept as `TransitSigner` so the
/// test can make it re-read its key.
async fn transit_signer(bao: &OpenBao) -> (Arc<TransitSigner>, String) {
    meshpass_testkit::clear_vault_env_once();
    let key = new_transit_key(bao);
    let cfg = VaultConfig {
        // A long interval: the test decides when the key is re-read.
        key_refresh_interval: Duration::from_secs(3600),
        ..signer_config(bao, &key)
    };
    let signer = Arc::new(TransitSigner::start(&cfg).await.unwrap());
    assert!(signer.is_ready());
    (signer, key)
}

/// The app on `signer` with the common configuration (minted-token cache on, default).
async fn app_on(
    signer: Arc<TransitSigner>,
    dir: &std::path::Path,
    issuer: &TestIssuer,
) -> axum::Router {
    let cfg = load_config(dir, &config_toml(issuer, &dir.join("m.db"), ""));
    let state = state_with(&cfg, signer as Arc<dyn Signer>, Arc::new(SystemClock)).await;
    meshpass_exchange::app(state)
}

/// Exchanges `form`; (status, access token if any, whole body).
async fn exchange(app: &axum::Router, form: &str) -> (u16, Option<String>, Value) {
    let a = post_token(app, form.to_string()).await;
    let token = a.json["access_token"].as_str().map(str::to_string);
    (a.status.as_u16(), token, a.json)
}

/// A service on a new transit key, with the common configuration.
struct Service {
    signer: Arc<TransitSigner>,
    key: String,
    issuer: TestIssuer,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

async fn service(bao: &OpenBao) -> Service {
    let (signer, key) = transit_signer(bao).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let app = app_on(signer.clone(), dir.path(), &issuer).await;
    Service {
        signer,
        key,
        issuer,
        app,
        _dir: dir,
    }
}

impl Service {
    /// Mints one participant token (which the minted-token cache now holds), checked to
    /// verify under the published `v1`; the form that asks for it again, and the token.
    async fn mint_cached(&self) -> (String, String) {
        let subject = self.issuer.svid(WEB, now(), 3600);
        let form = exchange_form(&subject, &[("resource", "payments")]);
        let (status, first, body) = exchange(&self.app, &form).await;
        assert_eq!(status, 200, "{body}");
        let first = first.unwrap();
        assert_eq!(
            verifies(&first, &get(&self.app, "/.well-known/jwks.json").await.json).unwrap(),
            format!("{}:v1", self.key)
        );
        (form, first)
    }

    /// Deletes the transit key and creates another of `key_type` under its name.
    fn recreate_key(&self, bao: &OpenBao, key_type: &str) {
        let key = &self.key;
        bao.api_ok(
            "POST",
            &format!("transit/keys/{key}/config"),
            Some(serde_json::json!({"deletion_allowed": true})),
        );
        bao.api_ok("DELETE", &format!("transit/keys/{key}"), None);
        bao.create_transit_key(key, key_type);
    }
}

/// The transit key is deleted and re-created under its name (an operator mistake, a dev
/// server re-provisioned, a restore): `v1` now holds other material, which the service
/// publishes under `kid` `…:v1` once it re-reads the key. A participant token minted
/// before, with the old material, verifies under no key the service publishes any more;
/// the minted-token cache must not keep handing it out (a new mint, or a 503 while the
/// new material waits out its lead, are both fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_signed_by_key_material_no_longer_published_is_not_served_again() {
    let bao = OpenBao::shared();
    let svc = service(bao).await;
    let (form, first) = svc.mint_cached().await;

    // Re-create the key under the same name, and let the service read it again.
    svc.recreate_key(bao, "ecdsa-p256");
    svc.signer.refresh().await.unwrap();
    let jwks = get(&svc.app, "/.well-known/jwks.json").await.json;
    assert!(
        verifies(&first, &jwks).is_err(),
        "setup: the re-created key should publish other material under the same kid"
    );

    let (status, again, body) = exchange(&svc.app, &form).await;
    if status == 200 {
        let again = again.unwrap();
        let served_cached = again == first;
        if let Err(e) = verifies(&again, &jwks) {
            panic!(
                "the service answered 200 with a participant token that does not verify under \
                 the JWKS it publishes ({e}); it is the token minted before the key was \
                 re-created, served from the minted-token cache: {served_cached}"
            );
        }
    } else {
        assert_eq!(status, 503, "{body}");
    }
}

/// A version is taken out of the JWKS in Vault (`min_decryption_version` raised, the
/// documented way to stop a leaked version, done by an operator with the Vault CLI). The
/// service publishes it no more once it re-reads the key; a participant token that
/// version signed must not be served from the minted-token cache afterwards: every
/// verifier refuses its unknown `kid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_whose_signing_version_was_unpublished_is_not_served_again() {
    let bao = OpenBao::shared();
    let svc = service(bao).await;
    let key = &svc.key;
    let (form, first) = svc.mint_cached().await;

    // Rotate (no publish lead in these tests: v2 signs at once) and retire v1 in Vault.
    assert_eq!(bao.rotate_key(key), 2);
    bao.api_ok(
        "POST",
        &format!("transit/keys/{key}/config"),
        Some(serde_json::json!({"min_decryption_version": 2})),
    );
    svc.signer.refresh().await.unwrap();
    let jwks = get(&svc.app, "/.well-known/jwks.json").await.json;
    assert!(
        verifies(&first, &jwks).is_err(),
        "setup: v1 should not be published any more: {jwks}"
    );

    let (status, again, body) = exchange(&svc.app, &form).await;
    assert_eq!(status, 200, "{body}");
    let again = again.unwrap();
    if let Err(e) = verifies(&again, &jwks) {
        panic!(
            "the service answered 200 with a participant token whose key it no longer \
             publishes ({e}); served from the minted-token cache: {}",
            again == first
        );
    }
}

/// The transit key is re-created under its name with another type (ecdsa-p256 →
/// ecdsa-p384). The signer refuses to load a key whose type changed and keeps the old
/// one, but Vault now signs `key_version = 1` with the new material: every signature
/// has the wrong size. README (Outages): a Vault that answers but cannot sign with the
/// key makes `/token` answer 503 + `Retry-After` and `/readyz` not ready, never a
/// replica that stays in the load balancer answering `500 server_error` to every
/// exchange until it is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transit_key_recreated_with_another_type_makes_exchanges_503_not_500_behind_a_ready_probe(
) {
    let bao = OpenBao::shared();
    let svc = service(bao).await;
    let (app, issuer) = (&svc.app, &svc.issuer);
    svc.mint_cached().await;

    svc.recreate_key(bao, "ecdsa-p384");
    let refreshed = svc.signer.refresh().await;
    eprintln!("key re-read: {refreshed:?}");

    // A new subject token each time: no cached answer.
    let mut seen = Vec::new();
    for i in 0..3 {
        let form = exchange_form(
            &issuer.svid(WEB, now(), 3000 + i),
            &[("resource", "payments")],
        );
        let a = post_token(app, form).await;
        let ready = get(app, "/readyz").await;
        seen.push(format!(
            "/token {} {} (Retry-After {:?}); /readyz {} {}",
            a.status,
            a.json,
            a.headers.get("retry-after"),
            ready.status,
            ready.json
        ));
        let ok = a.status == 200
            && verifies(
                a.json["access_token"].as_str().unwrap(),
                &get(app, "/.well-known/jwks.json").await.json,
            )
            .is_ok();
        let unavailable = a.status == 503 && a.headers.contains_key("retry-after");
        assert!(
            ok || unavailable,
            "after the key was re-created with another type, expected a verifiable token \
             or 503 + Retry-After, got:\n{}",
            seen.join("\n")
        );
        if unavailable {
            assert_ne!(ready.status, 200, "{}", seen.join("\n"));
        }
    }
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A relay to `bao` that answers every `transit/sign` with `503` and a valid JSON error
/// document of `huge` bytes, streamed (the relay never holds it), everything else
/// forwarded.
async fn huge_sign_answers(bao: &OpenBao, huge: usize) -> String {
    use axum::body::{Body, Bytes};
    use axum::http::{Request, Response};
    let target = bao.addr();
    let http = reqwest::Client::new();
    let handler = move |req: Request<Body>| {
        let (target, http) = (target.clone(), http.clone());
        async move {
            let method = req.method().clone();
            let pq = req.uri().path_and_query().unwrap().as_str().to_string();
            if method == axum::http::Method::POST && pq.starts_with("/v1/transit/sign/") {
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                let n = huge >> 20;
                let parts = std::iter::once(Bytes::from_static(b"{\"errors\":[\""))
                    .chain(std::iter::repeat_n(chunk, n))
                    .chain(std::iter::once(Bytes::from_static(b"\"]}")))
                    .map(Ok::<_, std::io::Error>);
                return Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(futures_util::stream::iter(parts)))
                    .unwrap();
            }
            let headers = req.headers().clone();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let mut r = http.request(
                reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
                format!("{target}{pq}"),
            );
            for (k, v) in headers.iter() {
                if k != "host" && k != "content-length" {
                    r = r.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = r.body(body.to_vec()).send().await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .unwrap()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// Vault (or the load balancer in front of it) answers `transit/sign` with a 5xx whose
/// body is huge. The exchange rightly answers 503 + `Retry-After`, but the Vault client
/// reads the whole body into memory (and copies Vault's `errors` into the error it logs)
/// with no bound, where every other upstream answer is capped (issuer JWKS and
/// discovery: 1 MiB, `keys.rs`; TokenReview: 1 MiB, `tokenreview.rs`). One such answer
/// costs hundreds of MiB per request in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_answer_from_vault_is_not_read_into_memory_whole() {
    let bao = OpenBao::shared();
    meshpass_testkit::clear_vault_env_once();
    let key = new_transit_key(bao);
    const HUGE: usize = 128 << 20;
    let relay = huge_sign_answers(bao, HUGE).await;
    let cfg = VaultConfig {
        address: Some(relay),
        key_refresh_interval: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(30),
        ..signer_config(bao, &key)
    };
    let signer = Arc::new(TransitSigner::start(&cfg).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let app = app_on(signer, dir.path(), &issuer).await;

    let before = peak_rss();
    let a = post_token(
        &app,
        exchange_form(&issuer.svid(WEB, now(), 3600), &[("resource", "payments")]),
    )
    .await;
    let grown = peak_rss().saturating_sub(before);
    assert_eq!(a.status, 503, "{}", a.json);
    assert!(a.headers.contains_key("retry-after"));
    assert!(
        grown < 32 << 20,
        "one {} MiB error answer from Vault raised this process's peak memory by {} MiB: \
         the Vault client reads (and copies) answers without a size limit",
        HUGE >> 20,
        grown >> 20
    );
}
