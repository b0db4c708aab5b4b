//! Registered claims (RFC 7519 §4.1) and the time rules.

use serde_json::{Map, Value};

use crate::error::ValidationError;

/// The registered claims meshpass checks, strictly typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredClaims {
    /// `iss`.
    pub iss: String,
    /// `sub`, when present.
    pub sub: Option<String>,
    /// `aud` (a string becomes a one-element list; missing or empty fails).
    pub aud: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// `nbf`, when present.
    pub nbf: Option<u64>,
    /// `iat`, when present.
    pub iat: Option<u64>,
}

/// Time rules of one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    /// Allowed clock skew in seconds.
    pub leeway_secs: u64,
    /// Maximum `exp - iat`, when set (a token without `iat` then fails).
    pub max_lifetime_secs: Option<u64>,
}

impl RegisteredClaims {
    /// Reads the registered claims from a payload. NumericDates must be JSON numbers
    /// (non-negative, finite; fractions truncated), never strings.
    pub fn from_payload(payload: &Map<String, Value>) -> Result<Self, ValidationError> {
        todo!("{payload:?}")
    }

    /// Checks `exp`, `nbf`, `iat` and lifetime against `now` with overflow-safe math.
    pub fn check_time(&self, now: u64, rules: &TimeRules) -> Result<(), ValidationError> {
        todo!("{now} {rules:?}")
    }
}
