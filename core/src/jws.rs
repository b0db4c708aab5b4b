//! Strict compact JWS parsing and signature verification.

use serde_json::{Map, Value};

use crate::alg::Algorithm;
pub use crate::crypto::SignatureBackend;
use crate::error::ValidationError;
use crate::jwk::{is_valid_kid, Jwk};

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
        let parts = split(token, max_bytes, false, |bytes| {
            crate::json::parse_object(&bytes).map_err(|e| ValidationError::Json {
                segment: "payload",
                reason: e.to_string(),
            })
        })?;
        Ok(CompactJws {
            header: parts.header,
            payload: parts.payload,
            signing_input: parts.signing_input,
            signature: parts.signature,
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
        self.verify_with(key, SignatureBackend::active())
    }

    /// [`CompactJws::verify`] on a given backend (tests and benchmarks compare them).
    pub fn verify_with(&self, key: &Jwk, backend: SignatureBackend) -> Result<(), ValidationError> {
        crate::crypto::verify_signature(
            key,
            self.header.alg,
            self.signing_input.as_bytes(),
            &self.signature,
            backend,
        )
    }
}

/// A parsed, not yet verified, compact JWS over any payload (RFC 7515 §7.1), for
/// conformance suites and other non-JWT content. The header rules are those of
/// [`CompactJws`]; the payload stays bytes (it may be empty, or not JSON at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJws<'a> {
    /// The checked header.
    pub header: JoseHeader,
    /// The decoded payload.
    pub payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> RawJws<'a> {
    /// Parses `token` (at most `max_bytes`): three segments of strict base64url, the
    /// header non-empty and obeying the header rules, the signature non-empty; the
    /// payload is any bytes.
    pub fn parse(token: &'a str, max_bytes: usize) -> Result<Self, ValidationError> {
        let parts = split(token, max_bytes, true, Ok)?;
        Ok(RawJws {
            header: parts.header,
            payload: parts.payload,
            signing_input: parts.signing_input,
            signature: parts.signature,
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

    /// Verifies the signature with `key`: the same algorithm and key rules as
    /// [`CompactJws::verify`].
    pub fn verify(&self, key: &Jwk) -> Result<(), ValidationError> {
        self.verify_with(key, SignatureBackend::active())
    }

    /// [`RawJws::verify`] on a given backend (tests and benchmarks compare them).
    pub fn verify_with(&self, key: &Jwk, backend: SignatureBackend) -> Result<(), ValidationError> {
        crate::crypto::verify_signature(
            key,
            self.header.alg,
            self.signing_input.as_bytes(),
            &self.signature,
            backend,
        )
    }
}

/// The signature-level entry point for conformance suites: parses a compact JWS over
/// any payload and verifies it with the one given key, under exactly the header,
/// algorithm and key rules subject tokens get (allowed `alg` only; no `jwk`, `jku`,
/// `x5u`, `x5c` or `crit`; strict base64url; the key's kty/crv/pinned alg fit the header
/// `alg`; RSA signatures the modulus length, ECDSA r‖s with r, s in [1, n-1]). No claim
/// is read: the payload need not be JSON. The header `kid`, if any, is not compared
/// with the key's: the caller chose the key.
pub fn verify_compact_jws<'a>(
    token: &'a str,
    key: &Jwk,
    max_bytes: usize,
) -> Result<RawJws<'a>, ValidationError> {
    let jws = RawJws::parse(token, max_bytes)?;
    jws.verify(key)?;
    Ok(jws)
}

/// The segments of a compact JWS, decoded and checked; `P` is the payload's form.
struct Parts<'a, P> {
    header: JoseHeader,
    payload: P,
    signing_input: &'a str,
    signature: Vec<u8>,
}

/// Splits and decodes a compact JWS, checking in order: size, serialization, segment
/// count, header, payload (by `payload`), signature.
fn split<'a, P>(
    token: &'a str,
    max_bytes: usize,
    empty_payload_ok: bool,
    payload: impl FnOnce(Vec<u8>) -> Result<P, ValidationError>,
) -> Result<Parts<'a, P>, ValidationError> {
    if token.len() > max_bytes {
        return Err(ValidationError::TooLarge {
            len: token.len(),
            max: max_bytes,
        });
    }
    if token.trim_start().starts_with('{') {
        return Err(ValidationError::JsonSerializationNotSupported);
    }
    let mut segments = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(match token.split('.').count() {
            5 => ValidationError::JweNotSupported,
            _ => ValidationError::Malformed("expected three dot-separated segments"),
        });
    };
    if h.is_empty() {
        return Err(ValidationError::Malformed("header segment is empty"));
    }
    let header = parse_header(&decode_segment(h, "header")?)?;
    if p.is_empty() && !empty_payload_ok {
        return Err(ValidationError::Malformed("payload segment is empty"));
    }
    let payload = payload(decode_segment(p, "payload")?)?;
    if s.is_empty() {
        return Err(ValidationError::Malformed("signature segment is empty"));
    }
    let signature = decode_segment(s, "signature")?;
    Ok(Parts {
        header,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
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
    // RFC 7797 §7: a JWT must not use an unencoded payload; `b64: true` is the default
    // and harmless, anything else is refused (never read as the usual form).
    if map.get("b64").is_some_and(|v| v != &Value::Bool(true)) {
        return Err(ValidationError::ForbiddenHeader("b64"));
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
