//! Shared helpers for the `vault_*` integration tests (real OpenBao via testkit).
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshpass_exchange::signer::{Signer, SigningKey};
use meshpass_exchange::vault::{AuthConfig, Secret, TransitSigner, VaultConfig};
use meshpass_testkit::OpenBao;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The process environment must not redirect the client (VAULT_* override the file).
pub fn clear_vault_env() {
    meshpass_testkit::clear_vault_env_once();
}

/// OpenBao with transit mounted and key `name` of `key_type`.
pub fn bao_with_key(name: &str, key_type: &str) -> OpenBao {
    clear_vault_env();
    let bao = OpenBao::start();
    bao.enable_transit();
    bao.create_transit_key(name, key_type);
    bao
}

/// A config for `bao` with the root token, fast timeouts and no publish lead.
pub fn config(bao: &OpenBao, key: &str) -> VaultConfig {
    VaultConfig {
        address: Some(bao.addr()),
        auth: AuthConfig::Token {
            token: Some(Secret::new(bao.root_token())),
        },
        key_name: key.to_string(),
        publish_lead: Duration::ZERO,
        request_timeout: Duration::from_millis(800),
        ..VaultConfig::default()
    }
}

/// Policy allowing what the signer needs on transit key `key`.
/// The kids `signer` publishes, in its JWKS order.
pub fn kids(signer: &TransitSigner) -> Vec<String> {
    signer.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

pub fn signer_policy(key: &str) -> String {
    format!(
        r#"path "transit/keys/{key}" {{ capabilities = ["read"] }}
path "transit/sign/{key}" {{ capabilities = ["update"] }}"#
    )
}

/// The signing input of a JWS with header `kid`.
pub fn signing_input(key: &SigningKey, payload: &str) -> String {
    let header = serde_json::json!({"alg": key.alg.as_str(), "typ": "JWT", "kid": key.kid});
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// The JWK with `kid` from the signer's JWKS.
pub fn jwk_of(signer: &dyn Signer, kid: &str) -> Value {
    let jwks = signer.jwks();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"))
        .clone()
}

fn b64(v: &Value, field: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {v}")),
        )
        .unwrap()
}

/// Verifies a JWS signature (base64url) over `input` with a public JWK, as any JOSE
/// library would: by `alg` and the key material only.
pub fn verify_with_jwk(jwk: &Value, input: &[u8], sig_b64url: &str) -> Result<(), String> {
    use signature::Verifier;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64url)
        .map_err(|e| format!("signature not base64url: {e}"))?;
    let err = |e: signature::Error| e.to_string();
    assert_eq!(jwk["use"], "sig");
    match jwk["alg"].as_str().unwrap() {
        "ES256" => {
            assert_eq!(
                (jwk["kty"].as_str(), jwk["crv"].as_str()),
                (Some("EC"), Some("P-256"))
            );
            let pt = p256::EncodedPoint::from_affine_coordinates(
                b64(jwk, "x").as_slice().into(),
                b64(jwk, "y").as_slice().into(),
                false,
            );
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&pt).map_err(err)?;
            let s = p256::ecdsa::Signature::from_slice(&sig).map_err(err)?;
            vk.verify(input, &s).map_err(err)
        }
        "ES384" => {
            assert_eq!(
                (jwk["kty"].as_str(), jwk["crv"].as_str()),
                (Some("EC"), Some("P-384"))
            );
            let pt = p384::EncodedPoint::from_affine_coordinates(
                b64(jwk, "x").as_slice().into(),
                b64(jwk, "y").as_slice().into(),
                false,
            );
            let vk = p384::ecdsa::VerifyingKey::from_encoded_point(&pt).map_err(err)?;
            let s = p384::ecdsa::Signature::from_slice(&sig).map_err(err)?;
            vk.verify(input, &s).map_err(err)
        }
        alg @ ("PS256" | "RS256") => {
            assert_eq!(jwk["kty"], "RSA");
            let pk = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&b64(jwk, "n")),
                rsa::BigUint::from_bytes_be(&b64(jwk, "e")),
            )
            .map_err(|e| e.to_string())?;
            if alg == "PS256" {
                // rsa's PSS verifier expects salt length = hash length, as JWS requires.
                let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new(pk);
                let s = rsa::pss::Signature::try_from(sig.as_slice()).map_err(err)?;
                vk.verify(input, &s).map_err(err)
            } else {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk);
                let s = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).map_err(err)?;
                vk.verify(input, &s).map_err(err)
            }
        }
        "EdDSA" => {
            assert_eq!(
                (jwk["kty"].as_str(), jwk["crv"].as_str()),
                (Some("OKP"), Some("Ed25519"))
            );
            let x: [u8; 32] = b64(jwk, "x").try_into().map_err(|_| "x not 32 bytes")?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(err)?;
            let s = ed25519_dalek::Signature::from_slice(&sig).map_err(err)?;
            vk.verify(input, &s).map_err(err)
        }
        other => Err(format!("unexpected alg {other}")),
    }
}

/// Signs a fresh JWS with the current key and checks it against the published JWKS.
/// Returns the key used.
pub async fn sign_and_verify(signer: &TransitSigner, payload: &str) -> SigningKey {
    let key = signer.current_key().unwrap();
    let input = signing_input(&key, payload);
    let sig = signer.sign(&key, input.as_bytes()).await.unwrap();
    let jwk = jwk_of(signer, &key.kid);
    verify_with_jwk(&jwk, input.as_bytes(), &sig)
        .unwrap_or_else(|e| panic!("signature by {} does not verify: {e}", key.kid));
    key
}

/// Polls an async condition every 100 ms; false after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
