//! Strict JSON for JOSE headers and claim sets: the top level must be an object, member
//! names must be unique at every depth (RFC 7515 §5.2 / RFC 7519 §4 say reject or
//! last-wins; we reject, so two parsers can never disagree about a token).

use serde_json::{Map, Value};

/// Why a JSON document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The bytes are not UTF-8 or not valid JSON.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// A member name appears twice in one object.
    #[error("duplicate member name {0:?}")]
    DuplicateMember(String),
    /// The top-level value is not an object.
    #[error("top-level value is not an object")]
    NotAnObject,
}

/// Parses a JSON object, rejecting duplicate member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    todo!("{bytes:?}")
}
