//! The JWS algorithms a subject token may use (the JWT-SVID set).

use crate::error::ValidationError;

/// A JWS `alg` accepted for subject tokens. `none`, every `HS*` and `EdDSA` are not
/// representable: parsing them fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
}

impl Algorithm {
    /// Parses a header `alg` value. Exact, case-sensitive match (RFC 7515 §4.1.1);
    /// `none` (any case), `HS*`, `EdDSA` and anything unknown are refused.
    pub fn parse(alg: &str) -> Result<Self, ValidationError> {
        todo!("core helper: {alg}")
    }

    /// The registered name, e.g. `"ES256"`.
    pub fn as_str(self) -> &'static str {
        todo!()
    }
}
