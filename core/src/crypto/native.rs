//! The native backend (`ring`) for host builds with the `native-crypto` feature: RS*,
//! PS* (salt length = hash length, ring's only PSS mode) and ES384 (fixed-size r‖s, r and
//! s in [1, n-1]). ring has no P-521, so ES512 stays on RustCrypto, and ES256 stays on
//! core's comb tables (`p256_comb.rs`), which on the host take about 0.6 × ring's time
//! per verification: ring multiplies the issuer key in constant time over 256 doublings,
//! the comb adds at most 64 precomputed points. Ring still checks the comb in the tests
//! below.

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
        (PublicKey::P384(k), Algorithm::ES384) => {
            let point = k.to_encoded_point(false);
            rs::UnparsedPublicKey::new(&rs::ECDSA_P384_SHA384_FIXED, point.as_bytes())
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::P256(_) | PublicKey::P521(_), _) => return None,
        _ => false,
    };
    Some(ok)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use p256::ecdsa::{Signature, SigningKey};
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};
    use ring::signature as rs;

    use crate::crypto::P256Key;

    /// ring's verdict on an ES256 signature (fixed r‖s).
    fn ring_verifies(key: &P256Key, msg: &[u8], sig: &[u8]) -> bool {
        let point = key.verifying_key().to_encoded_point(false);
        rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point.as_bytes())
            .verify(msg, sig)
            .is_ok()
    }

    #[test]
    fn es256_on_the_comb_gives_rings_verdict_on_valid_tampered_and_malformed_signatures() {
        let mut rng = StdRng::seed_from_u64(0x2566);
        let mut accepted = 0;
        for round in 0..40 {
            let sk = SigningKey::random(&mut rng);
            let key = P256Key::new(*sk.verifying_key());
            let msg: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            let sig: Signature = p256::ecdsa::signature::Signer::sign(&sk, &msg);
            let (r, s) = sig.split_scalars();
            let high_s = Signature::from_scalars(*r, -*s)
                .unwrap()
                .to_bytes()
                .to_vec();
            let mut cases = vec![sig.to_bytes().to_vec(), high_s, vec![0; 64], vec![0xff; 64]];
            let mut flipped = sig.to_bytes().to_vec();
            flipped[round % 64] ^= 1 << (round % 8);
            cases.push(flipped);
            cases.push(sig.to_bytes()[..63].to_vec());
            // r = n (out of range) with a valid s.
            let mut r_is_n = hex_n();
            r_is_n.extend_from_slice(&sig.to_bytes()[32..]);
            cases.push(r_is_n);
            for case in &cases {
                let comb = key.verify(&msg, case);
                // The comb answered, not the fallback past the table budget.
                assert!(key.has_table());
                assert_eq!(comb, ring_verifies(&key, &msg, case), "round {round}");
                accepted += usize::from(comb);
            }
            let stranger = P256Key::new(*SigningKey::random(&mut rng).verifying_key());
            assert!(!stranger.verify(&msg, &cases[0]));
            assert!(!ring_verifies(&stranger, &msg, &cases[0]));
        }
        // Each round's signature and its high-s twin, nothing else.
        assert_eq!(accepted, 80);
    }

    /// The P-256 group order, big-endian.
    fn hex_n() -> Vec<u8> {
        let n = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
        (0..32)
            .map(|i| u8::from_str_radix(&n[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }
}
