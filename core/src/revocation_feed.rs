//! Bounds of the revocation feed (DESIGN.md "Revocation"), one rule for both sides: the
//! filter refuses a whole answer past them (dropping some revocations would fail open),
//! so the service refuses a revocation that would make its answers pass them.

/// Largest feed answer (and shared-data set) a filter reads, in bytes.
pub const MAX_BYTES: usize = 4 << 20;

/// Most revocations a filter's set holds.
pub const MAX_ENTRIES: usize = 20_000;
