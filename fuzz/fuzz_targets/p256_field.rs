//! Core's P-256 field (the comb's arithmetic on 64-bit hosts: mulx/adx assembly where the
//! CPU has it, portable Rust otherwise) against p256's own field, operation by operation.
//!
//! Input: 64 bytes, a‖b as big-endian integers (shorter inputs are zero-padded). Values
//! of p or above must be refused by both sides; below p, every product, sum, difference
//! and double must be equal, on both multiplication paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpass_core::fuzzing::p256_field;
use p256::elliptic_curve::bigint::U256;
use p256::FieldElement;

fn theirs(x: &[u8; 32]) -> Option<FieldElement> {
    FieldElement::from_uint(U256::from_be_slice(x)).into()
}

fn bytes(x: FieldElement) -> [u8; 32] {
    x.to_bytes().into()
}

fuzz_target!(|data: &[u8]| {
    let mut input = [0u8; 64];
    for (i, b) in input.iter_mut().zip(data) {
        *i = *b;
    }
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    a.copy_from_slice(&input[..32]);
    b.copy_from_slice(&input[32..]);
    let ours = p256_field(&a, &b);
    match (theirs(&a), theirs(&b)) {
        (Some(x), Some(y)) => {
            let want = [bytes(x * y), bytes(x + y), bytes(x - y), bytes(x.double())];
            assert_eq!(ours.default, Some(want), "core's field and p256's disagree");
            assert_eq!(
                ours.portable_product,
                Some(want[0]),
                "the portable product differs"
            );
        }
        _ => assert_eq!(ours.default, None, "a value of p or above was accepted"),
    }
});
