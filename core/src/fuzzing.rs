//! Internals exposed to the fuzz targets (feature `fuzzing`; never in production builds).

/// What each P-256 field implementation of core gives for `a` and `b` (32 big-endian
/// bytes each, as canonical integers): `None` where an input is not below p. The fuzz
/// target compares every entry with p256's own field.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldResults {
    /// `a·b`, `a + b`, `a − b`, `2a` on core's default path (mulx/adx where the CPU has
    /// them), as canonical big-endian bytes.
    pub default: Option<[[u8; 32]; 4]>,
    /// `a·b` by the portable multiplication.
    pub portable_product: Option<[u8; 32]>,
}

/// Runs core's P-256 field on `a` and `b` (see [`FieldResults`]).
#[cfg(not(target_pointer_width = "32"))]
pub fn p256_field(a: &[u8; 32], b: &[u8; 32]) -> FieldResults {
    crate::crypto::fuzz_p256_field(a, b)
}
