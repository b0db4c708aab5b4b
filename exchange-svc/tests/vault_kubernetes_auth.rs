//! `vault.auth.method = "kubernetes"` end to end: a real OpenBao with `auth/kubernetes`
//! whose `kubernetes_host` is the HTTPS Kubernetes API double (tests/kube_api). OpenBao
//! reads the service-account name and namespace from the JWT's claims, checks them
//! against the role, then asks the API server's TokenReview whether the token is real.
//! Without `pem_keys` OpenBao does not verify the JWT's signature itself: the review is
//! the proof, so every test asserts what the double saw.
// Test code: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kube_api;
mod vault_common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kube_api::{authenticated, KubeApi, Reply};
use meshpass_exchange::vault::{AuthConfig, TransitSigner, VaultConfig, VaultError};
use meshpass_testkit::OpenBao;
use serde_json::json;
use std::path::Path;
use vault_common::*;

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const NAMESPACE: &str = "meshpass";
const SA: &str = "meshpass-exchange";
const SA_UID: &str = "5f0c1a52-1b7e-4d4f-9f55-0b6d3c1f8a10";
const ROLE: &str = "meshpass-exchange";
/// What OpenBao sends as its own bearer token to the TokenReview API.
const REVIEWER_JWT: &str = "reviewer-service-account-token";

/// OpenBao with transit key `k`, a `signer` policy, and `auth/kubernetes` pointed at
/// `api`, with role [`ROLE`] bound to `meshpass/meshpass-exchange` and audience `openbao`.
fn bao_with_kubernetes_auth(api: &KubeApi) -> OpenBao {
    let bao = bao_with_key("k", "ecdsa-p256");
    bao.write_policy("signer", &signer_policy("k"));
    bao.enable_auth("kubernetes", "kubernetes");
    bao.api_ok(
        "POST",
        "auth/kubernetes/config",
        Some(json!({
            "kubernetes_host": api.url,
            "kubernetes_ca_cert": api.ca_pem,
            "token_reviewer_jwt": REVIEWER_JWT,
            // Not running in a pod: never look for local service-account files.
            "disable_local_ca_jwt": true,
            "issuer": K8S_ISSUER,
            "disable_iss_validation": false,
        })),
    );
    bao.api_ok(
        "POST",
        &format!("auth/kubernetes/role/{ROLE}"),
        Some(json!({
            "bound_service_account_names": [SA],
            "bound_service_account_namespaces": [NAMESPACE],
            "audience": "openbao",
            "token_policies": ["signer"],
            "token_ttl": "1h",
        })),
    );
    bao
}

/// A projected service-account token for `namespace/name`, ES256-signed by a key made
/// for this test (the shape the kubelet mounts).
fn sa_jwt(namespace: &str, name: &str, uid: &str) -> String {
    use p256::ecdsa::signature::Signer as _;
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": K8S_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "aud": ["openbao"],
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": format!("{name}-7d9f8-abcde"), "uid": "0b6d3c1f-0000-4d4f-9f55-5f0c1a521b7e"},
            "serviceaccount": {"name": name, "uid": uid},
        },
    });
    let header = json!({"alg": "ES256", "kid": "k8s-sa-key"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn kubernetes_config(bao: &OpenBao, jwt_file: &Path) -> VaultConfig {
    VaultConfig {
        auth: AuthConfig::Kubernetes {
            mount: "kubernetes".into(),
            role: ROLE.into(),
            jwt_file: jwt_file.to_path_buf(),
        },
        ..config(bao, "k")
    }
}

fn user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

fn assert_refused(err: &VaultError) {
    assert!(
        matches!(err, VaultError::PermissionDenied(p) if p.contains("auth/kubernetes/login")),
        "expected a refused login, got {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_logs_in_through_the_token_review_and_signs() {
    let api = KubeApi::start(Reply::Status(authenticated(
        &user(NAMESPACE, SA),
        SA_UID,
        &["openbao"],
    )))
    .await;
    let bao = bao_with_kubernetes_auth(&api);
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    let jwt = sa_jwt(NAMESPACE, SA, SA_UID);
    std::fs::write(&jwt_file, &jwt).unwrap();

    let signer = TransitSigner::start(&kubernetes_config(&bao, &jwt_file))
        .await
        .unwrap();
    sign_and_verify(&signer, r#"{"sub":"x"}"#).await;
    assert_eq!(signer.stats().logins(), 1);
    let ttl = signer.stats().token_ttl_seconds().unwrap();
    assert!((3000..=3600).contains(&ttl), "{ttl}");

    // OpenBao asked the API server about exactly this token, for the role's audience,
    // with its own reviewer token.
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    let r = &reviews[0];
    assert_eq!(r.body["spec"]["token"], jwt.as_str());
    assert_eq!(r.body["spec"]["audiences"], json!(["openbao"]));
    assert_eq!(
        r.authorization.as_deref(),
        Some(format!("Bearer {REVIEWER_JWT}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_refuses_a_service_account_the_role_does_not_bind() {
    let api = KubeApi::start(Reply::Status(authenticated(
        &user(NAMESPACE, "other"),
        SA_UID,
        &["openbao"],
    )))
    .await;
    let bao = bao_with_kubernetes_auth(&api);
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    for (namespace, name) in [(NAMESPACE, "other"), ("shop", SA)] {
        std::fs::write(&jwt_file, sa_jwt(namespace, name, SA_UID)).unwrap();
        let err = TransitSigner::start(&kubernetes_config(&bao, &jwt_file))
            .await
            .unwrap_err();
        assert_refused(&err);
    }
    // Refused on the role's bindings, before any review.
    assert!(api.reviews().is_empty(), "{:?}", api.reviews());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_is_refused_when_the_token_review_does_not_confirm_the_token() {
    let api = KubeApi::start(Reply::Status(
        json!({"authenticated": false, "error": "service account has been deleted"}),
    ))
    .await;
    let bao = bao_with_kubernetes_auth(&api);
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, sa_jwt(NAMESPACE, SA, SA_UID)).unwrap();
    let cfg = kubernetes_config(&bao, &jwt_file);

    // The claims fit the role, but the API server does not authenticate the token.
    assert_refused(&TransitSigner::start(&cfg).await.unwrap_err());
    // It authenticates it as another service account than the claims say.
    api.answer(Reply::Status(authenticated(
        &user(NAMESPACE, "other"),
        SA_UID,
        &["openbao"],
    )));
    assert_refused(&TransitSigner::start(&cfg).await.unwrap_err());
    // Not for the role's audience.
    api.answer(Reply::Status(authenticated(
        &user(NAMESPACE, SA),
        SA_UID,
        &["kubernetes"],
    )));
    assert_refused(&TransitSigner::start(&cfg).await.unwrap_err());
    // The API server fails.
    api.answer(Reply::Fail(500));
    assert_refused(&TransitSigner::start(&cfg).await.unwrap_err());
    assert_eq!(api.reviews().len(), 4, "every login was reviewed");

    // The same token and role succeed once the review confirms it: the refusals above
    // came from the reviews.
    api.answer(Reply::Status(authenticated(
        &user(NAMESPACE, SA),
        SA_UID,
        &["openbao"],
    )));
    let signer = TransitSigner::start(&cfg).await.unwrap();
    sign_and_verify(&signer, "{}").await;
    assert_eq!(api.reviews().len(), 5);
}
