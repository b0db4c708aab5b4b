//! Issuer keys from a JWKS URL and OIDC discovery (a local HTTP server on a real
//! socket), and Kubernetes TokenReview against a local double speaking the real
//! `authentication.k8s.io/v1` JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::config::Config;
use meshpass_exchange::keys::{IssuerKeySource, IssuerKeys};
use serde_json::{json, Value};

#[derive(Clone)]
struct Jwks {
    doc: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    bearer: Arc<Mutex<Option<String>>>,
    base: Arc<Mutex<String>>,
}

async fn jwks_route(State(s): State<Jwks>, headers: HeaderMap) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    *s.bearer.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    if !s.up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    (StatusCode::OK, s.doc.lock().unwrap().clone())
}

async fn discovery_route(State(s): State<Jwks>) -> Json<Value> {
    let base = s.base.lock().unwrap().clone();
    Json(json!({"issuer": ISSUER, "jwks_uri": format!("{base}/openid/v1/jwks")}))
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

async fn jwks_server(doc: String) -> (String, Jwks) {
    let s = Jwks {
        doc: Arc::new(Mutex::new(doc)),
        up: Arc::new(AtomicBool::new(true)),
        hits: Arc::new(AtomicUsize::new(0)),
        bearer: Arc::new(Mutex::new(None)),
        base: Arc::new(Mutex::new(String::new())),
    };
    let router = Router::new()
        .route("/jwks", get(jwks_route))
        .route("/openid/v1/jwks", get(jwks_route))
        .route("/.well-known/openid-configuration", get(discovery_route))
        .with_state(s.clone());
    let url = serve(router).await;
    *s.base.lock().unwrap() = url.clone();
    (url, s)
}

fn issuer_toml(issuer: &TestIssuer, db: &std::path::Path, keys: &str, extra: &str) -> String {
    // Replace the inline JWKS of the standard config by `keys`.
    config_toml(issuer, db, extra).replace(&format!("jwks = '{}'", issuer.jwks()), keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_good_keys_when_the_jwks_url_fails_and_refetches_an_unknown_kid_at_most_once_per_interval(
) {
    let issuer = TestIssuer::new(ISSUER, "k1");
    let (url, srv) = jwks_server(issuer.jwks()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("jwks_url = \"{url}/jwks\"\nrefresh_secs = 1\nmin_refetch_secs = 30");
    let cfg = load_config(
        dir.path(),
        &issuer_toml(&issuer, &dir.path().join("m.db"), &keys, ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let source = state.keys.clone();
    assert_eq!(source.status()[0].keys, 1);
    let app = meshpass_exchange::app(state);
    let subject = issuer.svid(WEB, now(), 3600);
    assert_eq!(
        post_token(&app, exchange_form(&subject, &[("resource", "payments")]))
            .await
            .status,
        200
    );

    // The JWKS endpoint fails: the keys loaded before keep working.
    srv.up.store(false, Ordering::SeqCst);
    let hits = srv.hits.load(Ordering::SeqCst);
    // Wait until a background refresh has actually failed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.hits.load(Ordering::SeqCst) == hits {
        assert!(std::time::Instant::now() < deadline, "no refresh attempt");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let fresh = issuer.svid(WEB, now() - 1, 3600);
    assert_eq!(
        post_token(&app, exchange_form(&fresh, &[("resource", "payments")]))
            .await
            .status,
        200
    );
    assert_eq!(source.snapshot()[ISSUER].len(), 1);

    // A token with an unknown kid: one refetch, then none for min_refetch_secs.
    srv.up.store(true, Ordering::SeqCst);
    let rotated = TestIssuer::new(ISSUER, "k2");
    *srv.doc.lock().unwrap() = json!({"keys": [issuer.jwk(), rotated.jwk()]}).to_string();
    let before = srv.hits.load(Ordering::SeqCst);
    assert!(before >= hits);
    let t2 = rotated.svid(WEB, now(), 3600);
    let a = post_token(&app, exchange_form(&t2, &[("resource", "payments")])).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let unknown = TestIssuer::new(ISSUER, "k3");
    let after_first = srv.hits.load(Ordering::SeqCst);
    for i in 0..5 {
        let t3 = unknown.svid(WEB, now() - i, 3600);
        let a = post_token(&app, exchange_form(&t3, &[("resource", "payments")])).await;
        assert_eq!(a.json["error"], "invalid_grant");
    }
    // The background refresh (every second) may have run meanwhile, but the five
    // unknown-kid requests did not each trigger a fetch.
    let extra = srv.hits.load(Ordering::SeqCst) - after_first;
    assert!(extra <= 2, "{extra} fetches for five unknown-kid requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_the_jwks_uri_through_openid_configuration_sending_the_bearer_token() {
    let issuer = TestIssuer::new(ISSUER, "sa-key");
    let (url, srv) = jwks_server(issuer.jwks()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "projected-sa-token\n").unwrap();
    let keys = format!(
        "discovery_url = \"{url}\"\nbearer_token_file = \"{}\"",
        token_file.display()
    );
    let cfg = load_config(
        dir.path(),
        &issuer_toml(&issuer, &dir.path().join("m.db"), &keys, ""),
    );
    let source = IssuerKeys::from_config(&cfg).unwrap();
    source.refresh_all().await;
    assert_eq!(source.status()[0].keys, 1);
    assert!(source.status()[0].age_secs.unwrap() < 5.0);
    assert_eq!(
        srv.bearer.lock().unwrap().as_deref(),
        Some("Bearer projected-sa-token")
    );
}

/// A discovery endpoint whose document says `issuer` and `jwks_uri` as given.
async fn discovery_server(issuer: &str, jwks_uri: &str) -> String {
    let doc = json!({"issuer": issuer, "jwks_uri": jwks_uri});
    serve(Router::new().route(
        "/.well-known/openid-configuration",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc) }
        }),
    ))
    .await
}

fn discovery_keys(url: &str, dir: &std::path::Path) -> String {
    let token_file = dir.join("token");
    std::fs::write(&token_file, "projected-sa-token\n").unwrap();
    format!(
        "discovery_url = \"{url}\"\nbearer_token_file = \"{}\"",
        token_file.display()
    )
}

/// The issuer's keys through `discovery_url = url`, after one refresh.
async fn discovered(issuer: &TestIssuer, url: &str) -> std::sync::Arc<IssuerKeys> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(
        dir.path(),
        &issuer_toml(
            issuer,
            &dir.path().join("m.db"),
            &discovery_keys(url, dir.path()),
            "",
        ),
    );
    let source = IssuerKeys::from_config(&cfg).unwrap();
    source.refresh_all().await;
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_is_never_sent_to_a_jwks_uri_on_another_origin() {
    let issuer = TestIssuer::new(ISSUER, "sa-key");
    let (keys_url, keys_srv) = jwks_server(issuer.jwks()).await;
    let discovery = discovery_server(ISSUER, &format!("{keys_url}/openid/v1/jwks")).await;
    let source = discovered(&issuer, &discovery).await;
    // The keys are fetched (the JWKS is public there)...
    assert_eq!(source.status()[0].keys, 1);
    assert!(keys_srv.hits.load(Ordering::SeqCst) >= 1);
    // ...but without the token meant for the discovery origin.
    assert_eq!(keys_srv.bearer.lock().unwrap().as_deref(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_url_naming_the_document_itself_finds_the_keys_as_the_base_url_does() {
    let issuer = TestIssuer::new(ISSUER, "sa-key");
    let (keys_url, keys_srv) = jwks_server(issuer.jwks()).await;
    let discovery = discovery_server(ISSUER, &format!("{keys_url}/openid/v1/jwks")).await;
    for url in [
        discovery.clone(),
        format!("{discovery}/.well-known/openid-configuration"),
    ] {
        let source = discovered(&issuer, &url).await;
        assert_eq!(source.status()[0].keys, 1, "{url}");
    }
    assert!(keys_srv.hits.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let issuer = TestIssuer::new(ISSUER, "sa-key");
    let (keys_url, keys_srv) = jwks_server(issuer.jwks()).await;
    let discovery = discovery_server(
        "https://impostor.example",
        &format!("{keys_url}/openid/v1/jwks"),
    )
    .await;
    let source = discovered(&issuer, &discovery).await;
    assert_eq!(source.status()[0].keys, 0);
    assert_eq!(keys_srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refuses_plain_http_key_urls_that_are_not_loopback() {
    let issuer = TestIssuer::new(ISSUER, "k");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshpass.toml");
    let toml = issuer_toml(
        &issuer,
        &dir.path().join("m.db"),
        "jwks_url = \"http://keys.example.com/jwks\"",
        "",
    );
    std::fs::write(&path, toml).unwrap();
    let err = meshpass_exchange::config::Config::load(Some(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("issuers[0].jwks_url"), "{err}");
}

/// The Kubernetes API server's TokenReview endpoint, as far as the service uses it.
#[derive(Clone, Default)]
struct ApiServer {
    reviews: Arc<Mutex<Vec<Value>>>,
    answer: Arc<Mutex<Value>>,
    auth: Arc<Mutex<Option<String>>>,
}

async fn token_review(
    State(s): State<ApiServer>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    *s.auth.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    s.reviews.lock().unwrap().push(body.clone());
    let mut answer = body;
    answer["status"] = s.answer.lock().unwrap().clone();
    if answer["status"].is_null() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"kind": "Status", "status": "Failure"})),
        );
    }
    (StatusCode::CREATED, Json(answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_accepts_only_authenticated_tokens_of_the_same_user_for_a_requested_audience()
{
    let api = ApiServer::default();
    let url = serve(
        Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .with_state(api.clone()),
    )
    .await;
    let issuer = TestIssuer::new("https://kubernetes.default.svc.cluster.local", "sa");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "exchange-sa-token").unwrap();
    let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
        &format!("jwks = '{}'", issuer.jwks()),
        &format!(
            "jwks = '{}'\nsubject_format = \"kubernetes_service_account\"\ntoken_review = {{ url = \"{url}\", bearer_token_file = \"{}\" }}",
            issuer.jwks(),
            token_file.display()
        ),
    );
    let cfg = load_config(dir.path(), &toml);
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let t = now();
    let sa_token = |i: u64| {
        issuer.sign(&json!({
            "iss": issuer.iss, "sub": "system:serviceaccount:shop:web", "aud": ["meshpass"],
            "iat": t - i, "exp": t + 3600,
        }))
    };
    let user = json!({"username": "system:serviceaccount:shop:web", "uid": "1234", "groups": ["system:serviceaccounts"]});

    *api.answer.lock().unwrap() =
        json!({"authenticated": true, "user": user, "audiences": ["meshpass"]});
    let a = post_token(
        &app,
        exchange_form(&sa_token(0), &[("resource", "payments")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let review = api.reviews.lock().unwrap().last().unwrap().clone();
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["spec"]["token"], sa_token(0));
    assert_eq!(review["spec"]["audiences"], json!(["meshpass"]));
    assert_eq!(
        api.auth.lock().unwrap().as_deref(),
        Some("Bearer exchange-sa-token")
    );
    let jwks = common::get(&app, "/.well-known/jwks.json").await.json;
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &jwks);
    assert_eq!(claims["sub"], WEB);

    for (i, status) in [
        json!({"authenticated": false, "error": "token has been invalidated"}),
        json!({"authenticated": true, "user": user, "audiences": ["kubernetes"]}),
        json!({"authenticated": true, "user": user}),
        json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop:admin"}, "audiences": ["meshpass"]}),
    ]
    .into_iter()
    .enumerate()
    {
        *api.answer.lock().unwrap() = status.clone();
        let a = post_token(&app, exchange_form(&sa_token(i as u64 + 1), &[("resource", "payments")])).await;
        assert_eq!(a.status, 400, "{status}: {}", a.json);
        assert_eq!(a.json["error"], "invalid_grant", "{status}");
    }

    *api.answer.lock().unwrap() = Value::Null; // the API server fails
    let a = post_token(
        &app,
        exchange_form(&sa_token(10), &[("resource", "payments")]),
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.json);
    assert_eq!(a.json["error"], "temporarily_unavailable");
    assert!(a.headers.contains_key("retry-after"));
}

fn has_kid(keys: &IssuerKeys, kid: &str) -> bool {
    keys.snapshot()
        .get(ISSUER)
        .is_some_and(|s| s.keys().iter().any(|k| k.kid.as_deref() == Some(kid)))
}

async fn serve_router(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// A URL may carry a credential (reqwest sends `user:pass@` as Basic auth): errors and
/// logs show the URL without it.
#[tokio::test(flavor = "current_thread")]
async fn a_password_in_the_jwks_url_never_reaches_the_log() {
    let router = Router::new().route(
        "/jwks",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, String::new()) }),
    );
    let url = serve_router(router).await;
    let with_secret = url.replace("http://", "http://jwks:s3cr3t-pw@");
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k");
    let cfg = load_config(
        dir.path(),
        &issuer_toml(
            &issuer,
            &dir.path().join("m.db"),
            &format!("jwks_url = \"{with_secret}/jwks\""),
            "",
        ),
    );
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    let buf = LogBuf::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let _g = tracing::subscriber::set_default(sub);
    keys.refresh_all().await;
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("loading issuer keys failed"),
        "no log line: {log}"
    );
    assert!(
        !log.contains("s3cr3t-pw"),
        "the URL's password is logged: {log}"
    );
}

/// A slow background refresh that started before an unknown-kid refetch must not store
/// its older answer over the refetched keys (one fetch-and-store per issuer at a time).
#[derive(Clone)]
struct Slow {
    doc: Arc<Mutex<String>>,
    slow: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn slow_jwks(State(s): State<Slow>) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    // The answer is what the issuer published when the request arrived.
    let doc = s.doc.lock().unwrap().clone();
    if s.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    (StatusCode::OK, doc)
}

/// A JWKS endpoint publishing `issuer`'s keys (fast until told to be slow): its URL.
async fn slow_server(issuer: &TestIssuer) -> (String, Slow) {
    let s = Slow {
        doc: Arc::new(Mutex::new(issuer.jwks())),
        slow: Arc::new(AtomicBool::new(false)),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let url = serve(
        Router::new()
            .route("/jwks", get(slow_jwks))
            .with_state(s.clone()),
    )
    .await;
    (url, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_refresh_does_not_replace_newer_keys_loaded_by_an_unknown_kid_refetch() {
    let k1 = TestIssuer::new(ISSUER, "k1");
    let k2 = TestIssuer::new(ISSUER, "k2");
    let (url, s) = slow_server(&k1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_config(
        dir.path(),
        &issuer_toml(
            &k1,
            &dir.path().join("m.db"),
            &format!("jwks_url = \"{url}/jwks\"\nrefresh_secs = 1\nmin_refetch_secs = 30"),
            "",
        ),
    );
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    keys.refresh_all().await;
    assert!(has_kid(&keys, "k1"));

    // The background refresh (every second) gets a slow answer with the old set.
    s.slow.store(true, Ordering::SeqCst);
    let before = s.hits.load(Ordering::SeqCst);
    let _refreshers = keys.spawn_refresh();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.hits.load(Ordering::SeqCst) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the issuer rotates, and a token with k2 triggers a refetch.
    *s.doc.lock().unwrap() = json!({"keys": [k1.jwk(), k2.jwk()]}).to_string();
    s.slow.store(false, Ordering::SeqCst);
    assert!(
        keys.refetch_unknown_kid(ISSUER).await,
        "the refetch loaded nothing"
    );
    assert!(has_kid(&keys, "k2"), "refetch did not load k2");

    // The slow answer lands: k2 must still be there.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    let has_k2 = has_kid(&keys, "k2");
    // And the next unknown-kid refetch is rate limited, so nothing repairs it for
    // min_refetch_secs.
    let refetched = keys.refetch_unknown_kid(ISSUER).await;
    assert!(
        has_k2,
        "k2 was dropped by the older answer of a refresh that started before the refetch \
         (a further refetch loaded keys: {refetched})"
    );
}

/// An unknown kid's refetch runs on a task of its own: the exchange that asked for it
/// timing out (1 s here; the filter gives up after 2 s, a JWKS fetch may take 5 s) used
/// to cancel it after it had taken the refetch window, so the new key was refused until
/// the window ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_once_the_issuer_answered_even_if_the_exchange_that_asked_for_it_timed_out(
) {
    let k1 = TestIssuer::new(ISSUER, "k1");
    let k2 = TestIssuer::new(ISSUER, "k2");
    let (url, srv) = slow_server(&k1).await;
    let dir = tempfile::tempdir().unwrap();
    // The default refresh (300 s) and a 30 s refetch window; a 1 s request timeout
    // stands for any caller that gives up before the JWKS answers.
    let cfg = load_config(
        dir.path(),
        &issuer_toml(
            &k1,
            &dir.path().join("m.db"),
            &format!("jwks_url = \"{url}/jwks\"\nmin_refetch_secs = 30"),
            "[server]\nrequest_timeout_secs = 1\n",
        ),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let a = post_token(
        &app,
        exchange_form(&k1.svid(WEB, now(), 3600), &[("resource", "payments")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);

    // The issuer rotates; its JWKS endpoint is slow for a moment (2.5 s).
    *srv.doc.lock().unwrap() = json!({"keys": [k1.jwk(), k2.jwk()]}).to_string();
    srv.slow.store(true, Ordering::SeqCst);
    let first = post_token(
        &app,
        exchange_form(&k2.svid(WEB, now(), 3600), &[("resource", "payments")]),
    )
    .await;
    assert_ne!(first.status, 200, "answered within the request timeout");
    srv.slow.store(false, Ordering::SeqCst);
    // The refetch's answer (2.5 s after it was asked) is stored, well inside the 30 s
    // window in which no other refetch may go out.
    let start = std::time::Instant::now();
    let second = loop {
        let t = k2.svid(WEB, now() - 1, 3600);
        let r = post_token(&app, exchange_form(&t, &[("resource", "payments")])).await;
        if r.status == 200 || start.elapsed() > Duration::from_secs(15) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        second.status,
        200,
        "a token of the issuer's new key is refused after the issuer published it: {} \
         (the first exchange, which triggered the refetch, answered {} {}; JWKS fetches: {})",
        second.json,
        first.status,
        first.json,
        srv.hits.load(Ordering::SeqCst)
    );
}

/// An issuer `ca_file` from the wrong Secret key (no certificate in it) would leave a
/// client that trusts nothing: refused naming the field. A `bearer_token_file` beside a
/// JWKS file (never sent there) was read before every fetch, and an unreadable one kept
/// the file's keys from ever loading: refused naming the field.
#[test]
fn an_issuer_ca_file_holding_no_certificate_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let ca = dir.path().join("ca.pem");
    // A file from the wrong Secret key, or an empty ConfigMap entry.
    std::fs::write(&ca, "# no certificate here\n").unwrap();
    let keys = format!(
        "jwks_url = \"https://spire-bundle.spire.svc:8443/jwks\"\nca_file = \"{}\"",
        ca.display()
    );
    let path = write_toml(
        dir.path(),
        &issuer_toml(&issuer, &dir.path().join("m.db"), &keys, ""),
    );
    match Config::load(Some(&path)) {
        Ok(_) => panic!("a ca_file with no certificate was accepted: no fetch can ever succeed"),
        Err(e) => assert!(
            e.to_string().contains("issuers[0].ca_file"),
            "refused without naming issuers[0].ca_file: {e}"
        ),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_jwks_file_issuer_is_not_broken_by_a_bearer_token_file_it_never_sends() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "k1");
    let jwks = dir.path().join("bundle.json");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    let keys = format!(
        "jwks_file = \"{}\"\nbearer_token_file = \"{}\"",
        jwks.display(),
        dir.path().join("no-such-token").display()
    );
    let path = write_toml(
        dir.path(),
        &issuer_toml(&issuer, &dir.path().join("m.db"), &keys, ""),
    );
    match Config::load(Some(&path)) {
        // Refusing the key that has no effect here is a fix too.
        Err(e) => assert!(
            e.to_string().contains("issuers[0].bearer_token_file"),
            "refused without naming issuers[0].bearer_token_file: {e}"
        ),
        Ok(cfg) => {
            let source = IssuerKeys::from_config(&cfg).unwrap();
            source.refresh_all().await;
            assert_eq!(
                source.status()[0].keys,
                1,
                "the JWKS file's keys never load: the configuration was accepted, but every \
                 fetch fails reading a bearer token a file source never sends"
            );
        }
    }
}

fn write_toml(dir: &std::path::Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("meshpass.toml");
    std::fs::write(&path, toml).unwrap();
    path
}
