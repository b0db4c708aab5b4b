//! ES256 verification with precomputed tables: what the wasm filter runs on a cache
//! miss and what the exchange service runs on a cold exchange.
//!
//! ECDSA verification is `R = u1·G + u2·Q`, then `x(R) mod n == r`. The `ecdsa` crate
//! computes the sum with a joint 4-bit window (256 doublings and about 130 additions per
//! signature), ring with a constant-time 5-bit window for `Q`. Both points are fixed —
//! `G` always, `Q` for as long as an issuer key lives — so each gets a fixed-base comb
//! table instead: for every `b`-bit digit position `i` the multiples `d·2^(b·i)·P`,
//! `d = 1..2^b - 1`. A scalar product is then at most `256 / b` additions and no
//! doubling. The table points are affine and the sum is checked without leaving
//! projective coordinates ([`super::p256_point`]): no field inversion per signature.
//!
//! The digit width is per target ([`KEY_DIGIT_BITS`]). In wasm every worker's VM builds
//! and holds its own tables, so 4 bits: 960 points, ~61 KB and 960 additions per key.
//! On the host 8 bits: 8,160 points, ~520 KB and a few milliseconds per key, for half
//! the additions per signature (32 instead of 64 per product). Both products go into
//! one accumulator, so a signature costs at most 64 mixed additions on the host.
//! `make bench-core` (`ES256 signature`, 2026-12-04, quiet machine): parse and verify
//! 20 µs with 8-bit digits against ring's 51 µs for the verification alone (28 µs before
//! the affine tables, 47 µs with 4-bit digits); `s⁻¹` by divsteps ([`super::scalar_inv`])
//! instead of p256's binary inversion: 52 → 40 µs on a host half as fast (ring 98 µs);
//! on core's own field ([`super::p256_field`], mulx/adx) 22.4 → 17.7 µs (2026-12-05).
//!
//! The check is the same equation as `ecdsa::hazmat::verify_prehashed`, with the same
//! inputs: r and s already in [1, n-1] (`Signature::from_slice`), the SHA-256 digest
//! reduced mod n, any s accepted (no low-s rule, as before). Verification handles public
//! data only, so the table lookups need not be constant time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, FieldBytes, Scalar};
use sha2::{Digest as _, Sha256};

use super::p256_point::{batch_to_affine, Affine, Jacobian, Projective};

/// Bits per comb digit on this target (see the module docs for the trade).
#[cfg(target_arch = "wasm32")]
pub(crate) const KEY_DIGIT_BITS: u32 = 4;
/// Bits per comb digit on this target (see the module docs for the trade).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const KEY_DIGIT_BITS: u32 = 8;

/// The comb table of one point with `BITS`-bit digits (4 or 8: a byte holds whole
/// digits): `points[i * digits + d - 1] = d·2^(BITS·i)·P`.
pub(crate) struct CombTable<const BITS: u32> {
    points: Vec<Affine>,
}

impl<const BITS: u32> CombTable<BITS> {
    /// Non-zero digits per position.
    const DIGITS: usize = (1 << BITS) - 1;
    /// Digit positions of a 256-bit scalar.
    const POSITIONS: usize = 256 / BITS as usize;

    /// The table of `p`; `None` only if a multiple were the identity, which no point of
    /// the prime-order group (any public key) has below `n`.
    fn new(p: AffinePoint) -> Option<Self> {
        let mut points = Vec::with_capacity(Self::POSITIONS * Self::DIGITS);
        let mut base = Affine::from_point(&p)?;
        let mut row = Vec::with_capacity(Self::DIGITS + 1);
        for _ in 0..Self::POSITIONS {
            row.clear();
            let mut multiple = Projective::from(base);
            row.push(multiple);
            for _ in 1..Self::DIGITS {
                multiple = multiple.add_affine(&base);
                row.push(multiple);
            }
            // 2^BITS·base, the next position's base, shares the row's one inversion.
            row.push(multiple.add_affine(&base));
            let mut affine = batch_to_affine(&row)?;
            base = affine.pop()?;
            points.extend(affine);
        }
        Some(CombTable { points })
    }

    /// The table entries whose sum is `k·P`: one per non-zero digit of `k`.
    fn entries<'a>(&'a self, k: &Scalar) -> impl Iterator<Item = &'a Affine> + Clone + 'a {
        let bytes = k.to_repr(); // big-endian
        let digits_per_byte = (8 / BITS) as usize;
        (0..Self::POSITIONS).filter_map(move |position| {
            let byte = bytes.get(31 - position / digits_per_byte)?;
            let shift = (position % digits_per_byte) as u32 * BITS;
            let digit = usize::from(*byte >> shift) & Self::DIGITS;
            let index = (position * Self::DIGITS + digit).checked_sub(1)?;
            (digit != 0).then(|| self.points.get(index)).flatten()
        })
    }

    /// `acc += k·P`.
    #[cfg(test)]
    fn add_product(&self, acc: &mut Jacobian, k: &Scalar) {
        add_all(acc, self.entries(k));
    }

    /// `k·P` (tests).
    #[cfg(test)]
    fn mul(&self, k: &Scalar) -> Jacobian {
        let mut acc = Jacobian::IDENTITY;
        self.add_product(&mut acc, k);
        acc
    }
}

