//! `POST /token` protocol tests through the axum router (oneshot), with a real SQLite
//! mapping store and the real transit signer on a key of each test's own in the binary's
//! shared OpenBao (the two outage tests take down an OpenBao of their own; the service
//! over real sockets is in `exchange_openbao.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use meshpass_exchange::clock::ManualClock;
use meshpass_exchange::signer::Signer;
use meshpass_exchange::store::{ScopeClaims, StoreError};
use serde_json::json;

struct Env {
    _dir: tempfile::TempDir,
    issuer: TestIssuer,
    signer: Arc<dyn Signer>,
    clock: Arc<ManualClock>,
    state: meshpass_exchange::AppState,
    app: axum::Router,
}

async fn env_with(extra: &str) -> Env {
    env_signed_by(signer().await, extra).await
}

async fn env_signed_by(signer: Arc<dyn Signer>, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(
        dir.path(),
        &config_toml(&issuer, &dir.path().join("m.db"), extra),
    );
    let clock = Arc::new(ManualClock::new(now()));
    let state = state_with(&cfg, signer.clone(), clock.clone()).await;
    let app = meshpass_exchange::app(state.clone());
    Env {
        _dir: dir,
        issuer,
        signer,
        clock,
        state,
        app,
    }
}

async fn env() -> Env {
    env_with("").await
}

fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status.as_u16(), status, "body: {}", a.json);
    assert_eq!(a.json["error"], code, "body: {}", a.json);
    assert!(a.json["error_description"].is_string());
    assert_eq!(a.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn issues_a_verifiable_participant_token_for_an_allowed_subject() {
    let e = env().await;
    let t = e.clock.now_secs();
    let subject = e.issuer.svid(WEB, t, 3600);
    let a = post_token(
        &e.app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", "write")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers["cache-control"], "no-store");
    assert_eq!(a.json["issued_token_type"], JWT_TYPE);
    assert_eq!(a.json["token_type"], "Bearer");
    assert_eq!(a.json["expires_in"], 300);
    assert_eq!(a.json["scope"], "write");
    let (kid, claims) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    // Signed with the version the signer signs with now: the first of its transit key.
    assert_eq!(kid, e.signer.current_key().unwrap().kid);
    assert!(kid.ends_with(":v1"), "{kid}");
    assert_eq!(claims["iss"], SERVICE_ISSUER);
    assert_eq!(claims["sub"], WEB);
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["iat"], t);
    assert_eq!(claims["nbf"], t);
    assert_eq!(claims["exp"], t + 300);
    assert_eq!(claims["scope"], "write");
    assert_eq!(claims["participant"], "acme");
    assert_eq!(claims["role"], "writer");
    assert_eq!(claims["tier"], 2);
    assert!(
        claims.get("role_read").is_none(),
        "claims of an ungranted scope"
    );
    assert!(claims.get("act").is_none());
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 4);
}

trait NowSecs {
    fn now_secs(&self) -> u64;
}
impl NowSecs for ManualClock {
    fn now_secs(&self) -> u64 {
        meshpass_exchange::clock::Clock::now(self)
    }
}

#[tokio::test]
async fn grants_every_allowed_scope_when_none_is_requested_and_uses_the_audience_as_target() {
    let e = env().await;
    let t = e.clock.now_secs();
    let subject = e.issuer.svid(WEB, t, 3600);
    let a = post_token(&e.app, exchange_form(&subject, &[("audience", "payments")])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["scope"], "read write");
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    assert_eq!(claims["role"], "writer");
    assert_eq!(claims["role_read"], true);
}

#[tokio::test]
async fn caps_exp_at_the_subject_tokens_exp() {
    let e = env().await;
    let t = e.clock.now_secs();
    let subject = e.issuer.svid(WEB, t, 120);
    let a = post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["expires_in"], 120);
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    assert_eq!(claims["exp"], t + 120);
}

