//! Vault authentication against a real OpenBao: token, token file, AppRole, JWT,
//! renewal and re-login.
// Test code: helpers outside #[test] fns may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod vault_common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_exchange::signer::{SignError, Signer};
use meshpass_exchange::vault::{AuthConfig, Secret, TransitSigner, VaultConfig, VaultError};
use meshpass_testkit::OpenBao;
use serde_json::json;
use std::time::{Duration, Instant};
use vault_common::*;

/// OpenBao with key `k` and a `signer` policy for it.
fn bao_with_policy() -> OpenBao {
    let bao = bao_with_key("k", "ecdsa-p256");
    bao.write_policy("signer", &signer_policy("k"));
    bao
}

fn with_auth(bao: &OpenBao, auth: AuthConfig) -> VaultConfig {
    VaultConfig {
        auth,
        ..config(bao, "k")
    }
}

/// An AppRole role `meshpass` with the given token TTLs; returns its role ID.
fn approle(bao: &OpenBao, token_ttl: &str, token_max_ttl: &str) -> String {
    approle_with_policy(bao, "signer", token_ttl, token_max_ttl)
}

/// [`approle`] whose tokens get `policy`.
fn approle_with_policy(
    bao: &OpenBao,
    policy: &str,
    token_ttl: &str,
    token_max_ttl: &str,
) -> String {
    bao.enable_auth("approle", "approle");
    bao.api_ok(
        "POST",
        "auth/approle/role/meshpass",
        Some(json!({
            "token_policies": [policy],
            "token_ttl": token_ttl,
            "token_max_ttl": token_max_ttl,
        })),
    );
    let v = bao.api_ok("GET", "auth/approle/role/meshpass/role-id", None);
    v["data"]["role_id"].as_str().unwrap().to_string()
}

fn new_secret_id(bao: &OpenBao) -> String {
    new_secret_id_with(bao, json!({}))
}

/// A secret ID with `options` (e.g. `num_uses`).
fn new_secret_id_with(bao: &OpenBao, options: serde_json::Value) -> String {
    let v = bao.api_ok(
        "POST",
        "auth/approle/role/meshpass/secret-id",
        Some(options),
    );
    v["data"]["secret_id"].as_str().unwrap().to_string()
}

/// A signer configuration logging in with AppRole `role_id` / `secret_id`.
fn approle_config(bao: &OpenBao, role_id: String, secret_id: &str) -> VaultConfig {
    with_auth(
        bao,
        AuthConfig::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new(secret_id.to_string())),
            secret_id_file: None,
        },
    )
}

#[tokio::test]
async fn a_token_with_only_the_signer_policy_is_enough_to_sign() {
    let bao = bao_with_policy();
    let token = bao.create_token(&["signer"], "1h");
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Token {
            token: Some(Secret::new(token)),
        },
    ))
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;
    let ttl = signer.stats().token_ttl_seconds().unwrap();
    assert!((3000..=3600).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn a_revoked_token_file_token_is_replaced_when_the_file_is_rewritten() {
    let bao = bao_with_policy();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let first = bao.create_token(&["signer"], "1h");
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::TokenFile { path: path.clone() },
    ))
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;
    assert_eq!(signer.stats().logins(), 1);

    bao.api_ok("POST", "auth/token/revoke", Some(json!({ "token": first })));
    let key = signer.current_key().unwrap();
    let r = signer.sign(&key, b"a.b").await;
    assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
    // Vault answers, but this signer cannot sign: not ready (a load balancer takes the
    // replica out), while the file still holds the revoked token.
    assert!(!signer.is_ready(), "ready with a revoked token");

    // Like Vault Agent's sink: write a new file and rename it into place.
    let second = bao.create_token(&["signer"], "1h");
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, &second).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            signer.sign(&key, b"a.b").await.is_ok()
        })
        .await
    );
    assert!(signer.stats().logins() >= 2);
    sign_and_verify(&signer, "{}").await;
    assert!(signer.is_ready(), "ready again once it signs");
}

