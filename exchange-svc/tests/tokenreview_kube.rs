//! Kubernetes TokenReview through the `kube` client, against an HTTPS double of the API
//! server that speaks the real `authentication.k8s.io/v1` JSON (tests/kube_api).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod kube_api;

use std::time::{Duration, Instant};

use axum::Router;
use common::*;
use kube_api::{authenticated, KubeApi, Reply};
use meshpass_exchange::clock::SystemClock;
use serde_json::json;
use std::sync::Arc;

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SA_USER: &str = "system:serviceaccount:shop:web";

/// The service with the Kubernetes issuer reviewed through `token_review` (an inline
/// TOML table body); keeps the temp dir alive.
struct Service {
    app: Router,
    issuer: TestIssuer,
    store: Arc<meshpass_exchange::store::SqlStore>,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(token_review: &str) -> Service {
        Service::start_audited(token_review, false).await
    }

    /// With `audit`, refused exchanges go to the audit log as in `serve`.
    async fn start_audited(token_review: &str, audit: bool) -> Service {
        Service::start_with(token_review, audit, "").await
    }

    /// `extra`: more configuration (mappings) appended.
    async fn start_with(token_review: &str, audit: bool, extra: &str) -> Service {
        let issuer = TestIssuer::new(K8S_ISSUER, "sa");
        let dir = tempfile::tempdir().unwrap();
        let toml = config_toml(&issuer, &dir.path().join("m.db"), extra).replace(
            &format!("jwks = '{}'", issuer.jwks()),
            &format!(
                "jwks = '{}'\nsubject_format = \"kubernetes_service_account\"\ntoken_review = {{ {token_review} }}",
                issuer.jwks()
            ),
        );
        let cfg = load_config(dir.path(), &toml);
        let (mut state, store) = state_and_store(&cfg, signer().await, Arc::new(SystemClock)).await;
        if audit {
            use meshpass_exchange::mgmt::{ExchangeHooks, ExchangeStats, RefusalAudit};
            state.hooks = Some(Arc::new(ExchangeHooks {
                stats: Arc::new(ExchangeStats::new().unwrap()),
                refusals: Some(RefusalAudit::start(store.clone(), &cfg.management)),
            }));
        }
        Service {
            app: meshpass_exchange::app(state),
            issuer,
            store,
            _dir: dir,
        }
    }

    /// A service-account token for `shop/web`; `n` makes each one distinct (no cache hit).
    fn sa_token(&self, n: u64) -> String {
        self.sa_token_of("web", n)
    }

    /// A service-account token for `shop/NAME`.
    fn sa_token_of(&self, name: &str, n: u64) -> String {
        let t = now();
        self.issuer.sign(&json!({
            "iss": K8S_ISSUER, "sub": format!("system:serviceaccount:shop:{name}"),
            "aud": ["meshpass"], "iat": t - n, "exp": t + 3600,
            "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": name, "uid": "1234"}},
        }))
    }

    async fn exchange(&self, n: u64) -> Answer {
        post_token_as(
            &self.app,
            exchange_form(&self.sa_token(n), &[("resource", "payments")]),
            Some(WEB),
        )
        .await
    }
}

/// `url` + `ca_file` of the double, and a bearer-token file for the service.
fn explicit(api: &KubeApi, dir: &std::path::Path) -> String {
    api.explicit(dir).0
}

/// An exchange for `ledger` (DELEGATED_LEDGER lets batch act) with an actor token.
fn ledger_form_with_actor(subject: &str, actor: &str) -> String {
    exchange_form(
        subject,
        &[
            ("resource", "ledger"),
            ("actor_token", actor),
            ("actor_token_type", JWT_TYPE),
        ],
    )
}

fn assert_invalid_grant(a: &Answer, what: &str) {
    assert_eq!(a.status, 400, "{what}: {}", a.json);
    assert_eq!(a.json["error"], "invalid_grant", "{what}: {}", a.json);
}

fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.json);
    assert_eq!(a.json["error"], "temporarily_unavailable", "{what}");
    assert!(
        a.headers.contains_key("retry-after"),
        "{what}: no Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_service_account_with_a_requested_audience_is_exchanged() {
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&explicit(&api, dir.path())).await;
    let a = svc.exchange(0).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let jwks = get(&svc.app, "/.well-known/jwks.json").await.json;
    let (_, claims) = verify(a.json["access_token"].as_str().unwrap(), &jwks);
    assert_eq!(claims["sub"], WEB);
    assert_eq!(api.reviews().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_from_a_reviewed_issuer_is_reviewed_too_and_a_refusal_is_invalid_grant() {
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(&explicit(&api, dir.path()), false, DELEGATED_LEDGER).await;
    let (subject, actor) = (svc.sa_token(0), svc.sa_token_of("batch", 0));
    let form = ledger_form_with_actor(&subject, &actor);
    // The API server authenticates web's token, but its review of batch's names
    // another user (as for a deleted pod's reused name): the actor token is refused
    // although its signature is good.
    let a = post_token_as(&svc.app, form, Some(WEB)).await;
    assert_invalid_grant(&a, "actor not authenticated");
    assert!(
        a.json["error_description"]
            .as_str()
            .unwrap()
            .contains("actor_token"),
        "{}",
        a.json
    );
    let reviewed: Vec<_> = api
        .reviews()
        .iter()
        .map(|r| r.body["spec"]["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reviewed, [subject, actor]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_that_may_not_act_for_the_subject_is_refused_before_the_api_server_reviews_it() {
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(&explicit(&api, dir.path()), false, DELEGATED_LEDGER).await;
    // ledger lets only batch act: another workload's good token is refused on the
    // mapping alone, without a round trip to the API server for it.
    let (subject, actor) = (svc.sa_token(0), svc.sa_token_of("other", 0));
    let form = ledger_form_with_actor(&subject, &actor);
    let a = post_token_as(&svc.app, form, Some(WEB)).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"], "unauthorized_client", "{}", a.json);
    let reviewed: Vec<_> = api
        .reviews()
        .iter()
        .map(|r| r.body["spec"]["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reviewed, [subject]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_carries_the_subject_token_and_the_configured_audiences() {
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&format!(
        "{}, audiences = [\"meshpass\", \"vault\"]",
        explicit(&api, dir.path())
    ))
    .await;
    let token = svc.sa_token(0);
    let a = post_token_as(
        &svc.app,
        exchange_form(&token, &[("resource", "payments")]),
        Some(WEB),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let r = api.last_review();
    assert_eq!(r.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(r.body["kind"], "TokenReview");
    assert_eq!(r.body["spec"]["token"], token.as_str());
    assert_eq!(r.body["spec"]["audiences"], json!(["meshpass", "vault"]));
    assert_eq!(r.authorization.as_deref(), Some("Bearer exchange-sa-token"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
}

/// `token_review.audiences` set apart from the issuer's `audiences` (a common slip:
/// the API server's own audience, as legacy tokens carry) starts without a word, and
/// then refuses every projected service-account token: its one audience cannot be in
/// both lists. The service says so at start-up, naming both fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_audiences_sharing_none_with_the_issuers_are_warned_about_at_start_up() {
    let log = captured_log();
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let warned = || {
        log.text()
            .contains("shares no audience with issuers[0].audiences")
    };
    // Overlapping lists (and the default, the issuer's own): no warning.
    let _ok = Service::start(&format!(
        "{}, audiences = [\"vault\", \"meshpass\"]",
        explicit(&api, dir.path())
    ))
    .await;
    assert!(!warned(), "{}", log.text());
    let svc = Service::start(&format!(
        "{}, audiences = [\"https://kubernetes.default.svc\"]",
        explicit(&api, dir.path())
    ))
    .await;
    let text = log.text();
    assert!(
        text.contains("WARN")
            && text
                .contains("issuers[0].token_review.audiences [\"https://kubernetes.default.svc\"]")
            && warned(),
        "no start-up warning for disjoint audiences:\n{text}"
    );
    // What the warning is about: the API server, asked for its own audience only,
    // does not authenticate a token for `meshpass`.
    api.answer(Reply::Status(json!({"authenticated": false, "error": "token audiences [\"meshpass\"] is invalid for the target audiences [\"https://kubernetes.default.svc\"]"})));
    assert_invalid_grant(&svc.exchange(0).await, "disjoint audiences");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_review_is_invalid_grant() {
    let api = KubeApi::start(Reply::Status(
        json!({"authenticated": false, "error": "token has been invalidated"}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&explicit(&api, dir.path())).await;
    assert_invalid_grant(&svc.exchange(0).await, "authenticated: false");
    // An answer without `authenticated` at all is not an authentication either.
    api.answer(Reply::Status(
        json!({"user": {"username": SA_USER}, "audiences": ["meshpass"]}),
    ));
    assert_invalid_grant(&svc.exchange(1).await, "no authenticated field");
    assert_eq!(api.reviews().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_for_another_user_is_invalid_grant() {
    let api = KubeApi::start(Reply::Status(authenticated(
        "system:serviceaccount:shop:admin",
        "99",
        &["meshpass"],
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&explicit(&api, dir.path())).await;
    assert_invalid_grant(&svc.exchange(0).await, "another user");
    api.answer(Reply::Status(
        json!({"authenticated": true, "audiences": ["meshpass"]}),
    ));
    assert_invalid_grant(&svc.exchange(1).await, "no user");
    assert_eq!(api.reviews().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_whose_audiences_do_not_intersect_is_invalid_grant() {
    let api = KubeApi::start(Reply::Status(authenticated(
        SA_USER,
        "1234",
        &["kubernetes"],
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&explicit(&api, dir.path())).await;
    assert_invalid_grant(&svc.exchange(0).await, "audiences [kubernetes]");
    // No `status.audiences`: the API server did not check them (not audience-aware).
    let mut status = authenticated(SA_USER, "1234", &[]);
    status.as_object_mut().unwrap().remove("audiences");
    api.answer(Reply::Status(status));
    assert_invalid_grant(&svc.exchange(1).await, "no audiences");
    // The same double accepts once the audience matches: the refusals were the audiences.
    api.answer(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"])));
    assert_eq!(svc.exchange(2).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_api_server_is_audited_and_an_outage_is_not() {
    let api = KubeApi::start(Reply::Status(
        json!({"authenticated": false, "error": "token has been invalidated"}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_audited(&explicit(&api, dir.path()), true).await;
    assert_invalid_grant(&svc.exchange(0).await, "authenticated: false");
    api.answer(Reply::Fail(500));
    assert_unavailable(&svc.exchange(1).await, "API server answers 500");
    // The audit writer is asynchronous: wait for the refusal, then give an outage
    // record (which must not come) the same time to appear.
    let query = meshpass_exchange::store::AuditQuery {
        after: None,
        limit: 10,
        action: Some("exchange.refused".into()),
        target_prefix: None,
    };
    let mut events = Vec::new();
    for _ in 0..100 {
        events = svc.store.audit_events(&query).await.unwrap();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = if events.is_empty() {
        events
    } else {
        svc.store.audit_events(&query).await.unwrap()
    };
    assert_eq!(events.len(), 1, "{events:?}");
    let e = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(e["target"], "resources/payments", "{e}");
    assert!(
        e["actor"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://cluster.local/ns/shop/sa/web"),
        "{e}"
    );
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("invalid_grant") && reason.contains("Kubernetes API server"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_down_or_failing_gives_503_with_retry_after() {
    // Failing: 500 with a `Status` body.
    let api = KubeApi::start(Reply::Fail(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(
        &explicit(&api, dir.path()),
        false,
        "[server]\nretry_after_secs = 9\n",
    )
    .await;
    let a = svc.exchange(0).await;
    assert_unavailable(&a, "API server answers 500");
    // The operator's setting, not a fixed value.
    assert_eq!(a.headers["retry-after"], "9");
    // Our own credentials refused (401) is the service's problem, not the subject's.
    api.answer(Reply::Fail(401));
    assert_unavailable(&svc.exchange(1).await, "API server answers 401");

    // Down: nothing listens on the port (reserved: no other test can be handed it).
    let port = meshpass_testkit::free_port();
    let down = Service::start(&format!(
        "url = \"https://127.0.0.1:{port}\", ca_file = \"{}\"",
        api.ca_file.display()
    ))
    .await;
    assert_unavailable(&down.exchange(0).await, "connection refused");

    // Hanging: accepts the connection and never answers; bounded by timeout_secs.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("https://{}", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let slow = Service::start(&format!(
        "url = \"{hang_url}\", ca_file = \"{}\", timeout_secs = 1",
        api.ca_file.display()
    ))
    .await;
    let t = Instant::now();
    assert_unavailable(&slow.exchange(0).await, "no answer");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A certificate from another CA is not trusted: fail closed, 503.
    let other = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let untrusted = Service::start(&format!(
        "url = \"{}\", ca_file = \"{}\"",
        other.url,
        api.ca_file.display()
    ))
    .await;
    assert_unavailable(&untrusted.exchange(0).await, "untrusted certificate");
    assert!(
        other.reviews().is_empty(),
        "a review went to an untrusted server"
    );
}

#[test]
fn token_review_needs_exactly_one_of_url_and_in_cluster() {
    let issuer = TestIssuer::new(K8S_ISSUER, "sa");
    let dir = tempfile::tempdir().unwrap();
    for (review, field) in [
        (
            "in_cluster = true, url = \"https://kubernetes.default.svc\"",
            "issuers[0].token_review.url",
        ),
        ("audiences = [\"meshpass\"]", "issuers[0].token_review.url"),
        (
            "in_cluster = true, ca_file = \"/tmp/ca.pem\"",
            "issuers[0].token_review.in_cluster",
        ),
        (
            "url = \"http://kubernetes.default.svc\"",
            "issuers[0].token_review.url",
        ),
    ] {
        let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
            &format!("jwks = '{}'", issuer.jwks()),
            &format!("jwks = '{}'\ntoken_review = {{ {review} }}", issuer.jwks()),
        );
        let path = dir.path().join("meshpass.toml");
        std::fs::write(&path, toml).unwrap();
        let err = meshpass_exchange::config::Config::load(Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{review}: {err}");
    }
    // Both accepted forms load.
    for review in [
        "in_cluster = true",
        "url = \"https://kubernetes.default.svc\"",
    ] {
        let toml = config_toml(&issuer, &dir.path().join("m.db"), "").replace(
            &format!("jwks = '{}'", issuer.jwks()),
            &format!("jwks = '{}'\ntoken_review = {{ {review} }}", issuer.jwks()),
        );
        load_config(dir.path(), &toml);
    }
}
