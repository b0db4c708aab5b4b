//! The P-256 point arithmetic of the comb ([`super::p256_comb`]): affine table points
//! summed into a Jacobian accumulator with the mixed addition madd-2007-bl (11
//! multiplications; the cases it cannot take, the identity and `±q`, go through the
//! complete projective formula), and `x(R) mod n == r` checked without leaving
//! Jacobian coordinates. The tables themselves are built with the complete mixed
//! addition of Renes, Costello and Batina ("Complete addition formulas for prime order
//! elliptic curves", 2016, Algorithm 5, a = −3) in projective coordinates.
//!
//! p256 keeps its points' coordinates private, so this module works on its field
//! (`expose-field`) directly. Against p256's projective points it saves the field
//! inversion of `to_affine` on every signature (about 6 µs of a 28 µs verification on
//! the host, measured 2026-12-04), 5 of the 16 multiplications of each addition, and a
//! third of the table memory (64 bytes a point instead of 96). Verification handles
//! public data: the accumulator's branches (identity, `±q`) leak nothing secret.

use std::sync::OnceLock;

use p256::elliptic_curve::bigint::{Limb, U256};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::elliptic_curve::{Curve as _, PrimeField as _};
use p256::{AffinePoint, NistP256, Scalar};

// 64-bit hosts: core's field with the cheaper reduction (and mulx/adx where the CPU has
// them); 32-bit targets (the wasm filter): p256's, whose 32-bit limbs suit them.
#[cfg(not(target_pointer_width = "32"))]
use super::p256_field::FieldElement;
#[cfg(target_pointer_width = "32")]
use p256::FieldElement;

/// b of the curve equation y² = x³ − 3x + b.
fn curve_b() -> &'static FieldElement {
    static B: OnceLock<FieldElement> = OnceLock::new();
    B.get_or_init(|| {
        let b =
            U256::from_be_hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");
        // b < p: `from_uint` cannot refuse it.
        FieldElement::from_uint(b).unwrap_or(FieldElement::ZERO)
    })
}

/// A point in affine coordinates; never the identity (a table entry). On the host,
/// aligned to a cache line, which its 64 bytes fill: a lookup in the host's tables (two
/// of about 520 KB per signature) then misses one line, not two (wasm's 61 KB tables
/// stay as they are).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(target_arch = "wasm32"), repr(align(64)))]
pub(crate) struct Affine {
    x: FieldElement,
    y: FieldElement,
}

impl Affine {
    /// Loads the point's line. The answer (`x` is 0) means nothing: the caller hands it
    /// to `black_box` so the load cannot be dropped (`p256_comb::add_all`).
    #[inline]
    pub(crate) fn touch(&self) -> bool {
        self.x == FieldElement::ZERO
    }

    /// The coordinates of a p256 point; `None` for the identity.
    pub(crate) fn from_point(p: &AffinePoint) -> Option<Affine> {
        let encoded = p.to_encoded_point(false);
        Some(Affine {
            x: FieldElement::from_bytes(encoded.x()?).into_option()?,
            y: FieldElement::from_bytes(encoded.y()?).into_option()?,
        })
    }
}

/// A point in homogeneous projective coordinates: x = X/Z, y = Y/Z; the identity is
/// (0 : 1 : 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Projective {
    x: FieldElement,
    y: FieldElement,
    z: FieldElement,
}

impl From<Affine> for Projective {
    fn from(p: Affine) -> Projective {
        Projective {
            x: p.x,
            y: p.y,
            z: FieldElement::ONE,
        }
    }
}

impl Projective {
    /// The identity.
    #[cfg(test)]
    pub(crate) const IDENTITY: Projective = Projective {
        x: FieldElement::ZERO,
        y: FieldElement::ONE,
        z: FieldElement::ZERO,
    };

