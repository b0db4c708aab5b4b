//! Strict base64url (RFC 7515 §2): no padding, nothing outside the URL-safe alphabet,
//! canonical trailing bits.

/// Decodes strict unpadded base64url. Rejects `=`, `+`, `/`, whitespace and
/// non-canonical trailing bits.
pub fn decode(input: &str) -> Result<Vec<u8>, base64::DecodeError> {
    todo!("{input}")
}

/// Encodes bytes as unpadded base64url.
pub fn encode(input: &[u8]) -> String {
    todo!("{input:?}")
}
