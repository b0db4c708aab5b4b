//! The Kubernetes service-account path at its edges: TokenReview answers, the service's
//! own credentials for the API server, and the configuration checks of
//! `issuers[].token_review`, against the HTTPS Kubernetes API double (tests/kube_api)
//! speaking the real wire format, the real transit signer (OpenBao) and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod kube_api;

use std::sync::Arc;

use axum::Router;
use common::*;
use kube_api::{authenticated, KubeApi, Reply};
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::ExchangeStats;
use meshpass_exchange::store::{MappingStore, SqlStore};
use meshpass_exchange::AppState;
use serde_json::json;

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const SA_USER: &str = "system:serviceaccount:shop:web";

/// The configuration TOML with the Kubernetes issuer reviewed through `token_review`
/// (the body of an inline table).
fn k8s_toml(issuer: &TestIssuer, dir: &std::path::Path, token_review: &str) -> String {
    config_toml(issuer, &dir.join("m.db"), "").replace(
        &format!("jwks = '{}'", issuer.jwks()),
        &format!(
            "jwks = '{}'\nsubject_format = \"kubernetes_service_account\"\ntoken_review = {{ {token_review} }}",
            issuer.jwks()
        ),
    )
}

struct Service {
    app: Router,
    issuer: TestIssuer,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(token_review: &str) -> Service {
        let issuer = TestIssuer::new(K8S_ISSUER, "sa");
        let dir = tempfile::tempdir().unwrap();
        let cfg = load_config(dir.path(), &k8s_toml(&issuer, dir.path(), token_review));
        let state = state_with(&cfg, signer().await, Arc::new(SystemClock)).await;
        Service {
            app: meshpass_exchange::app(state),
            issuer,
            _dir: dir,
        }
    }

