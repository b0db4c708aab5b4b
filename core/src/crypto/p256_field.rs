//! P-256's base field for the comb's point arithmetic ([`super::p256_point`]) on 64-bit
//! hosts: what a cold exchange spends most of its verification on (about 830 field
//! multiplications per signature).
//!
//! Same representation as p256's `FieldElement` (four little-endian 64-bit limbs in
//! Montgomery form, R = 2^256, always below p) with a cheaper Montgomery reduction: as
//! p ≡ −1 mod 2^64 the reduction multiplier is the low limb `m` itself, and `m·p`
//! collapses to `m·2^96 − m + m·p₃·2^192`, so a step costs one multiplication and two
//! shifts where p256 spends two multiplications with their carries.
//! On x86_64 CPUs with BMI2 and ADX (checked at run time) the product runs as inline
//! assembly with `mulx` and two interleaved carry chains (`adcx`/`adox`); elsewhere
//! the same algorithm in portable Rust. Both are checked against p256's field in the
//! tests and in the `p256_field` fuzz target.
//!
//! The API mirrors the part of p256's `FieldElement` that the point arithmetic uses, so
//! 32-bit targets (the wasm filter) keep p256's field with the same code. Verification
//! handles public data only; nothing here needs to be constant time (it happens to be,
//! but for `invert`, which goes through p256's).

use std::ops::{Add, Mul, MulAssign, Sub};

use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::subtle::{Choice, ConditionallySelectable, CtOption};
use p256::FieldBytes;

/// p, little-endian limbs.
const P: [u64; 4] = [
    0xffff_ffff_ffff_ffff,
    0x0000_0000_ffff_ffff,
    0,
    0xffff_ffff_0000_0001,
];
/// R² mod p: multiplying by it enters Montgomery form.
const R2: [u64; 4] = [
    0x0000_0000_0000_0003,
    0xffff_fffb_ffff_ffff,
    0xffff_ffff_ffff_fffe,
    0x0000_0004_ffff_fffd,
];

/// An element of P-256's base field in Montgomery form (`a·R mod p`, below p).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldElement([u64; 4]);

impl ConditionallySelectable for FieldElement {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mut out = [0u64; 4];
        for (o, (x, y)) in out.iter_mut().zip(a.0.iter().zip(&b.0)) {
            *o = u64::conditional_select(x, y, choice);
        }
        FieldElement(out)
    }
}

impl FieldElement {
    /// 0.
    pub(crate) const ZERO: FieldElement = FieldElement([0; 4]);
    /// 1, that is R mod p = 2^256 − p.
    pub(crate) const ONE: FieldElement = FieldElement([
        0x0000_0000_0000_0001,
        0xffff_ffff_0000_0000,
        0xffff_ffff_ffff_ffff,
        0x0000_0000_ffff_fffe,
    ]);

    /// The element of a canonical integer below p; none for p or above.
    pub(crate) fn from_uint(x: U256) -> CtOption<FieldElement> {
        let words = x.to_words();
        let below_p = sub_p(&words).1;
        // Entering Montgomery form of an out-of-range value is harmless: it is dropped.
        CtOption::new(
            FieldElement(mul(&words, &R2)),
            Choice::from(u8::from(below_p)),
        )
    }

    /// The element of 32 big-endian bytes; none for p or above.
    pub(crate) fn from_bytes(bytes: &FieldBytes) -> CtOption<FieldElement> {
        Self::from_uint(U256::from_be_slice(bytes))
    }

    /// The element of a small integer.
    #[cfg(test)]
    pub(crate) fn from_u64(x: u64) -> FieldElement {
        FieldElement(mul(&[x, 0, 0, 0], &R2))
    }

    /// The canonical integer (out of Montgomery form).
    fn to_canonical(self) -> [u64; 4] {
        mul(&self.0, &[1, 0, 0, 0])
    }

    /// Whether this is 0.
    pub(crate) fn is_zero(&self) -> Choice {
        Choice::from(u8::from(self.0 == [0; 4]))
    }

    /// `2·self`.
    pub(crate) fn double(&self) -> FieldElement {
        *self + *self
    }

