//! The management API authorising service-account callers with Kubernetes
//! SubjectAccessReview (verbs `read`/`write`/`keys` on `management.meshpass.io`), and
//! reviewing their tokens with TokenReview when the issuer says so, against the HTTPS
//! Kubernetes API double speaking the real wire format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod kube_api;

use std::sync::Arc;

use common::*;
use kube_api::{authenticated, KubeApi, Reply};
use meshpass_exchange::clock::SystemClock;
use meshpass_exchange::keys::IssuerKeys;
use meshpass_exchange::mgmt::ExchangeStats;
use meshpass_exchange::store::{MappingStore, SqlStore};
use meshpass_exchange::AppState;
use serde_json::json;

const K8S: &str = "https://kubernetes.default.svc";
const SA_USER: &str = "system:serviceaccount:ops:admin";

/// A service whose management API asks the API server at `url` (CA `ca`); returns
/// its base URL and the service-account token issuer.
async fn start(dir: &std::path::Path, url: &str, ca: &std::path::Path) -> (String, TestIssuer) {
    start_with(dir, url, ca, "", "").await
}

/// [`start`] with `issuers` appended to the `[[issuers]]` and `kube` to
/// `[management.kubernetes]`.
async fn start_with(
    dir: &std::path::Path,
    url: &str,
    ca: &std::path::Path,
    issuers: &str,
    kube: &str,
) -> (String, TestIssuer) {
    let issuer = TestIssuer::new(K8S, "sa-1");
    let toml = service_toml(dir, url, ca, &issuer, issuers, kube);
    let cfg = load_config(dir, &toml);
    assert!(
        cfg.management.disabled_reason().is_none(),
        "SubjectAccessReview alone is enough"
    );
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
    let stats = Arc::new(ExchangeStats::new().unwrap());
    let running = meshpass_exchange::mgmt::start(
        &cfg,
        &state,
        store,
        None,
        stats,
        std::future::pending::<()>(),
    )
    .await
    .unwrap()
    .unwrap();
    (format!("http://{}", running.addr), issuer)
}

/// The service's configuration: `issuer` (this cluster's service accounts) and
/// `issuers` as `[[issuers]]`, `kube` appended to `[management.kubernetes]`.
fn service_toml(
    dir: &std::path::Path,
    url: &str,
    ca: &std::path::Path,
    issuer: &TestIssuer,
    issuers: &str,
    kube: &str,
) -> String {
    let own_token = dir.join("sa-token");
    std::fs::write(&own_token, "service-own-token\n").unwrap();
    format!(
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
{issuers}
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
{kube}
"#,
        db = dir.join("m.db").display(),
        jwks = issuer.jwks(),
        ca = ca.display(),
        own = own_token.display(),
    )
}

