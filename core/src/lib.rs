//! `meshpass-core`: the single implementation of every rule the meshpass filter and the
//! exchange service share. No I/O, no async runtime, no clock: the current time is always
//! a parameter (`now`, seconds since the Unix epoch).
//!
//! Entry point: [`policy::ValidationPolicy::validate`] turns a compact JWS into a
//! [`policy::VerifiedSubject`] or one [`error::ValidationError`] that says what failed.

pub mod alg;
pub mod audience;
pub mod b64;
pub mod claims;
mod crypto;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod json;
pub mod jwk;
pub mod jws;
pub mod oauth;
pub mod policy;
pub mod revocation_feed;
mod roca;
pub mod spiffe;
pub mod xfcc;

pub use alg::Algorithm;
pub use audience::Audience;
pub use claims::RegisteredClaims;
pub use error::ValidationError;
pub use jwk::JwksError;
pub use jwk::{Jwk, KeyRejection, KeySet, PublicKey};
pub use jws::{verify_compact_jws, CompactJws, JoseHeader, RawJws, SignatureBackend};
pub use oauth::{ErrorCode, ErrorResponse, TokenExchangeRequest, TokenExchangeResponse};
pub use policy::{
    Binding, BindingMode, IssuerPolicy, KeyLookup, PolicyError, SubjectFormat, ValidationPolicy,
    VerifiedSubject,
};
pub use spiffe::{SpiffeId, SpiffeIdError, SpiffeIdPattern, TrustDomain};

/// Default cap on the size of a subject token, in bytes (DESIGN.md: 8 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default clock-skew leeway, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