#[tokio::test]
async fn requested_audiences_must_be_allowed_and_all_go_into_aud() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let a = post_token(
        &e.app,
        exchange_form(
            &subject,
            &[
                ("resource", "payments"),
                ("audience", "payments"),
                ("audience", "https://payments.internal"),
            ],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    assert_eq!(
        claims["aud"],
        json!(["payments", "https://payments.internal"])
    );

    let a = post_token(
        &e.app,
        exchange_form(
            &subject,
            &[("resource", "payments"), ("audience", "billing")],
        ),
    )
    .await;
    assert_error(&a, 400, "invalid_target");
}

#[tokio::test]
async fn rejects_a_body_that_is_not_form_encoded() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let req = Request::post("/token")
        .header("content-type", "application/json")
        .body(Body::from(exchange_form(
            &subject,
            &[("resource", "payments")],
        )))
        .unwrap();
    assert_error(&call(&e.app, req).await, 400, "invalid_request");
    let req = Request::post("/token")
        .body(Body::from(exchange_form(
            &subject,
            &[("resource", "payments")],
        )))
        .unwrap();
    assert_error(&call(&e.app, req).await, 400, "invalid_request");
}

#[tokio::test]
async fn accepts_a_content_type_with_a_charset_parameter() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let req = Request::post("/token")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(Body::from(exchange_form(
            &subject,
            &[("resource", "payments")],
        )))
        .unwrap();
    let mut req = req;
    with_caller(&mut req, Some(WEB));
    assert_eq!(call(&e.app, req).await.status, StatusCode::OK);
}

#[tokio::test]
async fn rejects_an_oversize_body_with_invalid_request() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let padding = "x".repeat(70 * 1024);
    let a = post_token(
        &e.app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", &padding)]),
    )
    .await;
    assert_error(&a, 400, "invalid_request");
    // Without Content-Length (streamed) too.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(exchange_form(&subject, &[])),
        Ok(format!("&scope={padding}")),
    ];
    let req = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    assert_error(&call(&e.app, req).await, 400, "invalid_request");
}

#[tokio::test]
async fn rejects_a_repeated_subject_token_field_with_invalid_request() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let body = exchange_form(
        &subject,
        &[("subject_token", &subject), ("resource", "payments")],
    );
    assert_error(&post_token(&e.app, body).await, 400, "invalid_request");
}

#[tokio::test]
async fn rejects_a_missing_subject_token_with_invalid_request() {
    let e = env().await;
    let body = form(&[
        ("grant_type", GRANT),
        ("subject_token_type", JWT_TYPE),
        ("resource", "payments"),
    ]);
    assert_error(&post_token(&e.app, body).await, 400, "invalid_request");
}

#[tokio::test]
async fn rejects_another_grant_type_with_unsupported_grant_type() {
    let e = env().await;
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("resource", "payments"),
    ]);
    assert_error(
        &post_token(&e.app, body).await,
        400,
        "unsupported_grant_type",
    );
}

#[tokio::test]
async fn rejects_an_unsupported_requested_token_type_with_invalid_request() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let body = exchange_form(
        &subject,
        &[
            ("resource", "payments"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            ),
        ],
    );
    assert_error(&post_token(&e.app, body).await, 400, "invalid_request");
}

