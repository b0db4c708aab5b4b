//! Inversion modulo the P-256 group order `n` by Bernstein–Yang "safegcd" divsteps
//! ("Fast constant-time gcd computation and modular inversion", 2019), in the
//! variable-time form with 62 divsteps per batch and signed 62-bit limbs that
//! libsecp256k1 uses (`modinv64_var`; Wuille's write-up "The safegcd implementation in
//! libsecp256k1 explained" derives every step below).
//!
//! Why not p256's: `Scalar::invert_vartime` (Stein's binary algorithm on whole 256-bit
//! numbers) was about 6.6 µs of a 20 µs ES256 verification on the host (2026-12-04),
//! `Scalar::invert` (Fermat) slower still. The comb inverts one public scalar, `s`, per
//! signature, so variable time is fine here, as it is for p256's `invert_vartime`.
//! [`invert`] checks its answer with one multiplication (`s · s⁻¹ == 1`) and falls back
//! to p256's inversion if that ever failed, so a defect here could cost time, never a
//! wrong verdict.

use p256::elliptic_curve::PrimeField as _;
use p256::{FieldBytes, Scalar};

/// The low 62 bits.
const M62: u64 = u64::MAX >> 2;

/// n, little-endian 64-bit limbs.
const N: [u64; 4] = [
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
];

/// n in signed-62 form.
const N62: [i64; 5] = to_signed62(&N);

/// n⁻¹ mod 2⁶²: Newton's iteration doubles the correct low bits from 3 (x·x ≡ 1 mod 8
/// for odd x) to 96.
const N_INV62: u64 = {
    let mut inv = N[0];
    let mut i = 0;
    while i < 5 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(N[0].wrapping_mul(inv)));
        i += 1;
    }
    inv & M62
};

/// A 256-bit value as five limbs of 62 bits (the top one signed and holding the rest).
const fn to_signed62(a: &[u64; 4]) -> [i64; 5] {
    [
        (a[0] & M62) as i64,
        ((a[0] >> 62 | a[1] << 2) & M62) as i64,
        ((a[1] >> 60 | a[2] << 4) & M62) as i64,
        ((a[2] >> 58 | a[3] << 6) & M62) as i64,
        (a[3] >> 56) as i64,
    ]
}

/// Back to 64-bit limbs; `v` is normalised (limbs in [0, 2⁶²), the value below 2²⁵⁶).
fn from_signed62(v: &[i64; 5]) -> [u64; 4] {
    let v = v.map(|x| x as u64);
    [
        v[0] | v[1] << 62,
        v[1] >> 2 | v[2] << 60,
        v[2] >> 4 | v[3] << 58,
        v[3] >> 6 | v[4] << 56,
    ]
}

/// The 2×2 matrix of 62 divsteps, scaled by 2⁶²: `[f', g'] = [[u, v], [q, r]]·[f, g] / 2⁶²`.
#[derive(Clone, Copy)]
struct Transition {
    u: i64,
    v: i64,
    q: i64,
    r: i64,
}

/// 62 divsteps on the low 64 bits of `f` (odd) and `g`, skipping runs of zeros and
/// cancelling up to 6 (or 4) bits of `g` at once; returns the new `eta` (−delta).
fn divsteps_62(mut eta: i64, f0: u64, g0: u64) -> (i64, Transition) {
    let (mut u, mut v, mut q, mut r) = (1u64, 0u64, 0u64, 1u64);
    let (mut f, mut g) = (f0, g0);
    let mut i: u32 = 62;
    loop {
        // Zeros of g, at most the divsteps left.
        let zeros = (g | (u64::MAX << i)).trailing_zeros();
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= i64::from(zeros);
        i -= zeros;
        if i == 0 {
            break;
        }
        // f and g are odd here.
        let w = if eta < 0 {
            eta = -eta;
            (f, g) = (g, f.wrapping_neg());
            (u, q) = (q, u.wrapping_neg());
            (v, r) = (r, v.wrapping_neg());
            // No more than i bits (the batch ends) nor eta + 1 (eta's sign flips again).
            let limit = (eta + 1).min(i64::from(i)) as u32;
            let mask = (u64::MAX >> (64 - limit)) & 63;
            // -g/f mod 2⁶: f⁻¹ mod 64 is f·(f² − 2) for odd f.
            f.wrapping_mul(g)
                .wrapping_mul(f.wrapping_mul(f).wrapping_sub(2))
                & mask
        } else {
            let limit = (eta + 1).min(i64::from(i)) as u32;
            let mask = (u64::MAX >> (64 - limit)) & 15;
            // -g/f mod 2⁴, with f⁻¹ mod 16 = f + ((f + 1) & 4)·2.
            let f_inv = f.wrapping_add((f.wrapping_add(1) & 4) << 1);
            f_inv.wrapping_neg().wrapping_mul(g) & mask
        };
        g = g.wrapping_add(f.wrapping_mul(w));
        q = q.wrapping_add(u.wrapping_mul(w));
        r = r.wrapping_add(v.wrapping_mul(w));
    }
    (
        eta,
        Transition {
            u: u as i64,
            v: v as i64,
            q: q as i64,
            r: r as i64,
        },
    )
}