    /// `self⁻¹`; none for 0. Through p256's field: only a few table rows per key need one.
    pub(crate) fn invert(&self) -> CtOption<FieldElement> {
        let canonical = U256::from_words(self.to_canonical());
        let inverse = p256::FieldElement::from_uint(canonical)
            .and_then(|x| x.invert())
            .map(|x| x.to_canonical());
        let valid = inverse.is_some();
        let inverse = Self::from_uint(inverse.unwrap_or(U256::ZERO));
        CtOption::new(
            inverse.unwrap_or(FieldElement::ZERO),
            valid & inverse.is_some(),
        )
    }
}

impl Add for FieldElement {
    type Output = FieldElement;
    #[inline]
    fn add(self, rhs: FieldElement) -> FieldElement {
        let (a, b) = (self.0, rhs.0);
        let (s0, c) = adc(a[0], b[0], 0);
        let (s1, c) = adc(a[1], b[1], c);
        let (s2, c) = adc(a[2], b[2], c);
        let (s3, carry) = adc(a[3], b[3], c);
        // sum < 2p: subtract p, and add it back if that borrowed past the carry limb.
        let (reduced, bw) = sub_limbs(&[s0, s1, s2, s3], &P);
        let (_, mask) = sbb(carry, 0, bw);
        FieldElement(add_p_masked(reduced, mask))
    }
}

impl Sub for FieldElement {
    type Output = FieldElement;
    #[inline]
    fn sub(self, rhs: FieldElement) -> FieldElement {
        let (diff, mask) = sub_limbs(&self.0, &rhs.0);
        // a − b + 2^256 + p ≡ a − b where it borrowed: wrapping drops the 2^256.
        FieldElement(add_p_masked(diff, mask))
    }
}

/// `x + (p & mask)` mod 2^256 (`mask` all ones or zero).
#[inline]
fn add_p_masked(x: [u64; 4], mask: u64) -> [u64; 4] {
    let (r0, c) = adc(x[0], P[0] & mask, 0);
    let (r1, c) = adc(x[1], P[1] & mask, c);
    let (r2, c) = adc(x[2], P[2] & mask, c);
    let (r3, _) = adc(x[3], P[3] & mask, c);
    [r0, r1, r2, r3]
}

/// `a + b + carry` and the carry out (0 or 1).
#[inline(always)]
fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = u128::from(a) + u128::from(b) + u128::from(carry);
    (t as u64, (t >> 64) as u64)
}

/// `a − b − borrow` (borrow all ones or zero) and the borrow out, as a mask.
#[inline(always)]
fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = u128::from(a).wrapping_sub(u128::from(b) + u128::from(borrow >> 63));
    (t as u64, (t >> 64) as u64)
}

impl Mul for FieldElement {
    type Output = FieldElement;
    #[inline]
    fn mul(self, rhs: FieldElement) -> FieldElement {
        FieldElement(mul(&self.0, &rhs.0))
    }
}

impl MulAssign for FieldElement {
    fn mul_assign(&mut self, rhs: FieldElement) {
        *self = *self * rhs;
    }
}

/// `a − b` mod 2^256 and the borrow out as a mask (all ones where a < b).
#[inline]
fn sub_limbs(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], u64) {
    let (d0, bw) = sbb(a[0], b[0], 0);
    let (d1, bw) = sbb(a[1], b[1], bw);
    let (d2, bw) = sbb(a[2], b[2], bw);
    let (d3, bw) = sbb(a[3], b[3], bw);
    ([d0, d1, d2, d3], bw)
}

/// `x − p` and whether it borrowed (x < p).
fn sub_p(x: &[u64; 4]) -> ([u64; 4], bool) {
    let (diff, borrow) = sub_limbs(x, &P);
    (diff, borrow != 0)
}

/// Montgomery product `a·b·R⁻¹ mod p` of two values below p, on the fastest path this
/// CPU has.
// The one unsafe call of the workspace's crypto: see the `adx` module.
#[allow(unsafe_code)]
#[inline]
fn mul(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("bmi2") && std::arch::is_x86_feature_detected!("adx")
        {
            // SAFETY: the CPU has BMI2 (mulx) and ADX (adcx, adox), checked just above.
            return unsafe { adx::mul(a, b) };
        }
    }
    mul_portable(a, b)
}

