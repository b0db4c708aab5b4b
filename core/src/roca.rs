//! The ROCA fingerprint (CVE-2017-15361): RSA moduli made by the vulnerable Infineon
//! library are factorable. Their primes have the form `k·M + (65537^a mod M)` with `M` a
//! primorial, so the modulus `N ≡ 65537^(a+b) (mod M)`: for every small prime `p`, `N mod
//! p` is a power of 65537 mod `p`, and one exponent fits all of them at once. That is the
//! test of the paper's published detector; a random modulus passes it with probability
//! about 2^-155 (the generated subgroup has order ≈ 2^61 in a group of ≈ 2^216).

/// The small odd primes the fingerprint is taken over (3..=167).
const PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// The generator the vulnerable library used.
const GENERATOR: u32 = 65537;

/// `n` (big-endian magnitude) reduced mod a small `p`.
fn residue(n_be: &[u8], p: u32) -> u32 {
    n_be.iter()
        .fold(0u32, |acc, b| (acc * 256 + u32::from(*b)) % p)
}

/// The discrete log of `r` to the base 65537 mod `p` and the order of 65537 mod `p`,
/// or `None` when `r` is not a power of 65537 mod `p` (walks the subgroup: at most
/// `p - 1` multiplications).
fn discrete_log(r: u32, p: u32) -> Option<(u32, u32)> {
    let g = GENERATOR % p;
    let (mut x, mut i) = (1u32, 0u32);
    let mut log = None;
    loop {
        if x == r {
            log = Some(i);
        }
        x = x * g % p;
        i += 1;
        if x == 1 {
            return log.map(|l| (l, i));
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether the RSA modulus `n` (big-endian bytes) has the ROCA fingerprint: one
/// exponent `k` with `65537^k ≡ n (mod p)` for every prime of [`PRIMES`]. The
/// congruences `k ≡ log_p (mod ord_p)` have a common solution exactly when every pair
/// agrees modulo the gcd of their orders (generalised Chinese remainder theorem).
pub(crate) fn has_roca_fingerprint(n_be: &[u8]) -> bool {
    let mut logs: Vec<(u32, u32)> = Vec::with_capacity(PRIMES.len());
    for p in PRIMES {
        match discrete_log(residue(n_be, p), p) {
            Some(l) => logs.push(l),
            None => return false,
        }
    }
    one_exponent_fits_all(&logs)
}

/// Whether `k ≡ log (mod order)` for every `(log, order)` has a common solution `k`.
fn one_exponent_fits_all(logs: &[(u32, u32)]) -> bool {
    logs.iter().enumerate().all(|(i, &(k1, o1))| {
        logs[i + 1..]
            .iter()
            .all(|&(k2, o2)| k1 % gcd(o1, o2) == k2 % gcd(o1, o2))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Big-endian bytes of `x`.
    fn be(x: u128) -> Vec<u8> {
        x.to_be_bytes().to_vec()
    }

    #[test]
    fn residue_matches_integer_arithmetic() {
        let x: u128 = 0x1234_5678_9abc_def0_1122_3344_5566_7788;
        for p in PRIMES {
            assert_eq!(u128::from(residue(&be(x), p)), x % u128::from(p));
        }
    }

    #[test]
    fn discrete_logs_to_base_65537_mod_small_primes() {
        // 65537 = 2 mod 5 generates all of Z_5* (order 4); 65537 = -1 mod 11 only {1, 10}.
        assert_eq!(discrete_log(1, 5), Some((0, 4)));
        assert_eq!(discrete_log(2, 5), Some((1, 4)));
        assert_eq!(discrete_log(3, 5), Some((3, 4)));
        assert_eq!(discrete_log(10, 11), Some((1, 2)));
        assert_eq!(discrete_log(2, 11), None);
        assert_eq!(discrete_log(0, 7), None);
    }

    #[test]
    fn powers_of_65537_match_and_their_neighbours_do_not() {
        // 65537^k itself is the fingerprint (k = 0, 1, 2, 3); n ± 2 are not.
        let mut x: u128 = 1;
        for _ in 0..4 {
            assert!(has_roca_fingerprint(&be(x)), "{x}");
            assert!(!has_roca_fingerprint(&be(x + 2)), "{x} + 2");
            x *= 65537;
        }
    }

    #[test]
    fn per_prime_powers_must_share_one_exponent() {
        // k odd (mod 2) and k = 3 (mod 4): k = 3 fits both.
        assert!(one_exponent_fits_all(&[(1, 2), (3, 4)]));
        // k odd and k = 2 (mod 4): no k.
        assert!(!one_exponent_fits_all(&[(1, 2), (2, 4)]));
        // Coprime orders always have a common solution.
        assert!(one_exponent_fits_all(&[(1, 2), (2, 3), (4, 5)]));
        assert!(one_exponent_fits_all(&[]));
    }

    #[test]
    fn small_numbers_other_than_one_do_not_match() {
        let matching: Vec<u32> = (0u32..50_000)
            .filter(|n| has_roca_fingerprint(&n.to_be_bytes()))
            .collect();
        assert_eq!(matching, vec![1]);
    }
}
