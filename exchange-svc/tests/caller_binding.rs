//! The caller of `/token` is bound (DESIGN.md "Subject tokens" item 5): a subject token
//! presented by anyone but its subject (CLIENT mode) or a caller the mapping lists in
//! `allowed_callers` (SERVER mode) buys nothing; budgets and cached tokens are per
//! (caller, subject). A caller that may not ask for the subject is refused before what
//! it asks for is judged (a stolen subject token tells a stranger nothing of the
//! mapping), and a trust domain's own ID is no caller. Through the router with the
//! connection's identity as the server records it, and over real TLS sockets with
//! client certificates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::server::serve_tls_on;

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";
const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/thief";

/// A SERVER-mode mapping: the gateway may exchange shop subjects' tokens for `ledger`.
const LEDGER: &str = r#"
[[mappings]]
name = "shop-to-ledger"
subject = "spiffe://cluster.local/ns/shop/*"
resource = "ledger"
participant = "acme-ledger"
ttl_secs = 300
allowed_callers = ["spiffe://cluster.local/ns/edge/*"]
rate_limit = { per_second = 0.01, burst = 1 }
"#;

struct Env {
    _dir: tempfile::TempDir,
    issuer: TestIssuer,
    app: axum::Router,
    state: meshpass_exchange::AppState,
    store: Arc<meshpass_exchange::store::SqlStore>,
}

async fn env_from(toml: impl FnOnce(&TestIssuer, &std::path::Path) -> String) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(ISSUER, "spire-1");
    let cfg = load_config(dir.path(), &toml(&issuer, dir.path()));
    let (state, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
    Env {
        _dir: dir,
        issuer,
        app: meshpass_exchange::app(state.clone()),
        state,
        store,
    }
}

async fn env() -> Env {
    env_from(|i, d| config_toml(i, &d.join("m.db"), LEDGER)).await
}

fn assert_refused(a: &Answer) {
    assert_eq!(a.status.as_u16(), 403, "body: {}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client", "body: {}", a.json);
}

#[tokio::test]
async fn refuses_a_stolen_subject_token_presented_by_another_caller() {
    let e = env().await;
    let stolen = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&stolen, &[("resource", "orders")]),
        Some(EVIL),
    )
    .await;
    assert_refused(&a);
    let text = a.json["error_description"].as_str().unwrap();
    assert!(text.contains(EVIL), "{text}");
    // The subject itself still gets its token.
    let a = post_token(&e.app, exchange_form(&stolen, &[("resource", "orders")])).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

#[tokio::test]
async fn refuses_an_exchange_whose_caller_cannot_be_identified() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&token, &[("resource", "orders")]),
        None,
    )
    .await;
    assert_refused(&a);
    assert!(a.json["error_description"]
        .as_str()
        .unwrap()
        .contains("could not be identified"));
}

#[tokio::test]
async fn insecure_unbound_callers_lets_an_unidentified_caller_exchange() {
    let e = env_from(|i, d| {
        config_toml(i, &d.join("m.db"), "").replace(
            "xfcc_trusted_proxies = [\"127.0.0.1\"]",
            "insecure_unbound_callers = true",
        )
    })
    .await;
    let token = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&token, &[("resource", "orders")]),
        None,
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    // An identified caller is still bound.
    let a = post_token_as(
        &e.app,
        exchange_form(&token, &[("resource", "orders")]),
        Some(EVIL),
    )
    .await;
    assert_refused(&a);
}

#[tokio::test]
async fn a_caller_listed_in_allowed_callers_may_exchange_on_the_subjects_behalf() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&token, &[("resource", "ledger")]),
        Some(GATEWAY),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    let (_, claims) = verify(
        a.json["access_token"].as_str().unwrap(),
        &get(&e.app, "/.well-known/jwks.json").await.json,
    );
    assert_eq!(claims["sub"], WEB);
    // Listed for ledger only: the gateway cannot use the token for orders.
    let a = post_token_as(
        &e.app,
        exchange_form(&token, &[("resource", "orders")]),
        Some(GATEWAY),
    )
    .await;
    assert_refused(&a);
}

#[tokio::test]
async fn rate_limits_are_kept_per_caller_and_subject() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    // The gateway spends its one-request budget for WEB (a fresh token each time so the
    // cache does not answer)...
    let form = |t: &str| exchange_form(t, &[("resource", "ledger")]);
    assert_eq!(
        post_token_as(&e.app, form(&token), Some(GATEWAY))
            .await
            .status
            .as_u16(),
        200
    );
    let again = e.issuer.svid(WEB, now() - 1, 600);
    let a = post_token_as(&e.app, form(&again), Some(GATEWAY)).await;
    assert_eq!(a.status.as_u16(), 429, "{}", a.json);
    // ...which leaves WEB's own budget untouched.
    let a = post_token(&e.app, form(&again)).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}