/// [`mul`] in portable Rust: word-by-word Montgomery multiplication (CIOS), the
/// accumulator kept below 2p between steps.
fn mul_portable(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
    // t: five limbs between steps (below 2p < 2^257), six during one.
    let mut t = [0u64; 6];
    for &bi in b {
        // t += a·bᵢ
        let mut carry = 0u128;
        for (tj, &aj) in t.iter_mut().zip(a) {
            let v = u128::from(*tj) + u128::from(aj) * u128::from(bi) + carry;
            *tj = v as u64;
            carry = v >> 64;
        }
        let v = u128::from(t[4]) + carry;
        t[4] = v as u64;
        t[5] = (v >> 64) as u64;
        // t = (t + m·p) / 2^64 with m = t₀ (p ≡ −1 mod 2^64): t + m·p = t − m + m·2^96 +
        // m·p₃·2^192, and t − m clears the low limb exactly.
        let m = t[0];
        let mp3 = u128::from(m) * u128::from(P[3]);
        let v = u128::from(t[1]) + u128::from(m << 32);
        let r0 = v as u64;
        let v = u128::from(t[2]) + u128::from(m >> 32) + (v >> 64);
        let r1 = v as u64;
        let v = u128::from(t[3]) + (mp3 & u128::from(u64::MAX)) + (v >> 64);
        let r2 = v as u64;
        let v = u128::from(t[4]) + (mp3 >> 64) + (v >> 64);
        let r3 = v as u64;
        let r4 = t[5].wrapping_add((v >> 64) as u64);
        t = [r0, r1, r2, r3, r4, 0];
    }
    let low = [t[0], t[1], t[2], t[3]];
    let (reduced, borrow) = sub_p(&low);
    // t < 2p: t ≥ p exactly when the top limb is set or t − p does not borrow.
    if t[4] != 0 || !borrow {
        reduced
    } else {
        low
    }
}

