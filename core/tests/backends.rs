//! The signature backends agree: RustCrypto and, when built with `native-crypto`, ring
//! give the same verdict on every generated case (valid signatures of each algorithm,
//! wrong keys, tampering, PKCS#1/PSS confusion, high-S and out-of-range ECDSA scalars,
//! short RSA signatures, seeded mutations). The whole suite also runs once per feature
//! setting (`make unit`), so every rule test covers the active backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use meshpass_core::b64;
use meshpass_core::{Jwk, RawJws, SignatureBackend, DEFAULT_MAX_TOKEN_BYTES};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use support::*;

fn jwk(v: serde_json::Value) -> Jwk {
    Jwk::from_json(v.as_object().unwrap()).unwrap()
}

#[test]
fn the_native_backend_is_active_exactly_when_the_feature_is_on() {
    let native = cfg!(feature = "native-crypto");
    assert_eq!(
        SignatureBackend::active(),
        if native {
            SignatureBackend::Native
        } else {
            SignatureBackend::RustCrypto
        }
    );
    assert_eq!(SignatureBackend::Native.is_available(), native);
    assert!(SignatureBackend::RustCrypto.is_available());
}

#[test]
fn both_backends_give_the_same_verdict_on_every_case() {
    let ec256 = p256_key();
    let ec384 = p384_key();
    let ec521 = p521_key();
    let keys = [
        jwk(rsa_jwk(rsa_key(), "k")),
        jwk(rsa_jwk(rsa_key_2(), "k")),
        jwk(p256_jwk(&ec256, "k")),
        jwk(p256_jwk(&p256_key(), "k")),
        jwk(p384_jwk(&ec384, "k")),
        jwk(p521_jwk(&ec521, "k")),
    ];
    let signers = [
        ("RS256", Signer::Rsa(rsa_key())),
        ("RS384", Signer::Rsa(rsa_key())),
        ("RS512", Signer::Rsa(rsa_key())),
        ("PS256", Signer::Rsa(rsa_key())),
        ("PS384", Signer::Rsa(rsa_key())),
        ("PS512", Signer::Rsa(rsa_key())),
        ("ES256", Signer::P256(&ec256)),
        ("ES384", Signer::P384(&ec384)),
        ("ES512", Signer::P521(&ec521)),
    ];
    let mut tokens = Vec::new();
    for (alg, signer) in &signers {
        tokens.push(sign(&json!({"alg": alg}), &claims(), signer));
    }
    // PKCS#1 signature relabelled PSS and the other way round.
    let relabel = |t: &str, alg: &str| {
        let (_, rest) = t.split_once('.').unwrap();
        format!(
            "{}.{rest}",
            b64::encode(json!({"alg": alg}).to_string().as_bytes())
        )
    };
    tokens.push(relabel(&tokens[0], "PS256"));
    tokens.push(relabel(&tokens[3], "RS256"));
    // ECDSA: high-S, zero, r = n, s = n (P-256 order), DER.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let n = N;
    let es256 = tokens[6].clone();
    let (input, s) = es256.rsplit_once('.').unwrap();
    let sig = b64::decode(s).unwrap();
    let high_s = {
        let s_int = p256::Scalar::from(
            p256::elliptic_curve::ScalarPrimitive::from_slice(&sig[32..]).unwrap(),
        );
        let mut v = sig[..32].to_vec();
        v.extend((-s_int).to_bytes());
        v
    };
    let der = p256::ecdsa::Signature::from_slice(&sig)
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec();
    for bytes in [
        high_s,
        vec![0u8; 64],
        [&n[..], &sig[32..]].concat(),
        [&sig[..32], &n[..]].concat(),
        der,
    ] {
        tokens.push(format!("{input}.{}", b64::encode(&bytes)));
    }
    // Seeded mutations of every valid token.
    let mut rng = StdRng::seed_from_u64(19);
    for i in 0..600 {
        let mut b = tokens[i % 9].clone().into_bytes();
        let at = rng.gen_range(0..b.len());
        b[at] ^= 1 << rng.gen_range(0..8);
        if let Ok(m) = String::from_utf8(b) {
            tokens.push(m);
        }
    }
    let mut accepted = 0;
    for t in &tokens {
        let Ok(jws) = RawJws::parse(t, DEFAULT_MAX_TOKEN_BYTES) else {
            continue;
        };
        for k in &keys {
            let rc = jws.verify_with(k, SignatureBackend::RustCrypto);
            let native = jws.verify_with(k, SignatureBackend::Native);
            assert_eq!(rc, native, "backends disagree on {t}");
            accepted += usize::from(rc.is_ok());
        }
    }
    // The nine valid tokens and the high-S twin verify; nothing else does.
    assert_eq!(accepted, 10);
}