    /// `self + q`. Complete: right for every `self` (the identity, `q`, `−q` included);
    /// `q` is affine, so never the identity.
    pub(crate) fn add_affine(&self, q: &Affine) -> Projective {
        let b = curve_b();
        let (x1, y1, z1) = (self.x, self.y, self.z);
        let xx = x1 * q.x;
        let yy = y1 * q.y;
        let xy = (x1 + y1) * (q.x + q.y) - (xx + yy);
        let yz = q.y * z1 + y1;
        let xz = q.x * z1 + x1;
        // 3(xz − b·Z1)
        let t = xz - *b * z1;
        let bz3 = t.double() + t;
        let yy_minus = yy - bz3;
        let yy_plus = yy + bz3;
        let z1_3 = z1.double() + z1;
        // 3(b·xz − 3·Z1 − xx)
        let t = *b * xz - z1_3 - xx;
        let bxz3 = t.double() + t;
        let xx3_minus_z3 = xx.double() + xx - z1_3;
        Projective {
            x: yy_plus * xy - yz * bxz3,
            y: yy_plus * yy_minus + xx3_minus_z3 * bxz3,
            z: yy_minus * yz + xy * xx3_minus_z3,
        }
    }

    /// The affine form; `None` for the identity.
    #[cfg(test)]
    pub(crate) fn to_affine(self) -> Option<Affine> {
        batch_to_affine(&[self]).and_then(|v| v.first().copied())
    }
}

/// A point in Jacobian coordinates: x = X/Z², y = Y/Z³; the identity has Z = 0. The
/// accumulator of a verification's sum.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Jacobian {
    x: FieldElement,
    y: FieldElement,
    z: FieldElement,
}

impl From<Affine> for Jacobian {
    fn from(p: Affine) -> Jacobian {
        Jacobian {
            x: p.x,
            y: p.y,
            z: FieldElement::ONE,
        }
    }
}

impl From<Projective> for Jacobian {
    /// (X : Y : Z) projective is (X·Z, Y·Z², Z) Jacobian; the identity stays Z = 0.
    fn from(p: Projective) -> Jacobian {
        Jacobian {
            x: p.x * p.z,
            y: p.y * p.z * p.z,
            z: p.z,
        }
    }
}

impl Jacobian {
    /// The identity.
    pub(crate) const IDENTITY: Jacobian = Jacobian {
        x: FieldElement::ONE,
        y: FieldElement::ONE,
        z: FieldElement::ZERO,
    };

    /// `self + q`: madd-2007-bl (7M + 4S; a square costs a multiplication here), two
    /// multiplications fewer than the complete formula and half its additions. Where
    /// that formula does not hold (`self` the identity, `self = ±q`: H = 0), the
    /// complete projective addition answers.
    pub(crate) fn add_affine(&self, q: &Affine) -> Jacobian {
        let (x1, y1, z1) = (self.x, self.y, self.z);
        if bool::from(z1.is_zero()) {
            return Jacobian::from(*q);
        }
        let z1z1 = z1 * z1;
        let h = q.x * z1z1 - x1;
        if bool::from(h.is_zero()) {
            // x1 = x2: self is q or −q.
            return Jacobian::from(self.to_projective().add_affine(q));
        }
        let s2 = q.y * z1 * z1z1;
        let hh = h * h;
        let i = hh.double().double();
        let j = h * i;
        let r = (s2 - y1).double();
        let v = x1 * i;
        let x3 = r * r - j - v.double();
        Jacobian {
            x: x3,
            y: r * (v - x3) - (y1 * j).double(),
            z: (z1 * h).double(),
        }
    }

    /// The same point in projective coordinates: (X·Z, Y, Z³).
    fn to_projective(self) -> Projective {
        Projective {
            x: self.x * self.z,
            y: self.y,
            z: self.z * self.z * self.z,
        }
    }

    /// Whether `x(self) mod n == r`, without leaving Jacobian coordinates: `X == r·Z²`,
    /// or `X == (r + n)·Z²` where `r + n < p` (x ranges over [0, p), and p < 2n). The
    /// identity has no x and never matches.
    pub(crate) fn x_matches(&self, r: &Scalar) -> bool {
        if bool::from(self.z.is_zero()) {
            return false;
        }
        let zz = self.z * self.z;
        let r_bytes = r.to_repr();
        // r < n < p: always a field element.
        let Some(r_fe) = FieldElement::from_bytes(&r_bytes).into_option() else {
            return false;
        };
        if self.x == r_fe * zz {
            return true;
        }
        let (r_plus_n, carry) = U256::from_be_slice(&r_bytes).adc(&NistP256::ORDER, Limb::ZERO);
        if carry != Limb::ZERO {
            return false;
        }
        // `from_uint` refuses r + n ≥ p.
        FieldElement::from_uint(r_plus_n)
            .into_option()
            .is_some_and(|x| self.x == x * zz)
    }

