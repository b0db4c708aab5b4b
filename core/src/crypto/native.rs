//! The native backend (`ring`) for host builds with the `native-crypto` feature: RS*,
//! PS* (salt length = hash length, ring's only PSS mode) and ES256/ES384 (fixed-size
//! r‖s, r and s in [1, n-1]). ring has no P-521, so ES512 stays on RustCrypto.

use ring::signature as rs;
use rsa::traits::PublicKeyParts as _;

use crate::alg::Algorithm;
use crate::jwk::PublicKey;

/// Whether `sig` verifies, or `None` when ring has no verifier for this algorithm.
/// The caller has checked that the key fits `alg` and the RSA signature length.
pub(super) fn verify(key: &PublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> Option<bool> {
    let ok = match (key, alg) {
        (PublicKey::Rsa(k), _) => {
            let params: &rs::RsaParameters = match alg {
                Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
                Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => return Some(false),
            };
            let (n, e) = (k.n().to_bytes_be(), k.e().to_bytes_be());
            rs::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(params, msg, sig)
                .is_ok()
        }
        (PublicKey::P256(k), Algorithm::ES256) => {
            let point = k.verifying_key().to_encoded_point(false);
            rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point.as_bytes())
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::P384(k), Algorithm::ES384) => {
            let point = k.to_encoded_point(false);
            rs::UnparsedPublicKey::new(&rs::ECDSA_P384_SHA384_FIXED, point.as_bytes())
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::P521(_), _) => return None,
        _ => false,
    };
    Some(ok)
}
