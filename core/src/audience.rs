//! `Audience`: a non-empty audience value (`aud` member or configured audience).

use std::fmt;
use std::str::FromStr;

/// An audience string: non-empty, at most 1024 bytes, no control characters.
/// The constructor is the only way in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience(String);

/// Why a string is not an [`Audience`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    /// The audience is empty.
    #[error("audience is empty")]
    Empty,
    /// The audience is longer than 1024 bytes.
    #[error("audience is longer than 1024 bytes")]
    TooLong,
    /// The audience contains a control character.
    #[error("audience contains a control character")]
    ControlCharacter,
}

/// Longest accepted audience, in bytes.
const MAX_AUDIENCE_BYTES: usize = 1024;

impl Audience {
    /// Parses an audience.
    pub fn parse(s: &str) -> Result<Self, AudienceError> {
        if s.is_empty() {
            return Err(AudienceError::Empty);
        }
        if s.len() > MAX_AUDIENCE_BYTES {
            return Err(AudienceError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(AudienceError::ControlCharacter);
        }
        Ok(Audience(s.to_owned()))
    }
    /// The audience as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Audience {
    type Err = AudienceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Audience::parse(s)
    }
}

impl serde::Serialize for Audience {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Audience::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_urls_and_spiffe_ids() {
        for s in ["https://exchange.example", "spiffe://td/ns/a/sa/b", "x"] {
            assert_eq!(Audience::parse(s).unwrap().as_str(), s);
            assert_eq!(s.parse::<Audience>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(Audience::parse(""), Err(AudienceError::Empty));
        assert_eq!(
            Audience::parse(&"a".repeat(1025)),
            Err(AudienceError::TooLong)
        );
        assert!(Audience::parse(&"a".repeat(1024)).is_ok());
        assert_eq!(
            Audience::parse("a\nb"),
            Err(AudienceError::ControlCharacter)
        );
        assert_eq!(
            Audience::parse("a\u{7f}"),
            Err(AudienceError::ControlCharacter)
        );
    }

    #[test]
    fn deserializes_only_through_parse() {
        assert!(serde_json::from_str::<Audience>("\"\"").is_err());
        let a: Audience = serde_json::from_str("\"api\"").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"api\"");
    }
}