    /// The affine form; `None` for the identity.
    #[cfg(test)]
    pub(crate) fn to_affine(self) -> Option<Affine> {
        if bool::from(self.z.is_zero()) {
            return None;
        }
        self.to_projective().to_affine()
    }

    /// A Jacobian point with the given coordinates (tests of [`Self::x_matches`]).
    #[cfg(test)]
    pub(crate) fn from_coordinates(x: FieldElement, y: FieldElement, z: FieldElement) -> Self {
        Jacobian { x, y, z }
    }
}

/// The affine forms of `points` with one field inversion for all of them (Montgomery's
/// trick); `None` if one is the identity.
pub(crate) fn batch_to_affine(points: &[Projective]) -> Option<Vec<Affine>> {
    // prefix[i] = z_0 · … · z_i
    let mut prefix = Vec::with_capacity(points.len());
    let mut product = FieldElement::ONE;
    for p in points {
        if bool::from(p.z.is_zero()) {
            return None;
        }
        product *= p.z;
        prefix.push(product);
    }
    // Walking back, `inverse` is (z_0 · … · z_i)⁻¹.
    let mut inverse = product.invert().into_option()?;
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate().rev() {
        let z_inv = match i.checked_sub(1).and_then(|j| prefix.get(j)) {
            Some(before) => inverse * *before,
            None => inverse,
        };
        inverse *= p.z;
        out.push(Affine {
            x: p.x * z_inv,
            y: p.y * z_inv,
        });
    }
    out.reverse();
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::elliptic_curve::bigint::Encoding as _;
    use p256::elliptic_curve::Group as _;
    use p256::ProjectivePoint;

    fn affine(p: ProjectivePoint) -> Affine {
        Affine::from_point(&p.to_affine()).unwrap()
    }

    fn random_point() -> ProjectivePoint {
        ProjectivePoint::random(rand::rngs::OsRng)
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn a_host_table_entry_fills_exactly_one_cache_line() {
        assert_eq!(std::mem::size_of::<Affine>(), 64);
        assert_eq!(std::mem::align_of::<Affine>(), 64);
    }

    #[test]
    fn mixed_addition_agrees_with_p256_for_random_points() {
        for _ in 0..200 {
            let (p, q) = (random_point(), random_point());
            let sum = Projective::from(affine(p)).add_affine(&affine(q));
            assert_eq!(sum.to_affine().unwrap(), affine(p + q));
        }
    }

    #[test]
    fn mixed_addition_is_complete_for_the_identity_doubling_and_the_inverse() {
        let p = random_point();
        let a = affine(p);
        // identity + p = p
        assert_eq!(Projective::IDENTITY.add_affine(&a).to_affine().unwrap(), a);
        // p + p = 2p (with p's Z ≠ 1, as in an accumulator)
        let p_scaled = Projective::from(affine(p.double())).add_affine(&affine(-p));
        assert_eq!(p_scaled.to_affine().unwrap(), a);
        assert_eq!(
            p_scaled.add_affine(&a).to_affine().unwrap(),
            affine(p.double())
        );
        // p + (−p) = identity
        assert!(Projective::from(a)
            .add_affine(&affine(-p))
            .to_affine()
            .is_none());
    }

    #[test]
    fn batch_conversion_agrees_with_single_conversions_and_refuses_the_identity() {
        let mut acc = Projective::IDENTITY;
        let mut points = Vec::new();
        let mut expected = Vec::new();
        let mut sum = ProjectivePoint::IDENTITY;
        for _ in 0..17 {
            let q = random_point();
            acc = acc.add_affine(&affine(q));
            sum += q;
            points.push(acc);
            expected.push(affine(sum));
        }
        assert_eq!(batch_to_affine(&points).unwrap(), expected);
        points.push(Projective::IDENTITY);
        assert!(batch_to_affine(&points).is_none());
        assert_eq!(batch_to_affine(&[]).unwrap(), Vec::new());
    }

    fn fe(hex: &str) -> FieldElement {
        FieldElement::from_uint(U256::from_be_hex(hex)).unwrap()
    }

    fn scalar(hex: &str) -> Scalar {
        Scalar::from_repr(U256::from_be_hex(hex).to_be_bytes().into()).unwrap()
    }

    #[test]
    fn x_matches_r_and_r_plus_n_below_p_in_jacobian_coordinates() {
        let z = fe("00000000000000000000000000000000000000000000000000000000deadbeef");
        let zz = z * z;
        let y = FieldElement::ONE;
        let r = scalar("0000000000000000000000000000000000000000000000000000000000000005");
        // x = 5
        let p = Jacobian::from_coordinates(FieldElement::from_u64(5) * zz, y, z);
        assert!(p.x_matches(&r));
        // X = 5·Z (the projective scaling) is another x: no
        assert!(!Jacobian::from_coordinates(FieldElement::from_u64(5) * z, y, z).x_matches(&r));
        // x = 5 + n (< p)
        let n_plus_5 = fe("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632556");
        assert!(Jacobian::from_coordinates(n_plus_5 * zz, y, z).x_matches(&r));
        // x = 6, x = 6 + n: no
        let p6 = Jacobian::from_coordinates(FieldElement::from_u64(6) * zz, y, z);
        assert!(!p6.x_matches(&r));
        let n_plus_6 = fe("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632557");
        assert!(!Jacobian::from_coordinates(n_plus_6 * zz, y, z).x_matches(&r));
    }

    #[test]
    fn x_never_matches_r_plus_n_wrapped_past_p_nor_the_identity() {
        // r = n − 1: r + n ≥ p, so only x = r matches; (r + n) mod p must not.
        let r = scalar("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550");
        let r_fe = fe("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550");
        let n_fe = fe("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        let wrapped = r_fe + n_fe; // r + n − p
        let z = fe("0000000000000000000000000000000000000000000000000000000000001234");
        let zz = z * z;
        let y = FieldElement::ONE;
        assert!(Jacobian::from_coordinates(r_fe * zz, y, z).x_matches(&r));
        assert!(!Jacobian::from_coordinates(wrapped * zz, y, z).x_matches(&r));
        assert!(!Jacobian::IDENTITY.x_matches(&r));
    }

    #[test]
    fn jacobian_addition_agrees_with_p256_for_random_points_and_sums() {
        let mut acc = Jacobian::IDENTITY;
        let mut sum = ProjectivePoint::IDENTITY;
        for _ in 0..200 {
            let (p, q) = (random_point(), random_point());
            let one = Jacobian::from(affine(p)).add_affine(&affine(q));
            assert_eq!(one.to_affine().unwrap(), affine(p + q));
            // A running sum: Z far from 1, as in a verification.
            acc = acc.add_affine(&affine(q));
            sum += q;
            assert_eq!(acc.to_affine().unwrap(), affine(sum));
        }
    }

    #[test]
    fn jacobian_addition_takes_the_identity_doubling_and_the_inverse() {
        let p = random_point();
        let a = affine(p);
        // identity + p = p
        assert_eq!(Jacobian::IDENTITY.add_affine(&a).to_affine().unwrap(), a);
        // p + p = 2p, with p's Z ≠ 1 (2p + (−p) first), as in an accumulator
        let p_scaled = Jacobian::from(affine(p.double())).add_affine(&affine(-p));
        assert_eq!(p_scaled.to_affine().unwrap(), a);
        assert_eq!(
            p_scaled.add_affine(&a).to_affine().unwrap(),
            affine(p.double())
        );
        // p + (−p) = identity, from Z = 1 and from Z ≠ 1; then on from the identity
        assert!(Jacobian::from(a)
            .add_affine(&affine(-p))
            .to_affine()
            .is_none());
        let gone = p_scaled.add_affine(&affine(-p));
        assert!(gone.to_affine().is_none());
        assert_eq!(gone.add_affine(&a).to_affine().unwrap(), a);
    }

    #[test]
    fn projective_and_jacobian_forms_are_the_same_point() {
        for _ in 0..20 {
            let (p, q) = (random_point(), random_point());
            let projective = Projective::from(affine(p)).add_affine(&affine(q));
            let jacobian = Jacobian::from(projective);
            assert_eq!(jacobian.to_affine().unwrap(), affine(p + q));
            assert_eq!(jacobian.to_projective().to_affine().unwrap(), affine(p + q));
        }
        assert!(Jacobian::from(Projective::IDENTITY).to_affine().is_none());
    }
}