// Inline assembly needs `unsafe`, which the workspace denies elsewhere: this module is
// the exception, checked limb for limb against p256's field (tests, fuzz target).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod adx {
    /// [`super::mul_portable`]'s algorithm with `mulx` and the `adcx`/`adox` carry
    /// chains: the accumulator lives in registers (r8–r14, rotating as limbs retire), a
    /// and b are read from memory, r15 holds p₃.
    ///
    /// # Safety
    /// The CPU must support BMI2 and ADX.
    #[inline]
    pub(super) unsafe fn mul(a: &[u64; 4], b: &[u64; 4]) -> [u64; 4] {
        let (r0, r1, r2, r3): (u64, u64, u64, u64);
        // SAFETY: reads 32 bytes from each of `a` and `b`, writes only the registers it
        // declares; the caller guarantees the instructions exist.
        unsafe {
            std::arch::asm!(
                "mov r15, 0xffffffff00000001",
                // t = a·b₀ (r8..r12)
                "mov rdx, qword ptr [{b}]",
                "mulx r9, r8, qword ptr [{a}]",
                "mulx r10, rax, qword ptr [{a} + 8]",
                "add r9, rax",
                "mulx r11, rax, qword ptr [{a} + 16]",
                "adc r10, rax",
                "mulx r12, rax, qword ptr [{a} + 24]",
                "adc r11, rax",
                "adc r12, 0",
                // reduce by m = r8 → t = r9 r10 r11 r12 r14
                "xor r14d, r14d",
                "mov rax, r8",
                "shl rax, 32",
                "mov rcx, r8",
                "shr rcx, 32",
                "mov rdx, r15",
                "mulx r13, r8, r8",
                "add r9, rax",
                "adc r10, rcx",
                "adc r11, r8",
                "adc r12, r13",
                "adc r14, 0",
                // t += a·b₁ → r9 r10 r11 r12 r14 r8
                "mov rdx, qword ptr [{b} + 8]",
                "xor r8d, r8d",
                "mulx rcx, rax, qword ptr [{a}]",
                "adcx r9, rax",
                "adox r10, rcx",
                "mulx rcx, rax, qword ptr [{a} + 8]",
                "adcx r10, rax",
                "adox r11, rcx",
                "mulx rcx, rax, qword ptr [{a} + 16]",
                "adcx r11, rax",
                "adox r12, rcx",
                "mulx rcx, rax, qword ptr [{a} + 24]",
                "adcx r12, rax",
                "adox r14, rcx",
                "adcx r14, r8",
                "adox r8, r8",
                "mov eax, 0",
                "adcx r8, rax",
                // reduce by m = r9 → t = r10 r11 r12 r14 r8
                "mov rax, r9",
                "shl rax, 32",
                "mov rcx, r9",
                "shr rcx, 32",
                "mov rdx, r15",
                "mulx r13, r9, r9",
                "add r10, rax",
                "adc r11, rcx",
                "adc r12, r9",
                "adc r14, r13",
                "adc r8, 0",
                // t += a·b₂ → r10 r11 r12 r14 r8 r9
                "mov rdx, qword ptr [{b} + 16]",
                "xor r9d, r9d",
                "mulx rcx, rax, qword ptr [{a}]",
                "adcx r10, rax",
                "adox r11, rcx",
                "mulx rcx, rax, qword ptr [{a} + 8]",
                "adcx r11, rax",
                "adox r12, rcx",
                "mulx rcx, rax, qword ptr [{a} + 16]",
                "adcx r12, rax",
                "adox r14, rcx",
                "mulx rcx, rax, qword ptr [{a} + 24]",
                "adcx r14, rax",
                "adox r8, rcx",
                "adcx r8, r9",
                "adox r9, r9",
                "mov eax, 0",
                "adcx r9, rax",
                // reduce by m = r10 → t = r11 r12 r14 r8 r9
                "mov rax, r10",
                "shl rax, 32",
                "mov rcx, r10",
                "shr rcx, 32",
                "mov rdx, r15",
                "mulx r13, r10, r10",
                "add r11, rax",
                "adc r12, rcx",
                "adc r14, r10",
                "adc r8, r13",
                "adc r9, 0",
                // t += a·b₃ → r11 r12 r14 r8 r9 r10
                "mov rdx, qword ptr [{b} + 24]",
                "xor r10d, r10d",
                "mulx rcx, rax, qword ptr [{a}]",
                "adcx r11, rax",
                "adox r12, rcx",
                "mulx rcx, rax, qword ptr [{a} + 8]",
                "adcx r12, rax",
                "adox r14, rcx",
                "mulx rcx, rax, qword ptr [{a} + 16]",
                "adcx r14, rax",
                "adox r8, rcx",
                "mulx rcx, rax, qword ptr [{a} + 24]",
                "adcx r8, rax",
                "adox r9, rcx",
                "adcx r9, r10",
                "adox r10, r10",
                "mov eax, 0",
                "adcx r10, rax",
                // reduce by m = r11 → t = r12 r14 r8 r9 r10 (below 2p)
                "mov rax, r11",
                "shl rax, 32",
                "mov rcx, r11",
                "shr rcx, 32",
                "mov rdx, r15",
                "mulx r13, r11, r11",
                "add r12, rax",
                "adc r14, rcx",
                "adc r8, r11",
                "adc r9, r13",
                "adc r10, 0",
                // t − p into rax rcx rdx r11; keep t if that borrows past r10
                "mov r13d, 0xffffffff",
                "mov rax, r12",
                "sub rax, -1",
                "mov rcx, r14",
                "sbb rcx, r13",
                "mov rdx, r8",
                "sbb rdx, 0",
                "mov r11, r9",
                "sbb r11, r15",
                "sbb r10, 0",
                "cmovnc r12, rax",
                "cmovnc r14, rcx",
                "cmovnc r8, rdx",
                "cmovnc r9, r11",
                a = in(reg) a.as_ptr(),
                b = in(reg) b.as_ptr(),
                out("rax") _,
                out("rcx") _,
                out("rdx") _,
                out("r8") r2,
                out("r9") r3,
                out("r10") _,
                out("r11") _,
                out("r12") r0,
                out("r13") _,
                out("r14") r1,
                out("r15") _,
                options(pure, readonly, nostack),
            );
        }
        [r0, r1, r2, r3]
    }
}

