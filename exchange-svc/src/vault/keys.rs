//! Transit key versions → JWKs, and decoding of transit signatures.

use super::config::{KeyType, RsaAlg};
use crate::signer::SigningAlg;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A key version that cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key is missing or does not parse.
    #[error("version {version}: bad public key: {reason}")]
    BadPublicKey {
        /// Transit key version.
        version: u64,
        /// Why.
        reason: String,
    },
}

/// The JWS algorithm of a transit key type.
pub fn alg_for(kt: KeyType, rsa: RsaAlg) -> SigningAlg {
    match kt {
        KeyType::EcdsaP256 => SigningAlg::ES256,
        KeyType::EcdsaP384 => SigningAlg::ES384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => match rsa {
            RsaAlg::PS256 => SigningAlg::PS256,
            RsaAlg::RS256 => SigningAlg::RS256,
        },
        KeyType::Ed25519 => SigningAlg::EdDSA,
    }
}

/// The JWK of one version plus the exact signature length it produces.
pub fn jwk_for(
    kt: KeyType,
    alg: SigningAlg,
    kid: &str,
    version: u64,
    public_key: &str,
) -> Result<(Value, usize), KeyError> {
    let bad = |reason: String| KeyError::BadPublicKey { version, reason };
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let (mut jwk, sig_len) = match kt {
        KeyType::EcdsaP256 => {
            use p256::pkcs8::DecodePublicKey;
            let pk =
                p256::PublicKey::from_public_key_pem(public_key).map_err(|e| bad(e.to_string()))?;
            let point = p256::EncodedPoint::from(pk);
            let (x, y) = point
                .x()
                .zip(point.y())
                .ok_or_else(|| bad("identity".into()))?;
            (
                json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}),
                64,
            )
        }
        KeyType::EcdsaP384 => {
            use p384::pkcs8::DecodePublicKey;
            let pk =
                p384::PublicKey::from_public_key_pem(public_key).map_err(|e| bad(e.to_string()))?;
            let point = p384::EncodedPoint::from(pk);
            let (x, y) = point
                .x()
                .zip(point.y())
                .ok_or_else(|| bad("identity".into()))?;
            (
                json!({"kty": "EC", "crv": "P-384", "x": b64(x), "y": b64(y)}),
                96,
            )
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let pk = rsa::RsaPublicKey::from_public_key_pem(public_key)
                .map_err(|e| bad(e.to_string()))?;
            let n = pk.n().to_bytes_be();
            let e = pk.e().to_bytes_be();
            (json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}), pk.size())
        }
        KeyType::Ed25519 => {
            // Transit gives ed25519 public keys as standard base64 of the 32 raw bytes.
            let raw = STANDARD
                .decode(public_key.trim())
                .map_err(|e| bad(e.to_string()))?;
            if raw.len() != 32 {
                return Err(bad(format!("{} bytes, want 32", raw.len())));
            }
            (json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&raw)}), 64)
        }
    };
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.as_str());
    jwk["use"] = json!("sig");
    Ok((jwk, sig_len))
}

/// Turns a transit signature (`vault:vN:<base64>`) into the JWS signature segment.
/// Checks the version (no rotation race) and the length. ECDSA with
/// `marshaling_algorithm=jws` comes back as base64url; RSA and ed25519 as standard
/// base64: both are accepted and re-encoded as base64url without padding.
pub fn jws_signature(raw: &str, want_version: u64, want_len: usize) -> Result<String, String> {
    let rest = raw
        .strip_prefix("vault:v")
        .ok_or_else(|| "signature without vault:v prefix".to_string())?;
    let (ver, b64) = rest
        .split_once(':')
        .ok_or_else(|| "malformed signature prefix".to_string())?;
    let ver: u64 = ver
        .parse()
        .map_err(|_| "malformed signature version".to_string())?;
    if ver != want_version {
        return Err(format!("signed with v{ver}, asked for v{want_version}"));
    }
    let bytes = [URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD, URL_SAFE]
        .iter()
        .find_map(|e| e.decode(b64).ok())
        .ok_or_else(|| "signature is not base64".to_string())?;
    if bytes.len() != want_len {
        return Err(format!(
            "signature is {} bytes, want {want_len}",
            bytes.len()
        ));
    }
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Parses RFC 3339 timestamps as Vault writes them (`2024-05-01T10:00:00.123456Z`,
/// or with a `+02:00` offset).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh: i64 = tz.get(1..3)?.parse().ok()?;
            let om: i64 = tz.get(4..6)?.parse().ok()?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_from_vault_parse_with_fractions_and_offsets() {
        let t = parse_rfc3339("2024-05-01T10:00:00.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_714_557_600_500)
        );
        let t2 = parse_rfc3339("2024-05-01T12:00:00.500000000+02:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn jws_signature_rejects_other_versions_and_wrong_lengths() {
        let sig = URL_SAFE_NO_PAD.encode([7u8; 64]);
        assert_eq!(
            jws_signature(&format!("vault:v3:{sig}"), 3, 64).unwrap(),
            sig
        );
        assert!(jws_signature(&format!("vault:v2:{sig}"), 3, 64)
            .unwrap_err()
            .contains("v2"));
        assert!(jws_signature(&format!("vault:v3:{sig}"), 3, 96).is_err());
        assert!(jws_signature(&sig, 3, 64).is_err());
        // Standard base64 with padding (RSA, ed25519) is re-encoded as base64url.
        let std_sig = STANDARD.encode([0xfbu8; 256]);
        assert!(std_sig.contains('+') || std_sig.contains('/') || std_sig.ends_with('='));
        assert_eq!(
            jws_signature(&format!("vault:v1:{std_sig}"), 1, 256).unwrap(),
            URL_SAFE_NO_PAD.encode([0xfbu8; 256])
        );
    }
}
