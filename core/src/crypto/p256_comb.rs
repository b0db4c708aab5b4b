//! ES256 verification with precomputed tables (the RustCrypto backend; what the wasm
//! filter runs on a cache miss).
//!
//! ECDSA verification is `R = u1·G + u2·Q`, then `x(R) mod n == r`. The `ecdsa` crate
//! computes the sum with a joint 4-bit window: 256 doublings and about 130 additions
//! per signature. Both points are fixed — `G` always, `Q` for as long as an issuer key
//! lives — so each gets a fixed-base comb table instead: for every 4-bit digit position
//! `i` (64 of them) the 15 multiples `d·16^i·P`, `d = 1..15`. A scalar product is then at
//! most 64 additions and no doubling. The points stay projective: p256 0.13 offers no
//! batch inversion, and 960 single inversions would cost more than the table saves. A
//! table costs 960 point additions to build (once per key, on first use: a few
//! verifications' worth) and ~92 KB of memory.
//!
//! The check is the same equation as `ecdsa::hazmat::verify_prehashed`, with the same
//! inputs: r and s already in [1, n-1] (`Signature::from_slice`), the SHA-256 digest
//! reduced mod n, any s accepted (no low-s rule, as before). Verification handles public
//! data only, so the table lookups need not be constant time.

use std::sync::{Arc, OnceLock};

use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::PrimeField;
use p256::{FieldBytes, ProjectivePoint, Scalar};
use sha2::{Digest as _, Sha256};

/// Digit positions of a 256-bit scalar in base 16.
const WINDOWS: usize = 64;
/// Non-zero digits per position.
const DIGITS: usize = 15;

/// The comb table of one point: `table[i * 15 + d - 1] = d·16^i·P`.
pub(crate) struct CombTable {
    points: Vec<ProjectivePoint>,
}

impl CombTable {
    fn new(p: ProjectivePoint) -> CombTable {
        let mut points = Vec::with_capacity(WINDOWS * DIGITS);
        let mut base = p;
        for _ in 0..WINDOWS {
            let mut multiple = base;
            for _ in 0..DIGITS {
                points.push(multiple);
                multiple += base;
            }
            // 16·base: the next position's base.
            base = multiple;
        }
        CombTable { points }
    }

    /// `k·P`.
    fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let bytes = k.to_repr(); // big-endian
        let mut acc = ProjectivePoint::IDENTITY;
        for (i, byte) in bytes.iter().rev().enumerate() {
            for (half, digit) in [(0, byte & 0x0f), (1, byte >> 4)] {
                if digit != 0 {
                    let at = (2 * i + half) * DIGITS + usize::from(digit) - 1;
                    if let Some(point) = self.points.get(at) {
                        acc += point;
                    }
                }
            }
        }
        acc
    }
}

impl std::fmt::Debug for CombTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombTable")
            .field("points", &self.points.len())
            .finish()
    }
}

/// The generator's table, built on the first ES256 verification of the process.
fn generator_table() -> &'static CombTable {
    static TABLE: OnceLock<CombTable> = OnceLock::new();
    TABLE.get_or_init(|| CombTable::new(ProjectivePoint::GENERATOR))
}

/// A P-256 public key with its comb table, built on first use and shared by clones.
#[derive(Debug, Clone)]
pub struct P256Key {
    key: VerifyingKey,
    table: Arc<OnceLock<CombTable>>,
}

impl P256Key {
    /// Wraps a verifying key (the table is built when the key first verifies).
    pub fn new(key: VerifyingKey) -> P256Key {
        P256Key {
            key,
            table: Arc::new(OnceLock::new()),
        }
    }

    /// The key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` (r‖s, 64 bytes) is a valid ES256 signature of `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        // r, s in [1, n-1]: no zero or out-of-range scalars (CVE-2022-21449 class).
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        let digest: FieldBytes = Sha256::digest(msg);
        let z = <Scalar as Reduce<p256::U256>>::reduce_bytes(&digest);
        let (r, s) = sig.split_scalars();
        let s_inv = *s.invert_vartime();
        let u1 = z * s_inv;
        let u2 = *r * s_inv;
        let q = self
            .table
            .get_or_init(|| CombTable::new(ProjectivePoint::from(*self.key.as_affine())));
        let sum = generator_table().mul(&u1) + q.mul(&u2);
        // The identity has x = 0 here, never equal to r (r ≠ 0).
        let x = sum.to_affine().x();
        <Scalar as Reduce<p256::U256>>::reduce_bytes(&x) == *r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::SigningKey;
    use p256::elliptic_curve::Field as _;

    fn rng() -> rand::rngs::OsRng {
        rand::rngs::OsRng
    }

    #[test]
    fn the_comb_product_equals_the_plain_scalar_multiplication() {
        let table = generator_table();
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            Scalar::from(15u64),
            Scalar::from(16u64),
            -Scalar::ONE,
        ];
        scalars.extend((0..50).map(|_| Scalar::random(rng())));
        for k in scalars {
            let want = (ProjectivePoint::GENERATOR * k).to_affine();
            assert_eq!(table.mul(&k).to_affine(), want);
        }
        let q = ProjectivePoint::GENERATOR * Scalar::random(rng());
        let qt = CombTable::new(q);
        for _ in 0..20 {
            let k = Scalar::random(rng());
            assert_eq!(qt.mul(&k).to_affine(), (q * k).to_affine());
        }
    }

    #[test]
    fn agrees_with_the_ecdsa_crate_on_valid_and_tampered_signatures() {
        for _ in 0..20 {
            let sk = SigningKey::random(&mut rng());
            let vk = *sk.verifying_key();
            let key = P256Key::new(vk);
            let msg: Vec<u8> = (0..40).map(|_| rand::random::<u8>()).collect();
            let sig: Signature = p256::ecdsa::signature::Signer::sign(&sk, &msg);
            let bytes = sig.to_bytes();
            assert!(key.verify(&msg, &bytes));
            assert!(vk.verify(&msg, &sig).is_ok());
            // The high-s twin verifies in both (no low-s rule on either side).
            let (r, s) = sig.split_scalars();
            let twin = Signature::from_scalars(*r, -*s).unwrap();
            assert_eq!(
                key.verify(&msg, &twin.to_bytes()),
                vk.verify(&msg, &twin).is_ok()
            );
            let mut flipped = bytes.to_vec();
            flipped[7] ^= 1;
            assert!(!key.verify(&msg, &flipped));
            let mut other = msg.clone();
            other[0] ^= 1;
            assert!(!key.verify(&other, &bytes));
            // Another key's table does not verify it.
            let stranger = P256Key::new(*SigningKey::random(&mut rng()).verifying_key());
            assert!(!stranger.verify(&msg, &bytes));
        }
    }

    #[test]
    fn refuses_zero_and_out_of_range_scalars() {
        let key = P256Key::new(*SigningKey::random(&mut rng()).verifying_key());
        assert!(!key.verify(b"m", &[0u8; 64]));
        assert!(!key.verify(b"m", &[0xffu8; 64]));
        assert!(!key.verify(b"m", &[1u8; 63]));
    }
}
