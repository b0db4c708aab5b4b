//! The pure-Rust (RustCrypto) verifiers: the only backend in wasm, and the one for
//! ES512 everywhere.

use sha2::Digest as _;
use signature::hazmat::PrehashVerifier as _;
use signature::Verifier as _;

use crate::alg::Algorithm;
use crate::jwk::PublicKey;

/// Whether `sig` is a valid `alg` signature of `msg` under `key`. The caller has checked
/// that the key fits `alg` and, for RSA, that `sig` is exactly the modulus length.
pub(super) fn verify(key: &PublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    // `Signature::from_slice` is what enforces the exact r‖s length and r, s in
    // [1, n-1] (no DER, no zero or out-of-range scalars: CVE-2022-21449 class).
    match (key, alg) {
        (PublicKey::Rsa(k), _) => verify_rsa(k, alg, msg, sig),
        // Comb tables instead of the ecdsa crate's joint window (p256_comb.rs).
        (PublicKey::P256(k), Algorithm::ES256) => k.verify(msg, sig),
        (PublicKey::P384(k), Algorithm::ES384) => {
            p384::ecdsa::Signature::from_slice(sig).is_ok_and(|sig| k.verify(msg, &sig).is_ok())
        }
        (PublicKey::P521(k), Algorithm::ES512) => p521::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|sig| k.verify_prehash(&sha2::Sha512::digest(msg), &sig).is_ok()),
        _ => false,
    }
}

fn verify_rsa(key: &rsa::RsaPublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    use sha2::{Sha256, Sha384, Sha512};
    let Ok(sig_pkcs) = rsa::pkcs1v15::Signature::try_from(sig) else {
        return false;
    };
    let Ok(sig_pss) = rsa::pss::Signature::try_from(sig) else {
        return false;
    };
    let k = key.clone();
    match alg {
        Algorithm::RS256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        Algorithm::RS384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        Algorithm::RS512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        // RFC 7518 §3.5: the salt is as long as the hash.
        Algorithm::PS256 => rsa::pss::VerifyingKey::<Sha256>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::PS384 => rsa::pss::VerifyingKey::<Sha384>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::PS512 => rsa::pss::VerifyingKey::<Sha512>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => false,
    }
}
