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
pub(crate) struct TimeRules {
    /// Allowed clock skew in seconds.
    pub leeway_secs: u64,
    /// Maximum `exp - iat`, when set (a token without `iat` then fails).
    pub max_lifetime_secs: Option<u64>,
}

impl RegisteredClaims {
    /// Reads the registered claims from a payload. NumericDates must be JSON numbers
    /// (non-negative, finite; fractions truncated), never strings.
    pub(crate) fn from_payload(payload: &Map<String, Value>) -> Result<Self, ValidationError> {
        let iss = match payload.get("iss") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("iss", "must be a string")),
            None => return Err(ValidationError::MissingClaim("iss")),
        };
        let sub = match payload.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("sub", "must be a string")),
        };
        let aud = match payload.get("aud") {
            None => return Err(ValidationError::MissingClaim("aud")),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(invalid("aud", "must not be empty"))
            }
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(invalid("aud", "must not be empty"));
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if !s.is_empty() => out.push(s.clone()),
                        Value::String(_) => return Err(invalid("aud", "has an empty member")),
                        _ => return Err(invalid("aud", "has a member that is not a string")),
                    }
                }
                out
            }
            Some(_) => return Err(invalid("aud", "must be a string or an array of strings")),
        };
        let exp = numeric_date(payload, "exp")?.ok_or(ValidationError::MissingClaim("exp"))?;
        let nbf = numeric_date(payload, "nbf")?;
        let iat = numeric_date(payload, "iat")?;
        Ok(RegisteredClaims {
            iss,
            sub,
            aud,
            exp,
            nbf,
            iat,
        })
    }

    /// Checks `exp`, `nbf`, `iat` and lifetime against `now` with overflow-safe math.
    pub(crate) fn check_time(&self, now: u64, rules: &TimeRules) -> Result<(), ValidationError> {
        let leeway = rules.leeway_secs;
        // RFC 7519 §4.1.4: the token is unusable "on or after" exp.
        if now >= self.exp.saturating_add(leeway) {
            return Err(ValidationError::Expired);
        }
        let latest_start = now.saturating_add(leeway);
        if self.nbf.is_some_and(|nbf| nbf > latest_start) {
            return Err(ValidationError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > latest_start) {
            return Err(ValidationError::IssuedInFuture);
        }
        if let Some(max) = rules.max_lifetime_secs {
            let iat = self.iat.ok_or(ValidationError::MissingClaim("iat"))?;
            let lifetime = self
                .exp
                .checked_sub(iat)
                .ok_or(invalid("exp", "is before iat"))?;
            if lifetime > max {
                return Err(ValidationError::LifetimeTooLong);
            }
        }
        Ok(())
    }
}

fn invalid(claim: &'static str, reason: &'static str) -> ValidationError {
    ValidationError::InvalidClaim { claim, reason }
}

/// A NumericDate (RFC 7519 §2): a JSON number, non-negative, below 2^64; fractions
/// are truncated. Strings, booleans, null and anything else are refused.
fn numeric_date(
    payload: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<u64>, ValidationError> {
    let Some(v) = payload.get(claim) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(invalid(claim, "must be a number"));
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    if n.is_i64() {
        return Err(invalid(claim, "must not be negative"));
    }
    match n.as_f64() {
        // 2^64 as f64 is exact; anything at or above it does not fit a u64.
        Some(f) if (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            // Truncation toward zero is the intent (fractional seconds are dropped).
            Ok(Some(f as u64))
        }
        Some(f) if f < 0.0 => Err(invalid(claim, "must not be negative")),
        _ => Err(invalid(claim, "is out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(exp: u64, nbf: Option<u64>, iat: Option<u64>) -> RegisteredClaims {
        RegisteredClaims {
            iss: "i".into(),
            sub: None,
            aud: vec!["a".into()],
            exp,
            nbf,
            iat,
        }
    }

    const RULES: TimeRules = TimeRules {
        leeway_secs: 30,
        max_lifetime_secs: None,
    };

    #[test]
    fn time_arithmetic_saturates_instead_of_wrapping() {
        let max = u64::MAX;
        let huge = TimeRules {
            leeway_secs: max,
            max_lifetime_secs: Some(max),
        };
        assert_eq!(
            at(max, Some(max), Some(0)).check_time(max - 1, &huge),
            Ok(())
        );
        assert_eq!(
            at(max, None, None).check_time(max, &RULES),
            Err(ValidationError::Expired)
        );
        assert_eq!(at(0, None, None).check_time(0, &RULES), Ok(()));
        assert_eq!(
            at(0, None, None).check_time(30, &RULES),
            Err(ValidationError::Expired)
        );
        assert_eq!(
            at(max, Some(max), None).check_time(0, &RULES),
            Err(ValidationError::NotYetValid)
        );
    }

    #[test]
    fn exp_before_iat_fails_the_lifetime_check_without_underflow() {
        let rules = TimeRules {
            leeway_secs: 30,
            max_lifetime_secs: Some(60),
        };
        assert_eq!(
            at(100, None, Some(110)).check_time(90, &rules),
            Err(ValidationError::InvalidClaim {
                claim: "exp",
                reason: "is before iat"
            })
        );
    }

    #[test]
    fn numeric_dates_accept_integers_and_truncated_fractions_only() {
        let payload = |v: Value| {
            let mut m = Map::new();
            m.insert("iss".into(), Value::from("i"));
            m.insert("aud".into(), Value::from("a"));
            m.insert("exp".into(), v);
            RegisteredClaims::from_payload(&m).map(|c| c.exp)
        };
        assert_eq!(payload(serde_json::json!(5)), Ok(5));
        assert_eq!(payload(serde_json::json!(5.9)), Ok(5));
        assert_eq!(payload(serde_json::json!(u64::MAX)), Ok(u64::MAX));
        assert_eq!(payload(serde_json::json!(-0.0)), Ok(0));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1.9e19),
            serde_json::json!("5"),
            serde_json::json!(false),
        ] {
            assert!(payload(bad).is_err());
        }
    }
}
