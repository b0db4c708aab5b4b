//! What the service publishes (JWKS, discovery) and how it fetches the
//! subject-token issuers' keys. Issuer endpoints are stand-in HTTP servers on loopback
//! speaking real HTTP; Vault is a real OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get as route_get;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::signer::Signer;
use serde_json::json;

#[derive(Clone)]
struct Doc {
    body: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn doc_route(State(s): State<Doc>) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    (StatusCode::OK, s.body.lock().unwrap().clone())
}

/// A JWKS endpoint on loopback serving `body` at `/jwks`.
async fn jwks_server(body: String) -> (String, Doc) {
    let s = Doc {
        body: Arc::new(Mutex::new(body)),
        up: Arc::new(AtomicBool::new(true)),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let router = Router::new()
        .route("/jwks", route_get(doc_route))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, s)
}

fn issuer_toml(issuer: &TestIssuer, db: &std::path::Path, keys: &str, extra: &str) -> String {
    config_toml(issuer, db, extra).replace(&format!("jwks = '{}'", issuer.jwks()), keys)
}

/// The service's state with `issuer`'s keys from `keys` (its key-source lines).
async fn state_fetching(
    issuer: &TestIssuer,
    keys: &str,
) -> (tempfile::TempDir, meshpass_exchange::state::AppState) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(
        dir.path(),
        &issuer_toml(issuer, &dir.path().join("m.db"), keys, ""),
    );
    (
        dir,
        state_with(&cfg, signer().await, Arc::new(SystemClock)).await,
    )
}

/// A SPIFFE trust bundle (SPIFFE Trust Domain and Bundle spec §4, as SPIRE's bundle
/// endpoint serves it): an X.509 authority (`use: x509-svid`, with `x5c`) and the
/// JWT-SVID signing key of `issuer` (`use: jwt-svid`, no `alg`).
fn spiffe_bundle(issuer: &TestIssuer) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let raw = ca_key.public_key_raw();
    assert_eq!(raw.len(), 65);
    let x509 = json!({
        "use": "x509-svid", "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        "x5c": [STANDARD.encode(ca.der())],
    });
    let mut jwt = issuer.jwk();
    let o = jwt.as_object_mut().unwrap();
    o.remove("alg");
    o.insert("use".into(), json!("jwt-svid"));
    json!({"keys": [x509, jwt], "spiffe_sequence": 7, "spiffe_refresh_hint": 300}).to_string()
}

/// JWT-SVID issuers are SPIRE servers: their keys come as a SPIFFE bundle, whose JWT
/// keys say `use: "jwt-svid"` (SPIFFE JWT-SVID spec §7; the X.509 authorities beside
/// them `x509-svid`). The README and examples/local.toml say to point `jwks_url` at the
/// SPIRE bundle endpoint: its JWT-SVID keys must verify JWT-SVIDs (and only they).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_bundle_from_the_spire_bundle_endpoint_verifies_jwt_svids_signed_by_its_jwt_svid_key(
) {
    let issuer = TestIssuer::new(ISSUER, "C6vs25welZOx6WksNYfbMfiw9l96pMnD");
    let (url, _srv) = jwks_server(spiffe_bundle(&issuer)).await;
    let (_dir, state) = state_fetching(&issuer, &format!("jwks_url = \"{url}/jwks\"")).await;
    let status = state.keys.status();
    let app = meshpass_exchange::app(state);
    let a = post_token(
        &app,
        exchange_form(&issuer.svid(WEB, now(), 600), &[("resource", "payments")]),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a JWT-SVID signed by the bundle's jwt-svid key was refused: {} (issuer keys: {status:?})",
        a.json
    );
}

/// Before the signer has read its key, the JWKS answers 503 + no-store rather than an
/// empty set a verifier would cache. The OIDC discovery document must not do what the
/// JWKS refuses to: publish, cacheable for max-age, an empty
/// `id_token_signing_alg_values_supported` (a REQUIRED, non-empty member in OIDC
/// Discovery §3; libraries such as go-oidc fall back to RS256 only when it is empty, so
/// every ES256 participant token would be refused for as long as they cache it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discovery_document_is_never_published_cacheable_without_signing_algorithms() {
    meshpass_testkit::clear_vault_env_once();
    let mut bao = meshpass_testkit::OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key("k-later", "ecdsa-p256");
    bao.pause();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let dir = tempfile::tempdir().unwrap();
    let vault = format!(
        "address = \"{}\"\nauth = {{ method = \"token\", token = \"{}\" }}\nkey_name = \"k-later\"\npublish_lead = \"0s\"\nrequest_timeout = \"800ms\"\n",
        bao.addr(),
        bao.root_token()
    );
    let cfg = load_config(
        dir.path(),
        &config_toml_vault(&issuer, &dir.path().join("m.db"), &vault, ""),
    );
    let signer = meshpass_exchange::server::build_signer(&cfg).await.unwrap();
    assert!(!signer.is_ready());
    let state = state_with(&cfg, signer as Arc<dyn Signer>, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    // The JWKS refuses (the existing contract).
    let jwks = get(&app, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::SERVICE_UNAVAILABLE);
    let d = get(&app, "/.well-known/openid-configuration").await;
    let algs = d.json["id_token_signing_alg_values_supported"].clone();
    let cacheable = d
        .headers
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let empty = algs.as_array().is_none_or(Vec::is_empty);
    assert!(
        !(d.status == StatusCode::OK && empty),
        "discovery answered {} with id_token_signing_alg_values_supported = {algs} and Cache-Control: {cacheable}",
        d.status
    );
    drop(bao);
}

