//! meshpass exchange service (see README.md).

pub mod signer;
pub mod vault;