impl<const BITS: u32> std::fmt::Debug for CombTable<BITS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombTable")
            .field("digit_bits", &BITS)
            .field("points", &self.points.len())
            .finish()
    }
}

/// `acc += Σ points`. The host's tables (about 520 KB per key, two per signature) mostly
/// miss the cache under load, and each addition needs its point first, so there one pass
/// reads every point before the additions: independent loads whose misses overlap
/// instead of stalling the additions one by one (the verification's share of the
/// service's CPU under true-cold load 34.5 → 27.0 %; reading one point ahead had only
/// moved the stall: bench/notes.md).
/// 4-bit tables (wasm's, 61 KB per key) need no such pass.
fn add_all<'a>(acc: &mut Jacobian, points: impl Iterator<Item = &'a Affine> + Clone) {
    if KEY_DIGIT_BITS == 8 {
        let touched = points.clone().fold(false, |t, p| t | p.touch());
        std::hint::black_box(touched);
    }
    for point in points {
        *acc = acc.add_affine(point);
    }
}

/// The table width of this target.
type KeyTable = CombTable<KEY_DIGIT_BITS>;

/// The generator's table, built on the first ES256 verification of the process (`None`
/// cannot happen: see [`CombTable::new`]).
fn generator_table() -> Option<&'static KeyTable> {
    static TABLE: OnceLock<Option<KeyTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| KeyTable::new(AffinePoint::GENERATOR))
        .as_ref()
}

/// Most issuer-key tables alive at once in this process (wasm: in this VM): about 8 MB
/// on the host, 4 MB in wasm. A JWKS may hold up to `MAX_KEYS` keys and a token picks one
/// by `kid`, so without a bound tokens naming every key of every issuer would pin a table
/// each. A key that finds the budget spent verifies without a table (the `ecdsa` crate,
/// the same equation, several times slower) until it is parsed again at a JWKS refresh.
#[cfg(not(target_arch = "wasm32"))]
const MAX_KEY_TABLES: usize = 16;
/// Most issuer-key tables alive at once in this process (see the host's figure).
#[cfg(target_arch = "wasm32")]
const MAX_KEY_TABLES: usize = 64;

/// A count of live issuer-key tables with a ceiling.
#[derive(Debug)]
struct TableBudget {
    live: AtomicUsize,
    max: usize,
}

impl TableBudget {
    const fn new(max: usize) -> TableBudget {
        TableBudget {
            live: AtomicUsize::new(0),
            max,
        }
    }
}

/// The process's (wasm: the VM's) budget.
static KEY_TABLES: TableBudget = TableBudget::new(MAX_KEY_TABLES);

/// One issuer key's table and its share of a budget, given back on drop.
#[derive(Debug)]
struct BudgetedTable {
    table: KeyTable,
    budget: &'static TableBudget,
}

impl BudgetedTable {
    /// Builds `p`'s table if `budget` allows one more.
    fn build(p: AffinePoint, budget: &'static TableBudget) -> Option<BudgetedTable> {
        budget
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < budget.max).then_some(n + 1)
            })
            .ok()?;
        // From here on the share is given back on drop, also when no table comes of it.
        let mut held = BudgetedTable {
            table: CombTable { points: Vec::new() },
            budget,
        };
        held.table = KeyTable::new(p)?;
        Some(held)
    }
}

