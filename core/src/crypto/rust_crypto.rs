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
    use rsa::{Pkcs1v15Sign, Pss};
    use sha2::{Sha256, Sha384, Sha512};
    // One padding check per scheme, the digest picked at run time: six instances of the
    // generic verifiers cost the filter's module some 20 KB.
    let (hashed, pss): (Vec<u8>, bool) = match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            (Sha256::digest(msg).to_vec(), alg == Algorithm::PS256)
        }
        Algorithm::RS384 | Algorithm::PS384 => {
            (Sha384::digest(msg).to_vec(), alg == Algorithm::PS384)
        }
        Algorithm::RS512 | Algorithm::PS512 => {
            (Sha512::digest(msg).to_vec(), alg == Algorithm::PS512)
        }
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => return false,
    };
    // The generic verifiers refuse s >= n; the scheme-based PSS one does not check.
    if rsa::BigUint::from_bytes_be(sig) >= *rsa::traits::PublicKeyParts::n(key) {
        return false;
    }
    // RFC 7518 §3.5: the salt is as long as the hash.
    let scheme_ok = match (pss, alg) {
        (false, Algorithm::RS256) => key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, sig),
        (false, Algorithm::RS384) => key.verify(Pkcs1v15Sign::new::<Sha384>(), &hashed, sig),
        (false, _) => key.verify(Pkcs1v15Sign::new::<Sha512>(), &hashed, sig),
        (true, Algorithm::PS256) => key.verify(Pss::new::<Sha256>(), &hashed, sig),
        (true, Algorithm::PS384) => key.verify(Pss::new::<Sha384>(), &hashed, sig),
        (true, _) => key.verify(Pss::new::<Sha512>(), &hashed, sig),
    };
    scheme_ok.is_ok()
}
