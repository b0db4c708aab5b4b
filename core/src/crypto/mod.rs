//! Signature verification: the rules every backend shares, and the choice of backend.
//!
//! The rules live here once (the key fits the algorithm; an RSA signature is exactly
//! the modulus length); each backend then checks the signature itself, with ECDSA
//! signatures exactly r‖s of the curve size and r, s in [1, n-1], and PSS salts as long
//! as the hash.

mod rust_crypto;

use crate::alg::Algorithm;
use crate::error::ValidationError;
use crate::jwk::{Jwk, PublicKey};

/// Verifies `sig` over `msg` with `key` for the header algorithm `alg`.
pub(crate) fn verify_signature(
    key: &Jwk,
    alg: Algorithm,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), ValidationError> {
    if !key.fits(alg) {
        return Err(ValidationError::KeyAlgorithmMismatch(alg.as_str()));
    }
    // The signature is exactly the modulus length (RFC 8017 §8.2.2 step 1).
    if let PublicKey::Rsa(k) = &key.key {
        use rsa::traits::PublicKeyParts as _;
        if sig.len() != k.size() {
            return Err(ValidationError::BadSignature);
        }
    }
    if rust_crypto::verify(&key.key, alg, msg, sig) {
        Ok(())
    } else {
        Err(ValidationError::BadSignature)
    }
}
