//! `Audience`: a non-empty audience value (`aud` member or configured audience).

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

impl Audience {
    /// Parses an audience.
    pub fn parse(s: &str) -> Result<Self, AudienceError> {
        todo!("{s}")
    }
    /// The audience as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
// core helper: also Display, FromStr, Serialize (as string), Deserialize (through parse).
