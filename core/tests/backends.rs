//! The signature backends on generated cases (valid signatures of each algorithm, wrong
//! keys, tampering, PKCS#1/PSS confusion, high-S and out-of-range ECDSA scalars, short
//! RSA signatures, seeded mutations): RustCrypto accepts exactly the valid ones, and,
//! when built with `native-crypto` (`make unit` runs core again with it), ring gives
//! RustCrypto's verdict on every case it answers itself (RS*, PS*, ES384). Without the
//! feature `Native` falls back to RustCrypto, and even with it P-256 (core's comb tables,
//! checked against ring in `crypto::native`'s unit tests) and P-521 stay on RustCrypto,
//! so those cases are not compared: that would compare RustCrypto with itself. The whole
//! suite runs once per feature setting, so every rule test covers the active backend.
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

/// The keys, and the tokens to verify with each: the nine valid ones first (RS256,
/// RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512), then the crafted and the
/// mutated ones.
fn cases() -> (Vec<Jwk>, Vec<String>) {
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
    (keys.into(), tokens)
}

#[test]
fn rust_crypto_accepts_the_nine_valid_tokens_and_the_high_s_twin_and_nothing_else() {
    let (keys, tokens) = cases();
    let mut accepted = 0;
    for t in &tokens {
        let Ok(jws) = RawJws::parse(t, DEFAULT_MAX_TOKEN_BYTES) else {
            continue;
        };
        for k in &keys {
            accepted += usize::from(jws.verify_with(k, SignatureBackend::RustCrypto).is_ok());
        }
    }
    assert_eq!(accepted, 10);
}

/// Whether ring itself gives the `Native` verdict for `key` and `alg`: RSA keys with
/// RS*/PS*, P-384 keys with ES384. Anything else is RustCrypto on both backends (P-256,
/// P-521) or refused before any backend runs (a key that does not fit `alg`).
#[cfg(feature = "native-crypto")]
fn ring_answers(key: &Jwk, alg: meshpass_core::Algorithm) -> bool {
    use meshpass_core::{Algorithm as A, PublicKey as K};
    key.fits(alg)
        && matches!(
            (&key.key, alg),
            (
                K::Rsa(_),
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ) | (K::P384(_), A::ES384)
        )
}

#[cfg(feature = "native-crypto")]
#[test]
fn ring_gives_rust_cryptos_verdict_on_every_rsa_and_es384_case() {
    assert!(SignatureBackend::Native.is_available());
    let (keys, tokens) = cases();
    let (mut compared, mut accepted) = (0, 0);
    for t in &tokens {
        let Ok(jws) = RawJws::parse(t, DEFAULT_MAX_TOKEN_BYTES) else {
            continue;
        };
        for k in keys.iter().filter(|k| ring_answers(k, jws.header.alg)) {
            let rc = jws.verify_with(k, SignatureBackend::RustCrypto);
            let native = jws.verify_with(k, SignatureBackend::Native);
            assert_eq!(rc, native, "backends disagree on {t}");
            compared += 1;
            accepted += usize::from(rc.is_ok());
        }
    }
    eprintln!("{compared} (token, key) cases compared");
    // The six RSA tokens and the ES384 one verify; none of the hundreds of tampered
    // RSA and ES384 cases does.
    assert_eq!(accepted, 7);
    assert!(compared >= 400, "only {compared} cases compared");
}

/// A valid RSA signature `s` plus the modulus `n` (still the modulus's length) is the
/// same value modulo `n`; it must be refused, not accepted as a second encoding.
#[test]
fn an_rsa_signature_plus_the_modulus_is_refused_for_pkcs1_and_pss() {
    use rsa::traits::PublicKeyParts as _;
    let key = jwk(rsa_jwk(rsa_key(), "k"));
    let n = rsa_key().n().clone();
    let len = rsa_key().size();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        // s + n fits the length only when s < 2^(8·len) − n: sign until one does.
        let (input, wrapped) = (0..2000)
            .find_map(|i| {
                let t = sign(
                    &json!({"alg": alg}),
                    &json!({"n": i}),
                    &Signer::Rsa(rsa_key()),
                );
                let (input, s) = t.rsplit_once('.').unwrap();
                let sum = rsa::BigUint::from_bytes_be(&b64::decode(s).unwrap()) + &n;
                let bytes = sum.to_bytes_be();
                (bytes.len() == len).then(|| (input.to_string(), bytes))
            })
            .unwrap_or_else(|| panic!("{alg}: no signature below 2^bits − n in 2000 tries"));
        let valid = format!(
            "{input}.{}",
            b64::encode(&signature_over(
                input.as_bytes(),
                alg,
                &Signer::Rsa(rsa_key())
            ))
        );
        let forged = format!("{input}.{}", b64::encode(&wrapped));
        for backend in [SignatureBackend::RustCrypto, SignatureBackend::active()] {
            let ok = |t: &str| {
                RawJws::parse(t, DEFAULT_MAX_TOKEN_BYTES)
                    .unwrap()
                    .verify_with(&key, backend)
                    .is_ok()
            };
            assert!(ok(&valid), "{alg} {backend:?}: the valid signature");
            assert!(!ok(&forged), "{alg} {backend:?}: s + n accepted");
        }
    }
}
