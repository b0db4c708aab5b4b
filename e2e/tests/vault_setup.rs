//! `istio/vault/configure-openbao.sh` run against a real OpenBao (dev server, the OpenBao
//! CLI from `.tools/`): it sets up transit, the policy and the Kubernetes-auth role, is
//! idempotent, and a token holding only `meshpass-signer` can do exactly what the
//! exchange service needs: read the key and sign with it, nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use meshpass_testkit::OpenBao;
use serde_json::{json, Value};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn configure(bao: &OpenBao) -> String {
    let (ok, text) = run_configure(bao, true);
    assert!(ok, "configure-openbao.sh failed:\n{text}");
    text
}

/// Runs the script as an operator of an OpenBao outside the cluster would: the API
/// server's CA as a file, and (`reviewer`) a token OpenBao reviews login tokens with.
fn run_configure(bao: &OpenBao, reviewer: bool) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()]).unwrap();
    let ca_path = dir.path().join("kube-ca.crt");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let jwt_path = dir.path().join("reviewer.jwt");
    std::fs::write(
        &jwt_path,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXZpZXdlciJ9.c2ln",
    )
    .unwrap();
    let mut cmd = Command::new("bash");
    cmd.env("KUBERNETES_CA_CERT", &ca_path);
    if reviewer {
        cmd.env("TOKEN_REVIEWER_JWT_FILE", &jwt_path);
    } else {
        cmd.env_remove("TOKEN_REVIEWER_JWT_FILE");
    }
    let out = cmd
        .arg(root().join("istio/vault/configure-openbao.sh"))
        .env("BAO", meshpass_testkit::bao_bin())
        .env("BAO_ADDR", bao.addr())
        .env("BAO_TOKEN", bao.root_token())
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An OpenBao outside the cluster has no pod token to call the TokenReview API with:
/// without `token_reviewer_jwt` it sends the login token itself, whose audience
/// (`openbao`, kubernetes-auth-role.json) the API server refuses, so every login of the
/// exchange service failed. Off-cluster (KUBERNETES_CA_CERT), the script now needs a
/// reviewer token and writes it, or refuses naming what is missing.
#[test]
fn off_cluster_setup_writes_a_token_reviewer_jwt_or_refuses_without_one() {
    let bao = OpenBao::start();
    let (ok, text) = run_configure(&bao, false);
    assert!(
        !ok,
        "configured an off-cluster OpenBao that cannot review logins:\n{text}"
    );
    assert!(text.contains("TOKEN_REVIEWER_JWT_FILE"), "{text}");
    configure(&bao);
    let (status, cfg) = bao.api("GET", "auth/kubernetes/config", None);
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["data"]["token_reviewer_jwt_set"], true, "{cfg}");
}

#[test]
fn the_signer_policy_allows_reading_signing_and_maintaining_the_key_and_nothing_else() {
    let bao = OpenBao::start();
    configure(&bao);
    // Idempotent: a second run changes nothing and succeeds.
    configure(&bao);

    let (status, role) = bao.api("GET", "auth/kubernetes/role/meshpass-exchange", None);
    assert_eq!(status, 200, "{role}");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("istio/vault/kubernetes-auth-role.json")).unwrap(),
    )
    .unwrap();
    let data = &role["data"];
    assert_eq!(
        data["bound_service_account_names"],
        file["bound_service_account_names"]
    );
    assert_eq!(
        data["bound_service_account_namespaces"],
        file["bound_service_account_namespaces"]
    );
    assert_eq!(data["audience"], file["audience"]);
    assert_eq!(data["token_policies"], json!(["meshpass-signer"]));

    // A token with only the policy, as a Kubernetes login would get.
    let (status, t) = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({"policies": ["meshpass-signer"], "no_default_policy": true, "ttl": "10m"})),
    );
    assert_eq!(status, 200, "{t}");
    let token = t["auth"]["client_token"].as_str().unwrap().to_string();
    let call = |method: &str, path: &str, body: Option<Value>| {
        bao.api_with_token(&token, method, path, body).0
    };

    assert_eq!(call("GET", "transit/keys/meshpass-participant", None), 200);
    let input =
        json!({"input": "aGVsbG8=", "marshaling_algorithm": "jws", "hash_algorithm": "sha2-256"});
    assert_eq!(
        call(
            "POST",
            "transit/sign/meshpass-participant",
            Some(input.clone())
        ),
        200
    );
    // Key maintenance as the management API and the schedule do it (mgmt/keys.rs):
    // rotate, and retire through min_decryption_version only.
    assert_eq!(
        call("POST", "transit/keys/meshpass-participant/rotate", None) / 100,
        2
    );
    assert_eq!(
        call(
            "POST",
            "transit/keys/meshpass-participant/config",
            Some(json!({"min_decryption_version": 1}))
        ) / 100,
        2
    );
    // Nothing else: not other settings, exporting, trimming or deleting the key, not
    // another key, not verifying, not other engines or the policy itself.
    bao.api(
        "POST",
        "transit/keys/other",
        Some(json!({"type": "ecdsa-p256"})),
    );
    for (method, path, body) in [
        (
            "POST",
            "transit/keys/meshpass-participant/config",
            Some(json!({"deletion_allowed": true})),
        ),
        (
            "POST",
            "transit/keys/meshpass-participant/config",
            Some(json!({"exportable": true})),
        ),
        ("POST", "transit/keys/other/rotate", None),
        (
            "GET",
            "transit/export/signing-key/meshpass-participant",
            None,
        ),
        (
            "POST",
            "transit/keys/meshpass-participant/trim",
            Some(json!({"min_available_version": 1})),
        ),
        ("DELETE", "transit/keys/meshpass-participant", None),
        (
            "POST",
            "transit/keys/new-key",
            Some(json!({"type": "ecdsa-p256"})),
        ),
        ("GET", "transit/keys/other", None),
        ("POST", "transit/sign/other", Some(input.clone())),
        (
            "POST",
            "transit/verify/meshpass-participant",
            Some(json!({"input": "aGVsbG8=", "signature": "vault:v1:AAAA"})),
        ),
        ("GET", "sys/policies/acl/meshpass-signer", None),
        ("GET", "secret/data/anything", None),
    ] {
        assert_eq!(
            call(method, path, body),
            403,
            "{method} {path} must be refused"
        );
    }
}