fn sa_token(issuer: &TestIssuer, aud: &str) -> String {
    let n = now();
    issuer.sign(&json!({"iss": K8S, "sub": SA_USER, "aud": [aud], "iat": n, "exp": n + 600}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_callers_get_the_roles_the_api_server_grants() {
    let api = KubeApi::start(Reply::Status(authenticated(
        SA_USER,
        "1",
        &["meshpass-admin"],
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (base, issuer) = start(dir.path(), &api.url, &api.ca_file).await;
    let n = now();
    let token = issuer.sign(
        &json!({"iss": K8S, "sub": SA_USER, "aud": ["meshpass-admin"], "iat": n, "exp": n + 600}),
    );
    let http = reqwest::Client::new();
    let mapping = json!({"name": "inv", "subject": "spiffe://cluster.local/ns/shop/*", "resource": "inventory",
        "participant": "acme", "ttl_secs": 300});

    api.allow_verbs(&["read"]);
    let r = http
        .get(format!("{base}/api/v1/mappings"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/api/v1/mappings"))
        .bearer_auth(&token)
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let reviews = api.access_reviews();
    assert_eq!(reviews.len(), 2);
    let spec = &reviews[1].body["spec"];
    assert_eq!(spec["user"], SA_USER);
    assert_eq!(spec["resourceAttributes"]["group"], "meshpass.io");
    assert_eq!(spec["resourceAttributes"]["resource"], "management");
    assert_eq!(spec["resourceAttributes"]["verb"], "write");
    assert_eq!(reviews[1].body["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(
        reviews[1].authorization.as_deref(),
        Some("Bearer service-own-token")
    );

    api.allow_verbs(&["read", "write"]);
    let r = http
        .post(format!("{base}/api/v1/mappings"))
        .bearer_auth(&token)
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let audit: serde_json::Value = http
        .get(format!("{base}/api/v1/audit"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        audit["items"][0]["actor"],
        "spiffe://cluster.local/ns/ops/sa/admin"
    );

    // A token for another audience never reaches the API server.
    let before = api.access_reviews().len();
    let wrong = issuer
        .sign(&json!({"iss": K8S, "sub": SA_USER, "aud": ["meshpass"], "iat": n, "exp": n + 600}));
    let r = http
        .get(format!("{base}/api/v1/mappings"))
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(api.access_reviews().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_closed_with_503() {
    let api = KubeApi::start(Reply::Fail(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("https://127.0.0.1:{}", meshpass_testkit::free_port());
    let (base, issuer) = start(dir.path(), &closed, &api.ca_file).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/mappings"))
        .bearer_auth(sa_token(&issuer, "meshpass-admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
}

/// The service with `token_review` on its issuer, against `api` (the service's own token
/// for the reviews, as `service_toml` writes it for SubjectAccessReview).
async fn start_reviewing(dir: &std::path::Path, api: &KubeApi) -> (String, TestIssuer) {
    let review = format!(
        r#"token_review = {{ url = "{}", ca_file = "{}", bearer_token_file = "{}" }}"#,
        api.url,
        api.ca_file.display(),
        dir.join("sa-token").display(),
    );
    start_with(dir, &api.url, &api.ca_file, &review, "").await
}

/// With `token_review` on the issuer, a management token is reviewed as `/token`
/// reviews a subject token (for the management audience it carries): one the API
/// server no longer authenticates (its pod or service account deleted) is no
/// credential, however the roles would be granted; the API server down fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_the_api_server_refuses_is_no_management_credential() {
    let api = KubeApi::start(Reply::Status(
        json!({"authenticated": false, "error": "token has been invalidated"}),
    ))
    .await;
    api.allow_verbs(&["read", "write", "keys"]);
    let dir = tempfile::tempdir().unwrap();
    let (base, issuer) = start_reviewing(dir.path(), &api).await;
    let token = sa_token(&issuer, "meshpass-admin");
    let http = reqwest::Client::new();
    let list = || {
        http.get(format!("{base}/api/v1/mappings"))
            .bearer_auth(&token)
            .send()
    };

    let r = list().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"], "unauthenticated", "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("bearer token refused: "),
        "{b}"
    );
    let review = api.last_review();
    assert_eq!(review.body["spec"]["token"], token.as_str());
    assert_eq!(review.body["spec"]["audiences"], json!(["meshpass-admin"]));
    assert!(
        api.access_reviews().is_empty(),
        "a refused token was authorised"
    );

    // The API server authenticates it: the roles it grants apply.
    api.answer(Reply::Status(authenticated(
        SA_USER,
        "1",
        &["meshpass-admin"],
    )));
    assert_eq!(list().await.unwrap().status().as_u16(), 200);

    // The API server cannot answer: 503, never a pass.
    api.answer(Reply::Fail(500));
    let r = list().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
}

/// A merge patch and an import need `write` and `read`: the token is validated and
/// reviewed once per request, and the API server is asked once for each verb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_or_an_import_reviews_the_token_once_and_asks_once_per_verb() {
    let api = KubeApi::start(Reply::Status(authenticated(
        SA_USER,
        "1",
        &["meshpass-admin"],
    )))
    .await;
    api.allow_verbs(&["read", "write"]);
    let dir = tempfile::tempdir().unwrap();
    let (base, issuer) = start_reviewing(dir.path(), &api).await;
    let token = sa_token(&issuer, "meshpass-admin");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/mappings"))
        .bearer_auth(&token)
        .json(
            &json!({"name": "inv", "subject": "spiffe://cluster.local/ns/shop/*",
            "resource": "inventory", "participant": "acme", "ttl_secs": 300}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let counts = || (api.reviews().len(), api.access_reviews().len());
    let verbs = |from: usize| -> Vec<String> {
        api.access_reviews()[from..]
            .iter()
            .map(|r| {
                r.body["spec"]["resourceAttributes"]["verb"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let (tokens, access) = counts();
    let r = http
        .patch(format!("{base}/api/v1/mappings/inv"))
        .bearer_auth(&token)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"ttl_secs": 600}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(counts().0 - tokens, 1, "TokenReviews for one PATCH");
    assert_eq!(verbs(access), ["write", "read"]);

    let (tokens, access) = counts();
    let r = http
        .post(format!("{base}/api/v1/import?dry_run=true"))
        .bearer_auth(&token)
        .json(&json!({"mappings": [], "scopes": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(counts().0 - tokens, 1, "TokenReviews for one import");
    assert_eq!(verbs(access), ["write", "read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_of_another_clusters_issuer_is_never_reviewed_by_this_one() {
    let api = KubeApi::start(Reply::Status(authenticated(
        SA_USER,
        "1",
        &["meshpass-admin"],
    )))
    .await;
    api.allow_verbs(&["read", "write", "keys"]);
    let dir = tempfile::tempdir().unwrap();
    // A second cluster's service-account tokens are trusted for exchanges too; its
    // `ops/admin` is not this cluster's `ops/admin`.
    const EAST: &str = "https://east.example";
    let east = TestIssuer::new(EAST, "east-1");
    let issuers = format!(
        r#"[[issuers]]
issuer = "{EAST}"
audiences = ["meshpass"]
trust_domains = ["east.local"]
subject_format = "kubernetes_service_account"
jwks = '{}'
"#,
        east.jwks()
    );
    // Two such issuers: which cluster this API server answers for must be said.
    let path = dir.path().join("ambiguous.toml");
    std::fs::write(
        &path,
        service_toml(
            dir.path(),
            &api.url,
            &api.ca_file,
            &TestIssuer::new(K8S, "sa-1"),
            &issuers,
            "",
        ),
    )
    .unwrap();
    let e = meshpass_exchange::config::Config::load(Some(&path)).unwrap_err();
    assert!(
        e.to_string().contains("management.kubernetes.issuer"),
        "{e}"
    );
    let (base, home) = start_with(
        dir.path(),
        &api.url,
        &api.ca_file,
        &issuers,
        &format!("issuer = \"{K8S}\""),
    )
    .await;
    let n = now();
    let claims = |iss: &str| json!({"iss": iss, "sub": SA_USER, "aud": ["meshpass-admin"], "iat": n, "exp": n + 600});
    let http = reqwest::Client::new();
    let get = |token: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}/api/v1/mappings"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(east.sign(&claims(EAST))).await, 403);
    assert!(
        api.access_reviews().is_empty(),
        "the other cluster's caller was reviewed"
    );
    assert_eq!(get(home.sign(&claims(K8S))).await, 200);
    assert_eq!(api.access_reviews().len(), 1);
}

#[test]
fn management_kubernetes_refuses_in_cluster_beside_a_ca_or_token_file_as_token_review_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // `url` swapped for in_cluster: the CA and token files would be silently ignored.
    let toml = service_toml(
        dir.path(),
        "https://api.test",
        &ca,
        &TestIssuer::new(K8S, "sa-1"),
        "",
        "",
    )
    .replace("url = \"https://api.test\"", "in_cluster = true");
    let path = dir.path().join("meshpass.toml");
    std::fs::write(&path, toml).unwrap();
    let e = meshpass_exchange::config::Config::load(Some(&path)).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("management.kubernetes.in_cluster"), "{e}");
    assert!(e.contains("remove ca_file and bearer_token_file"), "{e}");
}

/// Without `token_review` on the issuer, `[management.kubernetes]` asked the API server
/// whether the token's `sub` may use a role, without asking whether the token is still
/// good: a deleted service account's token verifies until it expires, and its RBAC
/// binding (names are strings) outlives it, so the caller kept `write` and `keys`. The
/// token is now reviewed by the same API server first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_accounts_token_gets_no_role_even_without_token_review_on_its_issuer() {
    let api = KubeApi::start(Reply::Status(
        json!({"authenticated": false, "error": "service account ops/admin has been deleted"}),
    ))
    .await;
    api.allow_verbs(&["read", "write", "keys"]);
    let dir = tempfile::tempdir().unwrap();
    let (base, issuer) = start(dir.path(), &api.url, &api.ca_file).await;
    let token = sa_token(&issuer, "meshpass-admin");
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/mappings"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "a token the API server no longer authenticates got a role"
    );
    assert!(
        api.access_reviews().is_empty(),
        "a refused token was authorised"
    );
    let review = api.last_review();
    assert_eq!(review.body["spec"]["audiences"], json!(["meshpass-admin"]));
    assert_eq!(
        review.authorization.as_deref(),
        Some("Bearer service-own-token"),
        "reviewed with management.kubernetes' own credentials"
    );
}

/// "If you specify User but not Groups, then it is interpreted as What if User were
/// not a member of any groups" (the SubjectAccessReviewSpec reference): a role granted
/// to the namespace's service accounts (`--group=system:serviceaccounts:ops`) was
/// refused. The review now carries what the TokenReview answered: uid, groups, extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_review_carries_the_groups_uid_and_extra_the_token_review_answered() {
    let mut status = authenticated(SA_USER, "7f1c-uid", &["meshpass-admin"]);
    status["user"]["groups"] = json!([
        "system:serviceaccounts",
        "system:serviceaccounts:ops",
        "system:authenticated"
    ]);
    status["user"]["extra"] = json!({"authentication.kubernetes.io/pod-name": ["admin-0"]});
    let api = KubeApi::start(Reply::Status(status)).await;
    api.allow_verbs(&["read"]);
    let dir = tempfile::tempdir().unwrap();
    let (base, issuer) = start(dir.path(), &api.url, &api.ca_file).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/mappings"))
        .bearer_auth(sa_token(&issuer, "meshpass-admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let reviews = api.access_reviews();
    assert_eq!(reviews.len(), 1);
    let spec = &reviews[0].body["spec"];
    assert_eq!(spec["user"], SA_USER);
    assert_eq!(
        spec["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:ops",
            "system:authenticated"
        ]),
        "{spec}"
    );
    assert_eq!(spec["uid"], "7f1c-uid", "{spec}");
    assert_eq!(
        spec["extra"],
        json!({"authentication.kubernetes.io/pod-name": ["admin-0"]}),
        "{spec}"
    );
}