/// `[d, e] = (t·[d, e] + n·[md, me]) / 2⁶²` with md, me chosen so the division is exact,
/// keeping d and e in (−2n, n).
fn update_de(d: &mut [i64; 5], e: &mut [i64; 5], t: Transition) {
    let (u, v, q, r) = (
        i128::from(t.u),
        i128::from(t.v),
        i128::from(t.q),
        i128::from(t.r),
    );
    let sd = d[4] >> 63;
    let se = e[4] >> 63;
    let mut md = (t.u & sd) + (t.v & se);
    let mut me = (t.q & sd) + (t.r & se);
    let mut cd = u * i128::from(d[0]) + v * i128::from(e[0]);
    let mut ce = q * i128::from(d[0]) + r * i128::from(e[0]);
    md -= (N_INV62.wrapping_mul(cd as u64).wrapping_add(md as u64) & M62) as i64;
    me -= (N_INV62.wrapping_mul(ce as u64).wrapping_add(me as u64) & M62) as i64;
    cd += i128::from(N62[0]) * i128::from(md);
    ce += i128::from(N62[0]) * i128::from(me);
    cd >>= 62;
    ce >>= 62;
    for i in 1..5 {
        cd += u * i128::from(d[i]) + v * i128::from(e[i]) + i128::from(N62[i]) * i128::from(md);
        ce += q * i128::from(d[i]) + r * i128::from(e[i]) + i128::from(N62[i]) * i128::from(me);
        d[i - 1] = (cd as i64) & M62 as i64;
        e[i - 1] = (ce as i64) & M62 as i64;
        cd >>= 62;
        ce >>= 62;
    }
    d[4] = cd as i64;
    e[4] = ce as i64;
}

/// `[f, g] = t·[f, g] / 2⁶²` on the `len` limbs still in use.
fn update_fg(len: usize, f: &mut [i64; 5], g: &mut [i64; 5], t: Transition) {
    let (u, v, q, r) = (
        i128::from(t.u),
        i128::from(t.v),
        i128::from(t.q),
        i128::from(t.r),
    );
    let mut cf = u * i128::from(f[0]) + v * i128::from(g[0]);
    let mut cg = q * i128::from(f[0]) + r * i128::from(g[0]);
    // The low 62 bits are zero by construction of t.
    cf >>= 62;
    cg >>= 62;
    for i in 1..len {
        cf += u * i128::from(f[i]) + v * i128::from(g[i]);
        cg += q * i128::from(f[i]) + r * i128::from(g[i]);
        f[i - 1] = (cf as i64) & M62 as i64;
        g[i - 1] = (cg as i64) & M62 as i64;
        cf >>= 62;
        cg >>= 62;
    }
    f[len - 1] = cf as i64;
    g[len - 1] = cg as i64;
}

/// `d` from (−2n, n) to [0, n), negated first when `sign` is negative.
fn normalize(d: &mut [i64; 5], sign: i64) {
    let m62 = M62 as i64;
    let add = d[4] >> 63;
    for (x, n) in d.iter_mut().zip(N62) {
        *x += n & add;
    }
    let negate = sign >> 63;
    for x in d.iter_mut() {
        *x = (*x ^ negate) - negate;
    }
    carry(d, m62);
    let add = d[4] >> 63;
    for (x, n) in d.iter_mut().zip(N62) {
        *x += n & add;
    }
    carry(d, m62);
}

/// Limbs back to [0, 2⁶²), the sign in the top one.
fn carry(d: &mut [i64; 5], m62: i64) {
    for i in 0..4 {
        d[i + 1] += d[i] >> 62;
        d[i] &= m62;
    }
}