/// The fuzz target's view (see `crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz(a: &[u8; 32], b: &[u8; 32]) -> crate::fuzzing::FieldResults {
    let parse = |x: &[u8; 32]| FieldElement::from_uint(U256::from_be_slice(x)).into_option();
    let bytes = |x: [u64; 4]| {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(x.iter().rev()) {
            chunk.copy_from_slice(&limb.to_be_bytes());
        }
        out
    };
    let canonical = |x: FieldElement| bytes(x.to_canonical());
    let (Some(x), Some(y)) = (parse(a), parse(b)) else {
        return crate::fuzzing::FieldResults {
            default: None,
            portable_product: None,
        };
    };
    crate::fuzzing::FieldResults {
        default: Some([
            canonical(x * y),
            canonical(x + y),
            canonical(x - y),
            canonical(x.double()),
        ]),
        portable_product: Some(canonical(FieldElement(mul_portable(&x.0, &y.0)))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::elliptic_curve::Field as _;

    fn ours(x: &p256::FieldElement) -> FieldElement {
        FieldElement::from_uint(x.to_canonical()).unwrap()
    }

    fn canonical(x: FieldElement) -> U256 {
        U256::from_words(x.to_canonical())
    }

    /// Edge values (0, 1, p − 1, limbs all ones or zero) and random ones.
    fn samples() -> Vec<p256::FieldElement> {
        let hex = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000001",
            "ffffffff00000001000000000000000000000000fffffffffffffffffffffffe",
            "ffffffff00000001000000000000000000000000fffffffffffffffffffffff0",
            "ffffffff00000000ffffffffffffffffffffffffffffffffffffffffffffffff",
            "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffff0000000000000000000000000000000000000000ffffffffffffffff",
            "8000000000000000000000000000000000000000000000000000000000000000",
        ];
        let mut out: Vec<_> = hex
            .iter()
            .map(|h| p256::FieldElement::from_uint(U256::from_be_hex(h)).unwrap())
            .collect();
        out.extend((0..60).map(|_| p256::FieldElement::random(rand::rngs::OsRng)));
        out
    }

    fn multiplications_agree_with_p256(mul: fn(&[u64; 4], &[u64; 4]) -> [u64; 4]) {
        let samples = samples();
        for x in &samples {
            for y in &samples {
                let product = FieldElement(mul(&ours(x).0, &ours(y).0));
                assert_eq!(canonical(product), (*x * y).to_canonical(), "{x:?} · {y:?}");
            }
        }
    }

    #[test]
    fn the_portable_multiplication_agrees_with_p256() {
        multiplications_agree_with_p256(mul_portable);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_adx_multiplication_agrees_with_p256_where_the_cpu_has_it() {
        if !(std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("adx"))
        {
            eprintln!("this CPU has no BMI2/ADX: only the portable path runs here");
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: checked just above.
        multiplications_agree_with_p256(|a, b| unsafe { adx::mul(a, b) });
    }

    #[test]
    fn addition_subtraction_and_doubling_agree_with_p256() {
        let samples = samples();
        for x in &samples {
            assert_eq!(canonical(ours(x).double()), x.double().to_canonical());
            for y in &samples {
                assert_eq!(canonical(ours(x) + ours(y)), (*x + y).to_canonical());
                assert_eq!(canonical(ours(x) - ours(y)), (*x - y).to_canonical());
            }
        }
    }

    #[test]
    fn inversion_agrees_with_p256_and_refuses_zero() {
        for x in samples().iter().filter(|x| !bool::from(x.is_zero())) {
            let inverse = ours(x).invert().unwrap();
            assert_eq!(canonical(inverse), x.invert().unwrap().to_canonical());
            assert_eq!(ours(x) * inverse, FieldElement::ONE);
        }
        assert!(bool::from(FieldElement::ZERO.invert().is_none()));
    }

    #[test]
    fn values_of_p_or_above_are_refused_and_the_constants_are_right() {
        let p =
            U256::from_be_hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
        assert!(bool::from(FieldElement::from_uint(p).is_none()));
        assert!(bool::from(FieldElement::from_uint(U256::MAX).is_none()));
        assert_eq!(canonical(FieldElement::ONE), U256::ONE);
        assert_eq!(FieldElement::from_u64(1), FieldElement::ONE);
        assert!(bool::from(FieldElement::ZERO.is_zero()));
        assert!(!bool::from(FieldElement::ONE.is_zero()));
    }
}