    /// A pod-bound service-account token for `shop/web`; `n` makes it distinct.
    fn sa_token(&self, n: u64) -> String {
        let t = now();
        self.issuer.sign(&json!({
            "iss": K8S_ISSUER, "sub": SA_USER, "aud": ["meshpass"],
            "iat": t - n, "nbf": t - n, "exp": t + 3600,
            "kubernetes.io": {
                "namespace": "shop",
                "pod": {"name": "web-5d8f", "uid": "p-1"},
                "serviceaccount": {"name": "web", "uid": "1234"},
            },
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

/// A TokenReview answer is read whole into memory, however large: the API server (or
/// anything answering on its address with a trusted certificate) can make the service
/// allocate without bound. The issuer's JWKS and discovery documents stop at 1 MiB;
/// a real TokenReview answer is the request echoed (a token of at most
/// `max_token_bytes`) plus the user info. A 64 MiB answer must be refused as the API
/// server failing (503 + Retry-After), not parsed and accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenreview_answer_far_larger_than_any_real_one_is_refused_as_unavailable_not_read_whole_and_accepted(
) {
    let mut status = authenticated(SA_USER, "1234", &["meshpass"]);
    // `status.user.extra` is a real field (map of string lists): 64 MiB of it.
    status["user"]["extra"] = json!({"padding": ["x".repeat(64 << 20)]});
    let api = KubeApi::start(Reply::Status(status)).await;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(&api.explicit(dir.path()).0).await;
    let a = svc.exchange(0).await;
    assert_eq!(api.reviews().len(), 1, "the review was not asked");
    assert_eq!(
        a.status, 503,
        "a 64 MiB TokenReview answer was read whole and decided on: {}",
        a.json
    );
    assert_eq!(a.json["error"], "temporarily_unavailable", "{}", a.json);
    assert!(a.headers.contains_key("retry-after"));
}

/// Refuted suspicion, kept as a guard: the bearer-token file is re-read at every
/// review, so a rotated token is used at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reviewers_bearer_token_file_is_re_read_at_every_review_after_rotation() {
    let api = KubeApi::start(Reply::Status(authenticated(SA_USER, "1234", &["meshpass"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let (review, token_file) = api.explicit(dir.path());
    let svc = Service::start(&review).await;
    assert_eq!(svc.exchange(0).await.status, 200);
    assert_eq!(
        api.last_review().authorization.as_deref(),
        Some("Bearer exchange-sa-token")
    );
    // The kubelet swaps the projected token: write a new file and rename it over.
    let next = dir.path().join("reviewer-token.new");
    std::fs::write(&next, "rotated-token\n").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    assert_eq!(svc.exchange(1).await.status, 200);
    assert_eq!(
        api.last_review().authorization.as_deref(),
        Some("Bearer rotated-token")
    );
    // Caught empty (a writer truncating before writing): 503, never a review without it.
    std::fs::write(&token_file, "").unwrap();
    let a = svc.exchange(2).await;
    assert_eq!(a.status, 503, "{}", a.json);
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(api.reviews().len(), 2);
}

/// `check-config` (exit 0 valid, 2 invalid naming the field) passes a `token_review`
/// whose CA file or bearer-token file `serve` cannot use, while `serve` refuses to start
/// on the very same file with exit 2 naming `issuers[0].token_review`. The issuer's own
/// `ca_file` is checked by `check-config` ("What `serve` builds from the issuers ... is
/// refused here too, so check-config says it"); the TokenReview files are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_a_token_review_ca_or_bearer_token_file_that_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(K8S_ISSUER, "sa");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let good_token = dir.path().join("good-token");
    std::fs::write(&good_token, "tok\n").unwrap();
    let empty_token = dir.path().join("empty-token");
    std::fs::write(&empty_token, "\n").unwrap();
    let missing = dir.path().join("missing");
    let url = "https://127.0.0.1:6443";
    let cases = [
        format!(
            "url = \"{url}\", ca_file = \"{}\", bearer_token_file = \"{}\"",
            missing.display(),
            good_token.display()
        ),
        format!(
            "url = \"{url}\", ca_file = \"{}\", bearer_token_file = \"{}\"",
            not_pem.display(),
            good_token.display()
        ),
        format!(
            "url = \"{url}\", bearer_token_file = \"{}\"",
            missing.display()
        ),
        format!(
            "url = \"{url}\", bearer_token_file = \"{}\"",
            empty_token.display()
        ),
    ];
    let mut problems = Vec::new();
    for (i, review) in cases.iter().enumerate() {
        let sub = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let toml = k8s_toml(&issuer, &sub, review);
        let path = sub.join("exchange.toml");
        std::fs::write(&path, &toml).unwrap();
        // What `serve` does with it: refuses to build its state, naming the field.
        let cfg = meshpass_exchange::config::Config::load(Some(&path));
        if let Ok(cfg) = &cfg {
            let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
            let keys = IssuerKeys::from_config(cfg).unwrap();
            let serve = AppState::new(
                cfg,
                signer().await,
                store as Arc<dyn MappingStore>,
                keys,
                Arc::new(SystemClock),
            );
            let err = serve.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("issuers[0].token_review"),
                "{review}: serve would start: {err}"
            );
        }
        // What `check-config` says about it.
        let out = std::process::Command::new(meshpass_testkit::exchange_bin())
            .arg("check-config")
            .arg(&path)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !stderr.contains("issuers[0].token_review") {
            problems.push(format!(
                "{review}: check-config exit {:?} ({}) although serve refuses it",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The management API's SubjectAccessReview reads the same kind of bearer-token file
/// (`management.kubernetes.bearer_token_file`, "re-read at every review") through the
/// same `bearer_header`; caught unreadable or empty (mid-rotation) TokenReview answers
/// 503 + Retry-After, but the SubjectAccessReview turns it into `MgmtError::Internal`:
/// `500 internal`, which a client does not retry, for a transient credential problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_bearer_token_file_fails_a_subject_access_review_with_503_not_500() {
    const K8S: &str = "https://kubernetes.default.svc";
    const ADMIN: &str = "system:serviceaccount:ops:admin";
    let api = KubeApi::start(Reply::Status(authenticated(
        ADMIN,
        "1",
        &["meshpass-admin"],
    )))
    .await;
    api.allow_verbs(&["read"]);
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(K8S, "sa-1");
    let own_token = dir.path().join("sa-token");
    std::fs::write(&own_token, "service-own-token\n").unwrap();
    let toml = format!(
        r#"
[token]
issuer = "https://meshpass.test"
[store]
url = "sqlite://{db}"
[[issuers]]
issuer = "{K8S}"
audiences = ["meshpass"]
trust_domains = ["cluster.local"]
subject_format = "kubernetes_service_account"
jwks = '{jwks}'
[vault]
address = "http://127.0.0.1:9"
auth = {{ method = "token", token = "unused" }}
[management]
listen = "127.0.0.1:0"
audiences = ["meshpass-admin"]
[management.kubernetes]
url = "{url}"
ca_file = "{ca}"
bearer_token_file = "{own}"
timeout_secs = 2
"#,
        db = dir.path().join("m.db").display(),
        jwks = issuer.jwks(),
        url = api.url,
        ca = api.ca_file.display(),
        own = own_token.display(),
    );
    let cfg = load_config(dir.path(), &toml);
    let store = Arc::new(SqlStore::connect(&cfg.store, "participant").unwrap());
    store.migrate().await.unwrap();
    let keys = IssuerKeys::from_config(&cfg).unwrap();
    keys.refresh_all().await;
    let state = AppState::new(
        &cfg,
        signer().await,
        store.clone() as Arc<dyn MappingStore>,
        keys,
        Arc::new(SystemClock),
    )
    .unwrap();
    let running = meshpass_exchange::mgmt::start(
        &cfg,
        &state,
        store,
        None,
        Arc::new(ExchangeStats::new().unwrap()),
        std::future::pending::<()>(),
    )
    .await
    .unwrap()
    .unwrap();
    let base = format!("http://{}", running.addr);
    let n = now();
    let token = issuer.sign(
        &json!({"iss": K8S, "sub": ADMIN, "aud": ["meshpass-admin"], "iat": n, "exp": n + 600}),
    );
    let http = reqwest::Client::new();
    let list = || {
        http.get(format!("{base}/api/v1/mappings"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(list().await.unwrap().status().as_u16(), 200);
    // Caught mid-rotation: the writer truncated the file and has not written it yet.
    std::fs::write(&own_token, "").unwrap();
    let r = list().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    let body = r.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry, "no Retry-After: {body}");
}