#[tokio::test]
async fn a_token_cached_for_one_caller_is_never_served_to_another() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let form = exchange_form(&token, &[("resource", "payments")]);
    assert_eq!(post_token(&e.app, form.clone()).await.status.as_u16(), 200);
    assert_refused(&post_token_as(&e.app, form, Some(EVIL)).await);
}

#[tokio::test]
async fn reordered_or_repeated_audiences_and_scopes_share_one_cached_token() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let a = post_token(
        &e.app,
        exchange_form(
            &token,
            &[
                ("resource", "payments"),
                ("audience", "payments"),
                ("scope", "read write"),
            ],
        ),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    let b = post_token(
        &e.app,
        exchange_form(
            &token,
            &[
                ("audience", "payments"),
                ("audience", "payments"),
                ("resource", "payments"),
                ("scope", "write read write"),
            ],
        ),
    )
    .await;
    assert_eq!(b.status.as_u16(), 200, "{}", b.json);
    assert_eq!(a.json["access_token"], b.json["access_token"]);
}

#[tokio::test]
async fn reordered_audiences_without_a_resource_are_different_targets_and_never_share_a_token() {
    let e = env().await;
    let token = e.issuer.svid(WEB, now(), 600);
    let form = |first: &str, second: &str| {
        exchange_form(&token, &[("audience", first), ("audience", second)])
    };
    // The first audience names the resource: `payments`, which may have both audiences.
    let a = post_token(&e.app, form("payments", "https://payments.internal")).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
    // Reversed, it names a resource nobody maps: refused, not served from the cache.
    let b = post_token(&e.app, form("https://payments.internal", "payments")).await;
    assert_eq!(b.status.as_u16(), 400, "{}", b.json);
    assert_eq!(b.json["error"], "invalid_target", "{}", b.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_tls_client_certificate_names_the_caller() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), pki.ca.pem()).unwrap();
    let tls_cfg = format!(
        "[server.tls]\ncert_file = \"{0}/tls.crt\"\nkey_file = \"{0}/tls.key\"\nclient_ca_file = \"{0}/ca.crt\"\n",
        dir.path().display()
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
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls_on(
        listener,
        tls,
        Duration::from_secs(300),
        state,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(2),
    ));
    let client = |id: Option<&str>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10));
        if let Some(id) = id {
            let (c, k) = pki.issue(rcgen::SanType::URI(id.try_into().unwrap()));
            b = b.identity(reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let token = issuer.svid(WEB, now(), 600);
    let exchange = |c: reqwest::Client| {
        let (url, body) = (
            format!("{url}/token"),
            exchange_form(&token, &[("resource", "orders")]),
        );
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = exchange(client(Some(WEB))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = exchange(client(Some(EVIL))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unauthorized_client"), "{body}");
    let (status, body) = exchange(client(None)).await;
    assert_eq!(status, 403, "{body}");
    // Verifiers fetch the JWKS without a client certificate.
    let r = client(None)
        .get(format!("{url}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// DESIGN.md "Subject tokens" item 5 / README error table: a caller that is neither the
/// subject nor in the mapping's `allowed_callers` gets 403 `unauthorized_client`. A thief
/// holding a stolen subject token must learn nothing about the subject's grant. When
/// the scopes and audiences were judged before the caller, the thief got
/// `invalid_scope` / `invalid_target` answers that enumerated the mapping's scopes and
/// audiences, unlimited (the rate limit is charged only after the binding).
#[tokio::test]
async fn a_stranger_with_a_stolen_subject_token_is_refused_as_caller_before_scopes_or_audiences_are_judged(
) {
    let e = env().await;
    let stolen = e.issuer.svid(WEB, now(), 600);
    for (what, extra) in [
        ("scope", [("resource", "payments"), ("scope", "admin")]),
        (
            "audience",
            [
                ("resource", "payments"),
                ("audience", "https://evil.example"),
            ],
        ),
    ] {
        let a = post_token_as(&e.app, exchange_form(&stolen, &extra), Some(EVIL)).await;
        assert_eq!(
            (a.status.as_u16(), a.json["error"].as_str().unwrap_or("")),
            (403, "unauthorized_client"),
            "a stranger probing the subject's {what}s: {}",
            a.json
        );
    }
}

/// DESIGN.md item 5, "a token alone, presented by someone else, buys nothing": nor
/// a map of what it could buy. The resource was looked up, and the subject's mapping
/// and revocation judged, before the caller: a thief holding WEB's token learnt which
/// resources exist (400 `invalid_target`), which of them WEB may not have (400
/// `unauthorized_client`), which it may (403) and whether WEB is revoked (403 with
/// the operator's reason). All four answers are now the caller's refusal, word for word.
#[tokio::test]
async fn a_stranger_with_a_stolen_subject_token_gets_one_answer_whatever_the_resource() {
    const SECRETS: &str = r#"
[[mappings]]
name = "ops-to-secrets"
subject = "spiffe://cluster.local/ns/ops/*"
resource = "secrets"
participant = "acme-secrets"
ttl_secs = 60
"#;
    let e = env_from(|i, d| config_toml(i, &d.join("m.db"), &format!("{LEDGER}{SECRETS}"))).await;
    let stolen = e.issuer.svid(WEB, now(), 600);
    let probe = |resource: &'static str| {
        let form = exchange_form(&stolen, &[("resource", resource)]);
        let app = e.app.clone();
        async move { post_token_as(&app, form, Some(EVIL)).await }
    };
    let answer = |a: &Answer| (a.status.as_u16(), a.json.to_string());
    let mapped = probe("orders").await;
    assert_refused(&mapped);
    for (what, resource) in [
        ("an unknown resource", "no-such-resource"),
        ("a resource the subject has no mapping for", "secrets"),
    ] {
        let a = probe(resource).await;
        assert_eq!(answer(&a), answer(&mapped), "{what} answered otherwise");
    }
    // The subject revoked: the thief still hears only that it is refused.
    use meshpass_exchange::store::{Actor, NewRevocation, RevocationStore, RevocationTarget};
    let rev = NewRevocation {
        target: RevocationTarget::Subject,
        matches: WEB.into(),
        reason: "node drained after a compromise".into(),
        until: None,
    };
    let actor = Actor {
        who: "spiffe://cluster.local/ns/ops/sa/admin".into(),
        request_id: "t".into(),
    };
    let r = e
        .store
        .create_revocation(&rev, &actor, now())
        .await
        .unwrap();
    e.state.revocations.created(r);
    let a = probe("orders").await;
    assert_eq!(answer(&a), answer(&mapped), "the revocation showed through");
    // The subject itself is told what is wrong, as before.
    let a = post_token(
        &e.app,
        exchange_form(&stolen, &[("resource", "no-such-resource")]),
    )
    .await;
    assert_eq!(a.status.as_u16(), 403, "{}", a.json);
    assert!(a.json.to_string().contains("node drained"), "{}", a.json);
}

/// DESIGN.md item 3: `spiffe://TD` alone is the trust domain's own ID, never a workload
/// (refused as a subject). As the caller of `/token` it must not pass for a workload of
/// the trust domain either: `allowed_callers = ["spiffe://cluster.local/*"]` names the
/// trust domain's workloads, yet a connection whose identity is the trust-domain ID
/// (the URI SAN a SPIFFE CA certificate carries) exchanges another subject's token.
#[tokio::test]
async fn a_caller_naming_only_the_trust_domain_is_no_workload_and_matches_no_allowed_callers() {
    // LEDGER, its callers "any workload of the trust domain".
    let any_workload = LEDGER.replace(
        "allowed_callers = [\"spiffe://cluster.local/ns/edge/*\"]",
        "allowed_callers = [\"spiffe://cluster.local/*\"]",
    );
    assert_ne!(any_workload, LEDGER);
    let e = env_from(|i, d| config_toml(i, &d.join("m.db"), &any_workload)).await;
    let subject = e.issuer.svid(WEB, now(), 600);
    let a = post_token_as(
        &e.app,
        exchange_form(&subject, &[("resource", "ledger")]),
        Some("spiffe://cluster.local"),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json["error"].as_str().unwrap_or("")),
        (403, "unauthorized_client"),
        "the trust domain's own ID was accepted as a SERVER-mode caller: {}",
        a.json
    );
    // A real workload of the trust domain is still a listed caller.
    let a = post_token_as(
        &e.app,
        exchange_form(&subject, &[("resource", "ledger")]),
        Some(GATEWAY),
    )
    .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.json);
}
