//! Test support: keys generated at test time, JWK builders and a token builder that
//! signs arbitrary header/payload JSON (including deliberately wrong ones).
#![allow(dead_code)]
// Test-only code: failing loudly is what a test helper should do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::OnceLock;

use meshpass_core::b64;
use meshpass_core::{
    Audience, Binding, IssuerPolicy, KeySet, SpiffeId, TrustDomain, ValidationPolicy,
};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};

pub const NOW: u64 = 1_700_000_000;
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "meshpass";
pub const TD: &str = "example.org";
pub const SUBJECT: &str = "spiffe://example.org/ns/default/sa/web";

/// RSA keygen is slow: one 2048-bit key (and a second one) per test binary.
pub fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
}

pub fn rsa_key_2() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
}

pub fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
}

pub fn p384_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
}

pub fn p521_key() -> p521::ecdsa::SigningKey {
    p521::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
}

/// What signs a token.
pub enum Signer<'a> {
    /// RS*/PS* (chosen by the header's alg, not by this value).
    Rsa(&'a rsa::RsaPrivateKey),
    P256(&'a p256::ecdsa::SigningKey),
    P384(&'a p384::ecdsa::SigningKey),
    P521(&'a p521::ecdsa::SigningKey),
    /// HMAC-SHA256 with this secret (the alg-confusion attack).
    Hs256(&'a [u8]),
    /// These exact signature bytes.
    Raw(Vec<u8>),
}

/// `base64url(header).base64url(payload)`.
pub fn signing_input(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(payload.to_string().as_bytes())
    )
}

/// Signs arbitrary header and payload JSON.
pub fn sign(header: &Value, payload: &Value, signer: &Signer<'_>) -> String {
    let input = signing_input(header, payload);
    let alg = header["alg"].as_str().unwrap_or("");
    let sig = signature_over(input.as_bytes(), alg, signer);
    format!("{input}.{}", b64::encode(&sig))
}

/// Signs raw header and payload bytes (for duplicate-member and other non-canonical JSON).
pub fn sign_raw(header: &str, payload: &str, alg: &str, signer: &Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(payload.as_bytes())
    );
    let sig = signature_over(input.as_bytes(), alg, signer);
    format!("{input}.{}", b64::encode(&sig))
}

pub fn signature_over(msg: &[u8], alg: &str, signer: &Signer<'_>) -> Vec<u8> {
    let mut rng = rand::thread_rng();
    match signer {
        Signer::Rsa(k) => {
            let k = (*k).clone();
            match alg {
                "RS256" => rsa::pkcs1v15::SigningKey::<Sha256>::new(k)
                    .sign(msg)
                    .to_vec(),
                "RS384" => rsa::pkcs1v15::SigningKey::<Sha384>::new(k)
                    .sign(msg)
                    .to_vec(),
                "RS512" => rsa::pkcs1v15::SigningKey::<Sha512>::new(k)
                    .sign(msg)
                    .to_vec(),
                "PS256" => rsa::pss::SigningKey::<Sha256>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                "PS384" => rsa::pss::SigningKey::<Sha384>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                "PS512" => rsa::pss::SigningKey::<Sha512>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                other => panic!("no RSA signing for {other}"),
            }
        }
        Signer::P256(k) => {
            let s: p256::ecdsa::Signature = k.sign(msg);
            s.to_bytes().to_vec()
        }
        Signer::P384(k) => {
            let s: p384::ecdsa::Signature = k.sign(msg);
            s.to_bytes().to_vec()
        }
        Signer::P521(k) => {
            let s: p521::ecdsa::Signature = k.sign_with_rng(&mut rng, msg);
            s.to_bytes().to_vec()
        }
        Signer::Hs256(secret) => hmac_sha256(secret, msg),
        Signer::Raw(b) => b.clone(),
    }
}

/// HMAC-SHA256 (RFC 2104), enough for the alg-confusion tests.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

pub fn rsa_jwk(key: &rsa::RsaPrivateKey, kid: &str) -> Value {
    let public = key.to_public_key();
    json!({
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "n": b64::encode(&public.n().to_bytes_be()),
        "e": b64::encode(&public.e().to_bytes_be()),
    })
}

pub fn p256_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let pt = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid,
        "x": b64::encode(pt.x().unwrap()),
        "y": b64::encode(pt.y().unwrap()),
    })
}

pub fn p384_jwk(key: &p384::ecdsa::SigningKey, kid: &str) -> Value {
    let pt = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-384", "kid": kid,
        "x": b64::encode(pt.x().unwrap()),
        "y": b64::encode(pt.y().unwrap()),
    })
}

pub fn p521_jwk(key: &p521::ecdsa::SigningKey, kid: &str) -> Value {
    // p521 0.13's `SigningKey::verifying_key` sits behind a feature it does not define.
    let public = p521::PublicKey::from_secret_scalar(key.as_nonzero_scalar());
    let pt = p521::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false);
    json!({
        "kty": "EC", "crv": "P-521", "kid": kid,
        "x": b64::encode(pt.x().unwrap()),
        "y": b64::encode(pt.y().unwrap()),
    })
}

/// Parses a JWKS from JWK values, asserting every key was kept.
pub fn key_set(jwks: &[Value]) -> KeySet {
    let doc = json!({ "keys": jwks });
    let (set, rejected) = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    set
}

pub fn lookup(set: KeySet) -> HashMap<String, KeySet> {
    HashMap::from([(ISSUER.to_owned(), set)])
}

pub fn issuer_policy() -> IssuerPolicy {
    IssuerPolicy::new(
        ISSUER,
        vec![Audience::parse(AUDIENCE).unwrap()],
        vec![TrustDomain::parse(TD).unwrap()],
    )
}

pub fn policy() -> ValidationPolicy {
    ValidationPolicy::new(vec![issuer_policy()])
}

/// Claims that pass with [`policy`] at [`NOW`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": SUBJECT,
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
    })
}

pub fn header(alg: &str, kid: &str) -> Value {
    json!({ "alg": alg, "kid": kid, "typ": "JWT" })
}

pub fn subject() -> SpiffeId {
    SpiffeId::parse(SUBJECT).unwrap()
}

pub const NO_BINDING: Binding<'static> = Binding::None;
