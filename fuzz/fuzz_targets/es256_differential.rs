//! ES256 verdicts of core (comb tables, its own point arithmetic, the safegcd inversion
//! of s) against the `ecdsa` crate's plain verification, on signatures that start valid
//! and are then changed by the input: the two must agree on every input.
//!
//! Input: byte 0 picks the key and the mode; the last 64 bytes (when there are more than
//! 64 after byte 0) are XORed into the signature (r‖s), the rest is the payload. Modes:
//! sign with the key the token is checked against or another one; keep s or use n − s
//! (both verify: no low-s rule on either side); or take the 64 bytes as the signature.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshpass_core::{b64, verify_compact_jws, Jwk, DEFAULT_MAX_TOKEN_BYTES};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey};

/// (signing key, its JWK) for a few fixed keys: tables are built once per key.
fn keys() -> &'static [(SigningKey, Jwk)] {
    static K: OnceLock<Vec<(SigningKey, Jwk)>> = OnceLock::new();
    K.get_or_init(|| {
        [[0x11u8; 32], [0x5au8; 32], [0xc3u8; 32]]
            .iter()
            .filter_map(|secret| SigningKey::from_bytes(secret.into()).ok())
            .filter_map(|sk| {
                let point = sk.verifying_key().to_encoded_point(false);
                let jwk = serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256",
                    "x": b64::encode(point.x()?), "y": b64::encode(point.y()?),
                });
                let jwk = Jwk::from_json(jwk.as_object()?).ok()?;
                Some((sk, jwk))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    assert_eq!(keys.len(), 3);
    let (payload, mask) = if rest.len() > 64 {
        rest.split_at(rest.len() - 64)
    } else {
        (rest, &[][..])
    };
    let signer = &keys[usize::from(mode % 3)].0;
    let (checker, jwk) = &keys[usize::from(mode / 3 % 3)];
    let input = format!(
        "{}.{}",
        b64::encode(br#"{"alg":"ES256"}"#),
        b64::encode(payload)
    );
    let mut sig = if mode & 0x80 != 0 && mask.len() == 64 {
        [0u8; 64]
    } else {
        let sig: Signature = signer.sign(input.as_bytes());
        let sig = if mode & 0x40 != 0 {
            let (r, s) = sig.split_scalars();
            Signature::from_scalars(r, -*s).unwrap_or(sig)
        } else {
            sig
        };
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&sig.to_bytes());
        bytes
    };
    for (b, m) in sig.iter_mut().zip(mask) {
        *b ^= m;
    }
    let theirs = Signature::from_slice(&sig)
        .is_ok_and(|s| checker.verifying_key().verify(input.as_bytes(), &s).is_ok());
    let token = format!("{input}.{}", b64::encode(&sig));
    let ours = verify_compact_jws(&token, jwk, DEFAULT_MAX_TOKEN_BYTES).is_ok();
    assert_eq!(ours, theirs, "core and the ecdsa crate disagree");
});
