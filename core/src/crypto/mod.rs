//! Signature verification: the rules every backend shares, and the choice of backend.
//!
//! The rules live here once (the key fits the algorithm; an RSA signature is exactly
//! the modulus length); each backend then checks the signature itself, with ECDSA
//! signatures exactly r‖s of the curve size and r, s in [1, n-1], and PSS salts as long
//! as the hash.

#[cfg(all(feature = "native-crypto", not(target_arch = "wasm32")))]
mod native;
mod p256_comb;
#[cfg(not(target_pointer_width = "32"))]
mod p256_field;
mod p256_point;
mod rust_crypto;
#[cfg(all(feature = "fuzzing", not(target_pointer_width = "32")))]
pub(crate) use p256_field::fuzz as fuzz_p256_field;
mod scalar_inv;

pub use p256_comb::P256Key;

use crate::alg::Algorithm;
use crate::error::ValidationError;
use crate::jwk::{Jwk, PublicKey};

/// Which implementation checks signatures. Both apply the same rules and run the same
/// tests; the choice is made at build time by the `native-crypto` feature (host builds
/// only: in wasm it changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureBackend {
    /// Pure Rust (RustCrypto `p256`/`p384`/`p521`/`rsa`): always built, the only one in
    /// wasm, and the one for ES512 everywhere.
    RustCrypto,
    /// `ring` (host builds with `native-crypto`): RS*, PS*, ES384. ES256 stays on the
    /// comb tables, faster than ring on the host; ES512 on RustCrypto.
    Native,
}

impl SignatureBackend {
    /// The backend [`crate::CompactJws::verify`] and every validation use: `Native`
    /// when built with `native-crypto` for a non-wasm target, else `RustCrypto`.
    pub const fn active() -> Self {
        if cfg!(all(feature = "native-crypto", not(target_arch = "wasm32"))) {
            SignatureBackend::Native
        } else {
            SignatureBackend::RustCrypto
        }
    }

    /// Whether this backend is compiled in (asking for one that is not falls back to
    /// RustCrypto).
    pub const fn is_available(self) -> bool {
        match self {
            SignatureBackend::RustCrypto => true,
            SignatureBackend::Native => {
                cfg!(all(feature = "native-crypto", not(target_arch = "wasm32")))
            }
        }
    }

    /// A short name for logs and benchmark labels: `rustcrypto` or `native`.
    pub const fn name(self) -> &'static str {
        match self {
            SignatureBackend::RustCrypto => "rustcrypto",
            SignatureBackend::Native => "native",
        }
    }
}

/// Verifies `sig` over `msg` with `key` for the header algorithm `alg`, on `backend`.
pub(crate) fn verify_signature(
    key: &Jwk,
    alg: Algorithm,
    msg: &[u8],
    sig: &[u8],
    backend: SignatureBackend,
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
    #[cfg(all(feature = "native-crypto", not(target_arch = "wasm32")))]
    if backend == SignatureBackend::Native {
        if let Some(ok) = native::verify(&key.key, alg, msg, sig) {
            return if ok {
                Ok(())
            } else {
                Err(ValidationError::BadSignature)
            };
        }
    }
    // Without the native backend compiled in, every choice is RustCrypto.
    let _ = backend;
    if rust_crypto::verify(&key.key, alg, msg, sig) {
        Ok(())
    } else {
        Err(ValidationError::BadSignature)
    }
}
