//! Edges of subject-token validation and caller binding through the service
//! (DESIGN.md "Subject tokens", exchange-svc/README.md steps 2-4): real JWKS server on a
//! socket, the real transit signer on the shared OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use meshpass_exchange::caller::ConnInfo;
use meshpass_exchange::clock::SystemClock;
use serde_json::json;

#[derive(Clone)]
struct Jwks {
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_route(State(s): State<Jwks>) -> (StatusCode, String) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, s.doc.lock().unwrap().clone())
}

async fn jwks_server(doc: String) -> (String, Jwks) {
    let s = Jwks {
        doc: Arc::new(Mutex::new(doc)),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let router = Router::new()
        .route("/jwks", get(jwks_route))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_key_replaced_under_the_same_kid_is_refused_after_the_refresh() {
    let old = TestIssuer::new(ISSUER, "k1");
    let (url, srv) = jwks_server(old.jwks()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("jwks_url = \"{url}/jwks\"\nrefresh_secs = 1\nmin_refetch_secs = 30");
    let toml = config_toml(&old, &dir.path().join("m.db"), "")
        .replace(&format!("jwks = '{}'", old.jwks()), &keys);
    let cfg = load_config(dir.path(), &toml);
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let subject = old.svid(WEB, now(), 3600);
    let a = post_token(
        &app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", "read")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);

    // The issuer now publishes another key under the same kid.
    let new = TestIssuer::new(ISSUER, "k1");
    *srv.doc.lock().unwrap() = new.jwks();
    let seen = srv.hits.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while srv.hits.load(Ordering::SeqCst) < seen + 2 {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another form (no minted-token cache hit): the verified-subject entry made with the
    // replaced key must not let the old token through.
    let a = post_token(
        &app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", "write")]),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"], "invalid_grant");
    let fresh = new.svid(WEB, now(), 3600);
    let a = post_token(
        &app,
        exchange_form(&fresh, &[("resource", "payments"), ("scope", "write")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
}

fn b64(v: &str) -> String {
    URL_SAFE_NO_PAD.encode(v.as_bytes())
}

#[tokio::test]
async fn an_error_description_never_echoes_the_subject_token_or_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let n = now();
    let good = issuer.svid(WEB, n, 600);
    let (h, p) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let secretish = "SECRETSECRETSECRETSECRETSECRETSECRET";
    let long_member = format!(
        r#"{{"iss":"{ISSUER}","sub":"{WEB}","aud":"meshpass","exp":{},"{secretish}":1,"{secretish}":2}}"#,
        n + 600
    );
    let cases = vec![
        format!("{h}.{p}.AAAA"),
        format!("{}.{p}.AAAA", b64(&format!(r#"{{"alg":"ES256","kid":"{secretish}"}}"#))),
        format!("{h}.{}.AAAA", b64(&format!("{{\"iss\":\"{secretish}"))),
        format!("{h}.{}", p),
        issuer.svid(WEB, n - 7200, 600),
        issuer.sign(&json!({"iss": ISSUER, "sub": format!("spiffe://{TD}/{secretish}/x y"), "aud": "meshpass", "exp": n + 600})),
        issuer.sign(&json!({"iss": ISSUER, "sub": WEB, "aud": secretish, "exp": n + 600})),
    ];
    for t in cases {
        let a = post_token_as(
            &app,
            exchange_form(&t, &[("resource", "payments")]),
            Some(WEB),
        )
        .await;
        assert_eq!(a.status, 400, "{}", a.json);
        let d = a.json["error_description"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for seg in t.split('.').filter(|s| s.len() >= 8) {
            assert!(!d.contains(seg), "description {d:?} echoes a token segment");
        }
        assert!(
            !d.contains(&secretish[..16]),
            "description {d:?} echoes token content"
        );
    }
    let _ = long_member;
}

#[tokio::test]
async fn xfcc_from_a_peer_that_is_not_a_trusted_proxy_is_refused_even_with_a_verified_certificate()
{
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), ""),
    );
    let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
    let app = meshpass_exchange::app(state);
    let t = issuer.svid(WEB, now(), 600);
    for (peer, tls) in [
        ("10.1.2.3:4000", Some(WEB)),
        ("[::ffff:10.1.2.3]:4000", None),
        ("127.0.0.2:4000", None),
    ] {
        let mut req = Request::post("/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-client-cert", format!("URI={WEB}"))
            .body(Body::from(exchange_form(&t, &[("resource", "payments")])))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(ConnInfo {
            peer: peer.parse().unwrap(),
            tls_peer: tls.map(|c| meshpass_core::SpiffeId::parse(c).unwrap()),
            identity_until: None,
        }));
        let a = call(&app, req).await;
        assert_eq!(a.status, 403, "{peer}: {}", a.json);
        assert_eq!(a.json["error"], "unauthorized_client");
    }
    // From the trusted proxy, several XFCC headers, or a last element naming no
    // SPIFFE ID, name no caller.
    for values in [
        vec![format!("URI={WEB}"), format!("URI={WEB}")],
        vec![format!("URI={WEB},Hash=ab")],
        vec![format!("URI={WEB},")],
    ] {
        let mut b =
            Request::post("/token").header("content-type", "application/x-www-form-urlencoded");
        for v in &values {
            b = b.header("x-forwarded-client-cert", v.as_str());
        }
        let mut req = b
            .body(Body::from(exchange_form(&t, &[("resource", "payments")])))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(ConnInfo {
            peer: "127.0.0.1:4000".parse().unwrap(),
            tls_peer: None,
            identity_until: None,
        }));
        let a = call(&app, req).await;
        assert_eq!(a.status, 403, "{values:?}: {}", a.json);
    }
}