/// An issuer whose JWKS endpoint was down when the service started has no keys; once
/// the endpoint is back, a subject token of that issuer must trigger the (rate-limited)
/// refetch as an unknown `kid` does, not get 503 until the background backoff (which
/// doubles up to `refresh_secs`, 300 s by default) happens to come round again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_whose_jwks_was_down_at_start_is_refetched_by_the_first_token_once_it_is_back() {
    let issuer = TestIssuer::new(ISSUER, "k1");
    let (url, srv) = jwks_server(issuer.jwks()).await;
    srv.up.store(false, Ordering::SeqCst);
    let keys = format!("jwks_url = \"{url}/jwks\"\nrefresh_secs = 300\nmin_refetch_secs = 1");
    let (_dir, state) = state_fetching(&issuer, &keys).await;
    let source = state.keys.clone();
    let app = meshpass_exchange::app(state);
    // Background attempts at about 0, 1, 3 and 7 s; the next one is due at about 15 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while srv.hits.load(Ordering::SeqCst) < 4 {
        assert!(std::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(source.status()[0].keys, 0);
    srv.up.store(true, Ordering::SeqCst);
    let a = post_token(
        &app,
        exchange_form(&issuer.svid(WEB, now(), 600), &[("resource", "payments")]),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "the JWKS endpoint is back but the exchange answered {} {} (fetches so far: {})",
        a.status,
        a.json,
        srv.hits.load(Ordering::SeqCst)
    );
}

/// `token.issuer` may carry a path and the documents then advertise `jwks_uri` and
/// `token_endpoint` under it, and OIDC libraries look for
/// `{issuer}/.well-known/openid-configuration`: the service answers there (and at RFC
/// 8414's location), not only at the root. A path that is no plain segments is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_a_path_serves_its_documents_where_they_are_advertised() {
    let issuer = TestIssuer::new(ISSUER, "k1");
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        &format!("issuer = \"{SERVICE_ISSUER}\""),
        "issuer = \"http://127.0.0.1:8080/exchange\"",
    );
    let path = dir.path().join("meshpass.toml");
    std::fs::write(&path, &toml).unwrap();
    for bad in ["/.well-known", "/a/../b", "/a%2Fb", "/a//b"] {
        let t = toml.replace("8080/exchange", &format!("8080{bad}"));
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, &t).unwrap();
        let e = meshpass_exchange::config::Config::load(Some(&p)).unwrap_err();
        assert!(e.to_string().contains("token.issuer"), "{bad}: {e}");
    }
    let cfg = meshpass_exchange::config::Config::load(Some(&path)).unwrap();
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let root = get(&app, "/.well-known/openid-configuration").await;
    let jwks_uri = root.json["jwks_uri"].as_str().unwrap_or("").to_string();
    let mut failures = Vec::new();
    for p in [
        "/exchange/.well-known/openid-configuration".to_string(),
        // RFC 8414 §3.1: well-known suffix between host and path.
        "/.well-known/oauth-authorization-server/exchange".to_string(),
        jwks_uri
            .trim_start_matches("http://127.0.0.1:8080")
            .to_string(),
    ] {
        let a = call(&app, Request::get(&p).body(Body::empty()).unwrap()).await;
        if a.status != StatusCode::OK {
            failures.push(format!("GET {p} -> {}", a.status));
        }
    }
    assert!(
        failures.is_empty(),
        "issuer http://127.0.0.1:8080/exchange accepted, documents advertise jwks_uri {jwks_uri}, but {failures:?}"
    );
}

/// Probes of behaviour read as correct (kept as regression checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_and_content_types_of_the_published_documents() {
    let issuer = TestIssuer::new(ISSUER, "k1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    for (p, ct) in [
        ("/.well-known/jwks.json", "application/jwk-set+json"),
        ("/.well-known/openid-configuration", "application/json"),
        (
            "/.well-known/oauth-authorization-server",
            "application/json",
        ),
    ] {
        let a = call(&app, Request::head(p).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "HEAD {p}");
        assert_eq!(a.headers["content-type"], ct, "HEAD {p}");
        assert_eq!(a.headers["cache-control"], "public, max-age=60", "HEAD {p}");
        let g = get(&app, p).await;
        assert_eq!(g.headers["content-type"], ct, "GET {p}");
        if p.ends_with("jwks.json") {
            for k in g.json["keys"].as_array().unwrap() {
                assert_eq!(k["use"], "sig");
                assert_eq!(k["alg"], "ES256");
                assert_eq!(k["crv"], "P-256");
            }
        } else {
            assert_eq!(g.json["issuer"], SERVICE_ISSUER);
        }
    }
}