#[tokio::test]
async fn approle_logs_in_with_a_secret_id_or_a_secret_id_file_and_refuses_a_bad_one() {
    let bao = bao_with_policy();
    let role_id = approle(&bao, "1h", "2h");
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Approle {
            mount: "approle".into(),
            role_id: role_id.clone(),
            secret_id: Some(Secret::new(new_secret_id(&bao))),
            secret_id_file: None,
        },
    ))
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;
    assert_eq!(signer.stats().logins(), 1);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret-id");
    std::fs::write(&file, new_secret_id(&bao)).unwrap();
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Approle {
            mount: "approle".into(),
            role_id: role_id.clone(),
            secret_id: None,
            secret_id_file: Some(file),
        },
    ))
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;

    let err = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new("not-a-secret-id")),
            secret_id_file: None,
        },
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Rejected { .. } | VaultError::PermissionDenied(_)
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("not-a-secret-id"));
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let bao = bao_with_policy();
    // 6 s: renewal at 2/3 of the TTL leaves a 2 s margin, enough for a loaded CI machine
    // (with 3 s the 1 s margin was eaten by scheduling delays and the TTL read 0).
    let token = bao.create_token(&["signer"], "6s");
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Token {
            token: Some(Secret::new(token.clone())),
        },
    ))
    .await
    .unwrap();
    // More than two lifetimes later the token must still be valid.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let (status, v) = bao.api("POST", "auth/token/lookup", Some(json!({ "token": token })));
    assert_eq!(status, 200, "token expired: {v}");
    assert!(v["data"]["ttl"].as_u64().unwrap() > 0);
    assert!(
        signer.stats().renewals() >= 2,
        "{}",
        signer.stats().renewals()
    );
    assert!(signer.stats().token_ttl_seconds().unwrap() <= 6);
    sign_and_verify(&signer, "{}").await;
}

#[tokio::test]
async fn approle_logs_in_again_when_the_token_reaches_its_max_ttl() {
    let bao = bao_with_policy();
    let role_id = approle(&bao, "2s", "4s");
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: Some(Secret::new(new_secret_id(&bao))),
            secret_id_file: None,
        },
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let stats = signer.stats();
    assert!(stats.logins() >= 2, "logins {}", stats.logins());
    assert!(stats.renewals() >= 1, "renewals {}", stats.renewals());
    sign_and_verify(&signer, "{}").await;
}

/// An ES256 JWT signed by a key made for this test.
fn es256_jwt(key: &p256::ecdsa::SigningKey, claims: serde_json::Value) -> String {
    use p256::ecdsa::signature::Signer as _;
    let header = json!({"alg": "ES256", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[tokio::test]
async fn jwt_auth_logs_in_with_a_jwt_from_a_file() {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let bao = bao_with_policy();
    bao.enable_auth("jwt", "jwt");
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    bao.api_ok(
        "POST",
        "auth/jwt/config",
        Some(json!({ "jwt_validation_pubkeys": [pem], "bound_issuer": "https://issuer.test" })),
    );
    bao.api_ok(
        "POST",
        "auth/jwt/role/meshpass",
        Some(json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_audiences": ["openbao"],
            "token_policies": ["signer"],
            "token_ttl": "1h",
        })),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = es256_jwt(
        &key,
        json!({
            "iss": "https://issuer.test",
            "sub": "spiffe://cluster.local/ns/meshpass/sa/exchange",
            "aud": "openbao",
            "iat": now,
            "exp": now + 600,
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt");
    std::fs::write(&file, jwt).unwrap();
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Jwt {
            mount: "jwt".into(),
            role: "meshpass".into(),
            jwt_file: file.clone(),
        },
    ))
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;

    // A JWT for another audience is refused at start-up.
    let other = es256_jwt(
        &key,
        json!({"iss": "https://issuer.test", "sub": "x", "aud": "elsewhere", "exp": now + 600}),
    );
    std::fs::write(&file, other).unwrap();
    let err = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Jwt {
            mount: "jwt".into(),
            role: "meshpass".into(),
            jwt_file: file,
        },
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Rejected { .. } | VaultError::PermissionDenied(_)
        ),
        "{err}"
    );
}

#[test]
fn debug_output_of_config_never_shows_tokens_or_secret_ids() {
    let cfg = VaultConfig {
        auth: AuthConfig::Approle {
            mount: "approle".into(),
            role_id: "role".into(),
            secret_id: Some(Secret::new("s3cr3t-id")),
            secret_id_file: None,
        },
        ..VaultConfig::default()
    };
    let text = format!("{cfg:?}");
    assert!(
        !text.contains("s3cr3t-id") && text.contains("***"),
        "{text}"
    );
    let cfg = VaultConfig {
        auth: AuthConfig::Token {
            token: Some(Secret::new("hvs.tok3n")),
        },
        ..VaultConfig::default()
    };
    assert!(!format!("{cfg:?}").contains("hvs.tok3n"));
}

#[tokio::test]
async fn the_shipped_vault_policy_lets_the_service_sign_rotate_and_retire_its_key_only() {
    // istio/vault/meshpass-signer.hcl as an operator writes it (its key name).
    const KEY: &str = "meshpass-participant";
    let bao = bao_with_key(KEY, "ecdsa-p256");
    bao.create_transit_key("other", "ecdsa-p256");
    let hcl = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../istio/vault/meshpass-signer.hcl"),
    )
    .unwrap();
    bao.write_policy("meshpass-signer", &hcl);
    let token = bao.create_token(&["meshpass-signer"], "1h");
    let signer = TransitSigner::start(&VaultConfig {
        auth: AuthConfig::Token {
            token: Some(Secret::new(token.clone())),
        },
        ..config(&bao, KEY)
    })
    .await
    .unwrap();
    sign_and_verify(&signer, "{}").await;
    // Everything the management API and the key schedule call (mgmt/keys.rs).
    use meshpass_exchange::mgmt::KeyAdmin;
    signer.rotate().await.unwrap();
    let after = signer.fresh_status().await.unwrap();
    assert_eq!(after.versions.len(), 2, "{after:?}");
    signer.retire_below(2).await.unwrap();
    let after = signer.fresh_status().await.unwrap();
    assert_eq!(after.versions.len(), 1, "{after:?}");
    // Nothing else: no export, no deletion, no other key.
    for (method, path) in [
        ("GET", format!("transit/export/signing-key/{KEY}")),
        ("DELETE", format!("transit/keys/{KEY}")),
        ("POST", "transit/sign/other".to_string()),
        ("POST", "transit/keys/other/rotate".to_string()),
    ] {
        let (status, _) = bao.api_with_token(&token, method, &path, Some(json!({"input": "AA=="})));
        assert_eq!(status, 403, "{method} {path}");
    }
}

