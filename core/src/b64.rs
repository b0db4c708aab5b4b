//! Strict base64url (RFC 7515 §2): no padding, nothing outside the URL-safe alphabet,
//! canonical trailing bits.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// URL-safe alphabet, no padding written, padding refused, non-zero trailing bits
/// refused: every byte string has exactly one accepted encoding.
const STRICT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes strict unpadded base64url. Rejects `=`, `+`, `/`, whitespace and
/// non-canonical trailing bits.
pub fn decode(input: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STRICT.decode(input)
}

/// Encodes bytes as unpadded base64url.
pub fn encode(input: &[u8]) -> String {
    STRICT.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0u8..=255).collect();
        for n in 0..data.len() {
            let enc = encode(&data[..n]);
            assert!(!enc.contains('='));
            assert_eq!(decode(&enc).unwrap(), &data[..n]);
        }
    }

    #[test]
    fn rejects_padding() {
        assert!(decode("YQ").is_ok());
        assert!(decode("YQ==").is_err());
        assert!(decode("YWI=").is_err());
    }

    #[test]
    fn rejects_standard_alphabet_and_whitespace() {
        assert_eq!(decode("-_-_").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert!(decode("+/+/").is_err());
        assert!(decode("YW Jj").is_err());
        assert!(decode("YWJj\n").is_err());
        assert!(decode("YWJj.").is_err());
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "YQ" is 'a'; "YR" decodes to the same byte with a non-zero trailing bit.
        assert!(decode("YR").is_err());
        assert_eq!(decode("YWI").unwrap(), b"ab");
        assert!(decode("YWJ").is_err());
    }

    #[test]
    fn rejects_impossible_length() {
        assert!(decode("Y").is_err());
        assert!(decode("YWJjZ").is_err());
    }
}
