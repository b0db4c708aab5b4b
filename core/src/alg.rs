//! The JWS algorithms a subject token may use (the JWT-SVID set).

use std::fmt;
use std::str::FromStr;

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

/// Longest `alg` value quoted back in an error (it is attacker-controlled).
const MAX_ALG_IN_ERROR: usize = 32;

impl Algorithm {
    /// Every accepted algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
    ];

    /// Parses a header `alg` value. Exact, case-sensitive match (RFC 7515 §4.1.1);
    /// `none` (any case), `HS*`, `EdDSA` and anything unknown are refused.
    pub fn parse(alg: &str) -> Result<Self, ValidationError> {
        Ok(match alg {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "ES512" => Algorithm::ES512,
            other => {
                return Err(ValidationError::AlgorithmNotAllowed(
                    other.chars().take(MAX_ALG_IN_ERROR).collect(),
                ))
            }
        })
    }

    /// The registered name, e.g. `"ES256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
        }
    }

    /// Whether this is an RSA algorithm (`RS*` or `PS*`).
    pub(crate) fn is_rsa(self) -> bool {
        !self.is_ecdsa()
    }

    /// Whether this is an ECDSA algorithm (`ES*`).
    pub(crate) fn is_ecdsa(self) -> bool {
        matches!(self, Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::parse(s)
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Algorithm::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_name_and_round_trips() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.as_str()), Ok(alg));
        }
    }

    #[test]
    fn rejects_none_in_every_letter_case() {
        for s in ["none", "None", "NONE", "nOnE", "NoNe", "nonE"] {
            assert_eq!(
                Algorithm::parse(s),
                Err(ValidationError::AlgorithmNotAllowed(s.into()))
            );
        }
    }

    #[test]
    fn rejects_hmac_eddsa_and_lowercase_variants() {
        for s in [
            "HS256", "HS384", "HS512", "EdDSA", "rs256", "es256", "ES256K", "",
        ] {
            assert!(Algorithm::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn truncates_long_algorithm_names_in_errors() {
        let long = "A".repeat(10_000);
        match Algorithm::parse(&long) {
            Err(ValidationError::AlgorithmNotAllowed(s)) => assert_eq!(s.len(), 32),
            other => panic!("{other:?}"),
        }
    }
}