/// A token refused soon after it was obtained is refused for its policy: logins asked
/// for by refusals back off (0.5 s … 30 s) instead of one per refused signature, each a
/// new Vault token and an AppRole secret ID's use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_refused_by_policy_do_not_log_in_again_for_each_refusal() {
    let bao = bao_with_key("k", "ecdsa-p256");
    // The key may be read (start-up works) but not used to sign: e.g. a policy edit
    // that dropped `update` on transit/sign, or a policy naming another key.
    bao.write_policy(
        "readonly",
        r#"path "transit/keys/k" { capabilities = ["read"] }"#,
    );
    let role_id = approle_with_policy(&bao, "readonly", "1h", "24h");
    // A hardened secret ID: good for 10 logins.
    let sid = new_secret_id_with(&bao, json!({ "num_uses": 10 }));
    let cfg = approle_config(&bao, role_id, &sid);
    let signer = TransitSigner::start(&cfg).await.unwrap();
    assert_eq!(signer.stats().logins(), 1);
    let key = signer.current_key().unwrap();

    // 20 exchanges over about 2 s, one at a time: each is refused (503).
    for _ in 0..20 {
        let r = signer.sign(&key, b"a.b").await;
        assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logins = signer.stats().logins();
    let (status, lookup) = bao.api(
        "POST",
        "auth/approle/role/meshpass/secret-id/lookup",
        Some(json!({ "secret_id": sid })),
    );
    // With the documented backoff (0.5 s … 30 s) at most a handful of logins fit in 2 s.
    assert!(
        logins <= 4,
        "{logins} logins in ~2 s for 20 refused signatures (secret-id lookup {status}: {lookup})"
    );
}

/// A key operation through the management API refused because the service's token was
/// revoked (or expired) asks for a new login, as a refused signature does: the next
/// one works, instead of every key operation failing until a signature or the key
/// refresh happens to hit the 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_operation_refused_for_a_revoked_token_logs_in_again_for_the_next_one() {
    use meshpass_exchange::mgmt::KeyAdmin;
    let bao = bao_with_key("k", "ecdsa-p256");
    bao.write_policy(
        "keyops",
        &format!(
            "{}\npath \"transit/keys/k/rotate\" {{ capabilities = [\"update\"] }}",
            signer_policy("k")
        ),
    );
    let role_id = approle_with_policy(&bao, "keyops", "1h", "24h");
    let mut cfg = approle_config(&bao, role_id, &new_secret_id(&bao));
    cfg.key_refresh_interval = Duration::from_secs(3600);
    let signer = TransitSigner::start(&cfg).await.unwrap();
    assert_eq!(signer.stats().logins(), 1);
    // Every token AppRole issued is revoked (an operator's clean-up, a lease gone).
    bao.api_ok("POST", "sys/leases/revoke-prefix/auth/approle/login", None);
    assert!(signer.rotate().await.is_err(), "the revoked token rotated");
    let back = eventually(Duration::from_secs(15), || async {
        signer.rotate().await.is_ok()
    })
    .await;
    assert!(
        back,
        "key operations still refused after the 403 (logins: {})",
        signer.stats().logins()
    );
    assert!(signer.stats().logins() >= 2);
}

