//! JSON Web Keys (RFC 7517/7518) for verifying subject tokens.

use crate::alg::Algorithm;
use crate::error::ValidationError;

/// A public verification key.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA, at least 2048 bits.
    Rsa(rsa::RsaPublicKey),
    /// ECDSA on P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA on P-384.
    P384(p384::ecdsa::VerifyingKey),
}

/// One usable key from a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// `kid`, if any.
    pub kid: Option<String>,
    /// `alg`, if the key pins one.
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify a token whose header says `alg` (kty/crv/alg fit;
    /// `use`/`key_ops` were checked at parse time).
    pub fn fits(&self, alg: Algorithm) -> bool {
        todo!("{alg:?}")
    }
}

/// A JWKS member that was not kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRejection {
    /// Position in the `keys` array.
    pub index: usize,
    /// The key's `kid`, if it had a readable one.
    pub kid: Option<String>,
    /// Why it was dropped (e.g. "RSA key shorter than 2048 bits").
    pub reason: String,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object, or duplicate member names.
    #[error("JWKS is not a valid JSON object: {0}")]
    Json(String),
    /// No `keys` array.
    #[error("JWKS has no keys array")]
    NoKeysArray,
    /// Larger than the configured cap.
    #[error("JWKS is larger than {0} bytes")]
    TooLarge(usize),
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document, keeping usable signing keys and reporting the rest
    /// (EC points not on the curve, RSA under 2048 bits or bad exponent, duplicate `kid`,
    /// `use` other than `sig`, `key_ops` without `verify`, private members, unknown kty).
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<KeyRejection>), JwksError> {
        todo!("{json:?}")
    }

    /// Builds a set from already-parsed keys.
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        KeySet { keys }
    }

    /// The key for a token: by `kid` when it has one; without `kid`, only when exactly
    /// one key fits `alg`. The chosen key must fit `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Jwk, ValidationError> {
        todo!("{kid:?} {alg:?}")
    }

    /// The keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
