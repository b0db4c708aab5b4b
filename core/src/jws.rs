//! Strict compact JWS parsing and signature verification.

use serde_json::{Map, Value};
use sha2::Digest as _;
use signature::hazmat::PrehashVerifier as _;
use signature::Verifier as _;

use crate::alg::Algorithm;
use crate::error::ValidationError;
use crate::jwk::{is_valid_kid, Jwk, PublicKey};

/// The parts of a JOSE header meshpass uses (everything else was checked and dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    /// The algorithm.
    pub alg: Algorithm,
    /// The key id, when present (already checked by [`crate::jwk::is_valid_kid`]:
    /// 1..=256 bytes of `[A-Za-z0-9._~:+/=@-]`, no `..`).
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

/// Header members that would let the token choose its own key: never accepted.
const FORBIDDEN_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

impl<'a> CompactJws<'a> {
    /// Parses `token` (at most `max_bytes`): exactly three non-empty segments of strict
    /// base64url, JSON-object header and payload, header rules of DESIGN.md.
    pub fn parse(token: &'a str, max_bytes: usize) -> Result<Self, ValidationError> {
        if token.len() > max_bytes {
            return Err(ValidationError::TooLarge {
                len: token.len(),
                max: max_bytes,
            });
        }
        if token.trim_start().starts_with('{') {
            return Err(ValidationError::JsonSerializationNotSupported);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(match token.split('.').count() {
                5 => ValidationError::JweNotSupported,
                _ => ValidationError::Malformed("expected three dot-separated segments"),
            });
        };
        if h.is_empty() {
            return Err(ValidationError::Malformed("header segment is empty"));
        }
        let header = parse_header(&decode_segment(h, "header")?)?;
        if p.is_empty() {
            return Err(ValidationError::Malformed("payload segment is empty"));
        }
        let payload = crate::json::parse_object(&decode_segment(p, "payload")?).map_err(|e| {
            ValidationError::Json {
                segment: "payload",
                reason: e.to_string(),
            }
        })?;
        if s.is_empty() {
            return Err(ValidationError::Malformed("signature segment is empty"));
        }
        let signature = decode_segment(s, "signature")?;
        Ok(CompactJws {
            header,
            payload,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature,
        })
    }

    /// The JWS signing input, `BASE64URL(header) "." BASE64URL(payload)`.
    pub fn signing_input(&self) -> &'a str {
        self.signing_input
    }

    /// The decoded signature bytes.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Verifies the signature with `key`, which must fit the header `alg`.
    /// ECDSA signatures must be exactly r‖s of the curve's size with r, s in [1, n-1].
    pub fn verify(&self, key: &Jwk) -> Result<(), ValidationError> {
        let alg = self.header.alg;
        if !key.fits(alg) {
            return Err(ValidationError::KeyAlgorithmMismatch(alg.as_str()));
        }
        let msg = self.signing_input.as_bytes();
        let sig = self.signature.as_slice();
        let ok =
            match (&key.key, alg) {
                (PublicKey::Rsa(k), _) => verify_rsa(k, alg, msg, sig),
                (PublicKey::P256(k), Algorithm::ES256) => p256::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| k.verify(msg, &sig).is_ok()),
                (PublicKey::P384(k), Algorithm::ES384) => p384::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| k.verify(msg, &sig).is_ok()),
                (PublicKey::P521(k), Algorithm::ES512) => p521::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| k.verify_prehash(&sha2::Sha512::digest(msg), &sig).is_ok()),
                _ => false,
            };
        // `Signature::from_slice` is what enforces the exact r‖s length and r, s in
        // [1, n-1] (no DER, no zero or out-of-range scalars: CVE-2022-21449 class).
        if ok {
            Ok(())
        } else {
            Err(ValidationError::BadSignature)
        }
    }
}

fn verify_rsa(key: &rsa::RsaPublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    use rsa::traits::PublicKeyParts as _;
    use sha2::{Sha256, Sha384, Sha512};
    // The signature is exactly the modulus length (RFC 8017 §8.2.2 step 1).
    if sig.len() != key.size() {
        return false;
    }
    let Ok(sig_pkcs) = rsa::pkcs1v15::Signature::try_from(sig) else {
        return false;
    };
    let Ok(sig_pss) = rsa::pss::Signature::try_from(sig) else {
        return false;
    };
    let k = key.clone();
    match alg {
        Algorithm::RS256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        Algorithm::RS384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        Algorithm::RS512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(k)
            .verify(msg, &sig_pkcs)
            .is_ok(),
        // RFC 7518 §3.5: the salt is as long as the hash.
        Algorithm::PS256 => rsa::pss::VerifyingKey::<Sha256>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::PS384 => rsa::pss::VerifyingKey::<Sha384>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::PS512 => rsa::pss::VerifyingKey::<Sha512>::new(k)
            .verify(msg, &sig_pss)
            .is_ok(),
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => false,
    }
}

fn decode_segment(seg: &str, segment: &'static str) -> Result<Vec<u8>, ValidationError> {
    crate::b64::decode(seg).map_err(|_| ValidationError::Base64 { segment })
}

fn parse_header(bytes: &[u8]) -> Result<JoseHeader, ValidationError> {
    let map = crate::json::parse_object(bytes).map_err(|e| ValidationError::Json {
        segment: "header",
        reason: e.to_string(),
    })?;
    let alg = match map.get("alg") {
        Some(Value::String(s)) => Algorithm::parse(s)?,
        Some(_) => {
            return Err(ValidationError::AlgorithmNotAllowed(
                "<not a string>".into(),
            ))
        }
        None => return Err(ValidationError::AlgorithmNotAllowed("<missing>".into())),
    };
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|n| map.contains_key(**n)) {
        return Err(ValidationError::ForbiddenHeader(name));
    }
    if map.contains_key("crit") {
        return Err(ValidationError::CriticalHeader);
    }
    let typ = match map.get("typ") {
        None => None,
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => Some(t.clone()),
        Some(_) => return Err(ValidationError::BadType),
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(k)) if is_valid_kid(k) => Some(k.clone()),
        Some(_) => return Err(ValidationError::BadKeyId),
    };
    Ok(JoseHeader { alg, kid, typ })
}