/// Vault down until the service's token expired and the login backoff reached its
/// 30 s cap: once Vault answers, the key probe's 403 asks for a login at once, so
/// signing does not wait for the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_returns_soon_after_an_outage_that_outlived_the_token() {
    let mut bao = bao_with_key("k", "ecdsa-p256");
    bao.write_policy("signer", &signer_policy("k"));
    let role_id = approle(&bao, "4s", "1h");
    let cfg = approle_config(&bao, role_id, &new_secret_id(&bao));
    let signer = TransitSigner::start(&cfg).await.unwrap();
    let key = sign_and_verify(&signer, "{}").await;

    bao.pause();
    let paused = Instant::now();
    // Traffic during the outage: three failed requests and the signer is down.
    for _ in 0..3 {
        let r = signer.sign(&key, b"a.b").await;
        assert!(matches!(r, Err(SignError::Unavailable(_))), "{r:?}");
    }
    assert!(!signer.is_ready());
    // The outage lasts until the 4 s token has expired and the renewal and 7 logins
    // have failed (the login backoff then reaches its 30 s cap).
    while signer.stats().auth_failures() < 8 {
        assert!(
            paused.elapsed() < Duration::from_secs(120),
            "auth failures stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage = paused.elapsed();
    bao.resume();
    let back = Instant::now();
    let ok = eventually(Duration::from_secs(40), || async {
        signer.sign(&key, b"a.b").await.is_ok()
    })
    .await;
    let took = back.elapsed();
    assert!(ok, "never signed again");
    assert!(
        took < Duration::from_secs(12),
        "signing came back {took:?} after OpenBao answered again (outage {outage:?}, logins {}, auth failures {})",
        signer.stats().logins(),
        signer.stats().auth_failures()
    );
}

/// `/metrics` as the service writes it with only the Vault collector over `stats`.
fn vault_metrics(stats: std::sync::Arc<meshpass_exchange::vault::VaultStats>) -> String {
    use prometheus::Encoder as _;
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(
            meshpass_exchange::server::VaultCollector::new(stats).unwrap(),
        ))
        .unwrap();
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The TTL gauge the critical `MeshpassVaultTokenExpiring` alert reads: negative once
/// the token has expired (the outage the alert announces), and absent for a token that
/// never expires. It was -1 for "never expires", so the alert had to skip negative
/// values and resolved the moment the token expired.
#[tokio::test]
async fn the_token_ttl_gauge_is_negative_once_expired_and_absent_for_a_token_that_never_expires() {
    let bao = bao_with_policy();
    let (status, v) = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({"policies": ["signer"], "ttl": "3s", "renewable": false})),
    );
    assert_eq!(status, 200, "{v}");
    let short = v["auth"]["client_token"].as_str().unwrap().to_string();
    let signer = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Token {
            token: Some(Secret::new(short)),
        },
    ))
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = vault_metrics(signer.stats());
        let line = text
            .lines()
            .find(|l| l.starts_with("meshpass_vault_token_ttl_seconds "))
            .map(str::to_string);
        let value: Option<f64> = line
            .as_deref()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok());
        if value.is_some_and(|v| v < -1.5) || std::time::Instant::now() > deadline {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let value: f64 = line
        .as_deref()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no TTL gauge for an expiring token: {line:?}"));
    assert!(
        value < -1.0,
        "an expired token's TTL reads {value} (it must go below -1, the old never-expires value)"
    );

    let root = TransitSigner::start(&with_auth(
        &bao,
        AuthConfig::Token {
            token: Some(Secret::new(bao.root_token().to_string())),
        },
    ))
    .await
    .unwrap();
    assert_eq!(root.stats().token_ttl_seconds(), None);
    let text = vault_metrics(root.stats());
    assert!(
        !text.contains("meshpass_vault_token_ttl_seconds "),
        "a token that never expires exports a TTL: {}",
        text.lines()
            .filter(|l| l.contains("token_ttl"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