#[tokio::test]
async fn rejects_an_expired_subject_token_with_invalid_grant() {
    let e = env().await;
    let t = e.clock.now_secs();
    let subject = e.issuer.sign(
        &json!({"iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t - 600, "exp": t - 300}),
    );
    let a = post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    assert_error(&a, 400, "invalid_grant");
    assert!(!a.json["error_description"]
        .as_str()
        .unwrap()
        .contains(&subject));
}

#[tokio::test]
async fn rejects_a_subject_token_signed_by_an_unknown_key_with_invalid_grant() {
    let e = env().await;
    let stranger = TestIssuer::new(ISSUER, "spire-1");
    let subject = stranger.svid(WEB, e.clock.now_secs(), 3600);
    assert_error(
        &post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await,
        400,
        "invalid_grant",
    );
}

#[tokio::test]
async fn rejects_a_subject_outside_the_trust_domain_with_invalid_grant() {
    let e = env().await;
    let subject = e.issuer.svid(
        "spiffe://evil.example/ns/shop/sa/web",
        e.clock.now_secs(),
        3600,
    );
    assert_error(
        &post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await,
        400,
        "invalid_grant",
    );
}

#[tokio::test]
async fn rejects_an_unknown_resource_with_invalid_target() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    assert_error(
        &post_token(
            &e.app,
            exchange_form(&subject, &[("resource", "warehouse")]),
        )
        .await,
        400,
        "invalid_target",
    );
    assert_error(
        &post_token(
            &e.app,
            exchange_form(
                &subject,
                &[("resource", "payments"), ("resource", "orders")],
            ),
        )
        .await,
        400,
        "invalid_target",
    );
}

#[tokio::test]
async fn rejects_a_request_naming_no_target_with_invalid_request() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    assert_error(
        &post_token(&e.app, exchange_form(&subject, &[])).await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn rejects_a_subject_without_a_mapping_with_unauthorized_client() {
    let e = env().await;
    let subject = e.issuer.svid(
        "spiffe://cluster.local/ns/other/sa/batch",
        e.clock.now_secs(),
        3600,
    );
    assert_error(
        &post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await,
        400,
        "unauthorized_client",
    );
}

#[tokio::test]
async fn rejects_a_disallowed_scope_with_invalid_scope() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let a = post_token(
        &e.app,
        exchange_form(
            &subject,
            &[("resource", "payments"), ("scope", "read admin")],
        ),
    )
    .await;
    assert_error(&a, 400, "invalid_scope");
}

#[tokio::test]
async fn answers_slow_down_with_retry_after_when_the_subject_exceeds_its_rate_limit() {
    let e = env().await;
    let t = e.clock.now_secs();
    // Distinct subject tokens so the cache does not answer; burst is 2.
    for i in 0..2 {
        let subject = e.issuer.svid(WEB, t - i, 3600);
        let a = post_token(&e.app, exchange_form(&subject, &[("resource", "orders")])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
    let subject = e.issuer.svid(WEB, t - 5, 3600);
    let a = post_token(&e.app, exchange_form(&subject, &[("resource", "orders")])).await;
    assert_error(&a, 429, "slow_down");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // Another resource (mapping) has its own budget.
    let a = post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn answers_temporarily_unavailable_with_retry_after_when_signing_fails() {
    // An OpenBao of its own, frozen for real (the binary's shared one never is): the
    // sign request hangs until the signer's 800 ms request timeout.
    let mut bao = own_openbao();
    let e = env_signed_by(signer_on(&bao).await, "").await;
    let kid = e.signer.current_key().unwrap().kid;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let form = || exchange_form(&subject, &[("resource", "payments")]);
    bao.pause();
    let a = post_token(&e.app, form()).await;
    assert_error(&a, 503, "temporarily_unavailable");
    assert_eq!(a.headers["retry-after"], "2");
    // The cause (a timeout on transit/sign of the key, at OpenBao's address) stays inside.
    let description = a.json["error_description"].as_str().unwrap();
    let port = bao.port().to_string();
    for detail in [
        "timeout",
        "transit",
        kid.strip_suffix(":v1").unwrap(),
        &port,
    ] {
        assert!(
            !description.contains(detail),
            "internal detail {detail:?} leaked: {description}"
        );
    }
    // OpenBao answers again: signing recovers by itself, with the same key.
    bao.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    let a = loop {
        let a = post_token(&e.app, form()).await;
        if a.status == StatusCode::OK {
            break a;
        }
        assert_error(&a, 503, "temporarily_unavailable");
        assert!(Instant::now() < deadline, "no recovery after resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (signed_by, _) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    assert_eq!(signed_by, kid);
}

#[tokio::test]
async fn serves_a_cached_token_with_its_remaining_lifetime_until_half_its_life_is_gone() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let body = || exchange_form(&subject, &[("resource", "payments"), ("scope", "read")]);
    let first = post_token(&e.app, body()).await;
    assert_eq!(first.json["expires_in"], 300);
    e.clock.advance(100);
    let second = post_token(&e.app, body()).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.json["access_token"], first.json["access_token"]);
    assert_eq!(second.json["expires_in"], 200);
    assert_eq!(second.headers["cache-control"], "no-store");
    // Scope order does not matter for the cache; a different scope set does.
    let other = post_token(
        &e.app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", "write")]),
    )
    .await;
    assert_ne!(other.json["access_token"], first.json["access_token"]);
    e.clock.advance(60); // 140 s left of 300: less than half
    let third = post_token(&e.app, body()).await;
    assert_ne!(third.json["access_token"], first.json["access_token"]);
    assert_eq!(third.json["expires_in"], 300);
    let text = get_text(&e.app, "/metrics").await;
    assert!(text.contains("meshpass_token_cache_hits_total 1"), "{text}");
    // The policy snapshot, read once, expired before the second and the third exchange
    // (100 s and 60 s later): both times the store's change version confirmed it.
    assert!(
        text.contains("meshpass_policy_snapshot_refreshes_total{outcome=\"read\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("meshpass_policy_snapshot_refreshes_total{outcome=\"confirmed\"} 2"),
        "{text}"
    );
}

/// Was `actor_token_becomes_the_act_claim_with_the_subjects_prior_actor_nested`: the
/// chain nested under the actor is now the actor token's own (RFC 8693 §4.1), and the
/// actor must be named by the subject's `may_act` (RFC 8693 §4.4).
#[tokio::test]
async fn actor_token_becomes_the_act_claim_with_the_actors_own_chain_nested() {
    let e = env().await;
    let t = e.clock.now_secs();
    let subject = e.issuer.sign(&json!({
        "iss": ISSUER, "sub": WEB, "aud": "meshpass", "iat": t, "exp": t + 3600,
        "act": {"sub": "spiffe://cluster.local/ns/shop/sa/old"},
        "may_act": {"sub": "spiffe://cluster.local/ns/shop/sa/checkout"}
    }));
    let actor = e.issuer.sign(&json!({
        "iss": ISSUER, "sub": "spiffe://cluster.local/ns/shop/sa/checkout", "aud": "meshpass",
        "iat": t, "exp": t + 3600,
        "act": {"sub": "spiffe://cluster.local/ns/shop/sa/gateway"}
    }));
    let a = post_token(
        &e.app,
        exchange_form(
            &subject,
            &[
                ("resource", "payments"),
                ("actor_token", &actor),
                ("actor_token_type", JWT_TYPE),
            ],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &e.signer.jwks());
    assert_eq!(
        claims["act"],
        json!({"sub": "spiffe://cluster.local/ns/shop/sa/checkout",
               "act": {"sub": "spiffe://cluster.local/ns/shop/sa/gateway"}})
    );
    // An invalid actor token is invalid_grant.
    let bad_actor = TestIssuer::new(ISSUER, "spire-1").svid(WEB, t, 3600);
    let a = post_token(
        &e.app,
        exchange_form(
            &subject,
            &[
                ("resource", "payments"),
                ("actor_token", &bad_actor),
                ("actor_token_type", JWT_TYPE),
            ],
        ),
    )
    .await;
    assert_error(&a, 400, "invalid_grant");
}

#[tokio::test]
async fn scope_claims_can_never_set_reserved_or_conflicting_claims() {
    let e = env().await;
    let store = &e.state.store;
    for reserved in ["iss", "sub", "exp", "act", "cnf", "scope", "participant"] {
        let mut claims = serde_json::Map::new();
        claims.insert(reserved.into(), json!("x"));
        let row = ScopeClaims {
            resource: "payments".into(),
            scope: "admin".into(),
            claims,
        };
        assert!(
            matches!(
                store.put_scope_claims(&row).await,
                Err(StoreError::Invalid { .. })
            ),
            "{reserved} accepted"
        );
    }
    let mut claims = serde_json::Map::new();
    claims.insert("role".into(), json!("admin"));
    let row = ScopeClaims {
        resource: "payments".into(),
        scope: "admin".into(),
        claims,
    };
    assert!(matches!(
        store.put_scope_claims(&row).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn publishes_the_jwks_and_discovery_documents_with_cache_headers() {
    let e = env().await;
    let jwks = get(&e.app, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.headers["cache-control"], "public, max-age=60");
    assert_eq!(jwks.json, e.signer.jwks());
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let d = get(&e.app, path).await;
        assert_eq!(d.status, StatusCode::OK);
        assert_eq!(d.json["issuer"], SERVICE_ISSUER);
        assert_eq!(d.json["token_endpoint"], format!("{SERVICE_ISSUER}/token"));
        assert_eq!(
            d.json["jwks_uri"],
            format!("{SERVICE_ISSUER}/.well-known/jwks.json")
        );
        assert_eq!(d.json["grant_types_supported"], json!([GRANT]));
        // Callers are known by their mTLS identity (RFC 8705), and there is no
        // authorization endpoint, so no implicit (`token`) response type.
        assert_eq!(
            d.json["token_endpoint_auth_methods_supported"],
            json!(["tls_client_auth"]),
            "{path}"
        );
        assert_eq!(
            d.json["response_types_supported"],
            json!(["id_token"]),
            "{path}"
        );
    }
    let oidc = get(&e.app, "/.well-known/openid-configuration").await;
    assert_eq!(
        oidc.json["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
}

#[tokio::test]
async fn discovery_advertises_the_public_url_where_the_service_is_reached_not_the_issuer_name() {
    // In a mesh the issuer is a name (https://meshpass-exchange.meshpass.svc.cluster.local)
    // while the Service answers plain HTTP on 8080: a verifier following the document
    // must be sent where the JWKS really is.
    let public = "http://meshpass-exchange.meshpass.svc.cluster.local:8080";
    let e = env_with(&format!("[server]\npublic_url = \"{public}\"\n")).await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let d = get(&e.app, path).await;
        assert_eq!(d.status, StatusCode::OK);
        assert_eq!(d.json["issuer"], SERVICE_ISSUER, "{path}");
        assert_eq!(
            d.json["token_endpoint"],
            format!("{public}/token"),
            "{path}"
        );
        assert_eq!(
            d.json["jwks_uri"],
            format!("{public}/.well-known/jwks.json"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_invalid_scope_answer_quotes_only_a_bounded_prefix_of_the_scope() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let long = "x".repeat(60_000);
    let a = post_token(
        &e.app,
        exchange_form(&token, &[("resource", "payments"), ("scope", &long)]),
    )
    .await;
    assert_eq!(a.status.as_u16(), 400, "{}", a.json);
    assert_eq!(a.json["error"], "invalid_scope");
    let d = a.json["error_description"].as_str().unwrap();
    assert!(
        d.contains(&"x".repeat(64)) && !d.contains(&"x".repeat(65)),
        "{d}"
    );
    // A malformed scope is invalid_scope too (RFC 6749 §5.2).
    let a = post_token(
        &e.app,
        exchange_form(
            &token,
            &[("resource", "payments"), ("scope", "read  write")],
        ),
    )
    .await;
    assert_eq!(a.json["error"], "invalid_scope", "{}", a.json);
}

#[tokio::test]
async fn readyz_names_the_part_that_is_not_ready() {
    // An OpenBao of its own, stopped for real (the binary's shared one never is).
    let mut bao = own_openbao();
    let e = env_signed_by(signer_on(&bao).await, "").await;
    let kid = e.signer.current_key().unwrap().kid;
    assert_eq!(get(&e.app, "/healthz").await.status, StatusCode::OK);
    let r = get(&e.app, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    bao.stop();
    // Not ready once the signer's calls keep failing, and only the signer is named.
    let r = readyz_until(&e, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(r.json["signer"], "not ready", "{}", r.json);
    assert_eq!(r.json["store"], "ok");
    assert_eq!(r.json["issuer_keys"][ISSUER], "ok");
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(get(&e.app, "/healthz").await.status, StatusCode::OK);
    // OpenBao back (a dev server comes back empty: the key is created again): ready
    // again by itself.
    bao.start_again();
    bao.enable_transit();
    bao.create_transit_key(kid.strip_suffix(":v1").unwrap(), "ecdsa-p256");
    let r = readyz_until(&e, StatusCode::OK).await;
    assert_eq!(r.json["signer"], "ok", "{}", r.json);
}

/// Polls `/readyz` until it answers `status`; fails after 20 s.
async fn readyz_until(e: &Env, status: StatusCode) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&e.app, "/readyz").await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {}: {}",
            r.status,
            r.json
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_count_exchanges_by_outcome_and_resource() {
    let e = env().await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    post_token(
        &e.app,
        exchange_form(&subject, &[("resource", "payments"), ("scope", "nope")]),
    )
    .await;
    let text = get_text(&e.app, "/metrics").await;
    assert!(
        text.contains(r#"meshpass_exchanges_total{outcome="issued",resource="payments"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meshpass_exchanges_total{outcome="cached",resource="payments"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"meshpass_exchanges_total{outcome="invalid_scope",resource="payments"} 1"#),
        "{text}"
    );
    assert!(text.contains("meshpass_token_cache_hits_total 1"), "{text}");
    assert!(
        text.contains("meshpass_sign_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"meshpass_issuer_jwks_keys{{issuer="{ISSUER}"}} 1"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_disabled_cache_mints_every_time() {
    let e = env_with("\n[cache]\nenabled = false\n").await;
    let subject = e.issuer.svid(WEB, e.clock.now_secs(), 3600);
    let a = post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    let b = post_token(&e.app, exchange_form(&subject, &[("resource", "payments")])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_ne!(a.json["access_token"], b.json["access_token"]);
}