impl Drop for BudgetedTable {
    fn drop(&mut self) {
        self.budget.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A P-256 public key with its comb table, built on first use and shared by clones.
#[derive(Debug, Clone)]
pub struct P256Key {
    key: VerifyingKey,
    budget: &'static TableBudget,
    /// `None` inside: the budget was spent when the key first verified.
    table: Arc<OnceLock<Option<BudgetedTable>>>,
}

impl P256Key {
    /// Wraps a verifying key (the table is built when the key first verifies).
    pub fn new(key: VerifyingKey) -> P256Key {
        Self::with_budget(key, &KEY_TABLES)
    }

    fn with_budget(key: VerifyingKey, budget: &'static TableBudget) -> P256Key {
        P256Key {
            key,
            budget,
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
        let table = self
            .table
            .get_or_init(|| BudgetedTable::build(*self.key.as_affine(), self.budget));
        let (Some(BudgetedTable { table: q, .. }), Some(g)) = (table, generator_table()) else {
            return self.key.verify_prehash(&digest, &sig).is_ok();
        };
        let z = <Scalar as Reduce<p256::U256>>::reduce_bytes(&digest);
        let (r, s) = sig.split_scalars();
        let s_inv = super::scalar_inv::invert(&s);
        let mut sum = Jacobian::IDENTITY;
        add_all(
            &mut sum,
            g.entries(&(z * s_inv)).chain(q.entries(&(*r * s_inv))),
        );
        sum.x_matches(&r)
    }

    /// Whether this key verifies with a table (false before its first verification).
    #[cfg(test)]
    pub(crate) fn has_table(&self) -> bool {
        self.table.get().is_some_and(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::SigningKey;
    use p256::elliptic_curve::Field as _;
    use p256::ProjectivePoint;

    fn rng() -> rand::rngs::OsRng {
        rand::rngs::OsRng
    }

    /// Products of both digit widths against p256's own scalar multiplication.
    fn affine(p: ProjectivePoint) -> Option<Affine> {
        Affine::from_point(&p.to_affine())
    }

    fn comb_products_match<const BITS: u32>() {
        let g = CombTable::<BITS>::new(AffinePoint::GENERATOR).unwrap();
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            Scalar::from(15u64),
            Scalar::from(16u64),
            Scalar::from(255u64),
            Scalar::from(256u64),
            -Scalar::ONE,
        ];
        scalars.extend((0..40).map(|_| Scalar::random(rng())));
        for k in scalars {
            // k = 0: both the identity (no affine form).
            let want = affine(ProjectivePoint::GENERATOR * k);
            assert_eq!(g.mul(&k).to_affine(), want, "{BITS}-bit digits, k = {k:?}");
        }
        let q = ProjectivePoint::GENERATOR * Scalar::random(rng());
        let qt = CombTable::<BITS>::new(q.to_affine()).unwrap();
        for _ in 0..20 {
            let k = Scalar::random(rng());
            assert_eq!(qt.mul(&k).to_affine(), affine(q * k));
        }
    }

    #[test]
    fn the_comb_product_equals_the_plain_scalar_multiplication_with_4_bit_digits() {
        comb_products_match::<4>();
    }

    #[test]
    fn the_comb_product_equals_the_plain_scalar_multiplication_with_8_bit_digits() {
        comb_products_match::<8>();
    }

    #[test]
    fn tables_hold_every_non_zero_digit_of_every_position() {
        assert_eq!(
            CombTable::<4>::new(AffinePoint::GENERATOR)
                .unwrap()
                .points
                .len(),
            64 * 15
        );
        assert_eq!(
            CombTable::<8>::new(AffinePoint::GENERATOR)
                .unwrap()
                .points
                .len(),
            32 * 255
        );
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
    fn keys_past_the_table_budget_still_verify_without_a_table() {
        static BUDGET: TableBudget = TableBudget::new(2);
        let signer = |_: usize| {
            let sk = SigningKey::random(&mut rng());
            let key = P256Key::with_budget(*sk.verifying_key(), &BUDGET);
            (sk, key)
        };
        let keys: Vec<(SigningKey, P256Key)> = (0..4).map(signer).collect();
        for (sk, key) in &keys {
            let sig: Signature = p256::ecdsa::signature::Signer::sign(sk, b"budget");
            assert!(key.verify(b"budget", &sig.to_bytes()));
            assert!(!key.verify(b"budgeT", &sig.to_bytes()));
        }
        let with: Vec<bool> = keys.iter().map(|(_, k)| k.has_table()).collect();
        assert_eq!(with, [true, true, false, false]);
        // A clone shares its key's table and takes no share of its own.
        let clone = keys[0].1.clone();
        assert!(clone.has_table());
        assert_eq!(BUDGET.live.load(Ordering::Acquire), 2);
        // Dropping every holder of a table gives its share back.
        drop(clone);
        drop(keys);
        assert_eq!(BUDGET.live.load(Ordering::Acquire), 0);
        let (sk, key) = signer(0);
        let sig: Signature = p256::ecdsa::signature::Signer::sign(&sk, b"again");
        assert!(key.verify(b"again", &sig.to_bytes()));
        assert!(key.has_table());
    }

    #[test]
    fn refuses_zero_and_out_of_range_scalars() {
        let key = P256Key::new(*SigningKey::random(&mut rng()).verifying_key());
        assert!(!key.verify(b"m", &[0u8; 64]));
        assert!(!key.verify(b"m", &[0xffu8; 64]));
        assert!(!key.verify(b"m", &[1u8; 63]));
    }
}