/// x⁻¹ mod n for 0 < x < n (0 has no inverse), as 64-bit limbs, little-endian.
fn invert_limbs(x: &[u64; 4]) -> [u64; 4] {
    let mut d = [0i64; 5];
    let mut e = [1i64, 0, 0, 0, 0];
    let mut f = N62;
    let mut g = to_signed62(x);
    let mut len = 5usize;
    // eta = −delta, delta starting at 1.
    let mut eta = -1i64;
    loop {
        let (next, t) = divsteps_62(eta, f[0] as u64, g[0] as u64);
        eta = next;
        update_de(&mut d, &mut e, t);
        update_fg(len, &mut f, &mut g, t);
        if g[..len].iter().all(|&x| x == 0) {
            break;
        }
        // Drop the top limb when it is only sign in both f and g.
        let (fl, gl) = (f[len - 1], g[len - 1]);
        if len >= 2 && (fl ^ (fl >> 63)) == 0 && (gl ^ (gl >> 63)) == 0 {
            f[len - 2] |= ((fl as u64) << 62) as i64;
            g[len - 2] |= ((gl as u64) << 62) as i64;
            len -= 1;
        }
    }
    // g = 0, so f = ±gcd(n, x) = ±1 (n is prime): d·x ≡ f.
    normalize(&mut d, f[len - 1]);
    from_signed62(&d)
}

/// A scalar's value as 64-bit limbs, little-endian.
fn to_limbs(s: &Scalar) -> [u64; 4] {
    let be = s.to_bytes();
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(be.rchunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *limb = u64::from_be_bytes(word);
    }
    limbs
}

/// The scalar of a value below n.
fn from_limbs(limbs: &[u64; 4]) -> Option<Scalar> {
    let mut be = FieldBytes::default();
    for (limb, chunk) in limbs.iter().zip(be.rchunks_exact_mut(8)) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    Scalar::from_repr(be).into()
}

/// `s⁻¹ mod n`, s ≠ 0 (a signature's s, already checked to be in [1, n-1]).
pub(crate) fn invert(s: &Scalar) -> Scalar {
    match from_limbs(&invert_limbs(&to_limbs(s))) {
        Some(inv) if inv * s == Scalar::ONE => inv,
        // Never taken (the tests compare with p256 on the edge cases and random scalars):
        // a wrong inverse costs the slow inversion, not a wrong verdict.
        _ => Option::<Scalar>::from(s.invert()).unwrap_or(Scalar::ZERO),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::elliptic_curve::ops::Invert as _;
    use p256::elliptic_curve::Field as _;

    fn unchecked(s: &Scalar) -> Scalar {
        from_limbs(&invert_limbs(&to_limbs(s))).unwrap()
    }

    fn check(s: Scalar) {
        // The divsteps alone, without invert's fallback, against p256's two inversions.
        let want = s.invert().unwrap();
        assert_eq!(unchecked(&s), want, "s = {s:?}");
        assert_eq!(s.invert_vartime().unwrap(), want);
        assert_eq!(invert(&s) * s, Scalar::ONE);
    }

    #[test]
    fn n_inverse_mod_2_62_is_an_inverse() {
        assert_eq!(N[0].wrapping_mul(N_INV62) & M62, 1);
        assert_eq!(from_signed62(&N62), N);
    }

    #[test]
    fn inverts_the_edge_cases_like_p256() {
        let mut cases = vec![Scalar::ONE, -Scalar::ONE, -Scalar::from(2u64)];
        // Every power of two below n, and its neighbours (long runs of zeros and ones).
        let mut p = Scalar::ONE;
        for _ in 0..256 {
            cases.extend([p, p + Scalar::ONE, p - Scalar::ONE, -p]);
            p = p.double();
        }
        // (n + 1) / 2 and small values.
        cases.push(Scalar::from(2u64).invert().unwrap());
        cases.extend((2u64..300).map(Scalar::from));
        for s in cases.into_iter().filter(|s| !bool::from(s.is_zero())) {
            check(s);
        }
    }

    #[test]
    fn inverts_random_scalars_like_p256() {
        let mut rng = rand::rngs::OsRng;
        for _ in 0..20_000 {
            check(Scalar::random(&mut rng));
        }
    }

    #[test]
    fn round_trips_through_signed_62_bit_limbs() {
        let mut rng = rand::rngs::OsRng;
        for _ in 0..1000 {
            let limbs = to_limbs(&Scalar::random(&mut rng));
            assert_eq!(from_signed62(&to_signed62(&limbs)), limbs);
        }
    }
}
