//! Strict compact JWS parsing and signature verification.

use serde_json::{Map, Value};

use crate::alg::Algorithm;
use crate::error::ValidationError;
use crate::jwk::Jwk;

/// The parts of a JOSE header meshpass uses (everything else was checked and dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    /// The algorithm.
    pub alg: Algorithm,
    /// The key id, when present (already checked: 1..=256 printable ASCII bytes).
    pub kid: Option<String>,
    /// `typ`, when present (`JWT` or `JOSE`).
    pub typ: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct CompactJws<'a> {
    /// The checked header.
    pub header: JoseHeader,
    /// The payload as a JSON object (duplicate-free).
    pub payload: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Parses `token` (at most `max_bytes`): exactly three non-empty segments of strict
    /// base64url, JSON-object header and payload, header rules of DESIGN.md.
    pub fn parse(token: &'a str, max_bytes: usize) -> Result<Self, ValidationError> {
        todo!("{token} {max_bytes}")
    }

    /// Verifies the signature with `key`, which must fit the header `alg`.
    /// ECDSA signatures must be exactly r‖s of the curve's size with r, s in [1, n-1].
    pub fn verify(&self, key: &Jwk) -> Result<(), ValidationError> {
        todo!("{key:?} {:?} {:?}", self.signing_input, self.signature)
    }
}
